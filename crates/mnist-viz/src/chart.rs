//! One figure of four panels against the epoch: loss (train dashed, test solid), test top-1
//! accuracy, learning rate and training throughput, for one run or several overlaid (one
//! colour each). Rendered to PNG (plotters' bitmap backend, encoded with `png`) or SVG, in
//! memory, so callers can write the file atomically.

use crate::font::{self, FAMILY};
use crate::metrics::EpochPoint;
use crate::summary::thousands;
use crate::VizError;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (1280, 960);

/// Colours of successive runs (Tableau 10).
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One run to draw.
#[derive(Clone, Debug)]
pub struct Series<'a> {
    /// Legend text (shown when there are several runs).
    pub label: String,
    /// Its epochs, in order.
    pub epochs: &'a [EpochPoint],
}

/// Picture formats, chosen by the output file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Portable Network Graphics (a bitmap).
    Png,
    /// Scalable Vector Graphics.
    Svg,
}

impl Format {
    /// The format `path`'s extension names (`.png` or `.svg`, any case).
    pub fn of(path: &Path) -> Result<Format, VizError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(VizError::BadExtension {
                path: path.to_path_buf(),
            }),
        }
    }
}

type Value = fn(&EpochPoint) -> f64;

/// What one panel shows.
struct Panel {
    caption: &'static str,
    y_desc: &'static str,
    /// The solid line (and, for loss, the dashed one).
    solid: Value,
    dashed: Option<Value>,
    /// Whether the y axis starts at zero.
    from_zero: bool,
    /// Upper bound of the y axis, if any (accuracy: 100 %).
    cap: Option<f64>,
    /// Where a legend goes.
    legend: SeriesLabelPosition,
    /// Whether this panel carries the legend of the runs (when there are several).
    runs_legend: bool,
}

const PANELS: [Panel; 4] = [
    Panel {
        caption: "Loss (solid: test, dashed: train)",
        y_desc: "cross-entropy per image",
        solid: |p| p.test_loss,
        dashed: Some(|p| p.train_loss),
        from_zero: true,
        cap: None,
        legend: SeriesLabelPosition::UpperRight,
        runs_legend: false,
    },
    Panel {
        caption: "Test accuracy (top-1)",
        y_desc: "accuracy (%)",
        solid: |p| p.test_top1,
        dashed: None,
        from_zero: false,
        cap: Some(100.0),
        legend: SeriesLabelPosition::LowerRight,
        runs_legend: true,
    },
    Panel {
        caption: "Learning rate (cosine schedule)",
        y_desc: "learning rate",
        solid: |p| p.lr,
        dashed: None,
        from_zero: true,
        cap: None,
        legend: SeriesLabelPosition::UpperRight,
        runs_legend: false,
    },
    Panel {
        caption: "Training throughput (all processes)",
        y_desc: "images per second",
        solid: |p| p.images_per_second,
        dashed: None,
        from_zero: true,
        cap: None,
        legend: SeriesLabelPosition::LowerRight,
        runs_legend: false,
    },
];

