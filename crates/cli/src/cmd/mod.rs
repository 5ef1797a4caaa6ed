//! One module per command (or command group) of `pretrain`.

pub mod hash;
pub mod score;
