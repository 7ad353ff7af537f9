//! PNG charts for the benchmarks: how p99 latency and achieved throughput follow the offered
//! rate, one line per contender.
//!
//! ```text
//!  [Series { name, points: (offered, p99, throughput) }] ──► latency_and_throughput_png(path)
//!     ┌───────────────────────────────┬───────────────────────────────┐
//!     │ p99 (ms, log) vs offered (log)│ throughput vs offered (log-log)│   1400 × 600 PNG
//!     └───────────────────────────────┴───────────────────────────────┘
//! ```
//! A point offered at `f64::INFINITY` (producing as fast as possible) is drawn at the right
//! edge of each panel, past a dashed line, under the label "sat".
//!
//! Text is drawn with a TrueType font read at run time (DejaVu Sans from Debian's
//! `fonts-dejavu-core`, or `KBATCH_PLOT_FONT`): no fontconfig or FreeType needed.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

/// One contender's measurements.
pub(crate) struct Series {
    /// The legend's name for it.
    pub(crate) name: String,
    /// Its points, in any order.
    pub(crate) points: Vec<Point>,
}

/// One measurement at one offered rate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Point {
    /// Offered rate in events/s; `f64::INFINITY` for saturation (as fast as it goes).
    pub(crate) offered_rate: f64,
    /// 99th percentile latency in milliseconds.
    pub(crate) p99_ms: f64,
    /// Achieved throughput in events/s.
    pub(crate) throughput: f64,
}

/// The image's size in pixels.
pub(crate) const SIZE: (u32, u32) = (1400, 600);

/// Where Debian's `fonts-dejavu-core` puts the font the charts use.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Names another TrueType font file to use instead.
const FONT_ENV: &str = "KBATCH_PLOT_FONT";
const FAMILY: &str = "sans-serif";

/// One colour per series, in order (then again from the start): the Okabe–Ito palette, which
/// stays distinguishable with colour blindness.
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
];

/// Draws both panels into a PNG at `path`. Points whose value cannot be drawn on a log axis
/// (zero, negative, NaN) are left out; a series with none left still appears in the legend.
pub(crate) fn latency_and_throughput_png(
    path: &Path,
    title: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    load_font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 26))?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let x = XAxis::of(series);
    panel(&left, &x, series, "p99 latency (ms)", |p| p.p99_ms, true)?;
    panel(
        &right,
        &x,
        series,
        "achieved throughput (events/s)",
        |p| p.throughput,
        false,
    )?;
    root.present()
        .with_context(|| format!("cannot write the chart to {}", path.display()))?;
    Ok(())
}

/// The shared offered-rate axis: the finite rates' range, and where saturation goes.
#[derive(Debug, PartialEq)]
struct XAxis {
    lo: f64,
    hi: f64,
    /// Where saturation points are drawn: a step right of the highest finite rate.
    sat: f64,
    /// The dashed line between the finite rates and saturation.
    divider: f64,
}

impl XAxis {
    fn of(series: &[Series]) -> Self {
        let finite = series
            .iter()
            .flat_map(|s| &s.points)
            .map(|p| p.offered_rate)
            .filter(|r| r.is_finite() && *r > 0.0);
        let (min, max) = bounds(finite).unwrap_or((100.0, 100_000.0));
        // A step of ×3 in log space beyond the last finite rate, and half a step of margin.
        let sat = max * 3.0;
        Self {
            lo: min / 1.7,
            hi: sat * 1.7,
            sat,
            divider: max * 3f64.sqrt(),
        }
    }

    /// Where a point goes on this axis; `None` for one that cannot be drawn.
    fn place(&self, rate: f64) -> Option<f64> {
        if rate == f64::INFINITY {
            Some(self.sat)
        } else if rate.is_finite() && rate > 0.0 {
            Some(rate)
        } else {
            None
        }
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// One panel: `value` of every series against offered rate, both axes logarithmic.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    x: &XAxis,
    series: &[Series],
    y_desc: &str,
    value: fn(&Point) -> f64,
    legend: bool,
) -> anyhow::Result<()> {
    let ys = series
        .iter()
        .flat_map(|s| &s.points)
        .filter(|p| x.place(p.offered_rate).is_some())
        .map(value)
        .filter(|v| v.is_finite() && *v > 0.0);
    let (ylo, yhi) = bounds(ys).unwrap_or((1.0, 10.0));
    let (ylo, yhi) = (ylo / 2.0, yhi * 2.0);

    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d((x.lo..x.hi).log_scale(), (ylo..yhi).log_scale())?;
    let sat = x.sat;
    let x_label = move |v: &f64| {
        // The saturation column has no rate of its own.
        if *v > x.divider {
            String::new()
        } else {
            si(*v)
        }
    };
    chart
        .configure_mesh()
        .x_desc("offered rate (events/s)")
        .y_desc(y_desc)
        .x_label_formatter(&x_label)
        .y_label_formatter(&|v| si(*v))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;

    chart.draw_series(DashedLineSeries::new(
        [(x.divider, ylo), (x.divider, yhi)],
        6,
        4,
        BLACK.mix(0.4).stroke_width(1),
    ))?;
    chart.draw_series(std::iter::once(Text::new(
        "sat",
        (sat / 1.25, ylo * (yhi / ylo).powf(0.03)),
        (FAMILY, 16).into_font().color(&BLACK.mix(0.7)),
    )))?;

    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| Some((x.place(p.offered_rate)?, value(p))))
            .filter(|(_, v)| v.is_finite() && *v > 0.0)
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Solid between offered rates; dashed into saturation, which is no rate on this axis.
        let rated = points.iter().take_while(|p| p.0 != sat).count();
        chart.draw_series(DashedLineSeries::new(
            points[rated.saturating_sub(1)..].iter().copied(),
            5,
            4,
            color.stroke_width(2),
        ))?;
        let drawn = chart.draw_series(LineSeries::new(
            points[..rated].iter().copied(),
            color.stroke_width(2),
        ))?;
        if legend {
            drawn.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3))
            });
        }
        chart.draw_series(points.iter().map(|&(px, py)| {
            if px == sat {
                // Saturation: a triangle, so it does not read as one more offered rate.
                TriangleMarker::new((px, py), 7, color.filled()).into_dyn()
            } else {
                Circle::new((px, py), 4, color.filled()).into_dyn()
            }
        }))?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    Ok(())
}

