//! Grouped bar charts as SVG, written by hand: one panel per figure (each
//! with its own scale, since IOPS and MiB/s do not share one), groups along
//! the x axis, one bar per series in each group, and a legend. Plain SVG 1.1
//! with no script or stylesheet, so that it renders the same in a browser
//! and on a code-hosting site.

use std::fmt::Write;

/// A chart: `panels` laid out two per row, each drawing `groups` × `series` bars.
pub struct Chart<'a> {
    pub title: &'a str,
    /// Group labels along each panel's x axis; `\n` breaks a label into lines.
    pub groups: &'a [&'a str],
    /// Series names, one colour each, in the legend.
    pub series: &'a [&'a str],
    pub panels: Vec<Panel>,
}

/// One figure: its title and `values[group][series]` (NaN: no bar).
pub struct Panel {
    pub title: String,
    pub values: Vec<Vec<f64>>,
}

const COLOURS: [&str; 6] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"];
const BAR: f64 = 30.0;
const GROUP_GAP: f64 = 40.0;
const LEFT: f64 = 56.0;
const PLOT_HEIGHT: f64 = 190.0;
const PANEL_HEIGHT: f64 = 290.0;
const TOP: f64 = 64.0;
const PER_ROW: usize = 2;

/// Renders `chart` as a standalone SVG document.
pub fn render(chart: &Chart) -> String {
    let group_width = chart.series.len() as f64 * BAR + GROUP_GAP;
    let panel_width = (LEFT + chart.groups.len() as f64 * group_width + 16.0).max(300.0);
    let rows = chart.panels.len().div_ceil(PER_ROW).max(1);
    let width = panel_width * PER_ROW.min(chart.panels.len().max(1)) as f64 + 20.0;
    let height = TOP + rows as f64 * PANEL_HEIGHT + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape(chart.title)
    );
    legend(&mut s, chart.series, 10.0, 42.0);
    for (i, panel) in chart.panels.iter().enumerate() {
        let x = 10.0 + (i % PER_ROW) as f64 * panel_width;
        let y = TOP + (i / PER_ROW) as f64 * PANEL_HEIGHT;
        draw_panel(&mut s, chart, panel, x, y, group_width);
    }
    s.push_str("</svg>\n");
    s
}

fn legend(s: &mut String, series: &[&str], x: f64, y: f64) {
    let mut at = x;
    for (i, name) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect x="{at}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            COLOURS[i % COLOURS.len()],
            at + 16.0,
            y,
            escape(name)
        );
        at += 16.0 + 7.0 * name.len() as f64 + 18.0;
    }
}

/// One panel at (`x`, `y`): title, y axis with ticks, bars, group labels.
fn draw_panel(s: &mut String, chart: &Chart, panel: &Panel, x: f64, y: f64, group_width: f64) {
    let peak = panel.values.iter().flatten().copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
    let (top, divisions) = nice_scale(peak);
    let (x0, base) = (x + LEFT, y + 30.0 + PLOT_HEIGHT);
    let right = x0 + chart.groups.len() as f64 * group_width;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        (x0 + right) / 2.0,
        y + 14.0,
        escape(&panel.title)
    );
    for k in 0..=divisions {
        let v = top * f64::from(k) / f64::from(divisions);
        let ty = base - PLOT_HEIGHT * f64::from(k) / f64::from(divisions);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{ty}" x2="{right}" y2="{ty}" stroke="#dddddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 - 4.0,
            ty + 4.0,
            compact(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{}" x2="{x0}" y2="{base}" stroke="black"/><line x1="{x0}" y1="{base}" x2="{right}" y2="{base}" stroke="black"/>"#,
        base - PLOT_HEIGHT
    );
    for (g, label) in chart.groups.iter().enumerate() {
        let gx = x0 + g as f64 * group_width + GROUP_GAP / 2.0;
        for (k, name) in chart.series.iter().enumerate() {
            let v = panel.values.get(g).and_then(|row| row.get(k)).copied().unwrap_or(f64::NAN);
            if v.is_finite() {
                bar(
                    s,
                    gx + k as f64 * BAR,
                    base,
                    v,
                    top,
                    k,
                    &format!("{} {name}", label.replace('\n', "")),
                );
            }
        }
        for (line, text) in label.split('\n').enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                gx + chart.series.len() as f64 * BAR / 2.0,
                base + 16.0 + 13.0 * line as f64,
                escape(text)
            );
        }
    }
}

/// One bar of value `v` on a scale to `top`, with its value above it.
fn bar(s: &mut String, x: f64, base: f64, v: f64, top: f64, series: usize, what: &str) {
    let h = if top > 0.0 { PLOT_HEIGHT * v.max(0.0) / top } else { 0.0 };
    let _ = writeln!(
        s,
        r#"<rect class="bar" x="{x}" y="{:.1}" width="{}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
        base - h,
        BAR - 3.0,
        COLOURS[series % COLOURS.len()],
        escape(what),
        compact(v)
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
        x + (BAR - 3.0) / 2.0,
        base - h - 3.0,
        compact(v)
    );
}

