//! The report's four plots, each drawn once per backend (PNG through plotters' bitmap
//! backend and the `png` encoder, SVG through its SVG backend) with the embedded DejaVu
//! Sans, so no system font or image library is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::super::error::StudyError;

/// DejaVu Sans (bench/assets, Bitstream Vera licence): the only font the plots use.
static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters once per process.
fn register_font() -> Result<(), StudyError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(StudyError::Plot {
            plot: "font".into(),
            message: "the embedded DejaVu Sans did not parse".into(),
        })
    }
}

/// A plot that can draw itself on any plotters backend.
pub trait Plot {
    /// The file stem (`plots/<name>.png`, `.svg`).
    fn name(&self) -> &str;
    /// Pixel size.
    fn size(&self) -> (u32, u32);
    /// Draws onto `root` (already white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Writes `dir/<name>.png` and `dir/<name>.svg`; returns the SVG text for inlining.
pub fn render<P: Plot>(plot: &P, dir: &Path) -> Result<String, StudyError> {
    register_font()?;
    let (w, h) = plot.size();
    let fail = |message: String| StudyError::Plot {
        plot: plot.name().to_string(),
        message,
    };
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        plot.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| fail(e.to_string()))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| fail(e.to_string()))?;
        writer.finish().map_err(|e| fail(e.to_string()))?;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        plot.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    for (ext, bytes) in [("png", png_bytes.as_slice()), ("svg", svg.as_bytes())] {
        let path = dir.join(format!("{}.{ext}", plot.name()));
        std::fs::write(&path, bytes).map_err(|e| StudyError::io(&path, e))?;
    }
    Ok(svg)
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The colour of an deployment (stable across plots) or of the i-th other series.
pub fn series_color(name: &str, i: usize) -> RGBColor {
    match name {
        "instance" => RGBColor(31, 119, 180),
        "serverless" => RGBColor(255, 127, 14),
        "hybrid" => RGBColor(44, 160, 44),
        _ => {
            let palette = [
                RGBColor(214, 39, 40),
                RGBColor(148, 103, 189),
                RGBColor(140, 86, 75),
                RGBColor(227, 119, 194),
                RGBColor(127, 127, 127),
                RGBColor(188, 189, 34),
                RGBColor(23, 190, 207),
                RGBColor(31, 119, 180),
                RGBColor(255, 127, 14),
                RGBColor(44, 160, 44),
            ];
            palette[i % palette.len()]
        }
    }
}

const PART_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Stacked bars: groups of bars (one group per deployment), each bar split into parts.
pub struct StackedBars {
    pub name: String,
    pub title: String,
    pub y_label: String,
    /// Names of the stacked parts, bottom first.
    pub parts: Vec<String>,
    pub groups: Vec<BarGroup>,
}

/// Bars drawn side by side under one name (an deployment).
pub struct BarGroup {
    pub name: String,
    pub bars: Vec<Bar>,
}

/// One stacked bar: its label and one value per part.
pub struct Bar {
    pub label: String,
    pub values: Vec<f64>,
}

impl Plot for StackedBars {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> (u32, u32) {
        let bars: usize = self.groups.iter().map(|g| g.bars.len() + 1).sum();
        ((360 + 48 * bars as u32).clamp(640, 1600), 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        // Slots: each group's bars, then one empty slot as a gap.
        let mut slots: Vec<Option<(usize, usize)>> = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            slots.extend((0..group.bars.len()).map(|b| Some((g, b))));
            slots.push(None);
        }
        slots.pop();
        let n = slots.len().max(1) as i32;
        let top = self
            .groups
            .iter()
            .flat_map(|g| g.bars.iter().map(|b| b.values.iter().sum::<f64>()))
            .fold(0.0, f64::max);
        // Headroom for the group names and the legend above the tallest bar.
        let y_max = if top > 0.0 { top * 1.5 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(72)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..y_max)
            .map_err(text)?;
        let label_of = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| slots.get(i).copied().flatten())
                .map(|(g, b)| self.groups[g].bars[b].label.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(slots.len().max(1))
            .x_label_formatter(&label_of)
            .y_desc(&self.y_label)
            .label_style((FAMILY, 12))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(text)?;
        for (p, part) in self.parts.iter().enumerate() {
            let color = PART_COLORS[p % PART_COLORS.len()];
            let mut rects = Vec::new();
            for (i, slot) in slots.iter().enumerate() {
                let Some((g, b)) = *slot else { continue };
                let values = &self.groups[g].bars[b].values;
                let base: f64 = values.iter().take(p).sum();
                let value = values.get(p).copied().unwrap_or(0.0);
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i as i32), base),
                        (SegmentValue::Exact(i as i32 + 1), base + value),
                    ],
                    color.filled(),
                );
                r.set_margin(0, 0, 6, 6);
                rects.push(r);
            }
            chart
                .draw_series(rects)
                .map_err(text)?
                .label(part.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        // Group names centred above each group.
        let label_style = (FAMILY, 14)
            .into_font()
            .into_text_style(root)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let mut start = 0usize;
        for group in &self.groups {
            let len = group.bars.len();
            let x = if len % 2 == 0 {
                SegmentValue::Exact((start + len / 2) as i32)
            } else {
                SegmentValue::CenterOf((start + len / 2) as i32)
            };
            let group_top = group
                .bars
                .iter()
                .map(|b| b.values.iter().sum::<f64>())
                .fold(0.0, f64::max);
            chart
                .draw_series(std::iter::once(Text::new(
                    group.name.clone(),
                    (x, group_top + y_max * 0.02),
                    label_style.clone(),
                )))
                .map_err(text)?;
            start += len + 1;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .margin(8)
            .label_font((FAMILY, 12))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(text)?;
        Ok(())
    }
}

