//! The report's plots, drawn with `plotters` onto SVG and an in-memory
//! bitmap (encoded as PNG with the `png` crate). Text uses DejaVu Sans,
//! built into the binary, registered once as `sans-serif`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::ReportError;
use super::input::{ReportInput, Series, SourceKind};

/// The plots, by file stem, in the order they are written.
pub const PLOTS: &[&str] = &[
    "ccdf",
    "latency-over-time",
    "iops-over-time",
    "p999-by-depth",
];

/// The size of every plot but `latency-over-time`, pixels.
pub const PLOT_SIZE: (u32, u32) = (960, 600);

/// The most panels `latency-over-time` draws (one per run).
const MAX_PANELS: usize = 8;

/// DejaVu Sans 2.37 (Debian's fonts-dejavu-core; license in
/// `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

const FONT_NAME: &str = "sans-serif";

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn register_font() -> Result<(), String> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK
        .get_or_init(|| plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err("the embedded font could not be loaded".into())
    }
}

/// The runs with latency over time, as `latency-over-time` draws them.
fn timeline_series(input: &ReportInput) -> Vec<&Series> {
    input
        .series
        .iter()
        .filter(|s| s.timeline.iter().any(|p| p.lat.is_some()))
        .take(MAX_PANELS)
        .collect()
}

/// The size of plot `name` for `input`, pixels: [`PLOT_SIZE`], except
/// `latency-over-time`, 960 wide and 60 + 220 per panel high (one panel
/// per run with latency over time, at most 8, at least 1).
pub fn plot_size(name: &str, input: &ReportInput) -> (u32, u32) {
    if name == "latency-over-time" {
        let n = timeline_series(input).len().max(1) as u32;
        (960, 60 + 220 * n)
    } else {
        PLOT_SIZE
    }
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Draws plot `name` as `out/name.svg` and `out/name.png`.
pub(crate) fn draw(
    name: &str,
    input: &ReportInput,
    out: &Path,
) -> Result<(PathBuf, PathBuf), ReportError> {
    let fail = |file: &Path, msg: String| ReportError::Plot {
        plot: file.display().to_string(),
        msg,
    };
    register_font().map_err(|m| fail(Path::new(name), m))?;
    let size = plot_size(name, input);
    let svg = out.join(format!("{name}.svg"));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw_on(name, input, &root).map_err(|m| fail(&svg, m))?;
        root.present().map_err(|e| fail(&svg, e.to_string()))?;
    }
    let png = out.join(format!("{name}.png"));
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        draw_on(name, input, &root).map_err(|m| fail(&png, m))?;
        root.present().map_err(|e| fail(&png, e.to_string()))?;
    }
    write_png(&png, size, &buf)?;
    Ok((svg, png))
}

fn write_png(path: &Path, (w, h): (u32, u32), rgb: &[u8]) -> Result<(), ReportError> {
    let io = |source: std::io::Error| ReportError::Io {
        path: path.display().to_string(),
        source,
    };
    let enc_err = |e: png::EncodingError| ReportError::Plot {
        plot: path.display().to_string(),
        msg: e.to_string(),
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(enc_err)?;
    writer.write_image_data(rgb).map_err(enc_err)?;
    writer.finish().map_err(enc_err)
}

fn draw_on<DB: DrawingBackend>(
    name: &str,
    input: &ReportInput,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    match name {
        "ccdf" => ccdf(input, root),
        "latency-over-time" => latency_over_time(input, root),
        "iops-over-time" => iops_over_time(input, root),
        "p999-by-depth" => p999_by_depth(input, root),
        other => Err(format!("no plot named {other}")),
    }
}

/// A note in the middle of an empty plot.
fn note<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    msg: &str,
) -> Result<(), String> {
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(title.to_string(), (20, 20), (FONT_NAME, 22)))
        .map_err(err)?;
    root.draw(&Text::new(
        msg.to_string(),
        (40, h as i32 / 2),
        (FONT_NAME, 18).into_font().color(&BLACK.mix(0.7)),
    ))
    .map_err(err)?;
    let _ = w;
    Ok(())
}

fn log_label(v: &f64) -> String {
    if *v >= 1.0 && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:e}")
    }
}

