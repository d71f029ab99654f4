//! SVG plots: accuracy against ms/token, one point per configuration (the picture of the
//! paper's Tables 3 and 5 for your models), and each ensemble's difference to the better member
//! with its interval.

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

/// Draws the points as a self-contained SVG document.
pub fn svg(title: &str, points: &[Point]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 420.0, 70.0, 170.0, 40.0, 60.0);
    let max_x = points.iter().map(|p| p.ms_per_token).fold(1.0, f64::max) * 1.1;
    let (min_y, max_y) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.accuracy), hi.max(p.accuracy))
    });
    let (min_y, max_y) = if points.is_empty() {
        (0.0, 100.0)
    } else {
        // Whole-number ends 4k apart, so that the five ticks fall on whole numbers.
        let lo = (min_y - 5.0).max(0.0).floor();
        let span = ((max_y + 5.0 - lo) / 4.0).ceil() * 4.0;
        let lo = lo.min((100.0 - span).max(0.0));
        (lo, lo + span)
    };
    let x = |v: f64| left + v / max_x * (w - left - right);
    let y = |v: f64| h - bottom - (v - min_y) / (max_y - min_y).max(1e-9) * (h - top - bottom);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">ms/token</text>\n\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">accuracy (%)</text>\n",
        (w - right + left) / 2.0,
        escape(title),
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (w - right + left) / 2.0,
        h - 20.0,
        (h - bottom + top) / 2.0,
        (h - bottom + top) / 2.0,
    );
    for i in 0..=4 {
        let vx = max_x * i as f64 / 4.0;
        let vy = min_y + (max_y - min_y) * i as f64 / 4.0;
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{vx:.0}</text>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{vy:.0}</text>\n",
            x(vx),
            h - bottom + 18.0,
            left - 6.0,
            y(vy) + 4.0
        ));
    }
    let mut labels: Vec<(f64, f64)> = Vec::new();
    for p in points {
        let (cx, cy) = (x(p.ms_per_token), y(p.accuracy));
        let (lx, mut ly) = (cx + 8.0, cy + 4.0);
        // Labels of nearby points would overlap: move this one down a line until it is clear.
        while labels
            .iter()
            .any(|&(ox, oy)| (ox - lx).abs() < 100.0 && (oy - ly).abs() < 14.0)
        {
            ly += 14.0;
        }
        labels.push((lx, ly));
        out.push_str(&format!(
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\" fill=\"#2a6fdb\"/>\n<text x=\"{lx:.1}\" y=\"{ly:.1}\">{}</text>\n",
            escape(&p.label)
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// Draws each comparison as a row: its 95% interval as a bar, the difference as a dot, a line
/// at zero (no difference), and the McNemar p-value at the right.
pub fn intervals_svg(title: &str, rows: &[Paired]) -> String {
    let (w, left, right, top, row_h) = (640.0, 230.0, 90.0, 50.0, 26.0);
    let h = top + row_h * rows.len().max(1) as f64 + 50.0;
    let reach = rows
        .iter()
        .map(|r| r.low.abs().max(r.high.abs()))
        .fold(1.0, f64::max)
        .ceil();
    let x = |v: f64| left + (v + reach) / (2.0 * reach) * (w - left - right);
    let bottom = h - 40.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n\
         <line x1=\"{:.1}\" y1=\"{top}\" x2=\"{:.1}\" y2=\"{bottom}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n\
         <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">difference to the better member (points, 95% interval)</text>\n",
        w / 2.0,
        escape(title),
        x(0.0),
        x(0.0),
        x(0.0),
        h - 12.0,
    );
    for v in [-reach, -reach / 2.0, 0.0, reach / 2.0, reach] {
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{v:+.0}</text>\n",
            x(v),
            bottom + 16.0
        ));
    }
    for (i, r) in rows.iter().enumerate() {
        let cy = top + row_h * (i as f64 + 0.5);
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{} vs {} ({})</text>\n\
             <line x1=\"{:.1}\" y1=\"{cy:.1}\" x2=\"{:.1}\" y2=\"{cy:.1}\" stroke=\"#2a6fdb\" stroke-width=\"3\"/>\n\
             <circle cx=\"{:.1}\" cy=\"{cy:.1}\" r=\"5\" fill=\"#2a6fdb\"/>\n\
             <text x=\"{}\" y=\"{:.1}\">p = {:.3}</text>\n",
            left - 8.0,
            cy + 4.0,
            escape(&r.config),
            escape(&r.baseline),
            escape(&r.task),
            x(r.low),
            x(r.high),
            x(r.difference),
            w - right + 8.0,
            cy + 4.0,
            r.p_value
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_land_inside_the_axes_and_labels_are_escaped() {
        let points = [
            Point {
                label: "member:0".into(),
                ms_per_token: 20.0,
                accuracy: 30.0,
            },
            Point {
                label: "a<b".into(),
                ms_per_token: 40.0,
                accuracy: 50.0,
            },
        ];
        let doc = svg("t", &points);
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<circle").count(), 2);
        assert!(doc.contains("a&lt;b") && !doc.contains("a<b"));
        let attr = |line: &str, name: &str| -> f64 {
            let value = line.split(&format!("{name}=\"")).nth(1).unwrap();
            value.split('"').next().unwrap().parse().unwrap()
        };
        for c in doc.lines().filter(|l| l.starts_with("<circle")) {
            let (cx, cy) = (attr(c, "cx"), attr(c, "cy"));
            assert!(
                (70.0..=470.0).contains(&cx) && (40.0..=360.0).contains(&cy),
                "{c}"
            );
        }
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
        let doc = intervals_svg(
            "t",
            &[row("average", -4.8, -2.1, 0.2), row("a<b", 1.0, 3.0, 6.0)],
        );
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("a&lt;b") && !doc.contains("a<b"));
        let attr = |line: &str, name: &str| -> f64 {
            let value = line.split(&format!("{name}=\"")).nth(1).unwrap();
            value.split('"').next().unwrap().parse().unwrap()
        };
        let dots: Vec<f64> = doc
            .lines()
            .filter(|l| l.starts_with("<circle"))
            .map(|l| attr(l, "cx"))
            .collect();
        let bars: Vec<(f64, f64)> = doc
            .lines()
            .filter(|l| l.starts_with("<line") && l.contains("stroke-width"))
            .map(|l| (attr(l, "x1"), attr(l, "x2")))
            .collect();
        assert_eq!((dots.len(), bars.len()), (2, 2));
        for (dot, (lo, hi)) in dots.iter().zip(&bars) {
            assert!(lo < dot && dot < hi && (230.0..=550.0).contains(lo) && *hi <= 550.0);
        }
        // One scale: the zero line sits between the first row's interval ends.
        let zero = doc
            .lines()
            .find(|l| l.contains("stroke-dasharray"))
            .unwrap();
        assert!(bars[0].0 < attr(zero, "x1") && attr(zero, "x1") < bars[0].1);
        assert!(doc.contains("p = 0.727"));
    }

    #[test]
    fn labels_of_coinciding_points_do_not_overlap() {
        let point = |label: &str| Point {
            label: label.into(),
            ms_per_token: 40.0,
            accuracy: 23.3,
        };
        let doc = svg("t", &[point("average"), point("average:top5")]);
        let ys: Vec<&str> = doc
            .lines()
            .filter(|l| l.starts_with("<text") && l.contains("average"))
            .map(|l| l.split("y=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(ys.len(), 2);
        assert_ne!(ys[0], ys[1]);
    }
}
