//! The report's charts as inline SVG, drawn with plotters: training curves
//! of every head of the sweep and the test split's precision–recall curves.

use super::run_metrics::HeadMetrics;
use super::statistics::PrPoint;
use anyhow::Result;
use plotters::coord::CoordTranslate;
use plotters::prelude::*;

const SIZE: (u32, u32) = (620, 340);
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const SELECTION: RGBColor = RGBColor(255, 127, 14);
const CLASS_COLOURS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(31, 119, 180),
    RGBColor(148, 103, 189),
];

/// Which number of the curves to draw.
#[derive(Clone, Copy)]
pub enum CurveMetric {
    Accuracy,
    CrossEntropy,
}

impl CurveMetric {
    fn name(self) -> &'static str {
        match self {
            CurveMetric::Accuracy => "accuracy",
            CurveMetric::CrossEntropy => "cross-entropy",
        }
    }

    /// (train, selection) values of a head, by evaluation.
    fn values(self, head: &HeadMetrics) -> (&[f32], &[f32]) {
        let c = &head.curve;
        match self {
            CurveMetric::Accuracy => (&c.train_accuracy, &c.selection_accuracy),
            CurveMetric::CrossEntropy => (&c.train_cross_entropy, &c.selection_cross_entropy),
        }
    }
}

/// `metric` over steps: the kept head's training and `selection` curves
/// bold, the other heads' faint, the kept step marked by a vertical line.
pub fn training_curves(
    heads: &[HeadMetrics],
    kept: usize,
    metric: CurveMetric,
    selection: &str,
) -> Result<String> {
    let last_step = heads
        .iter()
        .flat_map(|h| h.curve.steps.last())
        .max()
        .copied()
        .unwrap_or(1);
    let top = match metric {
        CurveMetric::Accuracy => 1.0,
        CurveMetric::CrossEntropy => {
            heads
                .iter()
                .flat_map(|h| {
                    let (t, s) = metric.values(h);
                    t.iter().chain(s)
                })
                .fold(0.1f32, |m, &v| if v.is_finite() { m.max(v) } else { m })
                * 1.05
        }
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0u32..last_step, 0f32..top)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(metric.name())
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let line = |head: &HeadMetrics, values: &[f32]| -> Vec<(u32, f32)> {
            head.curve
                .steps
                .iter()
                .copied()
                .zip(values.iter().copied())
                .collect()
        };
        let others = heads.iter().enumerate().filter(|&(i, _)| i != kept);
        for (_, head) in others {
            let (train, sel) = metric.values(head);
            chart.draw_series(LineSeries::new(line(head, train), TRAIN.mix(0.18)))?;
            chart.draw_series(LineSeries::new(line(head, sel), SELECTION.mix(0.18)))?;
        }
        let head = &heads[kept];
        let (train, sel) = metric.values(head);
        chart
            .draw_series(LineSeries::new(line(head, train), TRAIN.stroke_width(3)))?
            .label("training batch (kept head)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], TRAIN.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(line(head, sel), SELECTION.stroke_width(3)))?
            .label(format!("{selection} (kept head)"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], SELECTION.stroke_width(3)));
        let kept_step = head.kept_step;
        chart
            .draw_series(LineSeries::new(
                [(kept_step, 0.0), (kept_step, top)],
                BLACK.mix(0.6).stroke_width(1),
            ))?
            .label(format!("kept step {kept_step}"))
            .legend(|(x, y)| PathElement::new([(x + 9, y - 6), (x + 9, y + 6)], BLACK));
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present()?;
    }
    Ok(svg)
}

/// One precision–recall curve per class (labelled), recall on x.
pub fn precision_recall(curves: &[(String, Vec<PrPoint>)]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..1.0, 0f64..1.02)?;
        chart
            .configure_mesh()
            .x_desc("recall")
            .y_desc("precision")
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (label, points)) in curves.iter().enumerate() {
            let colour = CLASS_COLOURS[i % CLASS_COLOURS.len()];
            // From (0, first precision): the curve starts at the highest threshold.
            let start = points.first().map(|p| (0.0, p.precision));
            let line = start
                .into_iter()
                .chain(points.iter().map(|p| (p.recall, p.precision)));
            chart
                .draw_series(LineSeries::new(line, colour.stroke_width(3)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(3))
                });
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
        root.present()?;
    }
    Ok(svg)
}

/// The legend of the chart's labelled series, at `position`.
fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}
