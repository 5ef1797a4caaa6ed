//! `pretrain wallet new|list|show`: bittensor wallets on disk.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use pretrain_chain::wallet::{
    coldkey_password, Wallet, WalletInfo, DEFAULT_HOTKEY_NAME, DEFAULT_WALLET_NAME,
    DEFAULT_WALLET_PATH, PASSWORD_ENV,
};
use serde_json::json;
use tracing::warn;

/// The wallet flags shared by every command that needs one (bittensor's names).
#[derive(Args, Debug, Clone)]
pub struct WalletArgs {
    /// Directory holding the wallets.
    #[arg(long = "wallet.path", default_value = DEFAULT_WALLET_PATH)]
    pub wallet_path: PathBuf,
    /// Wallet (coldkey) name.
    #[arg(long = "wallet.name", default_value = DEFAULT_WALLET_NAME)]
    pub wallet_name: String,
    /// Hotkey name inside the wallet.
    #[arg(long = "wallet.hotkey", default_value = DEFAULT_HOTKEY_NAME)]
    pub wallet_hotkey: String,
}

impl WalletArgs {
    /// The wallet these flags name.
    pub fn wallet(&self) -> Wallet {
        Wallet::new(&self.wallet_path, &self.wallet_name, &self.wallet_hotkey)
    }
}

/// `pretrain wallet ...`.
#[derive(Subcommand, Debug)]
pub enum WalletCommand {
    /// Create a wallet: a coldkey (encrypted unless --no_password) and a hotkey; prints the mnemonics as JSON.
    New(NewArgs),
    /// List the wallets under --wallet.path.
    List(ListArgs),
    /// Show one wallet's addresses (nothing is decrypted).
    Show(ShowArgs),
}

/// Arguments of `pretrain wallet new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// Store the coldkey unencrypted (no password).
    #[arg(long = "no_password")]
    no_password: bool,
    /// Replace existing key files.
    #[arg(long)]
    overwrite: bool,
    /// Only add the hotkey, keeping the wallet's coldkey.
    #[arg(long = "hotkey_only")]
    hotkey_only: bool,
}

/// Arguments of `pretrain wallet list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Directory holding the wallets.
    #[arg(long = "wallet.path", default_value = DEFAULT_WALLET_PATH)]
    wallet_path: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pretrain wallet show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs a `pretrain wallet` command.
pub fn run(cmd: WalletCommand) -> anyhow::Result<()> {
    match cmd {
        WalletCommand::New(args) => new(args),
        WalletCommand::List(args) => {
            let wallets = Wallet::list(&args.wallet_path)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&wallets)?);
            } else {
                print_table(&wallets);
            }
            Ok(())
        }
        WalletCommand::Show(args) => {
            let info = args.wallet.wallet().info()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_table(std::slice::from_ref(&info));
            }
            Ok(())
        }
    }
}

fn new(args: NewArgs) -> anyhow::Result<()> {
    let wallet = args.wallet.wallet();
    // Refuse before writing anything, so a refusal leaves no half-made wallet.
    if !args.overwrite {
        let mut paths = vec![wallet.hotkey_path(), wallet.hotkeypub_path()];
        if !args.hotkey_only {
            paths.extend([wallet.coldkey_path(), wallet.coldkeypub_path()]);
        }
        for p in paths {
            if p.exists() {
                anyhow::bail!(
                    "{} already exists: pass --overwrite to replace it{}",
                    p.display(),
                    if args.hotkey_only {
                        ""
                    } else {
                        ", or --hotkey_only to add a hotkey to this wallet"
                    }
                );
            }
        }
    }
    let coldkey = if args.hotkey_only {
        None
    } else {
        let password = if args.no_password {
            None
        } else {
            Some(
                coldkey_password(
                    &format!(
                        "New password for coldkey {}: ",
                        wallet.coldkey_path().display()
                    ),
                    true,
                )
                .with_context(|| format!("use --no_password or set {PASSWORD_ENV}"))?,
            )
        };
        let key = wallet.create_coldkey(None, password.as_deref(), args.overwrite)?;
        Some(json!({
            "ss58": key.ss58,
            "mnemonic": key.mnemonic,
            "path": key.path,
            "encrypted": password.is_some(),
        }))
    };
    let hotkey = wallet.create_hotkey(None, args.overwrite)?;
    warn!("the mnemonics below are the only way to recover these keys: write them down and keep them secret");
    let out = json!({
        "wallet": wallet.name,
        "path": wallet.dir(),
        "coldkey": coldkey,
        "hotkey": {
            "name": wallet.hotkey,
            "ss58": hotkey.ss58,
            "mnemonic": hotkey.mnemonic,
            "path": hotkey.path,
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn print_table(wallets: &[WalletInfo]) {
    println!(
        "{:<20} {:<10} {:<50} ENCRYPTED",
        "WALLET", "HOTKEY", "ADDRESS"
    );
    for w in wallets {
        let enc = match w.coldkey_encrypted {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        println!(
            "{:<20} {:<10} {:<50} {enc}",
            w.name,
            "(coldkey)",
            w.coldkeypub.as_deref().unwrap_or("-")
        );
        for h in &w.hotkeys {
            println!(
                "{:<20} {:<10} {:<50}",
                "",
                h.name,
                h.ss58.as_deref().unwrap_or("-")
            );
        }
    }
}
