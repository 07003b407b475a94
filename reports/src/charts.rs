//! Charts as inline SVG (plotters' SVG backend): no image files, fonts or scripts, so a report
//! is one file that opens offline. Each function returns `None` when there is nothing to draw,
//! and the report says why instead.

use plotters::prelude::*;

use lk_harness::metrics::LatencySummary;

/// Chart size, px.
const SIZE: (u32, u32) = (760, 340);

/// The colour of the `index`th series: Kappa and Lambda get the same colours in every chart.
pub fn colour(index: usize) -> RGBColor {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    COLOURS[index % COLOURS.len()]
}

/// Percentile points of a latency histogram: (1 / (1 - quantile), ms), from the median to the
/// maximum, as HdrHistogram's percentile plots draw them.
pub fn percentile_curve(summary: &LatencySummary) -> Vec<(f64, f64)> {
    let Ok(histogram) = summary.decode() else { return Vec::new() };
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    // Quantiles 1 - 10^(-k/10): 0, 0.206, 0.369, ... 0.99999.
    for step in 0..=50 {
        let quantile = 1.0 - 10f64.powf(-f64::from(step) / 10.0);
        let value_ms = histogram.value_at_quantile(quantile) as f64 / 1000.0;
        points.push((1.0 / (1.0 - quantile).max(1e-5), value_ms.max(0.001)));
    }
    points.push((1e5 * 1.2, (histogram.max() as f64 / 1000.0).max(0.001)));
    points
}

/// Both engines' latency distributions on one log-log chart.
pub fn latency(title: &str, series: &[(String, &LatencySummary)]) -> Option<String> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(label, summary)| (label.clone(), percentile_curve(summary)))
        .filter(|(_, points)| !points.is_empty())
        .collect();
    if curves.is_empty() {
        return None;
    }
    let top = curves.iter().flat_map(|(_, points)| points.iter().map(|point| point.1)).fold(0.0, f64::max) * 1.5;
    let bottom =
        curves.iter().flat_map(|(_, points)| points.iter().map(|point| point.1)).fold(f64::MAX, f64::min) / 1.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((1f64..1.5e5).log_scale(), (bottom.max(0.001)..top.max(0.01)).log_scale())
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency, ms (log)")
            .x_label_formatter(&|x| {
                let percentile = 100.0 * (1.0 - 1.0 / x);
                if *x > 1.1e5 {
                    "max".to_owned()
                } else {
                    format!("{percentile:.3}").trim_end_matches('0').trim_end_matches('.').to_owned()
                }
            })
            .y_label_formatter(&|y| format!("{y}"))
            .draw()
            .ok()?;
        for (index, (label, points)) in curves.iter().enumerate() {
            let colour = colour(index);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .ok()?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present().ok()?;
    }
    Some(svg)
}

/// A line chart of (x, y) series, with labelled vertical markers (faults) at `markers` x.
pub fn lines(
    title: &str,
    x_description: &str,
    y_description: &str,
    series: &[(String, Vec<(f64, f64)>)],
    y_range: Option<(f64, f64)>,
    markers: &[(f64, String)],
) -> Option<String> {
    let series: Vec<&(String, Vec<(f64, f64)>)> = series.iter().filter(|(_, points)| !points.is_empty()).collect();
    if series.is_empty() {
        return None;
    }
    let xs = series.iter().flat_map(|(_, points)| points.iter().map(|point| point.0));
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(low, high), x| (low.min(x), high.max(x)));
    let ys = series.iter().flat_map(|(_, points)| points.iter().map(|point| point.1));
    let (y_min, y_max) = y_range.unwrap_or_else(|| {
        let (low, high) = ys.fold((f64::MAX, f64::MIN), |(low, high), y| (low.min(y), high.max(y)));
        (low.min(0.0), high * 1.1 + f64::EPSILON)
    });
    let x_max = if x_max > x_min { x_max } else { x_min + 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc(x_description)
            .y_desc(y_description)
            .y_label_formatter(&|y| compact(*y))
            .draw()
            .ok()?;
        let grey = RGBColor(120, 120, 120);
        for (x, label) in markers.iter().filter(|(x, _)| (x_min..=x_max).contains(x)) {
            chart.draw_series(DashedLineSeries::new([(*x, y_min), (*x, y_max)], 4, 3, grey.stroke_width(1))).ok()?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*x, y_max - (y_max - y_min) * 0.04),
                    ("sans-serif", 11).into_font().color(&grey),
                )))
                .ok()?;
        }
        for (index, (label, points)) in series.iter().enumerate() {
            let colour = colour(index);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .ok()?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().ok()?;
    }
    Some(svg)
}

/// Draws a chart's legend, the same on every chart.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, position: SeriesLabelPosition) -> Option<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart.configure_series_labels().position(position).border_style(BLACK).background_style(WHITE.mix(0.9)).draw().ok()
}

