//! `--schedule` and `--competition_id`: which competition `mine`,
//! `validate`, `upload` and `localnet` run, from the schedule's entry at
//! the current block.

use anyhow::{bail, Context};
use clap::Args;
use pretrain_core::rules::{CompetitionSpec, Schedule, ScheduleEntry};
use pretrain_core::CompetitionId;

/// `--schedule NAME|FILE` of `mine`, `validate` and `localnet`.
#[derive(Args, Debug, Clone)]
pub struct ScheduleArgs {
    /// Competition schedule: a built-in name (`sn9-2024-01`, the default: the
    /// seed's rules; `sn9-later`: pretraining 6.0.4; `localnet-two`: two tiny
    /// competitions, later protocol) or a TOML file (docs/rules.md).
    #[arg(long = "schedule", default_value = pretrain_core::rules::schedule::SN9_2024_01)]
    pub schedule: String,
}

/// A competition of a schedule that a command runs or enters.
#[derive(Debug, Clone)]
pub struct ScheduledCompetition {
    /// The schedule's name.
    pub schedule: String,
    /// The competition as scheduled.
    pub spec: CompetitionSpec,
}

impl ScheduledCompetition {
    /// Its per-batch scoring parameters (epsilon, temperature, alpha,
    /// sample_min, sequence length), as the `sn9-2024-01` validator counts
    /// wins; refused with the reason for a competition counted otherwise.
    pub fn per_batch_params(&self) -> anyhow::Result<pretrain_core::Tunables> {
        let spec = &self.spec;
        spec.seed_competition().with_context(|| {
            format!(
                "schedule {}: competition {} ({}) counts wins as {:?} with epsilon {:?}; this \
                 build's validator counts them per batch with a fixed epsilon",
                self.schedule, spec.id, spec.name, spec.scoring.wins, spec.constraints.epsilon
            )
        })
    }
}

impl ScheduleArgs {
    /// Loads (and validates) the schedule.
    pub fn load(&self) -> anyhow::Result<Schedule> {
        let schedule = Schedule::by_name_or_file(&self.schedule)
            .with_context(|| format!("loading --schedule {}", self.schedule))?;
        tracing::info!(
            schedule = %schedule.name,
            entries = schedule.entries.len(),
            "competition schedule: {}",
            schedule.description
        );
        Ok(schedule)
    }

    /// The competition active at `block` (`None`, offline: the latest
    /// entry). This build runs one per-batch competition at a time (the
    /// seed's validator); anything else is refused with the reason.
    pub fn active(
        &self,
        schedule: &Schedule,
        block: Option<u64>,
    ) -> anyhow::Result<ScheduledCompetition> {
        let entry = schedule.entry_at(block)?;
        let names: Vec<&str> = entry.competitions.iter().map(|c| c.name.as_str()).collect();
        let [spec] = entry.competitions.as_slice() else {
            bail!(
                "schedule {} runs {} competitions from block {} ({}): this build's miner and \
                 validator run one competition at a time",
                schedule.name,
                names.len(),
                entry.start_block,
                names.join(", ")
            );
        };
        spec.support()?;
        let active = ScheduledCompetition {
            schedule: schedule.name.clone(),
            spec: spec.clone(),
        };
        active.per_batch_params()?;
        log_competition(schedule, entry, spec, "active competition");
        Ok(active)
    }

