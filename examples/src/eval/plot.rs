//! An SVG scatter plot of accuracy against ms/token, one point per configuration: the picture of
//! the paper's Tables 3 and 5 for your models.

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
