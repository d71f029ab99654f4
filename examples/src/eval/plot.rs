//! Plots with plotters: accuracy against ms/token, one point per configuration (the picture of
//! the paper's Tables 3 and 5 for your models), and each ensemble's difference to the better
//! member with its interval. The file name chooses the format: `.png` a PNG, anything else an
//! SVG. Text is drawn in DejaVu Sans, built into the binary, so no system font is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

use super::paired::Paired;

/// One point: a configuration's name, its mean ms/token and its mean accuracy (percent).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The configuration's name.
    pub label: String,
    /// Mean decode ms/token.
    pub ms_per_token: f64,
    /// Mean accuracy over tasks, in percent.
    pub accuracy: f64,
}

const FONT: &str = "sans-serif";
const ACCENT: RGBColor = RGBColor(0x2a, 0x6f, 0xdb);

/// Draws the points into `path` (SVG, or PNG for a `.png` name).
pub fn plot_points(path: &Path, title: &str, points: &[Point]) -> Result<(), String> {
    render!(path, (640, 420), |root| points_chart(root, title, points))
}

/// Draws each comparison as a row into `path`: its 95% interval as a bar, the difference as a
/// dot, a line at zero (no difference), and the McNemar p-value at the right.
pub fn plot_intervals(path: &Path, title: &str, rows: &[Paired]) -> Result<(), String> {
    let height = 100 + 26 * rows.len().max(1) as u32;
    render!(path, (640, height), |root| intervals_chart(
        root, title, rows
    ))
}

/// Runs a chart function on the backend the file name asks for.
macro_rules! render {
    ($path:expr, $size:expr, $chart:expr) => {{
        fonts()?;
        let failed = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", $path.display());
        let png = $path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        match png {
            true => ($chart)(BitMapBackend::new($path, $size).into_drawing_area())
                .map_err(|e| failed(&e)),
            false => {
                ($chart)(SVGBackend::new($path, $size).into_drawing_area()).map_err(|e| failed(&e))
            }
        }
    }};
}
use render;

/// Registers the built-in font once.
fn fonts() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    ok.then_some(())
        .ok_or_else(|| "the built-in DejaVu Sans font could not be read".to_string())
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn points_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    points: &[Point],
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let max_x = points.iter().map(|p| p.ms_per_token).fold(1.0, f64::max) * 1.1;
    let (lo, hi) = accuracy_range(points);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 16))
        .margin(12)
        .margin_right(170)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_x, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("ms/token")
        .y_desc("accuracy (%)")
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .label_style((FONT, 12))
        .draw()?;
    chart.draw_series(
        points
            .iter()
            .map(|p| Circle::new((p.ms_per_token, p.accuracy), 5, ACCENT.filled())),
    )?;
    // Labels of nearby points would overlap: move one down a line until it is clear.
    let mut placed: Vec<(i32, i32)> = Vec::new();
    for p in points {
        let (x, y) = chart.backend_coord(&(p.ms_per_token, p.accuracy));
        let (lx, mut ly) = (x + 8, y - 6);
        while placed
            .iter()
            .any(|&(ox, oy)| (ox - lx).abs() < 100 && (oy - ly).abs() < 14)
        {
            ly += 14;
        }
        placed.push((lx, ly));
        root.draw(&Text::new(p.label.clone(), (lx, ly), (FONT, 12)))?;
    }
    root.present()
}

/// Whole-number ends 4k apart around the accuracies, so that five ticks fall on whole numbers.
fn accuracy_range(points: &[Point]) -> (f64, f64) {
    if points.is_empty() {
        return (0.0, 100.0);
    }
    let (min, max) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.accuracy), hi.max(p.accuracy))
    });
    let lo = (min - 5.0).max(0.0).floor();
    let span = ((max + 5.0 - lo) / 4.0).ceil() * 4.0;
    let lo = lo.min((100.0 - span).max(0.0));
    (lo, lo + span)
}

