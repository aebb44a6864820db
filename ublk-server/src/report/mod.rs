//! Reports and plots: a Markdown summary and latency plots (SVG and PNG) from `augur bench --json` files and `augur fio run` directories.
//!
//! [`load_inputs`] reads the inputs into [`Series`] (one per policy run);
//! [`write_report`] writes `DIR/report.md` and four plots, each as SVG and
//! PNG, drawn with `plotters` and the DejaVu Sans font built into the
//! binary (`assets/fonts/`, so no system font library is needed):
//!
//! | file | plot |
//! |---|---|
//! | `ccdf.{svg,png}` | read-latency CCDF on log-log axes, one line per run, p99/p99.9/p99.99 marked |
//! | `latency-over-time.{svg,png}` | read p50/p99/p99.9 per interval, one panel per run, GC windows and model swaps shaded/marked |
//! | `iops-over-time.{svg,png}` | IOPS per interval |
//! | `p999-by-depth.{svg,png}` | read p99.9 per policy across queue depths |

mod input;
mod markdown;
mod plot;

pub use input::{Lat, Point, ReportInput, Series, SourceKind, load_inputs};
pub use markdown::render_markdown;
pub use plot::{PLOT_SIZE, PLOTS, plot_size};

use std::path::{Path, PathBuf};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No input was given.
    #[error("no inputs: give augur bench --json files or augur fio run directories")]
    NoInput,
    /// An input file or directory is bad or empty.
    #[error("{path}: {msg}")]
    Input {
        /// The input.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Drawing a plot failed.
    #[error("drawing {plot}: {msg}")]
    Plot {
        /// The plot's file.
        plot: String,
        /// What went wrong.
        msg: String,
    },
    /// Writing an output failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ReportError {
    /// True for errors in the user's input (exit status 2).
    pub fn is_user_error(&self) -> bool {
        matches!(self, ReportError::NoInput | ReportError::Input { .. })
    }
}

/// The files [`write_report`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Written {
    /// `DIR/report.md`.
    pub markdown: PathBuf,
    /// The plots, SVG then PNG of each.
    pub images: Vec<PathBuf>,
}

/// Writes `out/report.md` and the plots of [`PLOTS`] (SVG and PNG) for
/// `input`, creating `out`.
pub fn write_report(input: &ReportInput, out: &Path) -> Result<Written, ReportError> {
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let mut w = Written::default();
    for &name in PLOTS {
        let (svg, png) = plot::draw(name, input, out)?;
        w.images.push(svg);
        w.images.push(png);
    }
    let md = out.join("report.md");
    std::fs::write(&md, render_markdown(input)).map_err(|source| ReportError::Io {
        path: md.display().to_string(),
        source,
    })?;
    w.markdown = md;
    Ok(w)
}