/// A number in few characters: 1.5M, 250k, 0.95.
fn compact(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if magnitude >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else if magnitude >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// A horizontal bar chart of labelled values.
pub fn bars(title: &str, unit: &str, values: &[(String, f64)]) -> Option<String> {
    if values.is_empty() || values.iter().all(|(_, value)| *value <= 0.0) {
        return None;
    }
    let top = values.iter().map(|(_, value)| *value).fold(0.0, f64::max) * 1.15;
    let height = 60 + 36 * values.len() as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, height)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(160)
            .build_cartesian_2d(0f64..top, 0f64..values.len() as f64)
            .ok()?;
        let labels: Vec<String> = values.iter().map(|(label, _)| label.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .label_style(("sans-serif", 13))
            .x_desc(unit)
            .y_labels(values.len() * 2 + 1)
            .y_label_formatter(&|y| {
                let index = y.floor() as usize;
                if (y - y.floor() - 0.5).abs() < 0.01 {
                    labels.get(index).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .ok()?;
        chart
            .draw_series(values.iter().enumerate().map(|(index, (_, value))| {
                let y = index as f64;
                Rectangle::new([(0.0, y + 0.2), (*value, y + 0.8)], colour(index).filled())
            }))
            .ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

/// One horizontal bar per row, split into segments (one colour per segment name, the same in
/// every row): where each engine's latency goes, stage by stage. `rows` are (label, values in
/// the order of `segments`).
pub fn stacked_bars(title: &str, unit: &str, segments: &[&str], rows: &[(String, Vec<f64>)]) -> Option<String> {
    let totals: Vec<f64> = rows.iter().map(|(_, values)| values.iter().sum()).collect();
    if rows.is_empty() || totals.iter().all(|total| *total <= 0.0) {
        return None;
    }
    let top = totals.iter().copied().fold(0.0, f64::max) * 1.15;
    let height = 90 + 36 * rows.len() as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, height)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(160)
            .build_cartesian_2d(0f64..top, 0f64..rows.len() as f64)
            .ok()?;
        let labels: Vec<String> = rows.iter().map(|(label, _)| label.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .label_style(("sans-serif", 13))
            .x_desc(unit)
            .y_labels(rows.len() * 2 + 1)
            .y_label_formatter(&|y| {
                let index = y.floor() as usize;
                if (y - y.floor() - 0.5).abs() < 0.01 {
                    labels.get(index).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .ok()?;
        for (segment, name) in segments.iter().enumerate() {
            let bars: Vec<Rectangle<(f64, f64)>> = rows
                .iter()
                .enumerate()
                .filter(|(_, (_, values))| values.get(segment).is_some_and(|value| *value > 0.0))
                .map(|(row, (_, values))| {
                    let start: f64 = values[..segment].iter().sum();
                    let y = row as f64;
                    Rectangle::new([(start, y + 0.2), (start + values[segment], y + 0.8)], colour(segment).filled())
                })
                .collect();
            chart
                .draw_series(bars)
                .ok()?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour(segment).filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .draw()
            .ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

/// A named series of labelled points: (x, y, label).
pub type LabelledSeries = (String, Vec<(f64, f64, String)>);

/// Completeness against latency (log scale), one line of labelled points per series: the
/// late-data trade-off of `lk sweep`.
pub fn tradeoff(title: &str, x_desc: &str, series: &[LabelledSeries]) -> Option<String> {
    let series: Vec<&LabelledSeries> = series.iter().filter(|(_, points)| !points.is_empty()).collect();
    if series.is_empty() {
        return None;
    }
    // A linear axis: latencies may be negative (results served before their window ended).
    let xs = series.iter().flat_map(|(_, points)| points.iter().map(|point| point.0));
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(low, high), x| (low.min(x), high.max(x)));
    let pad = ((x_max - x_min) * 0.12).max(x_max.abs().max(x_min.abs()) * 0.05).max(1.0);
    let y_min = series.iter().flat_map(|(_, points)| points.iter().map(|point| point.1)).fold(1.0, f64::min);
    let y_low = (y_min - (1.0 - y_min).max(0.001) * 0.5).max(0.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d(x_min - pad..x_max + pad, y_low..1.0 + (1.0 - y_low) * 0.08)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("completeness")
            .x_label_formatter(&|x| compact(*x))
            .y_label_formatter(&|y| format!("{y:.4}"))
            .draw()
            .ok()?;
        if x_min < 0.0 {
            // Zero: left of it, results were served before their window had ended.
            chart.draw_series(LineSeries::new([(0.0, y_low), (0.0, 1.0)], BLACK.mix(0.4).stroke_width(1))).ok()?;
        }
        for (index, (label, points)) in series.iter().enumerate() {
            let colour = colour(index);
            chart
                .draw_series(LineSeries::new(points.iter().map(|point| (point.0, point.1)), colour.stroke_width(2)))
                .ok()?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            chart.draw_series(points.iter().map(|point| Circle::new((point.0, point.1), 4, colour.filled()))).ok()?;
            chart
                .draw_series(points.iter().map(|point| {
                    Text::new(point.2.clone(), (point.0, point.1), ("sans-serif", 11).into_font().color(&colour))
                }))
                .ok()?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().ok()?;
    }
    Some(svg)
}