/// The top of an axis for values up to `v`: the smallest of 1, 2, 2.5, 5 × a power of ten
/// that is at least `v` (1 for 0), and how many round steps divide it.
pub fn nice_scale(v: f64) -> (f64, u32) {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return (1.0, 5);
    }
    let p = 10f64.powf(v.log10().floor());
    [(1.0, 5), (2.0, 4), (2.5, 5), (5.0, 5), (10.0, 5)]
        .iter()
        .map(|&(m, d)| (m * p, d))
        .find(|&(c, _)| c >= v * (1.0 - 1e-12))
        .unwrap_or((10.0 * p, 5))
}

/// A short label: 950, 9.5K, 10K, 206K, 1.2M.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e5 {
        format!("{:.0}K", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    };
    s.replace(".0K", "K").replace(".0M", "M")
}

/// Text and attribute values with the five XML special characters escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `doc` is well-formed XML as far as SVG needs: balanced,
    /// properly nested tags, one root, quoted attributes, no stray `<` or `&`.
    /// Returns the root element's name.
    fn well_formed(doc: &str) -> Result<String, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut root = None;
        let mut rest = doc;
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open])?;
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if top != name.trim() {
                    return Err(format!("</{name}> closes <{top}>"));
                }
                continue;
            }
            let empty = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("empty tag")?.to_string();
            check_attributes(&body[name.len()..])?;
            if stack.is_empty() {
                if root.is_some() {
                    return Err(format!("a second root <{name}>"));
                }
                root = Some(name.clone());
            }
            if !empty {
                stack.push(name);
            }
        }
        check_text(rest)?;
        match (stack.is_empty(), root) {
            (true, Some(r)) => Ok(r),
            (false, _) => Err(format!("unclosed: {stack:?}")),
            (true, None) => Err("no root element".into()),
        }
    }

    fn check_text(text: &str) -> Result<(), String> {
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity) {
                return Err(format!("bad entity {entity:?}"));
            }
        }
        Ok(())
    }

    fn check_attributes(mut attrs: &str) -> Result<(), String> {
        loop {
            attrs = attrs.trim_start();
            if attrs.is_empty() {
                return Ok(());
            }
            let eq = attrs.find("=\"").ok_or(format!("unquoted attribute in {attrs:?}"))?;
            if attrs[..eq].contains(char::is_whitespace) {
                return Err(format!("attribute without a value in {attrs:?}"));
            }
            let value_end = attrs[eq + 2..].find('"').ok_or("unterminated value")? + eq + 2;
            let value = &attrs[eq + 2..value_end];
            if value.contains('<') {
                return Err(format!("'<' in attribute value {value:?}"));
            }
            check_text(value)?;
            attrs = &attrs[value_end + 1..];
        }
    }

    fn chart_with(values: Vec<Vec<f64>>, panels: usize) -> String {
        let chart = Chart {
            title: "Disk <formats> & layouts",
            groups: &["monolithic\nSparse", "twoGbMaxExtent\nSparse", "monolithic\nFlat"],
            series: &["Bulkhead", "QEMU \"microvm\""],
            panels: (0..panels)
                .map(|i| Panel { title: format!("figure {i}"), values: values.clone() })
                .collect(),
        };
        render(&chart)
    }

    #[test]
    fn chart_is_well_formed_svg_with_a_bar_per_value() {
        let values = vec![vec![206_000.0, 48_000.0], vec![204_000.0, 47_000.0], vec![9.5, 0.0]];
        let svg = chart_with(values, 4);
        assert_eq!(well_formed(&svg), Ok("svg".to_string()));
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 4 * 3 * 2);
        assert!(svg.contains("Disk &lt;formats&gt; &amp; layouts"));
        assert!(svg.contains("QEMU &quot;microvm&quot;"));
        assert!(svg.contains(">twoGbMaxExtent</text>") && svg.contains(">Sparse</text>"));
        assert!(svg.contains(">206K<"));
    }

    #[test]
    fn missing_values_draw_no_bar() {
        let svg = chart_with(vec![vec![1.0, f64::NAN], vec![2.0, 3.0]], 3);
        assert_eq!(well_formed(&svg), Ok("svg".to_string()));
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 3 * 3);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn the_checker_catches_broken_documents() {
        for bad in ["<svg><g></svg></g>", "<svg>", "<svg a=1/>", "<svg>&x;</svg>", "<a/><b/>"] {
            assert!(well_formed(bad).is_err(), "{bad}");
        }
        assert_eq!(well_formed(r#"<svg a="1"><g/>t &amp; u</svg>"#), Ok("svg".into()));
    }

    #[test]
    fn scales_and_labels() {
        assert_eq!(nice_scale(206_000.0), (250_000.0, 5));
        assert_eq!(nice_scale(18_647.0), (20_000.0, 4));
        assert_eq!(nice_scale(100.0), (100.0, 5));
        assert_eq!(nice_scale(0.0), (1.0, 5));
        assert_eq!(nice_scale(f64::NAN), (1.0, 5));
        assert_eq!(nice_scale(0.3), (0.5, 5));
        assert_eq!(compact(10_000.0), "10K");
        assert_eq!(compact(245_785.0), "246K");
        assert_eq!(compact(18_647.0), "18.6K");
        assert_eq!(compact(960.0), "960");
        assert_eq!(compact(2.54), "2.5");
        assert_eq!(compact(1_500_000.0), "1.5M");
    }
}
