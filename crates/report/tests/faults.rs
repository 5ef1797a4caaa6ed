//! `pretrain report` on hostile or damaged directories: planted
//! links at the charts' temporary names, cut and non-UTF-8 lines, a line
//! cut by the read cap, and losses whose axis range overflows.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

fn training_line(epoch: u64, loss: f64) -> String {
    format!(
        "{{\"epoch\": {epoch}, \"step\": {}, \"avg_loss\": {loss:e}}}\n",
        epoch + 1
    )
}

/// `write_report` on another thread, failing the test if it takes a minute
/// (the overflowing axis made it spin forever).
fn report_within_a_minute(dir: &Path) -> pretrain_report::Report {
    let (tx, rx) = mpsc::channel();
    let d = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(pretrain_report::write_report(&d));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the report did not finish within a minute")
        .unwrap()
}

#[test]
fn losses_at_the_ends_of_f64_are_drawn_in_finite_time() {
    for losses in [[1.7e308, 0.0], [1e308, -1e308], [f64::MAX, f64::MIN]] {
        let tmp = tempfile::tempdir().unwrap();
        let text: String = losses
            .iter()
            .enumerate()
            .map(|(e, &l)| training_line(e as u64, l))
            .collect();
        fs::write(tmp.path().join("metrics.jsonl"), text).unwrap();
        let report = report_within_a_minute(tmp.path());
        assert_eq!(report.data.training[0].epochs.len(), 2, "{losses:?}");
        assert!(tmp.path().join("training_loss.png").is_file());
    }
}

#[cfg(unix)]
#[test]
fn planted_links_are_not_written_through_and_every_file_has_one_mode() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    fs::write(
        dir.join("metrics.jsonl"),
        training_line(0, 9.0) + &training_line(1, 8.0),
    )
    .unwrap();
    // The old fixed temporary name, pointing at a victim and at a missing file.
    let victim = tmp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join(".training_loss.tmp.png")).unwrap();
    let missing = tmp.path().join("created");
    std::os::unix::fs::symlink(&missing, dir.join(".tmp.png")).unwrap();
    // And at the outputs themselves.
    let victim2 = tmp.path().join("victim2");
    fs::write(&victim2, "precious").unwrap();
    std::os::unix::fs::symlink(&victim2, dir.join("report.html")).unwrap();

    let report = report_within_a_minute(&dir);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(fs::read_to_string(&victim2).unwrap(), "precious");
    assert!(!missing.exists());
    let mut files = report.charts.clone();
    files.push(report.html.clone());
    for f in &files {
        let meta = fs::symlink_metadata(f).unwrap();
        assert!(meta.is_file(), "{} is not a regular file", f.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o644, "{}", f.display());
    }
    // No temporary file is left behind.
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn cut_and_non_utf8_lines_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = training_line(0, 9.0).into_bytes();
    // A line cut by a full disk, with the next append glued onto it as an
    // older writer did, a stray invalid byte, then good lines.
    bytes.extend_from_slice(b"{\"epoch\": 1, \"avg_lo");
    bytes.extend_from_slice(training_line(1, 8.0).as_bytes());
    bytes.extend_from_slice(b"\xff\xfe garbage\n");
    bytes.extend_from_slice(training_line(2, 7.0).as_bytes());
    bytes.extend_from_slice(b"[1, 2]\n");
    bytes.extend_from_slice(training_line(3, 6.0).as_bytes());
    fs::write(tmp.path().join("metrics.jsonl"), bytes).unwrap();
    let report = report_within_a_minute(tmp.path());
    assert_eq!(
        report.data.training[0].epochs,
        vec![(0, 9.0), (2, 7.0), (3, 6.0)]
    );
    assert_eq!(report.data.skipped_lines, 3);
}
