//! A report from metrics files shaped as the miner, the validator and the
//! local subnet write them: the charts decode and show one line per series,
//! and the page references them.

#![allow(clippy::unwrap_used)]

use std::fs;

use plotters::style::{Color, Palette, Palette99};

fn write_lines(path: &std::path::Path, lines: &[serde_json::Value]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(path, text).unwrap();
}

/// Pixels of exactly the colour of series `i`.
fn pixels_of(img: &image::RgbImage, i: usize) -> usize {
    let c = Palette99::pick(i).to_rgba();
    let rgb = [c.0, c.1, c.2];
    img.pixels().filter(|p| p.0 == rgb).count()
}

#[test]
fn localnet_dir_gives_all_charts_and_a_page() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Two miners' runs (per-epoch lines), one validator, one leaderboard log.
    for (m, losses) in [("miner-0", [9.0, 7.5, 6.0]), ("miner-1", [9.5, 9.0, 8.8])] {
        let lines: Vec<_> = losses
            .iter()
            .enumerate()
            .map(|(e, l)| serde_json::json!({"epoch": e, "step": (e + 1) * 4, "avg_loss": l, "tokens_per_s": 1000.0}))
            .collect();
        write_lines(&dir.join(format!("{m}/training/run/metrics.jsonl")), &lines);
    }
    write_lines(
        &dir.join("validator/metrics.jsonl"),
        &[
            serde_json::json!({"step": 0, "block": 10, "uids": [1, 2], "losses": {"1": [6.0, 6.2], "2": [8.8, null]}, "win_rates": {"1": 1.0, "2": 0.0}, "weights": [0.0, 0.7, 0.3]}),
            serde_json::json!({"step": 1, "block": 20, "uids": [1, 2], "losses": {"1": [5.9, 6.0], "2": [8.7, 8.9]}, "win_rates": {"1": 1.0, "2": 0.0}, "weights": [0.0, 0.8, 0.2]}),
        ],
    );
    write_lines(
        &dir.join("leaderboard.jsonl"),
        &[
            serde_json::json!({"elapsed_s": 10.0, "leaderboard": [{"uid": 1, "hotkey": "5A", "model": "a:b", "loss": 6.1, "win_rate": 1.0, "weight": 0.7, "incentive": 0.0}, {"uid": 2, "incentive": 0.0}]}),
            serde_json::json!({"elapsed_s": 20.0, "leaderboard": [{"uid": 1, "hotkey": "5A<script>", "model": "a:b", "loss": 6.0, "win_rate": 1.0, "weight": 0.8, "incentive": 0.8}, {"uid": 2, "hotkey": "5GmTo9DLLUmMeQKCMnCzZxcDuz1XTzogkwL7MjiDAK8jVmp7", "incentive": 0.2}]}),
        ],
    );
    // Files the report must not read as metrics.
    write_lines(
        &dir.join("validator/models/x/metrics.jsonl"),
        &[serde_json::json!({"epoch": 0, "avg_loss": 1.0})],
    );

    let report = pretrain_report::write_report(dir).unwrap();
    let names: Vec<String> = report
        .charts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "training_loss.png",
            "validator_loss.png",
            "validator_weight.png",
            "incentive.png"
        ]
    );
    assert_eq!(
        report.data.training.len(),
        2,
        "the models/ tree is not read"
    );
    assert_eq!(
        report.data.training[0].epochs,
        vec![(0, 9.0), (1, 7.5), (2, 6.0)]
    );

    for chart in &report.charts {
        let img = image::open(chart).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (900, 480));
        // Two series in each chart: both colours are drawn, a third is not.
        assert!(
            pixels_of(&img, 0) > 50,
            "{}: first series missing",
            chart.display()
        );
        assert!(
            pixels_of(&img, 1) > 50,
            "{}: second series missing",
            chart.display()
        );
        assert_eq!(pixels_of(&img, 2), 0, "{}: a third series", chart.display());
    }

    let html = fs::read_to_string(&report.html).unwrap();
    for n in &names {
        assert!(
            html.contains(&format!("<img src=\"{n}\"")),
            "{n} not referenced"
        );
    }
    assert!(html.contains("5A&lt;script&gt;"), "hotkeys are escaped");
    assert!(!html.contains("<script"), "no scripts on the page");
    assert!(
        html.contains("<td>0.8000</td>"),
        "final incentive in the table"
    );
    assert!(
        html.contains("<tr><td>1</td><td>5A&lt;script&gt;</td>"),
        "uids are integers"
    );
    let long = "5GmTo9DLLUmMeQKCMnCzZxcDuz1XTzogkwL7MjiDAK8jVmp7";
    assert!(
        !html.contains(&format!(">{long}<")),
        "long hotkeys are shortened"
    );
}

#[test]
fn empty_or_missing_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = pretrain_report::write_report(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("holds no metrics.jsonl"), "{err}");
    let err = pretrain_report::write_report(&tmp.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
