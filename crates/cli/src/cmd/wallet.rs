//! `pretrain wallet new|list|show`: bittensor wallets on disk.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use pretrain_chain::wallet::{
    coldkey_password, KeyPair, SafeName, Wallet, WalletInfo, DEFAULT_HOTKEY_NAME,
    DEFAULT_MNEMONIC_WORDS, DEFAULT_WALLET_NAME, DEFAULT_WALLET_PATH, PASSWORD_ENV,
};
use serde_json::json;
use tracing::warn;

use super::out::{is_stdout_closed, print_json, print_text};

/// The wallet flags shared by every command that needs one (bittensor's names).
/// Names are checked when parsed ([`SafeName`]): a name that would leave the
/// wallets root (`../x`, `/abs`, empty, hidden) is refused before anything runs.
#[derive(Args, Debug, Clone)]
pub struct WalletArgs {
    /// Directory holding the wallets.
    #[arg(long = "wallet.path", default_value = DEFAULT_WALLET_PATH)]
    pub wallet_path: PathBuf,
    /// Wallet (coldkey) name.
    #[arg(long = "wallet.name", default_value = DEFAULT_WALLET_NAME, value_parser = parse_wallet_name)]
    pub wallet_name: String,
    /// Hotkey name inside the wallet.
    #[arg(long = "wallet.hotkey", default_value = DEFAULT_HOTKEY_NAME, value_parser = parse_hotkey_name)]
    pub wallet_hotkey: String,
}

/// `--wallet.name`: one plain file name.
pub fn parse_wallet_name(s: &str) -> Result<String, String> {
    SafeName::wallet(s)
        .map(|n| n.as_str().to_string())
        .map_err(|e| e.to_string())
}

