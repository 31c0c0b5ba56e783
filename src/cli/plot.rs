//! `microbatch bench --plot`: the sweep drawn as SVG (plotters).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use microbatch::BackendKind;
use microbatch::bench::{self, BenchReport, Mode};

/// Throughput (GB/s, log) against N (log), one line per backend and mode, with the ceilings as
/// horizontal lines; below it, throughput against B for the largest N.
pub(crate) fn plot(path: &Path, r: &BenchReport) -> Result<()> {
    let root = SVGBackend::new(path, (960, 1100)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(620);
    let gb = |x: f64| x / 1e9;
    let all_tp: Vec<f64> = r.points.iter().map(|p| gb(p.bytes_per_s.median)).collect();
    let ceilings: Vec<(String, f64)> = [
        Some(("host read ceiling".to_string(), r.ceilings.host_read)),
        r.ceilings
            .gpu_copy
            .map(|c| ("GPU copy ceiling (read)".to_string(), c / 2.0)),
        r.ceilings
            .gpu_upload
            .map(|c| ("GPU upload ceiling".to_string(), c)),
    ]
    .into_iter()
    .flatten()
    .map(|(n, v)| (n, gb(v)))
    .collect();
    let ymax = all_tp
        .iter()
        .chain(ceilings.iter().map(|c| &c.1))
        .fold(1e-3f64, |a, &b| a.max(b))
        * 2.0;
    let ymin = all_tp.iter().fold(ymax, |a, &b| a.min(b)).max(1e-4) / 2.0;
    let nmin = r.points.iter().map(|p| p.n).min().unwrap_or(1).max(1) as f64;
    let nmax = r.points.iter().map(|p| p.n).max().unwrap_or(10).max(2) as f64;
    let series: Vec<(BackendKind, Mode)> = [
        (BackendKind::Cpu, Mode::Streaming),
        (BackendKind::Cpu, Mode::Resident),
        (BackendKind::Gpu, Mode::Streaming),
        (BackendKind::Gpu, Mode::Resident),
    ]
    .into_iter()
    .filter(|(b, m)| r.points.iter().any(|p| p.backend == *b && p.mode == *m))
    .collect();
    let color = |i: usize| Palette99::pick(i).to_rgba();

    let mut chart = ChartBuilder::on(&top)
        .caption("microbatch: throughput against N", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (nmin / 1.5..nmax * 1.5).log_scale(),
            (ymin..ymax).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("elements N (log scale)")
        .y_desc("throughput, GB/s (log scale)")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .draw()?;
    for (i, (b, m)) in series.iter().enumerate() {
        // Best configuration per N for this backend and mode.
        let mut pts: Vec<(f64, f64)> = Vec::new();
        let mut ns: Vec<u64> = r
            .points
            .iter()
            .filter(|p| p.backend == *b && p.mode == *m)
            .map(|p| p.n)
            .collect();
        ns.sort();
        ns.dedup();
        for n in ns {
            let best = r
                .points
                .iter()
                .filter(|p| p.backend == *b && p.mode == *m && p.n == n)
                .map(|p| gb(p.bytes_per_s.median))
                .fold(0.0, f64::max);
            pts.push((n as f64, best));
        }
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(format!("{b} {m}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 4, c.filled())))?;
    }
    for (j, (name, v)) in ceilings.iter().enumerate() {
        let c = color(series.len() + j);
        let v = *v;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(nmin / 1.5, v), (nmax * 1.5, v)],
                8,
                6,
                c.stroke_width(1),
            ))?
            .label(format!("{name} ({v:.2} GB/s)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    // Throughput against B (streaming, largest N).
    let max_n = nmax as u64;
    let by_b: Vec<&bench::BenchPoint> = r
        .points
        .iter()
        .filter(|p| p.mode == Mode::Streaming && p.n == max_n)
        .collect();
    let bmin = by_b.iter().map(|p| p.batch_size).min().unwrap_or(1).max(1) as f64;
    let bmax = by_b.iter().map(|p| p.batch_size).max().unwrap_or(2).max(2) as f64;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            format!("streaming throughput against batch size B (N = {max_n})"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (bmin / 1.5..bmax * 1.5).log_scale(),
            (ymin..ymax).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("batch size B, elements (log scale)")
        .y_desc("throughput, GB/s (log scale)")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .draw()?;
    for (i, (b, _)) in series
        .iter()
        .enumerate()
        .filter(|(_, (_, m))| *m == Mode::Streaming)
    {
        // Best P per batch size.
        let mut pts: Vec<(f64, f64)> = Vec::new();
        let mut sizes: Vec<usize> = by_b
            .iter()
            .filter(|p| p.backend == *b)
            .map(|p| p.batch_size)
            .collect();
        sizes.sort();
        sizes.dedup();
        for size in sizes {
            let best = by_b
                .iter()
                .filter(|p| p.backend == *b && p.batch_size == size)
                .map(|p| gb(p.bytes_per_s.median))
                .fold(0.0, f64::max);
            pts.push((size as f64, best));
        }
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(format!("{b} streaming"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Most charts one `--histogram-plot` file stacks.
pub(crate) const MAX_HISTOGRAM_CHARTS: usize = 64;

/// Draws histograms as SVG bar charts to `path`, one under the other (at most
/// [`MAX_HISTOGRAM_CHARTS`]), each captioned with its row's name where it has one, its count,
/// its bins, the relative error at the edges and the values outside (NaN, ±inf).
pub(crate) fn histograms(
    path: &Path,
    charts: &[(
        Option<String>,
        &microbatch::sketch::Histogram,
        &microbatch::Partial,
    )],
) -> Result<()> {
    let n = charts.len().clamp(1, MAX_HISTOGRAM_CHARTS);
    let root = SVGBackend::new(path, (960, 540 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for ((name, h, p), area) in charts.iter().zip(root.split_evenly((n, 1))) {
        histogram_chart(&area, name.as_deref(), h, p)?;
    }
    root.present()?;
    Ok(())
}

fn histogram_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    name: Option<&str>,
    h: &microbatch::sketch::Histogram,
    p: &microbatch::Partial,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let top = h.counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (lo, hi) = (h.edges[0], *h.edges.last().unwrap_or(&h.edges[0]));
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let caption = format!(
        "{}{} values in {} bins ({:.2} % at edges){}",
        name.map_or("microbatch: ".to_string(), |n| format!("{n}: ")),
        h.counts.iter().sum::<u64>(),
        h.counts.len(),
        h.relative_error * 100.0,
        if p.nan_count + p.pos_inf_count + p.neg_inf_count > 0 {
            format!(
                "; outside: {} NaN, {} ±inf",
                p.nan_count,
                p.pos_inf_count + p.neg_inf_count
            )
        } else {
            String::new()
        }
    );
    let bars = h.counts.iter().enumerate().map(|(i, &c)| {
        Rectangle::new(
            [
                (h.edges[i], 0.0),
                (h.edges[i + 1].max(h.edges[i]), c as f64),
            ],
            BLUE.mix(0.6).filled(),
        )
    });
    match h.scale {
        microbatch::sketch::Scale::Linear => {
            let mut chart = ChartBuilder::on(root)
                .caption(caption, ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d(lo..hi, 0.0..top * 1.05)?;
            chart
                .configure_mesh()
                .x_desc("value")
                .y_desc("count")
                .draw()?;
            chart.draw_series(bars)?;
        }
        microbatch::sketch::Scale::Log => {
            let mut chart = ChartBuilder::on(root)
                .caption(caption, ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d((lo..hi).log_scale(), 0.0..top * 1.05)?;
            chart
                .configure_mesh()
                .x_desc("value (log)")
                .y_desc("count")
                .draw()?;
            chart.draw_series(bars)?;
        }
    }
    Ok(())
}
