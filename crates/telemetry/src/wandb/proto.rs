//! The few messages of wandb's `wandb_internal.proto` a run file needs, with
//! the field numbers of wandb 0.19 (checked against its generated
//! `wandb_internal_pb2`): a run file written with them is read by wandb's own
//! `DataStore` and `Record.ParseFromString`.

/// `wandb_internal.Record`: one entry of a `.wandb` transaction log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// Position of the record in the file, from 1.
    #[prost(int64, tag = "1")]
    pub num: i64,
    /// What the record holds.
    #[prost(oneof = "RecordType", tags = "2, 3, 5, 17, 18")]
    pub record_type: Option<RecordType>,
}

/// The `record_type` oneof of `Record`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RecordType {
    /// A history row.
    #[prost(message, tag = "2")]
    History(HistoryRecord),
    /// Summary values.
    #[prost(message, tag = "3")]
    Summary(SummaryRecord),
    /// Config values.
    #[prost(message, tag = "5")]
    Config(ConfigRecord),
    /// The run itself.
    #[prost(message, tag = "17")]
    Run(RunRecord),
    /// The run's end.
    #[prost(message, tag = "18")]
    Exit(RunExitRecord),
}

/// `wandb_internal.RunRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunRecord {
    /// The run's id (its URL name).
    #[prost(string, tag = "1")]
    pub run_id: String,
    /// Entity (user or team).
    #[prost(string, tag = "2")]
    pub entity: String,
    /// Project.
    #[prost(string, tag = "3")]
    pub project: String,
    /// The run's config.
    #[prost(message, optional, tag = "4")]
    pub config: Option<ConfigRecord>,
    /// The name dashboards match (`validator-{uid}-{time}`).
    #[prost(string, tag = "8")]
    pub display_name: String,
    /// The host it ran on.
    #[prost(string, tag = "13")]
    pub host: String,
    /// When it started.
    #[prost(message, optional, tag = "17")]
    pub start_time: Option<Timestamp>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `wandb_internal.ConfigRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigRecord {
    /// Keys set.
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<Item>,
}

/// `wandb_internal.ConfigItem`, `HistoryItem` and `SummaryItem`: the same
/// three fields (a key, a nested key, a JSON value).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value as JSON text.
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// `wandb_internal.HistoryRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryRecord {
    /// The row's values.
    #[prost(message, repeated, tag = "1")]
    pub item: Vec<Item>,
    /// The row's step.
    #[prost(message, optional, tag = "2")]
    pub step: Option<HistoryStep>,
}

/// `wandb_internal.HistoryStep`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryStep {
    /// The step number.
    #[prost(int64, tag = "1")]
    pub num: i64,
}

/// `wandb_internal.SummaryRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryRecord {
    /// Keys set.
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<Item>,
}

/// `wandb_internal.RunExitRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunExitRecord {
    /// The process's exit code.
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    /// Seconds the run lasted.
    #[prost(int32, tag = "2")]
    pub runtime: i32,
}
