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
