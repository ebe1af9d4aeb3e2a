//! The benchmark's figure as SVG text: objects Ready over time against the floor curve, and
//! each cloud's requests spent against its budget. Hand-written because three line charts
//! need a few dozen lines of SVG, where a plotting crate would add a font stack and a tree of
//! dependencies for the same output.

use std::fmt::Write;

use super::floor::{Floor, cloudflare_allowed, hetzner_allowed};
use super::progress::Sample;

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 210.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 36.0;

/// A line: its legend, colour, dash pattern and points (real-world seconds, value).
struct Series {
    label: &'static str,
    colour: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

struct Panel {
    title: String,
    series: Vec<Series>,
}

fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude)
}

fn draw_panel(svg: &mut String, panel: &Panel, top: f64, t_max: f64) {
    let y_max = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.05;
    let (w, h) = (WIDTH - LEFT - RIGHT, PANEL_HEIGHT - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / t_max * w;
    let y = |v: f64| top + TOP + h - v / y_max * h;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 20.0,
        panel.title
    );
    let _ =
        writeln!(svg, r##"<rect x="{LEFT}" y="{}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##, top + TOP);
    let x_step = nice_step(t_max / 60.0) * 60.0;
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" font-size="11" text-anchor="middle">{4}</text>"##,
            x(t),
            top + TOP,
            top + TOP + h,
            top + TOP + h + 14.0,
            format_minutes(t)
        );
        t += x_step;
    }
    let y_step = nice_step(y_max);
    let mut v = 0.0;
    while v <= y_max {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{x2:.1}" y1="{yv:.1}" y2="{yv:.1}" stroke="#eee"/><text x="{tx:.1}" y="{ty:.1}" font-size="11" text-anchor="end">{v}</text>"##,
            x2 = LEFT + w,
            yv = y(v),
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
        );
        v += y_step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">minutes (real-world time)</text>"#,
        LEFT + w / 2.0,
        top + PANEL_HEIGHT - 6.0
    );
    for (i, s) in panel.series.iter().enumerate() {
        let points: Vec<String> =
            s.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(t.min(t_max)), y(*v))).collect();
        let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.colour,
            points.join(" ")
        );
        let lx = LEFT + 10.0 + 190.0 * i as f64;
        let ly = top + TOP + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11">{}</text>"#,
            lx + 18.0,
            s.colour,
            lx + 22.0,
            ly + 4.0,
            s.label
        );
    }
}

fn format_minutes(t: f64) -> String {
    let m = t / 60.0;
    if (m - m.round()).abs() < 1e-6 { format!("{}", m.round()) } else { format!("{m:.1}") }
}

/// Steps of `t_max / 200` for a curve computed from the floor model.
fn curve(t_max: f64, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    (0..=400).map(|i| t_max * f64::from(i) / 400.0).map(|t| (t, f(t))).collect()
}

/// The SVG for one run: `scale` turns the samples' wall-clock seconds into real-world ones.
pub fn svg(title: &str, floor: &Floor, samples: &[Sample], scale: f64) -> String {
    let t_end = samples.last().map_or(floor.total(), |s| s.wall * scale);
    let t_max = t_end.max(floor.total()) * 1.05;
    let real = |s: &Sample| s.wall * scale;
    let hz_max = samples.last().map_or(0, |s| s.hetzner) as f64;
    let cf_max = samples.last().map_or(0, |s| s.cloudflare) as f64;
    let panels = [
        Panel {
            title: format!("{title}: objects Ready"),
            series: vec![
                Series {
                    label: "Agents + PlainVMs Ready",
                    colour: "#1f77b4",
                    dashed: false,
                    points: samples.iter().map(|s| (real(s), (s.agents + s.plainvms) as f64)).collect(),
                },
                Series {
                    label: "floor (what the clouds allow)",
                    colour: "#d62728",
                    dashed: true,
                    points: curve(t_max, |t| floor.ready_by(t)),
                },
                Series {
                    label: "VirtualKeys Ready",
                    colour: "#2ca02c",
                    dashed: false,
                    points: samples.iter().map(|s| (real(s), s.keys as f64)).collect(),
                },
            ],
        },
        Panel {
            title: "Hetzner requests spent".into(),
            series: vec![
                Series {
                    label: "requests (cumulative)",
                    colour: "#1f77b4",
                    dashed: false,
                    points: samples.iter().map(|s| (real(s), s.hetzner as f64)).collect(),
                },
                Series {
                    label: "budget: 3600 + 1/s",
                    colour: "#d62728",
                    dashed: true,
                    points: curve(t_max, hetzner_allowed)
                        .into_iter()
                        .map(|(t, v)| (t, v.min(hz_max * 1.5 + 100.0)))
                        .collect(),
                },
            ],
        },
        Panel {
            title: "Cloudflare requests spent".into(),
            series: vec![
                Series {
                    label: "requests (cumulative)",
                    colour: "#1f77b4",
                    dashed: false,
                    points: samples.iter().map(|s| (real(s), s.cloudflare as f64)).collect(),
                },
                Series {
                    label: "budget: 1200 per 5 minutes",
                    colour: "#d62728",
                    dashed: true,
                    points: curve(t_max, cloudflare_allowed)
                        .into_iter()
                        .map(|(t, v)| (t, v.min(cf_max * 1.5 + 100.0)))
                        .collect(),
                },
            ],
        },
    ];
    let height = PANEL_HEIGHT * panels.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, panel, PANEL_HEIGHT * i as f64, t_max);
    }
    svg.push_str("</svg>\n");
    svg
}
