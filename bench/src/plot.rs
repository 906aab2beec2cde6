//! The SVG plot of a run: requests/s and failures per 100 ms bucket over time, with the
//! upgrade signals marked.

use std::path::Path;

use plotters::prelude::*;

use crate::load::BUCKET_MS;
use crate::results::ScenarioResult;

/// Draws `r` into `path` (SVG).
pub fn draw(r: &ScenarioResult, path: &Path) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let secs_per_bucket = BUCKET_MS as f64 / 1000.0;
    let x_max = (r.buckets.len() as f64 * secs_per_bucket).max(1.0);
    let rps: Vec<(f64, f64)> = r
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| (i as f64 * secs_per_bucket, b.ok as f64 / secs_per_bucket))
        .collect();
    let failed: Vec<(f64, f64)> = r
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| (i as f64 * secs_per_bucket, b.failed as f64))
        .collect();
    let rps_max = rps.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let fail_max = failed.iter().map(|p| p.1).fold(1.0, f64::max).max(5.0) * 1.1;
    let marks: Vec<f64> = r.upgrades.iter().map(|u| u.signal_ms / 1000.0).collect();
    let shutdown: Vec<f64> = r.shutdown.iter().map(|s| s.signal_ms / 1000.0).collect();

    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let what = match &r.shutdown {
        Some(sd) => format!("SIGTERM at {:.1} s (black line)", sd.signal_ms / 1000.0),
        None => format!(
            "{} upgrades ({} every {} ms)",
            r.upgrades.len(),
            r.signal,
            r.interval_ms
        ),
    };
    let title = format!(
        "{} / {}: {} ok, {} failed, {what}",
        r.scenario, r.server, r.total.ok, r.total.failed
    );
    let root = root.titled(&title, ("sans-serif", 18)).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(380);
    let panel = |y_max, x_desc, y_desc, points, color: RGBColor, label| Panel {
        x_max,
        y_max,
        x_desc,
        y_desc,
        marks: &marks,
        shutdown: &shutdown,
        points,
        color,
        label,
    };
    panel_on(
        &top,
        panel(
            rps_max,
            "time (s)",
            "requests/s (per 100 ms)",
            rps,
            BLUE,
            Some("requests/s"),
        ),
    )
    .map_err(|x| e(&x))?;
    let x_desc = "time (s); green lines: upgrade signals, black: SIGTERM";
    panel_on(
        &bottom,
        panel(fail_max, x_desc, "failures per 100 ms", failed, RED, None),
    )
    .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// One panel: a series over time, with the upgrade signals and the SIGTERM marked.
struct Panel<'a> {
    x_max: f64,
    y_max: f64,
    x_desc: &'a str,
    y_desc: &'a str,
    marks: &'a [f64],
    shutdown: &'a [f64],
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: Option<&'a str>,
}

fn panel_on<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: Panel<'_>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..p.x_max, 0.0..p.y_max)?;
    chart
        .configure_mesh()
        .x_desc(p.x_desc)
        .y_desc(p.y_desc)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    let upgrade_style = RGBColor(0, 160, 0).mix(0.35).stroke_width(1);
    for (xs, style) in [
        (p.marks, upgrade_style),
        (p.shutdown, BLACK.stroke_width(2)),
    ] {
        for x in xs {
            chart.draw_series(LineSeries::new([(*x, 0.0), (*x, p.y_max)], style))?;
        }
    }
    let series = chart.draw_series(LineSeries::new(p.points, p.color.stroke_width(1)))?;
    if let Some(label) = p.label {
        let color = p.color;
        series
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// A named series of measured points, drawn as a line through markers.
pub struct Curve {
    /// Legend.
    pub label: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// Draws `curves` into `path` (SVG) with a logarithmic x axis (x > 0) and a linear y axis from 0.
pub fn draw_curves(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[Curve],
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let log = |x: f64| x.max(1.0).log10();
    let xs = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| log(p.0)));
    let (x_lo, x_hi) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x_lo, x_hi) = if x_lo > x_hi {
        (0.0, 1.0)
    } else {
        (x_lo - 0.15, x_hi + 0.15)
    };
    let y_max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_max)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{:.0}", 10f64.powf(*v)))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(|x| e(&x))?;
    let palette = [BLUE, RED, RGBColor(0, 140, 0), BLACK, MAGENTA];
    for (i, c) in curves.iter().enumerate() {
        let color = palette[i % palette.len()];
        let pts: Vec<(f64, f64)> = c.points.iter().map(|p| (log(p.0), p.1)).collect();
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
