//! Figures drawn in Rust with `plotters` into PNG files: line charts (one or more panels, linear
//! or logarithmic axes) and heat maps. Text uses the DejaVu Sans font Debian ships
//! (`fonts-dejavu-core`, installed by `install-deps.sh`).

use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Where the font is read from.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Why a figure could not be drawn.
#[derive(Debug)]
pub struct PlotError(pub String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "drawing the figure: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

fn plot_error(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

fn ensure_font() -> Result<(), PlotError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_PATH).map_err(|e| {
                format!("{FONT_PATH}: {e} (run `bash qemu-smp/install-deps.sh`: fonts-dejavu-core)")
            })?;
            // The font lives as long as the process: plotters keeps a 'static reference.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font("sans-serif", style, bytes)
                    .map_err(|_| format!("{FONT_PATH} is not a TrueType font"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(PlotError)
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (a second measure of the same system, e.g. p50 beside p99).
    pub dashed: bool,
    /// Palette index: series with the same index share a colour.
    pub colour: usize,
}

impl Series {
    /// A solid series.
    pub fn new(label: impl Into<String>, colour: usize, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points,
            dashed: false,
            colour,
        }
    }

    /// The same, dashed.
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// One panel of a line chart.
#[derive(Clone, Debug)]
pub struct Panel {
    /// The panel's title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(90, 90, 90),
];

fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let values: Vec<f64> = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !low.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        (low / 1.5, high * 1.5)
    } else {
        let low = if low >= 0.0 { 0.0 } else { low * 1.1 };
        (low, if high > low { high * 1.08 } else { low + 1.0 })
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let points = || panel.series.iter().flat_map(|s| s.points.iter().copied());
    let (x0, x1) = range(points().map(|p| p.0), panel.log_x);
    let (y0, y1) = range(points().map(|p| p.1), panel.log_y);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(75);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(panel.x_label.as_str())
                .y_desc(panel.y_label.as_str())
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 16))
                .draw()
                .map_err(plot_error)?;
            for series in &panel.series {
                let colour = PALETTE[series.colour % PALETTE.len()];
                let visible: Vec<(f64, f64)> = series
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| {
                        x.is_finite()
                            && y.is_finite()
                            && (!panel.log_x || *x > 0.0)
                            && (!panel.log_y || *y > 0.0)
                    })
                    .collect();
                let style = ShapeStyle::from(&colour).stroke_width(2);
                if series.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(visible.clone(), 6, 4, style))
                        .map_err(plot_error)?
                        .label(series.label.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(1))
                        });
                } else {
                    chart
                        .draw_series(LineSeries::new(visible.clone(), style))
                        .map_err(plot_error)?
                        .label(series.label.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                        });
                }
                chart
                    .draw_series(visible.iter().map(|p| Circle::new(*p, 3, colour.filled())))
                    .map_err(plot_error)?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(plot_error)?;
        }};
    }
    match (panel.log_x, panel.log_y) {
        (false, false) => body!(builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_error)?),
        (true, false) => body!(builder
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(plot_error)?),
        (false, true) => body!(builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(plot_error)?),
        (true, true) => body!(builder
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(plot_error)?),
    }
    Ok(())
}