/// One line of an [`XyPanel`].
pub struct Line {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// One chart of lines.
pub struct XyPanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    /// Legend in the upper left corner (for lines that rise to the right).
    pub legend_left: bool,
    pub lines: Vec<Line>,
}

/// Panels side by side (or in a grid of `columns`).
pub struct Panels {
    pub name: String,
    pub title: String,
    pub columns: usize,
    pub panels: Vec<XyPanel>,
}

impl Plot for Panels {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> (u32, u32) {
        let cols = self.columns.max(1);
        let rows = self.panels.len().div_ceil(cols).max(1);
        (560 * cols as u32, 40 + 400 * rows as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let root = root.titled(&self.title, (FAMILY, 22)).map_err(text)?;
        let cols = self.columns.max(1);
        let rows = self.panels.len().div_ceil(cols).max(1);
        let areas = root.split_evenly((rows, cols));
        for (panel, area) in self.panels.iter().zip(areas.iter()) {
            draw_panel(panel, area)?;
        }
        Ok(())
    }
}

fn bounds(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (0.1, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let lo = lo.min(0.0);
        let span = (hi - lo).max(f64::EPSILON.max(hi.abs() * 1e-6));
        (lo, hi + span * 0.08)
    }
}

/// An axis tick: integers without decimals, small values with two significant digits.
fn tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    if v.abs() >= 1.0 && (v - v.round()).abs() < 1e-9 {
        return format!("{v:.0}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (1 - magnitude).max(0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn draw_panel<DB: DrawingBackend>(
    panel: &XyPanel,
    area: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let (x0, x1) = bounds(
        panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0)),
        panel.log_x,
    );
    let (y0, y1) = bounds(
        panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1)),
        panel.log_y,
    );
    match (panel.log_x, panel.log_y) {
        (false, false) => lines_on(panel, area, x0..x1, y0..y1),
        (true, false) => lines_on(panel, area, (x0..x1).log_scale(), y0..y1),
        (false, true) => lines_on(panel, area, x0..x1, (y0..y1).log_scale()),
        (true, true) => lines_on(panel, area, (x0..x1).log_scale(), (y0..y1).log_scale()),
    }
}

fn lines_on<DB, X, Y>(
    panel: &XyPanel,
    area: &DrawingArea<DB, Shift>,
    x: X,
    y: Y,
) -> Result<(), String>
where
    DB: DrawingBackend,
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style((FAMILY, 11))
        .axis_desc_style((FAMILY, 13))
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(text)?;
    let ok = |p: &&(f64, f64)| {
        p.0.is_finite()
            && p.1.is_finite()
            && (!panel.log_x || p.0 > 0.0)
            && (!panel.log_y || p.1 > 0.0)
    };
    for line in &panel.lines {
        let color = line.color;
        let points: Vec<(f64, f64)> = line.points.iter().filter(ok).copied().collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(text)?
            .label(line.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(text)?;
    }
    if !panel.lines.is_empty() {
        chart
            .configure_series_labels()
            .position(if panel.legend_left {
                SeriesLabelPosition::UpperLeft
            } else {
                SeriesLabelPosition::UpperRight
            })
            .margin(6)
            .label_font((FAMILY, 11))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(text)?;
    }
    Ok(())
}
