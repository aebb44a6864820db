//! `augur report`: a Markdown summary and plots from bench and fio results.

use std::path::PathBuf;

use augur::report::{load_inputs, write_report};
use clap::Args;

use super::error::CliError;

/// `augur report`.
#[derive(Args)]
pub struct ReportArgs {
    /// `augur bench --json` (or `augur demo --json`) files, `augur fio run` directories, fio json+ files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The directory for report.md and the plots (SVG and PNG).
    #[arg(long)]
    out: PathBuf,
}

/// `augur report`.
pub fn cmd_report(a: ReportArgs) -> anyhow::Result<()> {
    let user = |e: augur::report::ReportError| {
        if e.is_user_error() {
            anyhow::Error::new(CliError::BadFlag(e.to_string()))
        } else {
            anyhow::Error::new(e)
        }
    };
    let input = load_inputs(&a.inputs).map_err(user)?;
    let w = write_report(&input, &a.out).map_err(user)?;
    println!(
        "{}: {} run(s); {} and {} images",
        a.out.display(),
        input.series.len(),
        w.markdown.display(),
        w.images.len()
    );
    Ok(())
}
