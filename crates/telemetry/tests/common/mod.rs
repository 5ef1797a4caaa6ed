pub mod fake_wandb;
