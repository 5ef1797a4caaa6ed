//! `pretrain rules timelock-commit -` and `timelock-reveal -`: a commit-reveal
//! (v4) commit made and opened by the chain crate's timelock code, under drand
//! quicknet's key. How an operator looks inside a commit, and how tests
//! compare us with the reference.

use anyhow::{bail, Context};
use pretrain_chain::subtensor::{account_of, ss58_of};
use pretrain_chain::timelock::{
    commit_payload, quicknet_public_key, reveal_payload, WeightsTlockPayload,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Inputs of `timelock-commit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitCase {
    hotkey: String,
    uids: Vec<u16>,
    values: Vec<u16>,
    version_key: u64,
    reveal_round: u64,
}

/// Inputs of `timelock-reveal`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealCase {
    commit: String,
    signature: String,
}

fn unhex(what: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    hex::decode(s).with_context(|| format!("{what} is not hex"))
}

/// `{hotkey, uids, values, version_key, reveal_round}` -> `{commit, reveal_round, payload}`.
pub fn commit(c: CommitCase) -> anyhow::Result<Map<String, Value>> {
    let account = account_of(&c.hotkey).context("hotkey")?;
    if c.uids.len() != c.values.len() {
        bail!(
            "{} uids but {} values: the chain would drop this commit at the reveal",
            c.uids.len(),
            c.values.len()
        );
    }
    let payload = WeightsTlockPayload {
        hotkey: account.to_vec(),
        uids: c.uids,
        values: c.values,
        version_key: c.version_key,
    };
    let ct = commit_payload(&payload, &quicknet_public_key(), c.reveal_round)
        .context("cannot make the commit")?;
    let mut out = Map::new();
    out.insert("commit".into(), json!(hex::encode(ct)));
    out.insert("reveal_round".into(), json!(c.reveal_round));
    out.insert("payload".into(), json!(hex::encode(payload.to_scale())));
    Ok(out)
}

/// `{commit, signature}` -> `{hotkey, uids, values, version_key}`.
pub fn reveal(c: RevealCase) -> anyhow::Result<Map<String, Value>> {
    let ct = unhex("commit", &c.commit)?;
    let sig = unhex("signature", &c.signature)?;
    let p = reveal_payload(&ct, &sig).context("cannot open the commit")?;
    let hotkey: [u8; 32] = p.hotkey.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "the payload's hotkey is {} bytes, not a 32-byte public key",
            p.hotkey.len()
        )
    })?;
    let mut out = Map::new();
    out.insert("hotkey".into(), json!(ss58_of(&hotkey)));
    out.insert("uids".into(), json!(p.uids));
    out.insert("values".into(), json!(p.values));
    out.insert("version_key".into(), json!(p.version_key));
    Ok(out)
}
