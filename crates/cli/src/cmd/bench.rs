//! `pretrain bench ...`: throughput benchmarks, each printing JSON
//! `{"tokens_per_s": f, "peak_rss_bytes": n}`. Each area adds its own variants.

use clap::Subcommand;

/// The benchmarks of `pretrain bench`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Evaluation (forward + loss) of the default GPT-2 with random weights.
    Eval(super::model::ModelBenchArgs),
    /// Training (forward + backward + AdamW) of the default GPT-2 with random weights.
    Train(super::model::ModelBenchArgs),
    /// GPT-2 tokenizer throughput on the sample corpus (or --dataset local:DIR).
    Tokenize(super::data::BenchTokenizeArgs),
}

/// Runs one benchmark.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Eval(args) => super::model::run_bench(args, false),
        BenchCommand::Train(args) => super::model::run_bench(args, true),
        BenchCommand::Tokenize(args) => super::data::run_bench_tokenize(args),
    }
}
