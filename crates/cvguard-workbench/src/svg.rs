//! Charts as inline SVG, written by hand: three kinds (a histogram on a log scale, a step
//! curve, bars per day) need a few dozen lines each, no dependency, and no font or script
//! (docs/ARCHITECTURE.md says why not `plotters`).

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 18.0;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn open(title: &str) -> String {
    format!(
        r##"<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img"><title>{}</title><rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>"##,
        esc(title)
    )
}

fn axes(s: &mut String, x_label: &str, y_max: f64) {
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y0}" stroke="#333"/><line x1="{LEFT}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/><text x="{LEFT}" y="{ty}" font-size="11" fill="#333">{y_max}</text><text x="{xl}" y="{yl}" font-size="11" fill="#333" text-anchor="end">{}</text>"##,
        esc(x_label),
        y0 = H - BOTTOM,
        x1 = W - 8.0,
        ty = TOP - 4.0,
        xl = W - 8.0,
        yl = H - 6.0,
    );
}

/// A vertical marker at `x` with a label.
fn marker(s: &mut String, x: f64, label: &str, color: &str, dy: f64) {
    let _ = write!(
        s,
        r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{y0}" stroke="{color}" stroke-width="2" stroke-dasharray="5 3"/><text x="{tx:.1}" y="{ty}" font-size="11" fill="{color}">{}</text>"#,
        esc(label),
        y0 = H - BOTTOM,
        tx = x + 3.0,
        ty = TOP + 10.0 + dy,
    );
}

/// Peaks in bins of powers of two (1, 2-3, 4-7, ...), with thresholds drawn as lines.
pub fn peak_histogram(title: &str, peaks: &[u64], thresholds: &[(u64, &str, &str)]) -> String {
    let top = peaks
        .iter()
        .copied()
        .chain(thresholds.iter().map(|t| t.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let bins = (64 - top.leading_zeros()) as usize + 1;
    let mut counts = vec![0u64; bins];
    for p in peaks {
        counts[(64 - p.leading_zeros()) as usize] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let plot_w = W - LEFT - 10.0;
    let bw = plot_w / bins as f64;
    let x_of = |v: u64| LEFT + bw * ((v.max(1) as f64).log2() + 1.0).min(bins as f64);
    let mut s = open(title);
    for (i, c) in counts.iter().enumerate() {
        if *c == 0 {
            continue;
        }
        let h = (H - TOP - BOTTOM) * (*c as f64 / y_max).max(0.02);
        let _ = write!(
            s,
            r##"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#7a9cc6"><title>{} keys with a peak of {}..{}</title></rect>"##,
            LEFT + bw * i as f64 + 1.0,
            H - BOTTOM - h,
            bw - 2.0,
            c,
            if i == 0 { 0 } else { 1u64 << (i - 1) },
            if i == 0 { 0 } else { (1u64 << i) - 1 },
        );
    }
    for (i, (v, label, color)) in thresholds.iter().enumerate() {
        marker(&mut s, x_of(*v), &format!("{label} {v}"), color, 13.0 * i as f64);
    }
    axes(&mut s, &format!("peak value (log2 bins), max {top}"), y_max);
    s.push_str("</svg>");
    s
}

/// A step curve of `(epoch ms, value)` with a threshold line and the decision marked.
pub fn step_curve(title: &str, points: &[(i64, u64)], threshold: u64, decision: (i64, u64)) -> String {
    let mut s = open(title);
    let (t0, t1) = points
        .iter()
        .map(|p| p.0)
        .chain([decision.0])
        .fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    let span = (t1 - t0).max(1) as f64;
    let y_max = points
        .iter()
        .map(|p| p.1)
        .chain([threshold, decision.1])
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: i64| LEFT + (W - LEFT - 10.0) * (t - t0) as f64 / span;
    let y = |v: u64| H - BOTTOM - (H - TOP - BOTTOM) * v as f64 / y_max;
    let mut path = String::new();
    for (i, (t, v)) in points.iter().enumerate() {
        if i == 0 {
            let _ = write!(path, "M{:.1},{:.1}", x(*t), y(0));
        } else {
            let _ = write!(path, " H{:.1}", x(*t));
        }
        let _ = write!(path, " V{:.1}", y(*v));
    }
    let _ = write!(
        s,
        r##"<path d="{path}" fill="none" stroke="#1f5fa8" stroke-width="2"/><line x1="{LEFT}" y1="{ty:.1}" x2="{x2}" y2="{ty:.1}" stroke="#c0392b" stroke-dasharray="6 3"/><text x="{tx}" y="{tly:.1}" font-size="11" fill="#c0392b">threshold {threshold}</text><circle cx="{dx:.1}" cy="{dy:.1}" r="5" fill="#c0392b"><title>decided at {decision_v}</title></circle>"##,
        ty = y(threshold),
        x2 = W - 10.0,
        tx = LEFT + 4.0,
        tly = y(threshold) - 4.0,
        dx = x(decision.0),
        dy = y(decision.1),
        decision_v = decision.1,
    );
    axes(&mut s, "event time; distinct CVs", y_max);
    s.push_str("</svg>");
    s
}

/// Bars per day.
pub fn per_day(title: &str, days: &[(String, u64)]) -> String {
    let mut s = open(title);
    let y_max = days.iter().map(|d| d.1).max().unwrap_or(1).max(1) as f64;
    let n = days.len().max(1) as f64;
    let bw = (W - LEFT - 10.0) / n;
    for (i, (day, c)) in days.iter().enumerate() {
        let h = (H - TOP - BOTTOM) * (*c as f64 / y_max);
        let _ = write!(
            s,
            r##"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#d08b3c"><title>{} alerts on {}</title></rect>"##,
            LEFT + bw * i as f64 + 1.0,
            H - BOTTOM - h,
            (bw - 2.0).max(1.0),
            c,
            esc(day)
        );
    }
    let first = days.first().map_or("", |d| d.0.as_str());
    let last = days.last().map_or("", |d| d.0.as_str());
    axes(&mut s, &format!("alerts per day, {first} .. {last}"), y_max);
    s.push_str("</svg>");
    s
}
