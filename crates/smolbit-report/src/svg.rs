//! Small, dependency-free SVG charts: horizontal bars, a labelled scatter plot and line curves.

use std::fmt::Write;

const W: f64 = 640.0;
const FONT: &str = "font-family=\"sans-serif\" font-size=\"12\"";

/// Escape text for SVG/XML.
pub fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1e5 || x.abs() < 1e-2 {
        format!("{x:.2e}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The opening tag, a white background and the centred title of a `W` x `h` chart.
fn header(h: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"22\" {FONT} font-size=\"15\" text-anchor=\"middle\">{}</text>",
        W / 2.0,
        xml(title)
    );
    s
}

/// Horizontal bars, one per `(label, value)`, with the value printed at the end of each bar.
pub fn bars(title: &str, unit: &str, rows: &[(String, f64)]) -> String {
    let left = 190.0;
    let right = 90.0;
    let row_h = 26.0;
    let top = 40.0;
    let h = top + row_h * rows.len() as f64 + 20.0;
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-12);
    let mut s = header(h, title);
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let len = (W - left - right) * (v / max).max(0.0);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" {FONT} text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + 16.0,
            xml(label)
        );
        let _ = writeln!(
            s,
            "<rect x=\"{left}\" y=\"{}\" width=\"{len:.1}\" height=\"{}\" fill=\"#4c72b0\"/>",
            y + 3.0,
            row_h - 6.0
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" {FONT}>{} {}</text>",
            left + len + 6.0,
            y + 16.0,
            fmt_num(*v),
            xml(unit)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A scatter plot of labelled points; `log_y` plots the y axis on a log10 scale.
pub fn scatter(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(String, f64, f64)],
    log_y: bool,
) -> String {
    let (h, l, r, t, b) = (380.0, 70.0, 30.0, 40.0, 50.0);
    let ty = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
    let xs: Vec<f64> = points.iter().map(|p| p.1).collect();
    let ys: Vec<f64> = points.iter().map(|p| ty(p.2)).collect();
    let span = |v: &[f64], zero: bool| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lo = if zero { lo.min(0.0) } else { lo };
        if !lo.is_finite() || !hi.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-9 {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = (hi - lo) * 0.08;
            (if zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
        }
    };
    let (x0, x1) = span(&xs, true);
    let (y0, y1) = span(&ys, !log_y);
    let px = |x: f64| l + (W - l - r) * (x - x0) / (x1 - x0);
    let py = |y: f64| h - b - (h - t - b) * (y - y0) / (y1 - y0);
    let mut s = frame(
        (h, l, r, t, b),
        title,
        (x0, x1, y0, y1),
        px,
        py,
        x_label,
        y_label,
        log_y,
    );
    for (label, x, y) in points {
        let (cx, cy) = (px(*x), py(ty(*y)));
        let _ = writeln!(
            s,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\" fill=\"#dd8452\"/>"
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" {FONT}>{}</text>",
            cx + 8.0,
            cy - 6.0,
            xml(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One polyline per `(label, points)` series, labelled at its last point; `log_y` plots the y
/// axis on a log10 scale.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> String {
    let (h, l, r, t, b) = (380.0, 70.0, 150.0, 40.0, 50.0);
    let ty = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    let fold =
        |f: fn(f64, f64) -> f64, init: f64, v: &mut dyn Iterator<Item = f64>| v.fold(init, f);
    let (x0, x1) = (0f64, fold(f64::max, 1.0, &mut all.iter().map(|p| p.0)));
    let (mut y0, mut y1) = (
        fold(f64::min, f64::INFINITY, &mut all.iter().map(|p| ty(p.1))),
        fold(
            f64::max,
            f64::NEG_INFINITY,
            &mut all.iter().map(|p| ty(p.1)),
        ),
    );
    if !y0.is_finite() || !y1.is_finite() {
        (y0, y1) = (0.0, 1.0);
    } else if y1 - y0 < 1e-9 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let px = |x: f64| l + (W - l - r) * (x - x0) / (x1 - x0).max(1e-12);
    let py = |y: f64| h - b - (h - t - b) * (y - y0) / (y1 - y0);
    let mut s = frame(
        (h, l, r, t, b),
        title,
        (x0, x1, y0, y1),
        px,
        py,
        x_label,
        y_label,
        log_y,
    );
    let colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"];
    for (i, (label, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let d: Vec<String> = pts
            .iter()
            .enumerate()
            .map(|(j, p)| {
                format!(
                    "{}{:.1} {:.1}",
                    if j == 0 { "M" } else { "L" },
                    px(p.0),
                    py(ty(p.1))
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "<path d=\"{}\" stroke=\"{c}\" stroke-width=\"2\" fill=\"none\"/>",
            d.join(" ")
        );
        if let Some(p) = pts.last() {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" {FONT} fill=\"{c}\">{} ({})</text>",
                px(p.0) + 6.0,
                py(ty(p.1)) + 4.0,
                xml(label),
                fmt_num(p.1)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A plot area's frame: `header`, the axes with five labelled ticks each, grid lines and the
/// axis labels. `px`/`py` map data to pixels; the y ticks are printed as `10^y` with `log_y`.
#[allow(clippy::too_many_arguments)]
fn frame(
    (h, l, r, t, b): (f64, f64, f64, f64, f64),
    title: &str,
    (x0, x1, y0, y1): (f64, f64, f64, f64),
    px: impl Fn(f64) -> f64,
    py: impl Fn(f64) -> f64,
    x_label: &str,
    y_label: &str,
    log_y: bool,
) -> String {
    let mut s = header(h, title);
    // Axes with 5 ticks each.
    let _ = writeln!(
        s,
        "<path d=\"M{l} {t} V{} H{}\" stroke=\"black\" fill=\"none\"/>",
        h - b,
        W - r
    );
    for k in 0..=4 {
        let fx = x0 + (x1 - x0) * k as f64 / 4.0;
        let fy = y0 + (y1 - y0) * k as f64 / 4.0;
        let ylab = if log_y { 10f64.powf(fy) } else { fy };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" {FONT} text-anchor=\"middle\">{}</text>",
            px(fx),
            h - b + 18.0,
            fmt_num(fx)
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" {FONT} text-anchor=\"end\">{}</text>",
            l - 6.0,
            py(fy) + 4.0,
            fmt_num(ylab)
        );
        let _ = writeln!(
            s,
            "<path d=\"M{l} {:.1} H{}\" stroke=\"#ddd\"/>",
            py(fy),
            W - r
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" {FONT} text-anchor=\"middle\">{}</text>",
        (l + W - r) / 2.0,
        h - 12.0,
        xml(x_label)
    );
    let _ = writeln!(
        s,
        "<text transform=\"translate(16 {}) rotate(-90)\" {FONT} text-anchor=\"middle\">{}{}</text>",
        (t + h - b) / 2.0,
        xml(y_label),
        if log_y { " (log scale)" } else { "" }
    );
    s
}
