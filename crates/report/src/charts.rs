//! The PNG line charts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::parse::Collected;
use crate::ReportError;

/// Chart size in pixels.
const SIZE: (u32, u32) = (900, 480);
/// The font family name the charts ask for; registered from the embedded DejaVu Sans.
const FONT: &str = "sans-serif";

/// One named line.
pub(crate) struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font always parses; if it did not, text would be
        // missing from the charts but the lines would still be drawn.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws every chart the data allows into `dir`; returns their paths.
pub(crate) fn draw_all(dir: &Path, data: &Collected) -> Result<Vec<PathBuf>, ReportError> {
    register_font();
    let mut out = Vec::new();
    if !data.training.is_empty() {
        let series = data
            .training
            .iter()
            .map(|r| Series {
                name: r.label.clone(),
                points: r.epochs.iter().map(|&(e, l)| (e as f64, l)).collect(),
            })
            .collect::<Vec<_>>();
        let path = dir.join("training_loss.png");
        line_chart(
            &path,
            "Training loss per epoch",
            "epoch",
            "average loss",
            &series,
        )?;
        out.push(path);
    }
    for (i, v) in data.validators.iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!("_{i}")
        };
        let mut loss: BTreeMap<u16, Vec<(f64, f64)>> = BTreeMap::new();
        let mut weight: BTreeMap<u16, Vec<(f64, f64)>> = BTreeMap::new();
        for s in &v.steps {
            for (uid, p) in &s.uids {
                loss.entry(*uid)
                    .or_default()
                    .push((s.step as f64, p.mean_loss));
                weight
                    .entry(*uid)
                    .or_default()
                    .push((s.step as f64, p.weight));
            }
        }
        let to_series = |m: BTreeMap<u16, Vec<(f64, f64)>>| {
            m.into_iter()
                .map(|(uid, points)| Series {
                    name: format!("uid {uid}"),
                    points,
                })
                .collect::<Vec<_>>()
        };
        let path = dir.join(format!("validator_loss{suffix}.png"));
        line_chart(
            &path,
            "Mean loss per uid over validator steps",
            "step",
            "mean loss",
            &to_series(loss),
        )?;
        out.push(path);
        let path = dir.join(format!("validator_weight{suffix}.png"));
        line_chart(
            &path,
            "Weight per uid over validator steps",
            "step",
            "weight",
            &to_series(weight),
        )?;
        out.push(path);
    }
    for (i, run) in data.incentive.iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!("_{i}")
        };
        let mut per: BTreeMap<u16, Vec<(f64, f64)>> = BTreeMap::new();
        for (t, m) in &run.points {
            for (uid, x) in m {
                per.entry(*uid).or_default().push((*t, *x));
            }
        }
        let series: Vec<Series> = per
            .into_iter()
            .map(|(uid, points)| Series {
                name: format!("uid {uid}"),
                points,
            })
            .collect();
        let path = dir.join(format!("incentive{suffix}.png"));
        line_chart(
            &path,
            "Incentive per uid over time",
            "seconds",
            "incentive",
            &series,
        )?;
        out.push(path);
    }
    Ok(out)
}

/// Draws one line chart; non-finite points (a failed model's +inf loss) are left out.
pub(crate) fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), ReportError> {
    let err = |e: String| ReportError::Draw {
        path: path.to_path_buf(),
        reason: e,
    };
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();
    let all = finite.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let ((x0, x1), (y0, y1)) = axis_ranges((x0, x1), (y0, y1));

    // Drawn beside the target under a random name made with O_EXCL (a
    // planted link at a fixed name would be written through), then renamed:
    // a reader never sees half a PNG.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io_err = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = pretrain_core::fsio::temp_file_in(dir, ".png", pretrain_core::fsio::SHARED_MODE)
        .map_err(io_err)?;
    draw(
        tmp.path(),
        title,
        x_label,
        y_label,
        series,
        &finite,
        (x0, x1, y0, y1),
    )
    .map_err(err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// Largest magnitude drawn: beyond it an axis's padded range, or its width,
/// overflows to infinity and the chart library never finishes its ticks.
const AXIS_LIMIT: f64 = 1e300;

/// Axis ranges of finite data, clamped so that every width and padding is
/// finite: x widened to at least 1 when flat, y padded by 8 %.
fn axis_ranges((x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> ((f64, f64), (f64, f64)) {
    let clamp = |v: f64| v.clamp(-AXIS_LIMIT, AXIS_LIMIT);
    let (x0, mut x1, y0, y1) = (clamp(x0), clamp(x1), clamp(y0), clamp(y1));
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    ((x0, x1), (y0 - pad, y1 + pad))
}

#[allow(clippy::type_complexity)]
fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    finite: &[Vec<(f64, f64)>],
    (x0, x1, y0, y1): (f64, f64, f64, f64),
) -> Result<(), String> {
    let err = |e: String| e;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(e.to_string()))?;
    // Epochs and steps are whole numbers: label only whole ticks.
    let whole = finite.iter().flatten().all(|(x, _)| x.fract() == 0.0);
    let fmt_x = move |x: &f64| {
        if !whole {
            format!("{x:.1}")
        } else if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_label_formatter(&fmt_x)
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (s, pts)) in series.iter().zip(finite).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