/// Finite `(epoch, value)` points of a run.
fn points(epochs: &[EpochPoint], v: Value) -> Vec<(f64, f64)> {
    epochs
        .iter()
        .map(|p| (p.epoch as f64, v(p)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

/// A y range holding every value with a margin; never empty.
fn y_range(values: impl Iterator<Item = f64>, from_zero: bool, cap: Option<f64>) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(hi.abs() * 0.05).max(1e-9);
    if from_zero && lo >= 0.0 {
        lo = 0.0;
        hi = (hi * 1.12).max(1e-9);
    } else {
        lo -= 0.12 * span;
        hi += 0.12 * span;
    }
    if let Some(c) = cap {
        hi = hi.min(c);
        if lo >= hi {
            lo = hi - 1.0;
        }
    }
    (lo, hi)
}

/// A tick label with as many decimals as ticks `span / 5` apart need.
fn tick(v: f64, span: f64) -> String {
    if span >= 1000.0 {
        return thousands(v);
    }
    let decimals = (-(span / 5.0).log10()).ceil().clamp(0.0, 8.0) as usize;
    format!("{v:.decimals$}")
}

/// Draw the figure titled `title` for `runs` on `root`.
pub fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    runs: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let body = root.titled(title, (FAMILY, 26))?;
    let last = runs
        .iter()
        .flat_map(|r| r.epochs.iter().map(|p| p.epoch))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = (0.75, last + 0.25);
    for (area, panel) in body.split_evenly((2, 2)).iter().zip(&PANELS) {
        let values = runs.iter().flat_map(|r| {
            let dashed = panel
                .dashed
                .map(|d| points(r.epochs, d))
                .unwrap_or_default();
            points(r.epochs, panel.solid)
                .into_iter()
                .chain(dashed)
                .map(|(_, y)| y)
        });
        let (lo, hi) = y_range(values, panel.from_zero, panel.cap);
        let mut chart = ChartBuilder::on(area)
            .caption(panel.caption, (FAMILY, 20))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x.0..x.1, lo..hi)?;
        let span = hi - lo;
        let x_label = |v: &f64| {
            if (v - v.round()).abs() < 1e-6 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        };
        let y_label = |v: &f64| tick(*v, span);
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(panel.y_desc)
            .x_labels((last as usize).clamp(2, 12))
            .y_labels(6)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        for (i, run) in runs.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let solid = points(run.epochs, panel.solid);
            let drawn = chart.draw_series(LineSeries::new(solid.clone(), color.stroke_width(2)))?;
            if runs.len() > 1 && panel.runs_legend {
                drawn.label(run.label.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            }
            chart.draw_series(solid.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            if let Some(d) = panel.dashed {
                let dashed = points(run.epochs, d);
                chart.draw_series(DashedLineSeries::new(
                    dashed.clone(),
                    8,
                    5,
                    color.stroke_width(2),
                ))?;
                chart.draw_series(
                    dashed
                        .iter()
                        .map(|&p| Circle::new(p, 3, color.stroke_width(1))),
                )?;
            }
        }
        if panel.dashed.is_some() {
            // A key for the two line styles, in grey.
            let grey = RGBColor(90, 90, 90);
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                .label("test")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2))
                });
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                .label("train")
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (7, 0)], grey.stroke_width(2))
                        + PathElement::new(vec![(12, 0), (19, 0)], grey.stroke_width(2))
                });
        }
        if panel.dashed.is_some() || (runs.len() > 1 && panel.runs_legend) {
            chart
                .configure_series_labels()
                .position(panel.legend.clone())
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .label_font((FAMILY, 14))
                .draw()?;
        }
    }
    root.present()
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> VizError {
    VizError::Draw {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// The figure as the bytes of a file in `format` (`path` only names it in errors).
pub fn render(
    format: Format,
    title: &str,
    runs: &[Series],
    path: &Path,
) -> Result<Vec<u8>, VizError> {
    font::register().map_err(|e| draw_error(path, e))?;
    let (w, h) = SIZE;
    match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                draw(&root, title, runs).map_err(|e| draw_error(path, e))?;
            }
            Ok(svg.into_bytes())
        }
        Format::Png => {
            let mut rgb = vec![0u8; (w * h * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw(&root, title, runs).map_err(|e| draw_error(path, e))?;
            }
            let mut out = Vec::new();
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Best);
            enc.set_filter(png::FilterType::Paeth);
            enc.write_header()
                .and_then(|mut wr| wr.write_image_data(&rgb))
                .map_err(|e| draw_error(path, e))?;
            Ok(out)
        }
    }
}

/// Render the figure for `path`'s extension and write it there atomically.
pub fn write(path: &Path, title: &str, runs: &[Series]) -> Result<(), VizError> {
    let bytes = render(Format::of(path)?, title, runs, path)?;
    mnist_common::atomic_file::write_atomic(path, |f| std::io::Write::write_all(f, &bytes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_ticks() {
        assert_eq!(y_range([2.0, 1.0].into_iter(), true, None).0, 0.0);
        let (lo, hi) = y_range([97.0, 99.0].into_iter(), false, Some(100.0));
        assert!(lo < 97.0 && hi > 99.0 && hi <= 100.0, "{lo} {hi}");
        let (lo, hi) = y_range([100.0].into_iter(), false, Some(100.0));
        assert!(lo < 100.0 && hi == 100.0, "{lo} {hi}");
        assert_eq!(y_range(std::iter::empty(), true, None), (0.0, 1.0));
        assert_eq!(
            y_range([f64::NAN].into_iter().filter(|v| v.is_finite()), true, None),
            (0.0, 1.0)
        );
        assert_eq!(tick(0.004, 0.011), "0.004");
        assert_eq!(tick(97.5, 3.0), "97.5");
        assert_eq!(tick(12000.0, 20000.0), "12,000");
        assert_eq!(Format::of(Path::new("a/b.PNG")).unwrap(), Format::Png);
        assert_eq!(Format::of(Path::new("b.svg")).unwrap(), Format::Svg);
        let e = Format::of(Path::new("out.jpg")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "out.jpg: expected a file name ending in .png or .svg"
        );
    }
}