/// 1500 → "1.5k", 2000000 → "2M", 0.5 → "0.5".
fn si(v: f64) -> String {
    let (scaled, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let s = format!("{scaled:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s}{unit}")
}

/// Registers the chart font once per process.
fn load_font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os(FONT_ENV)
                .filter(|p| !p.is_empty())
                .map_or_else(|| DEFAULT_FONT.into(), std::path::PathBuf::from);
            let bytes = read_font(&path).map_err(|e| format!("{e:#}"))?;
            // plotters keeps fonts for the life of the process; this happens once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
                format!(
                    "{} is not a TrueType/OpenType font the charts can use; set {FONT_ENV} to \
                     one (e.g. {DEFAULT_FONT})",
                    path.display()
                )
            })
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn read_font(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read the chart font {}: install Debian's fonts-dejavu-core \
             (apt-get install fonts-dejavu-core) or set {FONT_ENV} to a .ttf file",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Series> {
        let p = |offered_rate, p99_ms, throughput| Point {
            offered_rate,
            p99_ms,
            throughput,
        };
        vec![
            Series {
                name: "kbatch adaptive".into(),
                points: vec![
                    p(1_000.0, 2.5, 1_000.0),
                    p(10_000.0, 6.0, 9_990.0),
                    p(100_000.0, 40.0, 98_000.0),
                    p(f64::INFINITY, 210.0, 450_000.0),
                ],
            },
            Series {
                name: "rdkafka BaseProducer".into(),
                points: vec![
                    p(100_000.0, 95.0, 97_000.0),
                    p(1_000.0, 5.0, 1_000.0),
                    p(f64::INFINITY, 800.0, 380_000.0),
                    p(10_000.0, 0.0, 9_900.0), // not drawable on a log axis: skipped
                ],
            },
        ]
    }

    /// The image's RGB pixels, after checking the PNG signature and size.
    fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        let pixels = buf[..info.buffer_size()]
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        (info.width, info.height, pixels)
    }

    #[test]
    fn renders_both_panels_with_every_series_and_saturation_at_the_right_edge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        latency_and_throughput_png(&path, "producer: p99 and throughput", &sample()).unwrap();

        let (w, h, px) = decode(&path);
        assert_eq!((w, h), SIZE);
        let at = |x: u32, y: u32| px[(y * w + x) as usize];
        let white = px.iter().filter(|p| **p == [255, 255, 255]).count();
        let mut distinct: Vec<[u8; 3]> = px.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            white < px.len() * 97 / 100,
            "nearly blank: {white} of {} white",
            px.len()
        );
        assert!(distinct.len() > 20, "only {} colours", distinct.len());

        // Each series' colour appears in both panels, and its rightmost pixel in each panel
        // is near that panel's right edge: the saturation point.
        for (i, color) in COLORS.iter().take(2).enumerate() {
            let rgb = [color.0, color.1, color.2];
            for (panel, x0) in [("latency", 0), ("throughput", w / 2)] {
                let rightmost = (x0..x0 + w / 2)
                    .rev()
                    .find(|&x| (0..h).any(|y| at(x, y) == rgb))
                    .unwrap_or_else(|| panic!("series {i} missing from the {panel} panel"));
                assert!(
                    rightmost > x0 + w / 2 * 85 / 100,
                    "series {i}'s rightmost point in the {panel} panel is at x={rightmost}"
                );
            }
        }
    }

    #[test]
    fn saturation_sits_right_of_every_offered_rate() {
        let x = XAxis::of(&sample());
        assert!(x.lo < 1_000.0 && 100_000.0 < x.divider, "{x:?}");
        assert!(x.divider < x.sat && x.sat < x.hi, "{x:?}");
        assert_eq!(x.place(f64::INFINITY), Some(x.sat));
        assert_eq!(x.place(5_000.0), Some(5_000.0));
        assert_eq!(x.place(0.0), None);
        assert_eq!(x.place(f64::NAN), None);
        // Only saturation points: the axis still has a range.
        let only_sat = [Series {
            name: "s".into(),
            points: vec![Point {
                offered_rate: f64::INFINITY,
                p99_ms: 1.0,
                throughput: 1.0,
            }],
        }];
        let x = XAxis::of(&only_sat);
        assert!(
            x.lo < x.divider && x.divider < x.sat && x.sat < x.hi,
            "{x:?}"
        );
    }

    #[test]
    fn a_missing_font_says_what_to_install() {
        let e = read_font(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("/nonexistent/DejaVuSans.ttf"), "{msg}");
        assert!(msg.contains("fonts-dejavu-core"), "{msg}");
        assert!(msg.contains(FONT_ENV), "{msg}");
    }

    #[test]
    fn si_labels() {
        assert_eq!(si(0.5), "0.5");
        assert_eq!(si(10.0), "10");
        assert_eq!(si(1_500.0), "1.5k");
        assert_eq!(si(2_000_000.0), "2M");
        assert_eq!(si(3e9), "3G");
    }
}
