//! The HTML page: a summary table and the charts, no scripts, no outside
//! resources (the charts are files beside the page).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::parse::Collected;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_f(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "inf".to_string()
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(i) => i.to_string(),
            None => n.as_f64().map(fmt_f).unwrap_or_default(),
        },
        Some(Value::String(s)) => esc(s),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => esc(&other.to_string()),
    }
}

/// A hotkey shortened to its first 10 characters, the whole address on hover.
fn short_hotkey(v: Option<&Value>) -> String {
    match v.and_then(Value::as_str) {
        Some(h) if h.chars().count() > 12 => {
            let head: String = h.chars().take(10).collect();
            format!("<span title=\"{}\">{}…</span>", esc(h), esc(&head))
        }
        _ => cell(v),
    }
}

/// The page for `data`, with `charts` (paths inside `dir`).
pub(crate) fn page(dir: &Path, data: &Collected, charts: &[PathBuf]) -> String {
    let mut h = String::new();
    let title = format!("pretrain report: {}", dir.display());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}td.t{{text-align:left}}p.note{{color:#555;font-size:90%}}\
         th{{background:#eee}}td:first-child,th:first-child{{text-align:left}}img{{max-width:100%;border:1px solid #ddd;margin:0.5em 0}}</style>\n\
         </head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );

    for run in &data.incentive {
        let title = if run.label == "." {
            "Leaderboard".to_string()
        } else {
            format!("Leaderboard ({})", esc(&run.label))
        };
        let _ = write!(h, "<h2>{title}</h2>\n<table>\n<tr><th>uid</th><th>hotkey</th><th>model</th><th>loss</th><th>win rate</th><th>weight</th><th>incentive</th></tr>\n");
        for r in &run.last {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                cell(r.get("uid")),
                short_hotkey(r.get("hotkey")),
                cell(r.get("model")),
                cell(r.get("loss")),
                cell(r.get("win_rate")),
                cell(r.get("weight")),
                cell(r.get("incentive"))
            );
        }
        h.push_str("</table>\n<p class=\"note\">weight: the validator's weights as last set on the chain (normalised); incentive: what the chain pays each uid from them.</p>\n");
    }
    for v in &data.validators {
        if let Some(last) = v.steps.last() {
            let _ = write!(
                h,
                "<h2>Validator ({}): step {}{}</h2>\n<table>\n<tr><th>uid</th><th>mean loss</th><th>win rate</th><th>weight</th></tr>\n",
                esc(&v.label),
                last.step,
                last.block.map(|b| format!(", block {b}")).unwrap_or_default()
            );
            for (uid, p) in &last.uids {
                let _ = writeln!(
                    h,
                    "<tr><td>{uid}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    fmt_f(p.mean_loss),
                    p.win_rate.map(fmt_f).unwrap_or_else(|| "-".into()),
                    fmt_f(p.weight)
                );
            }
            h.push_str("</table>\n<p class=\"note\">weight: the validator's moving average after this step (alpha 0.9), before it is normalised and set on the chain.</p>\n");
        }
    }
    if !data.training.is_empty() {
        h.push_str("<h2>Training runs</h2>\n<table>\n<tr><th>run</th><th>epochs</th><th>first loss</th><th>best loss</th><th>last loss</th></tr>\n");
        for r in &data.training {
            let first = r.epochs.first().map(|e| e.1).unwrap_or(f64::NAN);
            let last = r.epochs.last().map(|e| e.1).unwrap_or(f64::NAN);
            let best = r.epochs.iter().map(|e| e.1).fold(f64::INFINITY, f64::min);
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.label),
                r.epochs.len(),
                fmt_f(first),
                fmt_f(best),
                fmt_f(last)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Charts</h2>\n");
    for c in charts {
        let name = c.strip_prefix(dir).unwrap_or(c).display().to_string();
        let _ = writeln!(
            h,
            "<p><img src=\"{}\" alt=\"{}\"></p>",
            esc(&name),
            esc(&name)
        );
    }
    h.push_str("</body>\n</html>\n");
    h
}