/// The CCDF points of a histogram: `(latency, fraction of reads slower)`.
fn ccdf_points(hist: &[(f64, u64)]) -> Vec<(f64, f64)> {
    let total: u64 = hist.iter().map(|b| b.1).sum();
    let mut pts = Vec::with_capacity(hist.len() + 1);
    if total == 0 {
        return pts;
    }
    if let Some(&(v0, _)) = hist.first() {
        pts.push((v0, 1.0));
    }
    let mut cum = 0;
    for &(v, c) in hist {
        cum += c;
        let above = (total - cum) as f64 / total as f64;
        if above > 0.0 {
            pts.push((v, above));
        }
    }
    pts
}

/// A run's CCDF: its index (for its colour), the run, the points.
type Curve<'a> = (usize, &'a Series, Vec<(f64, f64)>);

/// A percentile line of the latency panels: name, colour, which of (p50, p99, p99.9).
type PctLine = (&'static str, RGBColor, fn(&(f64, f64, f64)) -> f64);

fn ccdf<DB: DrawingBackend>(
    input: &ReportInput,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let title = "Read latency CCDF (fraction of reads slower than x)";
    let curves: Vec<Curve> = input
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s, ccdf_points(&s.read_hist_us)))
        .filter(|c| c.2.len() > 1)
        .collect();
    if curves.is_empty() {
        return note(root, title, "No read-latency histograms in the inputs.");
    }
    let xmin = curves
        .iter()
        .flat_map(|c| c.2.iter().map(|p| p.0))
        .fold(f64::MAX, f64::min)
        .max(0.1)
        / 1.3;
    let xmax = curves
        .iter()
        .flat_map(|c| c.2.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.3;
    let ymin = curves
        .iter()
        .flat_map(|c| c.2.iter().map(|p| p.1))
        .fold(1e-4, f64::min)
        .max(1e-9)
        / 2.0;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT_NAME, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..1.2).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("read latency (us)")
        .y_desc("fraction of reads slower")
        .x_label_formatter(&log_label)
        .y_label_formatter(&log_label)
        .label_style((FONT_NAME, 14))
        .draw()
        .map_err(err)?;
    // The percentile levels: a grey line and a name each.
    for (q, name) in [(1e-2, "p99"), (1e-3, "p99.9"), (1e-4, "p99.99")] {
        if q < ymin {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                [(xmin, q), (xmax, q)],
                ShapeStyle::from(&BLACK.mix(0.35)).stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                name,
                (xmin * 1.05, q * 1.15),
                (FONT_NAME, 13),
            )))
            .map_err(err)?;
    }
    for (i, s, pts) in &curves {
        let c = color(*i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        if let Some(l) = s.read {
            let marks = [(l.p99, 1e-2), (l.p999, 1e-3), (l.p9999, 1e-4)];
            chart
                .draw_series(
                    marks
                        .into_iter()
                        .filter(|&(v, q)| v > 0.0 && q >= ymin)
                        .map(|(v, q)| Circle::new((v.max(xmin), q), 4, c.filled())),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT_NAME, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn latency_over_time<DB: DrawingBackend>(
    input: &ReportInput,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let title = "Read latency over time: p50, p99, p99.9 (us, log scale)";
    let runs = timeline_series(input);
    if runs.is_empty() {
        return note(
            root,
            title,
            "No per-interval latency in the inputs (augur bench --json has it; fio runs do not).",
        );
    }
    let (top, body) = root.split_vertically(60);
    top.draw(&Text::new(title, (15, 10), (FONT_NAME, 22)))
        .map_err(err)?;
    top.draw(&Text::new(
        "shaded: GC windows of emulated replicas (one shade per replica); red lines: model swaps",
        (15, 38),
        (FONT_NAME, 14).into_font().color(&BLACK.mix(0.7)),
    ))
    .map_err(err)?;
    let panels = body.split_evenly((runs.len(), 1));
    let lines: [PctLine; 3] = [
        ("p50", color(0), |l| l.0),
        ("p99", color(1), |l| l.1),
        ("p99.9", color(3), |l| l.2),
    ];
    for (s, area) in runs.iter().zip(panels.iter()) {
        let pts: Vec<(f64, (f64, f64, f64))> = s
            .timeline
            .iter()
            .filter_map(|p| p.lat.map(|l| (p.t_s, l)))
            .collect();
        let step = s
            .timeline
            .windows(2)
            .map(|w| w[1].t_s - w[0].t_s)
            .fold(0.0, f64::max);
        let tmax = s.timeline.iter().map(|p| p.t_s).fold(0.0, f64::max) + step.max(1e-3);
        let vals = pts.iter().flat_map(|(_, l)| [l.0, l.1, l.2]);
        let ymin = vals.clone().fold(f64::MAX, f64::min).max(1.0) / 1.5;
        let ymax = vals.fold(1.0, f64::max) * 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(s.label(), (FONT_NAME, 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..tmax, (ymin..ymax).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_label_formatter(&log_label)
            .label_style((FONT_NAME, 12))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(s.gc_windows.iter().map(|&(r, a, b)| {
                Rectangle::new(
                    [(a, ymin), (b.max(a), ymax)],
                    color(r + 4).mix(0.18).filled(),
                )
            }))
            .map_err(err)?;
        for &t in &s.model_swaps_s {
            chart
                .draw_series(LineSeries::new([(t, ymin), (t, ymax)], RED.stroke_width(2)))
                .map_err(err)?;
        }
        for (name, c, f) in lines {
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|(t, l)| (*t, f(l).max(ymin))),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT_NAME, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn iops_over_time<DB: DrawingBackend>(
    input: &ReportInput,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let title = "IOPS over time";
    let runs: Vec<(usize, &Series)> = input
        .series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.timeline.is_empty())
        .collect();
    if runs.is_empty() {
        return note(root, title, "No per-interval IOPS in the inputs.");
    }
    let tmax = runs
        .iter()
        .flat_map(|(_, s)| s.timeline.iter().map(|p| p.t_s))
        .fold(0.0, f64::max)
        .max(1e-3);
    let ymax = runs
        .iter()
        .flat_map(|(_, s)| s.timeline.iter().map(|p| p.iops))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT_NAME, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("IOPS")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT_NAME, 14))
        .draw()
        .map_err(err)?;
    for (i, s) in runs {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                s.timeline.iter().map(|p| (p.t_s, p.iops)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT_NAME, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Per (policy, source), the runs' `(depth, p99.9)`, by depth. fio runs
/// count only their pure random-read jobs (`randread-*`), so a mixed job at
/// the same depth does not land on the same line.
pub(crate) fn depth_points(
    input: &ReportInput,
) -> BTreeMap<(String, &'static str), Vec<(u32, f64)>> {
    let mut m: BTreeMap<(String, &'static str), Vec<(u32, f64)>> = BTreeMap::new();
    for s in &input.series {
        let (Some(d), Some(l), Some(k)) = (s.depth, s.read, s.kind) else {
            continue;
        };
        if k == SourceKind::Fio && !s.job.as_deref().is_some_and(|j| j.starts_with("randread")) {
            continue;
        }
        if l.p999 > 0.0 {
            m.entry((s.policy.clone(), k.name()))
                .or_default()
                .push((d, l.p999));
        }
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    }
    m
}

fn p999_by_depth<DB: DrawingBackend>(
    input: &ReportInput,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let title = "Read p99.9 per policy across queue depths";
    let groups = depth_points(input);
    if groups.is_empty() {
        return note(
            root,
            title,
            "No runs with a known queue depth and read latency.",
        );
    }
    let all = groups.values().flatten();
    let dmax = all.clone().map(|p| p.0).max().unwrap_or(1).max(2) as f64 * 1.5;
    let ymin = all.clone().map(|p| p.1).fold(f64::MAX, f64::min).max(0.1) / 1.5;
    let ymax = all.map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT_NAME, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.7..dmax).log_scale(), (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("queue depth")
        .y_desc("read p99.9 (us)")
        .x_label_formatter(&log_label)
        .y_label_formatter(&log_label)
        .label_style((FONT_NAME, 14))
        .draw()
        .map_err(err)?;
    for (i, ((policy, kind), pts)) in groups.iter().enumerate() {
        let c = color(i);
        let xy: Vec<(f64, f64)> = pts.iter().map(|&(d, v)| (d as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(xy.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{policy} ({kind})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(xy.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT_NAME, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
