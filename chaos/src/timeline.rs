//! The timeline picture: every operation's latency over time (log scale), fault
//! windows shaded and labelled, failed and unknown operations marked. Plain SVG.

use std::fmt::Write;

use crate::history::{History, Outcome};

const W: f64 = 1400.0;
const H: f64 = 520.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 50.0;
/// Latency axis: 100 µs to 10 s.
const LAT_MIN: f64 = 1e2;
const LAT_MAX: f64 = 1e7;

pub fn svg(h: &History, verdict: &str) -> String {
    let end_us =
        h.ops.iter().map(|o| o.complete_us).chain(h.faults.iter().map(|f| f.end_us)).max().unwrap_or(1).max(1) as f64;
    let x = |t: u64| LEFT + (t as f64 / end_us) * (W - LEFT - RIGHT);
    let y = |lat: f64| {
        let l = lat.clamp(LAT_MIN, LAT_MAX).log10();
        let (a, b) = (LAT_MIN.log10(), LAT_MAX.log10());
        H - BOTTOM - (l - a) / (b - a) * (H - TOP - BOTTOM)
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="20" font-size="15">skiff chaos: {} members, seed {}, faults {} — {}</text>
"##,
        h.members,
        h.seed,
        h.faults_enabled.join(","),
        escape(verdict)
    );
    // Fault windows, labels staggered so neighbours do not overlap.
    for (i, f) in h.faults.iter().enumerate() {
        let (x0, x1) = (x(f.start_us), x(f.end_us.max(f.start_us + 50_000)));
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#f4a261" fill-opacity="0.25"><title>{} {}: {}</title></rect>"##,
            x1 - x0,
            H - TOP - BOTTOM,
            f.kind,
            escape(&f.target),
            escape(&f.detail)
        );
        let _ = writeln!(
            s,
            r##"<text x="{x0:.1}" y="{}" font-size="10" fill="#9c4a00">{} {}</text>"##,
            TOP - 6.0 - 12.0 * (i % 2) as f64,
            f.kind,
            escape(&f.target)
        );
    }
    // Axes.
    for p in 2..=7 {
        let v = 10f64.powi(p);
        let label = match p {
            2 => "100µs",
            3 => "1ms",
            4 => "10ms",
            5 => "100ms",
            6 => "1s",
            _ => "10s",
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    let secs = (end_us / 1e6).ceil() as u64;
    let step = (secs / 15).max(1);
    for t in (0..=secs).step_by(step as usize) {
        let xx = x(t * 1_000_000);
        let _ = writeln!(s, r##"<text x="{xx:.1}" y="{}" text-anchor="middle">{t}s</text>"##, H - BOTTOM + 18.0);
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">time since start · latency of each operation (log scale)</text>"##,
        W / 2.0,
        H - 10.0
    );
    // Operations: ok as small dots, failed as orange dots, unknown as red crosses.
    let _ = writeln!(s, r##"<g fill="#2a9d8f" fill-opacity="0.5">"##);
    for o in h.ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        let lat = (o.complete_us - o.invoke_us) as f64;
        let _ = writeln!(s, r##"<circle cx="{:.1}" cy="{:.1}" r="1.5"/>"##, x(o.invoke_us), y(lat));
    }
    let _ = writeln!(s, "</g>\n<g fill=\"#e76f51\">");
    for o in h.ops.iter().filter(|o| o.outcome == Outcome::Failed) {
        let lat = (o.complete_us - o.invoke_us) as f64;
        let _ = writeln!(s, r##"<circle cx="{:.1}" cy="{:.1}" r="2.5"/>"##, x(o.invoke_us), y(lat));
    }
    let _ = writeln!(s, "</g>\n<g stroke=\"#c1121f\" stroke-width=\"1.5\">");
    for o in h.ops.iter().filter(|o| o.outcome == Outcome::Unknown) {
        let (cx, cy) = (x(o.invoke_us), y((o.complete_us - o.invoke_us) as f64));
        let _ = writeln!(
            s,
            r##"<path d="M{:.1},{:.1}L{:.1},{:.1}M{:.1},{:.1}L{:.1},{:.1}"/>"##,
            cx - 3.0,
            cy - 3.0,
            cx + 3.0,
            cy + 3.0,
            cx - 3.0,
            cy + 3.0,
            cx + 3.0,
            cy - 3.0
        );
    }
    let _ = writeln!(s, "</g>");
    // Legend.
    let lx = W - RIGHT - 330.0;
    let _ = writeln!(
        s,
        r##"<g font-size="11"><circle cx="{lx}" cy="34" r="3" fill="#2a9d8f"/><text x="{}" y="38">ok</text><circle cx="{}" cy="34" r="3" fill="#e76f51"/><text x="{}" y="38">failed</text><path d="M{},31L{},37M{},37L{},31" stroke="#c1121f" stroke-width="1.5"/><text x="{}" y="38">unknown</text><rect x="{}" y="28" width="14" height="10" fill="#f4a261" fill-opacity="0.4"/><text x="{}" y="38">fault</text></g>"##,
        lx + 8.0,
        lx + 40.0,
        lx + 48.0,
        lx + 97.0,
        lx + 103.0,
        lx + 97.0,
        lx + 103.0,
        lx + 110.0,
        lx + 170.0,
        lx + 188.0
    );
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
