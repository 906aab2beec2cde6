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

    let mut chart = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..rps_max)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("requests/s (per 100 ms)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(|x| e(&x))?;
    for x in &marks {
        chart
            .draw_series(LineSeries::new(
                [(*x, 0.0), (*x, rps_max)],
                RGBColor(0, 160, 0).mix(0.35).stroke_width(1),
            ))
            .map_err(|x| e(&x))?;
    }
    for x in &shutdown {
        chart
            .draw_series(LineSeries::new(
                [(*x, 0.0), (*x, rps_max)],
                BLACK.stroke_width(2),
            ))
            .map_err(|x| e(&x))?;
    }
    chart
        .draw_series(LineSeries::new(rps, BLUE.stroke_width(1)))
        .map_err(|x| e(&x))?
        .label("requests/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;

    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..fail_max)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("time (s); green lines: upgrade signals, black: SIGTERM")
        .y_desc("failures per 100 ms")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(|x| e(&x))?;
    for x in &marks {
        chart
            .draw_series(LineSeries::new(
                [(*x, 0.0), (*x, fail_max)],
                RGBColor(0, 160, 0).mix(0.35).stroke_width(1),
            ))
            .map_err(|x| e(&x))?;
    }
    chart
        .draw_series(LineSeries::new(failed, RED.stroke_width(1)))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