/// `--wallet.hotkey`: one plain file name.
pub fn parse_hotkey_name(s: &str) -> Result<String, String> {
    SafeName::hotkey(s)
        .map(|n| n.as_str().to_string())
        .map_err(|e| e.to_string())
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
    /// Directory holding the wallets.
    #[arg(long = "wallet.path", default_value = DEFAULT_WALLET_PATH)]
    wallet_path: PathBuf,
    /// Wallet (coldkey) name.
    #[arg(long = "wallet.name", default_value = DEFAULT_WALLET_NAME, value_parser = parse_wallet_name)]
    wallet_name: String,
    /// Show only this hotkey (default: every hotkey of the wallet).
    #[arg(long = "wallet.hotkey", value_parser = parse_hotkey_name)]
    wallet_hotkey: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs a `pretrain wallet` command.
pub fn run(cmd: WalletCommand) -> anyhow::Result<()> {
    match cmd {
        WalletCommand::New(args) => new(args),
        WalletCommand::List(args) => list(args),
        WalletCommand::Show(args) => show(args),
    }
}

/// `pretrain wallet list`: every wallet, each one's problems logged.
fn list(args: ListArgs) -> anyhow::Result<()> {
    let wallets = Wallet::list(&args.wallet_path)?;
    for w in &wallets {
        for p in &w.problems {
            warn!(wallet = %w.name, "{p}");
        }
    }
    if args.json {
        print_json(&wallets)
    } else {
        print_text(&table(&wallets))
    }
}

/// `pretrain wallet show`: one wallet (or one of its hotkeys); an unreadable key file is an error.
fn show(args: ShowArgs) -> anyhow::Result<()> {
    let wallet = Wallet::new(
        &args.wallet_path,
        &args.wallet_name,
        args.wallet_hotkey.as_deref().unwrap_or(DEFAULT_HOTKEY_NAME),
    );
    let mut info = wallet.info()?;
    if let Some(h) = &args.wallet_hotkey {
        info.hotkeys.retain(|k| &k.name == h);
        if info.hotkeys.is_empty() {
            anyhow::bail!(
                "wallet {} has no hotkey {h:?} ({} does not exist)",
                info.name,
                wallet.hotkey_path().display()
            );
        }
        // Problems of other hotkeys are not this command's business; this one's are.
        let hotkeys_dir = wallet.dir().join("hotkeys").display().to_string();
        info.problems.retain(|p| !p.contains(&hotkeys_dir));
        if let Err(e) = wallet.hotkey_ss58() {
            info.problems.push(e.to_string());
        }
    }
    // A corrupt or unreadable key file is an error, not a `null` address.
    if let Some(first) = info.problems.first() {
        anyhow::bail!(
            "wallet {} has unreadable key files: {}",
            info.name,
            if info.problems.len() == 1 {
                first.clone()
            } else {
                format!("{first} (and {} more)", info.problems.len() - 1)
            }
        );
    }
    if args.json {
        print_json(&info)
    } else {
        print_text(&table(std::slice::from_ref(&info)))
    }
}

fn new(args: NewArgs) -> anyhow::Result<()> {
    let wallet = args.wallet.wallet();
    // Refuse before writing anything, so a refusal leaves no half-made wallet.
    if !args.overwrite {
        refuse_existing(&wallet, args.hotkey_only)?;
    }
    let password = if args.hotkey_only || args.no_password {
        None
    } else {
        Some(new_password(&wallet)?)
    };
    // The keys are made first and shown before any file is written: a key
    // file whose mnemonic was never seen (stdout closed, say) cannot exist.
    let cold = if args.hotkey_only {
        None
    } else {
        Some(KeyPair::generate(DEFAULT_MNEMONIC_WORDS).context("generating the coldkey")?)
    };
    let hot = KeyPair::generate(DEFAULT_MNEMONIC_WORDS).context("generating the hotkey")?;
    show_new_keys(&wallet, cold.as_ref(), &hot, password.is_some())?;
    if let Some((_, phrase)) = &cold {
        wallet
            .create_coldkey(Some(phrase), password.as_deref(), args.overwrite)
            .context("writing the coldkey (its mnemonic is printed above)")?;
    }
    let (_, hot_phrase) = &hot;
    wallet
        .create_hotkey(Some(hot_phrase), args.overwrite)
        .context("writing the hotkey (its mnemonic is printed above)")?;
    Ok(())
}

/// Refuses a key file `wallet new` would replace (the hotkey's only, with `hotkey_only`).
fn refuse_existing(wallet: &Wallet, hotkey_only: bool) -> anyhow::Result<()> {
    let mut paths = vec![wallet.hotkey_path(), wallet.hotkeypub_path()];
    if !hotkey_only {
        paths.extend([wallet.coldkey_path(), wallet.coldkeypub_path()]);
    }
    for p in paths {
        if p.exists() {
            anyhow::bail!(
                "{} already exists: pass --overwrite to replace it{}",
                p.display(),
                if hotkey_only {
                    ""
                } else {
                    ", or --hotkey_only to add a hotkey to this wallet"
                }
            );
        }
    }
    Ok(())
}

/// The new coldkey's password, asked twice (or read from the environment).
fn new_password(wallet: &Wallet) -> anyhow::Result<String> {
    coldkey_password(
        &format!(
            "New password for coldkey {}: ",
            wallet.coldkey_path().display()
        ),
        true,
    )
    .with_context(|| format!("use --no_password or set {PASSWORD_ENV}"))
}

/// Prints the new keys with their mnemonics; an error means no key may be written.
fn show_new_keys(
    wallet: &Wallet,
    cold: Option<&(KeyPair, String)>,
    (hot, hot_phrase): &(KeyPair, String),
    encrypted: bool,
) -> anyhow::Result<()> {
    let out = json!({
        "wallet": wallet.name,
        "path": wallet.dir(),
        "coldkey": cold.map(|(pair, phrase)| json!({
            "ss58": pair.ss58(),
            "mnemonic": phrase,
            "path": wallet.coldkey_path(),
            "encrypted": encrypted,
        })),
        "hotkey": {
            "name": wallet.hotkey,
            "ss58": hot.ss58(),
            "mnemonic": hot_phrase,
            "path": wallet.hotkey_path(),
        },
    });
    warn!("the mnemonics on stdout are the only way to recover these keys: write them down and keep them secret");
    if let Err(e) = print_json(&out) {
        if is_stdout_closed(&e) {
            // Not the quiet broken-pipe exit: the user must learn that no key was made.
            anyhow::bail!(
                "stdout was closed before the mnemonics could be shown: no key was written"
            );
        }
        return Err(e.context("printing the new keys: no key was written"));
    }
    Ok(())
}

fn table(wallets: &[WalletInfo]) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<20} {:<10} {:<50} ENCRYPTED",
        "WALLET", "HOTKEY", "ADDRESS"
    );
    for w in wallets {
        let enc = match w.coldkey_encrypted {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let _ = writeln!(
            t,
            "{:<20} {:<10} {:<50} {enc}",
            w.name,
            "(coldkey)",
            w.coldkeypub.as_deref().unwrap_or("-")
        );
        for h in &w.hotkeys {
            let _ = writeln!(
                t,
                "{:<20} {:<10} {:<50}",
                "",
                h.name,
                h.ss58.as_deref().unwrap_or("-")
            );
        }
    }
    t
}