/// Draws `panels` under `title` into the PNG at `path`: side by side, or two to a row when
/// there are more than two.
pub fn line_chart(path: &Path, title: &str, panels: &[Panel]) -> Result<(), PlotError> {
    ensure_font()?;
    let count = panels.len().max(1);
    let (rows, columns) = if count > 2 {
        (count.div_ceil(2), 2)
    } else {
        (1, count)
    };
    let width = (760 * columns as u32).max(1000);
    let height = 600 + 520 * (rows as u32 - 1);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(plot_error)?;
    let areas = root.split_evenly((rows, columns));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Draws a heat map of `values[row][column]` (`None`: not measured) with each cell labelled.
pub fn heat_map(
    path: &Path,
    title: &str,
    row_label: &str,
    column_label: &str,
    values: &[Vec<Option<f64>>],
) -> Result<(), PlotError> {
    ensure_font()?;
    let rows = values.len().max(1);
    let columns = values.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let root = BitMapBackend::new(path, (160 + 90 * columns as u32, 160 + 70 * rows as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    // Segmented axes put each core's number under the middle of its cell; row 0 is drawn at
    // the top (the y axis counts rows from the bottom, so row r sits at rows - 1 - r).
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0..columns as i32 - 1).into_segmented(),
            (0..rows as i32 - 1).into_segmented(),
        )
        .map_err(plot_error)?;
    let flip = |row: i32| rows as i32 - 1 - row;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(column_label)
        .y_desc(row_label)
        .x_labels(columns)
        .y_labels(rows)
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(v) if (*v as usize) < columns => format!("{v}"),
            _ => String::new(),
        })
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(v) if (*v as usize) < rows => format!("{}", flip(*v)),
            _ => String::new(),
        })
        .draw()
        .map_err(plot_error)?;
    // Colour on a log scale: one slow outlier must not wash out every other cell.
    let known: Vec<f64> = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| *v > 0.0)
        .collect();
    let low = known.iter().copied().fold(f64::INFINITY, f64::min).ln();
    let high = known.iter().copied().fold(f64::NEG_INFINITY, f64::max).ln();
    for (row, line) in values.iter().enumerate() {
        for (column, value) in line.iter().enumerate() {
            let (r, c) = (flip(row as i32), column as i32);
            let (fill, text) = match value {
                Some(value) => {
                    let t = if high > low {
                        ((value.max(1e-9).ln() - low) / (high - low)).clamp(0.0, 1.0)
                    } else {
                        0.5
                    };
                    // Pale yellow (fast) to dark red (slow).
                    let colour = RGBColor(
                        255 - (t * 90.0) as u8,
                        (245.0 * (1.0 - t)) as u8 + 10,
                        (190.0 * (1.0 - t)) as u8 + 10,
                    );
                    (colour, format!("{value:.0}"))
                }
                None => (RGBColor(200, 200, 200), "-".to_string()),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(c), SegmentValue::Exact(r)),
                        (SegmentValue::Exact(c + 1), SegmentValue::Exact(r + 1)),
                    ],
                    fill.filled(),
                )))
                .map_err(plot_error)?;
            let style = ("sans-serif", 14)
                .into_font()
                .color(if fill.1 < 110 { &WHITE } else { &BLACK })
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (SegmentValue::CenterOf(c), SegmentValue::CenterOf(r)),
                    style,
                )))
                .map_err(plot_error)?;
        }
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_and_heat_maps_are_written() {
        let dir = std::env::temp_dir().join(format!("flotilla-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let panel = Panel {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: true,
            log_y: false,
            series: vec![
                Series::new("a", 0, vec![(1.0, 1.0), (10.0, 5.0), (100.0, 4.0)]),
                Series::new("b", 1, vec![(1.0, 0.0), (10.0, f64::NAN)]).dashed(),
                Series::new("empty", 2, vec![]),
            ],
        };
        let chart = dir.join("chart.png");
        line_chart(
            &chart,
            "two panels",
            &[
                panel.clone(),
                Panel {
                    log_y: true,
                    ..panel.clone()
                },
            ],
        )
        .unwrap();
        // Four panels: two rows of two.
        let grid = dir.join("grid.png");
        line_chart(&grid, "four panels", &vec![panel; 4]).unwrap();
        let size = |path: &Path| {
            let bytes = std::fs::read(path).unwrap();
            let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            (word(16), word(20))
        };
        assert_eq!(size(&chart), (1520, 600));
        assert_eq!(size(&grid), (1520, 1120));
        let map = dir.join("map.png");
        heat_map(
            &map,
            "m",
            "from",
            "to",
            &[vec![None, Some(3.0)], vec![Some(1.0), None]],
        )
        .unwrap();
        for path in [chart, grid, map] {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{}",
                path.display()
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