fn intervals_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    rows: &[Paired],
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let reach = rows
        .iter()
        .map(|r| r.low.abs().max(r.high.abs()))
        .fold(1.0, f64::max)
        .ceil();
    let n = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 16))
        .margin(12)
        .margin_left(230)
        .margin_right(80)
        .x_label_area_size(40)
        .build_cartesian_2d(-reach..reach, 0.0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_labels(5)
        .x_desc("difference to the better member (points, 95% interval)")
        .label_style((FONT, 12))
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 0.0), (0.0, n)],
        RGBColor(0x88, 0x88, 0x88),
    )))?;
    for (i, r) in rows.iter().enumerate() {
        let y = n - i as f64 - 0.5;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(r.low, y), (r.high, y)],
            ACCENT.stroke_width(3),
        )))?;
        chart.draw_series(std::iter::once(Circle::new(
            (r.difference, y),
            5,
            ACCENT.filled(),
        )))?;
        let (left, cy) = chart.backend_coord(&(-reach, y));
        let (right, _) = chart.backend_coord(&(reach, y));
        let label = format!("{} vs {} ({})", r.config, r.baseline, r.task);
        let end = TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(label, (left - 8, cy), end))?;
        let start = TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(
            format!("p = {:.3}", r.p_value),
            (right + 8, cy),
            start,
        ))?;
    }
    root.present()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gac-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// The value of attribute `name` in an SVG element's line.
    fn attr(line: &str, name: &str) -> f64 {
        let value = line.split(&format!(" {name}=\"")).nth(1).unwrap();
        value.split('"').next().unwrap().parse().unwrap()
    }

    fn point(label: &str, ms_per_token: f64, accuracy: f64) -> Point {
        Point {
            label: label.into(),
            ms_per_token,
            accuracy,
        }
    }

    #[test]
    fn points_land_inside_the_plot_and_labels_are_escaped() {
        let path = scratch("points.svg");
        let points = [point("member:0", 20.0, 30.0), point("a<b", 40.0, 50.0)];
        plot_points(&path, "t", &points).unwrap();
        let doc = std::fs::read_to_string(&path).unwrap();
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("a&lt;b") && !doc.contains(">a<b<"));
        let circles: Vec<(f64, f64)> = doc
            .lines()
            .filter(|l| l.trim_start().starts_with("<circle"))
            .map(|l| (attr(l, "cx"), attr(l, "cy")))
            .collect();
        assert_eq!(circles.len(), 2);
        // More ms/token is further right; more accuracy is higher up.
        assert!(circles[0].0 < circles[1].0 && circles[0].1 > circles[1].1);
        for (cx, cy) in circles {
            assert!((62.0..=470.0).contains(&cx) && (12.0..=380.0).contains(&cy));
        }
    }

    #[test]
    fn a_png_name_gives_a_png_with_the_points_drawn() {
        let path = scratch("points.png");
        plot_points(
            &path,
            "accuracy vs ms/token",
            &[point("average", 30.0, 40.0)],
        )
        .unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (640, 420));
        let accent = image.pixels().filter(|p| p.0 == [0x2a, 0x6f, 0xdb]).count();
        let dark = image
            .pixels()
            .filter(|p| p.0.iter().all(|&c| c < 80))
            .count();
        assert!(accent > 40, "the point: {accent} pixels");
        assert!(dark > 500, "axes and text: {dark} pixels");
        let err = plot_points(Path::new("/no/such/dir/p.png"), "t", &[]).unwrap_err();
        assert!(err.contains("/no/such/dir/p.png"), "{err}");
    }

    #[test]
    fn intervals_are_drawn_around_their_differences_on_one_scale() {
        let row = |config: &str, low: f64, difference: f64, high: f64| Paired {
            config: config.into(),
            baseline: "member:1".into(),
            task: "all".into(),
            n: 100,
            difference,
            low,
            high,
            wins: 3,
            losses: 5,
            p_value: 0.7265625,
        };
        let rows = [row("average", -4.8, -2.1, 0.2), row("a<b", 1.0, 3.0, 6.0)];
        for name in ["intervals.svg", "intervals.png"] {
            plot_intervals(&scratch(name), "t", &rows).unwrap();
        }
        let doc = std::fs::read_to_string(scratch("intervals.svg")).unwrap();
        assert!(doc.contains("a&lt;b vs member:1 (all)") && doc.contains("p = 0.727"));
        let dots: Vec<f64> = doc
            .lines()
            .filter(|l| l.trim_start().starts_with("<circle"))
            .map(|l| attr(l, "cx"))
            .collect();
        // Bars: the wide polylines, as (left, right) x.
        let bars: Vec<(f64, f64)> = doc
            .lines()
            .filter(|l| l.contains("<polyline") && l.contains("stroke-width=\"3\""))
            .map(|l| {
                let points = l
                    .split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                let xs: Vec<f64> = points
                    .split_whitespace()
                    .map(|p| p.split(',').next().unwrap().parse().unwrap())
                    .collect();
                (xs[0], xs[1])
            })
            .collect();
        assert_eq!((dots.len(), bars.len()), (2, 2), "{doc}");
        for (dot, (lo, hi)) in dots.iter().zip(&bars) {
            assert!(lo < dot && dot < hi, "{lo} {dot} {hi}");
        }
        // One scale: the second row's interval lies right of the first row's difference.
        assert!(bars[1].0 > dots[0]);
        let png = image::open(scratch("intervals.png")).unwrap();
        assert_eq!((png.width(), png.height()), (640, 152));
    }

    #[test]
    fn labels_of_coinciding_points_do_not_overlap() {
        let path = scratch("coinciding.svg");
        let points = [
            point("average", 40.0, 23.3),
            point("average:top5", 40.0, 23.3),
        ];
        plot_points(&path, "t", &points).unwrap();
        let doc = std::fs::read_to_string(&path).unwrap();
        // Each `<text ...>` line is followed by its content.
        let lines: Vec<&str> = doc.lines().collect();
        let ys: Vec<f64> = lines
            .windows(2)
            .filter(|w| w[0].starts_with("<text") && w[1].starts_with("average"))
            .map(|w| attr(w[0], "y"))
            .collect();
        assert_eq!(ys.len(), 2, "{doc}");
        assert!((ys[0] - ys[1]).abs() >= 14.0, "{ys:?}");
    }
}
