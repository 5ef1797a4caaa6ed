//! `cargo run --release --example bench -p pretrain-model -- eval|train [iters] [n_layer]`:
//! the same measurement as `pretrain bench`, without building the whole CLI.

use pretrain_model::bench::{bench_eval, bench_train, BenchConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("eval");
    let mut cfg = BenchConfig::default();
    if let Some(n) = args.get(2).and_then(|s| s.parse().ok()) {
        cfg.iters = n;
    }
    if let Some(n) = args.get(3).and_then(|s| s.parse::<u64>().ok()) {
        cfg.config_json["n_layer"] = n.into();
    }
    let r = match what {
        "train" => bench_train(&cfg),
        _ => bench_eval(&cfg),
    };
    match r {
        Ok(r) => println!("{}", serde_json::to_string(&r).unwrap_or_default()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