    /// The competition with `id` in the entry active at `block` (`None`,
    /// offline: the latest entry); without `id`, the entry's only
    /// competition. Refused, naming the scheduled ids, when it is not
    /// scheduled there or there is more than one to choose from; refused
    /// with the reason when this build cannot evaluate its models.
    pub fn competition(
        &self,
        schedule: &Schedule,
        block: Option<u64>,
        id: Option<CompetitionId>,
    ) -> anyhow::Result<ScheduledCompetition> {
        let entry = schedule.entry_at(block)?;
        let at = match block {
            Some(b) => format!("at block {b}"),
            None => format!("from block {} (its latest entry)", entry.start_block),
        };
        let scheduled = entry
            .competitions
            .iter()
            .map(|c| format!("{} ({})", c.id, c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let spec = match id {
            Some(id) => entry.competition(id).with_context(|| {
                format!(
                    "--competition_id {id} is not scheduled {at} by schedule {}; scheduled: {scheduled}",
                    schedule.name
                )
            })?,
            None => match entry.competitions.as_slice() {
                [only] => only,
                _ => bail!(
                    "schedule {} runs {} competitions {at}: {scheduled}; choose one with --competition_id",
                    schedule.name,
                    entry.competitions.len()
                ),
            },
        };
        spec.support()?;
        log_competition(schedule, entry, spec, "competition entered");
        Ok(ScheduledCompetition {
            schedule: schedule.name.clone(),
            spec: spec.clone(),
        })
    }
}

/// One log line naming the competition a command runs and its limits.
fn log_competition(schedule: &Schedule, entry: &ScheduleEntry, spec: &CompetitionSpec, what: &str) {
    tracing::info!(
        schedule = %schedule.name,
        start_block = entry.start_block,
        competition = spec.id,
        name = %spec.name,
        max_parameters = spec.constraints.max_parameters,
        max_bytes = spec.constraints.max_bytes,
        "{what}"
    );
}

/// The competition flags of `mine` and `upload` (upstream's names) with the schedule.
#[derive(Args, Debug, Clone)]
pub struct CompetitionArgs {
    /// Competition to enter, by id (later-protocol schedules; default: the
    /// only one scheduled at the current block).
    #[arg(long = "competition_id", allow_negative_numbers = true)]
    pub competition_id: Option<CompetitionId>,
    /// Make the repo public once the commitment has landed (later-protocol
    /// schedules upload it private; validators cannot download it before).
    #[arg(long = "update_repo_visibility")]
    pub update_repo_visibility: bool,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
}

impl CompetitionArgs {
    /// The competition entered at `block` (`None`, offline: the latest
    /// entry): under the later protocol the one `--competition_id` names (or
    /// the entry's only one); under the seed's, the single active
    /// competition, which `--competition_id` may only repeat.
    pub fn entered(
        &self,
        schedule: &Schedule,
        block: Option<u64>,
    ) -> anyhow::Result<ScheduledCompetition> {
        if schedule.protocol().has_competition_ids() {
            return self
                .schedule
                .competition(schedule, block, self.competition_id);
        }
        let active = self.schedule.active(schedule, block)?;
        if let Some(id) = self.competition_id {
            if id != active.spec.id {
                bail!(
                    "--competition_id {id}: schedule {} runs competition {} ({}) only",
                    active.schedule,
                    active.spec.id,
                    active.spec.name
                );
            }
        }
        Ok(active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(schedule: &str, id: Option<CompetitionId>) -> CompetitionArgs {
        CompetitionArgs {
            competition_id: id,
            update_repo_visibility: false,
            schedule: ScheduleArgs {
                schedule: schedule.into(),
            },
        }
    }

    #[test]
    fn the_sn9_2024_01_rules_run_their_one_competition_with_per_batch_params() {
        let a = args(pretrain_core::rules::schedule::SN9_2024_01, None);
        let schedule = a.schedule.load().unwrap();
        let active = a.schedule.active(&schedule, None).unwrap();
        let entered = a.entered(&schedule, None).unwrap();
        assert_eq!(entered.spec.id, active.spec.id);
        assert!(active.per_batch_params().is_ok());
        let other = args(
            pretrain_core::rules::schedule::SN9_2024_01,
            Some(active.spec.id + 1),
        );
        let e = other.entered(&schedule, None).unwrap_err().to_string();
        assert!(e.contains("only"), "{e}");
    }

    #[test]
    fn two_competitions_need_a_competition_id() {
        let a = args(pretrain_core::rules::schedule::LOCALNET_TWO, None);
        let schedule = a.schedule.load().unwrap();
        let e = a.entered(&schedule, None).unwrap_err().to_string();
        assert!(e.contains("choose one with --competition_id"), "{e}");
        let entry = schedule.entry_at(None).unwrap();
        let id = entry.competitions[1].id;
        let chosen = args(pretrain_core::rules::schedule::LOCALNET_TWO, Some(id))
            .entered(&schedule, None)
            .unwrap();
        assert_eq!(chosen.spec.id, id);
        let e = args(pretrain_core::rules::schedule::LOCALNET_TWO, Some(99))
            .entered(&schedule, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not scheduled"), "{e}");
    }
}
