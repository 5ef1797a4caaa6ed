//! Wallets, the chain, the competitions and the corpus of a local subnet.

use std::path::Path;

use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions, SubnetParams};
use pretrain_chain::{Chain, Wallet};
use pretrain_core::rules::{CompetitionSpec, Schedule};

use super::{Layout, LocalnetError, NETUID, VALIDATOR_STAKE};

/// Characters kept of each document of the local corpus.
pub const SHORT_DOC_CHARS: usize = 400;

/// Creates (or reuses) the validator's and `n` miners' wallets, unencrypted:
/// keys of a throwaway local network.
pub fn setup_wallets(layout: &Layout, n: usize) -> Result<(Wallet, Vec<Wallet>), LocalnetError> {
    let make = |name: &str| -> Result<Wallet, LocalnetError> {
        let w = Wallet::new(layout.wallets(), name, "default");
        if !w.hotkey_path().is_file() {
            w.create(None, false)
                .map_err(|source| LocalnetError::Wallet {
                    what: format!("creating wallet {name} in {}", layout.wallets().display()),
                    source,
                })?;
        }
        Ok(w)
    };
    let validator = make("validator")?;
    let miners = (0..n)
        .map(|i| make(&format!("miner-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((validator, miners))
}

/// The commit rate limit of the local chain. A commitment younger than
/// `eval_block_delay` is not evaluated, and each new one replaces the
/// last: miners that commit every few blocks would never be evaluated, so
/// commits are spaced by more than the largest delay of the schedule.
pub fn commit_rate_limit(schedule: &Schedule) -> u64 {
    let delay = schedule
        .entries
        .iter()
        .flat_map(|e| &e.competitions)
        .map(|c| c.constraints.eval_block_delay)
        .max()
        .unwrap_or(0);
    if delay > 0 {
        delay + 10
    } else {
        5
    }
}

/// The competitions of the entry active at `block`, each checked runnable
/// here; `None` under the `sn9-2024-01` rules (one competition, no
/// competition ids).
pub fn competitions_at(
    schedule: &Schedule,
    block: u64,
) -> Result<Option<Vec<CompetitionSpec>>, LocalnetError> {
    schedule
        .named_competitions_at(block)
        .map(|cs| cs.map(<[CompetitionSpec]>::to_vec))
        .map_err(|e| LocalnetError::Rules(e.to_string()))
}

/// Miner i joins competition i mod n: with two competitions and two
/// miners, each competition has one (`None` for every miner without
/// competitions).
pub fn assign_competitions(
    competitions: Option<&[CompetitionSpec]>,
    miners: usize,
) -> Vec<Option<CompetitionSpec>> {
    (0..miners)
        .map(|i| match competitions {
            Some(cs) if !cs.is_empty() => Some(cs[i % cs.len()].clone()),
            _ => None,
        })
        .collect()
}

/// A fresh (or the existing) chain with the subnet, every hotkey registered
/// and the validator staked. Rate limits are a few blocks so a round fits in minutes.
pub async fn setup_chain(
    layout: &Layout,
    block_time: f64,
    commit_rate_limit: u64,
    validator: &Wallet,
    miners: &[Wallet],
) -> Result<EmbeddedChain, LocalnetError> {
    let chain_err = |what: String| move |source| LocalnetError::Chain { what, source };
    let wallet_err = |what: &str| {
        let what = what.to_string();
        move |source| LocalnetError::Wallet { what, source }
    };
    let chain = EmbeddedChain::open_async(
        &layout.chain(),
        &EmbeddedOptions {
            block_time: Some(block_time),
            ..EmbeddedOptions::default()
        },
    )
    .await
    .map_err(chain_err(format!(
        "opening the chain in {}",
        layout.chain().display()
    )))?;
    chain
        .create_subnet(
            NETUID,
            SubnetParams {
                commit_rate_limit,
                weights_rate_limit: 5,
                ..SubnetParams::default()
            },
        )
        .await
        .map_err(chain_err("creating the subnet".into()))?;
    for w in std::iter::once(validator).chain(miners) {
        let hot = w.hotkey_ss58().map_err(wallet_err("reading a hotkey"))?;
        let cold = w.coldkeypub().map_err(wallet_err("reading a coldkey"))?;
        chain
            .register(NETUID, &hot, &cold)
            .await
            .map_err(chain_err(format!("registering {hot}")))?;
    }
    let vhot = validator
        .hotkey_ss58()
        .map_err(wallet_err("reading the validator's hotkey"))?;
    let g = chain
        .metagraph(NETUID)
        .await
        .map_err(chain_err("reading the metagraph".into()))?;
    let staked = g.neurons.iter().any(|n| n.hotkey == vhot && n.stake > 0.0);
    if !staked {
        chain
            .add_stake(&vhot, VALIDATOR_STAKE)
            .await
            .map_err(chain_err("staking the validator".into()))?;
    }
    Ok(chain)
}

/// Writes the sample corpus into `dir` with each document cut to its first
/// [`SHORT_DOC_CHARS`] characters, as JSON Lines: a page (100 documents)
/// is then ~10k tokens instead of ~65k, so a tiny model's epoch takes
/// seconds on a shared CPU and a full round fits in a couple of minutes.
/// An existing file is kept.
pub fn write_short_corpus(dir: &Path) -> Result<(), LocalnetError> {
    let path = dir.join("short-docs.jsonl");
    if path.is_file() {
        return Ok(());
    }
    let sample = pretrain_data::sample_corpus_dir();
    let source = pretrain_data::LocalSource::open(&sample)?;
    let docs = pretrain_data::read_all_documents(&source)?;
    let mut text = String::new();
    for d in docs {
        let cut: String = d.chars().take(SHORT_DOC_CHARS).collect();
        text.push_str(&serde_json::json!({ "content": cut }).to_string());
        text.push('\n');
    }
    pretrain_core::fsio::atomic_write(&path, text.as_bytes()).map_err(|source| LocalnetError::Io {
        what: "writing",
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_spaced_past_the_largest_evaluation_delay() {
        let mut s = Schedule::default_schedule();
        for c in s.entries.iter_mut().flat_map(|e| e.competitions.iter_mut()) {
            c.constraints.eval_block_delay = 0;
        }
        assert_eq!(commit_rate_limit(&s), 5);
        s.entries[0].competitions[0].constraints.eval_block_delay = 30;
        assert_eq!(commit_rate_limit(&s), 40);
    }

    #[test]
    fn miners_are_dealt_round_robin_over_the_competitions() {
        let base = Schedule::default_schedule().entries[0].competitions[0].clone();
        let mut a = base.clone();
        a.id = 4;
        let mut b = base;
        b.id = 7;
        let ids: Vec<Option<i64>> = assign_competitions(Some(&[a, b]), 3)
            .iter()
            .map(|c| c.as_ref().map(|c| c.id))
            .collect();
        assert_eq!(ids, [Some(4), Some(7), Some(4)]);
        assert!(assign_competitions(None, 2).iter().all(Option::is_none));
        assert!(assign_competitions(Some(&[]), 2)
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn the_sn9_2024_01_rules_have_no_competition_ids() {
        assert!(competitions_at(&Schedule::default_schedule(), 0)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_short_corpus_cuts_every_document() {
        let dir = tempfile::tempdir().unwrap();
        write_short_corpus(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("short-docs.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!lines.is_empty());
        for l in &lines {
            let c = l["content"].as_str().unwrap();
            assert!(c.chars().count() <= SHORT_DOC_CHARS);
        }
    }
}
