//! The CDF of send-to-delivery latency as SVG.

use std::path::Path;

use plotters::prelude::*;

/// Draws the CDF of `sorted` (milliseconds, ascending) to `path`.
pub(crate) fn cdf(
    path: &Path,
    title: &str,
    sorted: &[u64],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max_x = sorted.last().copied().unwrap_or(1).max(1) as f64 * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_x, 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("send-to-delivery latency (ms)")
        .y_desc("fraction of deliveries")
        .draw()
        .map_err(|e| e.to_string())?;
    let n = sorted.len().max(1) as f64;
    chart
        .draw_series(LineSeries::new(
            sorted
                .iter()
                .enumerate()
                .map(|(i, &v)| (v as f64, (i + 1) as f64 / n)),
            &BLUE,
        ))
        .map_err(|e| e.to_string())?;
    // The 500 ms line the sweep is judged by.
    if max_x > 500.0 {
        chart
            .draw_series(LineSeries::new([(500.0, 0.0), (500.0, 1.0)], &RED))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
