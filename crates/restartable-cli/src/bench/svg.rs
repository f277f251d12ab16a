//! The `--svg` chart: ns/op against threads, one line per implementation (plotters, SVG backend
//! only; text is measured with plotters' built-in estimate, so no font files are needed).

use std::path::Path;

use plotters::prelude::*;

use super::report::Table;

/// Render `table` as an SVG document.
pub fn render(table: &Table) -> Result<String, String> {
    let points: Vec<(&str, Vec<(f64, f64)>)> = table
        .rows
        .iter()
        .map(|r| (r.name, r.cells.iter().map(|c| (c.threads as f64, c.median.ns_per_op())).collect()))
        .collect();
    let all = points.iter().flat_map(|(_, p)| p.iter().copied());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, 0.0f64);
    for (x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() || y_min <= 0.0 {
        y_min = 0.1;
    }
    let y_max = y_max.max(y_min * 2.0);
    let x_min = table.threads.iter().copied().min().unwrap_or(1) as f64;
    let x_max = x_max.max(x_min * 2.0);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        // The legend gets its own panel on the right, so it never hides a line.
        let (plot, legend) = root.split_horizontally(800);
        let title = format!(
            "restartable bench, {}: ns/op per thread ({}, {} cores)",
            table.suite, table.machine.cpu_model, table.machine.cores
        );
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_min * 0.9..x_max * 1.1).log_scale(), (y_min * 0.7..y_max * 1.4).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("threads")
            .y_desc("ns/op per thread (log)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| if *y >= 1.0 { format!("{y:.0}") } else { format!("{y:.2}") })
            .draw()
            .map_err(err)?;
        for (i, (name, pts)) in points.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2))).map_err(err)?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
            let y = 60 + 24 * i as i32;
            legend.draw(&PathElement::new(vec![(8, y), (38, y)], color.stroke_width(3))).map_err(err)?;
            legend.draw(&Text::new(name.to_string(), (46, y - 7), ("sans-serif", 14))).map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Write the chart of `table` to `path`.
pub fn write(table: &Table, path: &Path) -> Result<(), String> {
    let doc = render(table)?;
    std::fs::write(path, doc).map_err(|e| format!("cannot write the SVG file {}: {e}", path.display()))
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing the chart: {e}")
}
