//! Latency distribution plots: latency against percentile, HdrHistogram style (the x axis
//! spreads the tail: 90%, 99%, 99.9%, ... are equally spaced), all series of a scenario on one
//! plot, written as SVG next to the JSON.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::LatencyPlot;

/// The percentile points drawn, as 1 / (1 - q): 1 is the median side, 10^4 is p99.99.
fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut q = 0.0f64;
    while q < 0.9999 {
        let v = h.value_at_quantile(q).max(1) as f64;
        out.push((1.0 / (1.0 - q), v));
        // Ten steps per decade of the tail.
        q = 1.0 - (1.0 - q) * 10f64.powf(-0.1);
    }
    out.push((1.0e4, h.max().max(1) as f64));
    out
}

/// Writes `plot` as `<dir>/<stem>-<plot.name>.svg`; returns the path.
pub fn write(dir: &Path, stem: &str, plot: &LatencyPlot) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("{stem}-{}.svg", plot.name));
    let series: Vec<(&str, Vec<(f64, f64)>)> =
        plot.series.iter().filter(|(_, h)| !h.is_empty()).map(|(l, h)| (l.as_str(), points(h))).collect();
    let y_max = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y)).fold(10.0f64, f64::max) * 2.0;
    let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0f64..1.0e4).log_scale(), (1.0f64..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs, from intended send time)")
        .x_label_formatter(&|x| {
            let q = 100.0 * (1.0 - 1.0 / x);
            if q < 1.0 {
                "0%".into()
            } else {
                format!("{q:.2}%")
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    drop(chart);
    drop(root);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let mut fast = Histogram::<u64>::new(3).unwrap();
        let mut slow = Histogram::<u64>::new(3).unwrap();
        for i in 1..1000 {
            fast.record(i).unwrap();
            slow.record(i * 100).unwrap();
        }
        let plot = LatencyPlot {
            name: "hol".into(),
            title: "test".into(),
            series: vec![("log".into(), fast), ("queue".into(), slow)],
        };
        let path = write(dir.path(), "run", &plot).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("log") && svg.contains("queue"));
        assert!(svg.matches("<polyline").count() >= 2, "one line per series");
    }
}

/// Writes a bar chart of the throughput rows (those with a reference): the system's MB/s next to
/// its reference's, as `<dir>/<stem>-throughput.svg`. `None` if no row has a reference.
pub fn write_throughput(
    dir: &Path,
    stem: &str,
    rows: &[crate::report::Row],
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let bars: Vec<(&str, f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.bytes_per_s? / 1e6, r.reference_bytes_per_s? / 1e6)))
        .collect();
    if bars.is_empty() {
        return Ok(None);
    }
    let path = dir.join(format!("{stem}-throughput.svg"));
    let y_max = bars.iter().map(|&(_, a, b)| a.max(b)).fold(1.0f64, f64::max) * 1.15;
    let height = 120 + 70 * bars.len() as u32;
    let root = SVGBackend::new(&path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput against the same-run reference (MB/s)", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0f64..y_max, 0.0f64..n as f64 + 0.8)?;
    chart.configure_mesh().disable_y_mesh().disable_y_axis().x_desc("MB/s").draw()?;
    for (i, &(name, value, reference)) in bars.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        // The row's name above its pair of bars.
        chart.draw_series([Text::new(name.to_string(), (y_max * 0.005, y + 1.05), ("sans-serif", 14))])?;
        chart.draw_series([Rectangle::new([(0.0, y + 0.52), (value, y + 0.88)], BLUE.filled())])?;
        chart.draw_series([Rectangle::new(
            [(0.0, y + 0.12), (reference, y + 0.48)],
            RGBColor(160, 160, 160).filled(),
        )])?;
    }
    chart
        .draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], BLUE.filled())])?
        .label("Spate")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BLUE.filled()));
    chart
        .draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], RGBColor(160, 160, 160).filled())])?
        .label("reference (pwrite / pread)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], RGBColor(160, 160, 160).filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    drop(chart);
    drop(root);
    Ok(Some(path))
}

#[cfg(test)]
mod throughput_tests {
    use super::*;
    use crate::report::Row;

    #[test]
    fn draws_one_pair_of_bars_per_throughput_row() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            Row::named("produce never").with_throughput(10, 2_000_000_000, 1.0, Some(1_800_000_000.0)),
            Row::named("latency").with_throughput(10, 100, 1.0, None),
        ];
        let path = write_throughput(dir.path(), "run", &rows).unwrap().unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.contains("produce never") && !svg.contains(">latency<"));
        assert!(write_throughput(dir.path(), "none", &rows[1..]).unwrap().is_none());
    }
}
