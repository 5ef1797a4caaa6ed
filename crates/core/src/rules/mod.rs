//! The subnet's rules as data: schedules of competitions switched
//! by block ([`schedule`]), each protocol's commitment, admission and
//! scoring behind one type ([`protocol`]), the later protocol's epsilon ([`epsilon`]), wins
//! ([`wins`]) and weights across competitions ([`weights`]), and the
//! validator's hash check ([`check`]).
//!
//! Every function reproduces upstream's arithmetic (macrocosm-os/taoverse
//! `e350d5e`, macrocosm-os/pretraining `42328de`, v6.0.4; see
//! `testdata/later/vectors.json`). The seed's January 2024 scoring stays in
//! [`crate::scoring`]; a schedule's competition says which of the two applies.

pub mod check;
pub mod epsilon;
pub mod protocol;
pub mod schedule;
pub mod weights;
pub mod wins;

use std::path::PathBuf;

use thiserror::Error;

pub use check::{accepts_download, admit, check_download, HashCheckError, Refusal};
pub use epsilon::EpsilonFunc;
pub use protocol::{
    mean_loss, sn9_spec, Admission, Admitted, ChainModelId, ChainModelIdError, Committed,
    CompetitionState, EvaluatedStep, HashRule, ScoreError, ScoredStep, StepRules,
};
pub use schedule::{
    CompetitionSpec, Constraints, Protocol, Schedule, ScheduleEntry, ScoringParams, Unsupported,
    WinsRule,
};
pub use weights::CompetitionTracker;
pub use wins::{
    compute_competitive_uids, compute_wins_aged, iswin_aged, keep_for_next_step, score_competition,
    CompetitionStep, Contender, Wins,
};

/// Errors of the rules: a schedule that cannot be read or is inconsistent,
/// or inputs that do not fit together.
#[derive(Debug, Error)]
pub enum RulesError {
    /// A schedule file could not be read.
    #[error("cannot read schedule {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A schedule is not valid TOML of the expected shape.
    #[error("schedule {name}: {message}")]
    Parse {
        /// The schedule's name or file.
        name: String,
        /// What the parser said.
        message: String,
    },
    /// Values that break a rule (shares not summing to 1, unsorted entries, …).
    #[error("{0}")]
    Invalid(String),
    /// No schedule entry starts at or before the block.
    #[error("schedule {schedule} has no entry at block {block} (its first starts at {first})")]
    NoEntry {
        /// The schedule.
        schedule: String,
        /// The block asked for.
        block: u64,
        /// Start of its first entry.
        first: u64,
    },
}
