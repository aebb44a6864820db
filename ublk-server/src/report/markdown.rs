//! The report's Markdown: where the numbers came from, one table row per run, the plots.

use std::fmt::Write;

use super::input::{ReportInput, Series};

/// A latency in microseconds: whole numbers as such, others to 0.1.
pub(crate) fn fmt_us(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.2}"))
}

fn row(s: &Series) -> String {
    let l = s.read;
    let lat = |f: fn(&super::Lat) -> f64| l.as_ref().map_or_else(|| "n/a".into(), |l| fmt_us(f(l)));
    format!(
        "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        s.policy,
        s.kind.map_or("?", |k| k.name()),
        s.job.as_deref().or(s.clock.as_deref()).unwrap_or(""),
        s.depth.map_or_else(|| "n/a".into(), |d| d.to_string()),
        s.iops,
        s.reads,
        l.as_ref()
            .map_or_else(|| "n/a".into(), |l| format!("{:.1}", l.avg)),
        lat(|l| l.p50),
        lat(|l| l.p99),
        lat(|l| l.p999),
        lat(|l| l.p9999),
        opt_pct(s.reroute_pct),
        opt_pct(s.extra_io_pct),
        opt_pct(s.accuracy_pct),
    )
}

/// The Markdown summary of `input`: the inputs (and each fio run's
/// manifest), a table with one row per run (IOPS, read avg/p50/p99/p99.9/
/// p99.99 in microseconds, reroute and extra-I/O rates, prediction
/// accuracy; `n/a` where the input does not say), and the plots.
pub fn render_markdown(input: &ReportInput) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Augur report\n");
    let _ = writeln!(s, "Inputs:\n");
    for p in &input.paths {
        let _ = writeln!(s, "- `{}`", p.display());
    }
    for (dir, m) in &input.manifests {
        let _ = writeln!(s, "\n## fio run `{}`\n", dir.display());
        let _ = writeln!(s, "| | |\n|---|---|");
        let fields = [
            (
                "machine",
                format!(
                    "{} ({} CPUs, {}, {} MiB)",
                    m.machine.hostname,
                    m.machine.cpus,
                    m.machine.cpu_model,
                    m.machine.mem_kib / 1024
                ),
            ),
            ("kernel", m.kernel.clone()),
            ("commit", m.commit.clone()),
            ("profile", m.profile.clone()),
            ("model", m.model.clone()),
            ("fio", m.fio_version.clone()),
            ("target", format!("{} ({} bytes used)", m.target, m.size)),
            ("runtime per job", format!("{} s", m.runtime_s)),
            (
                "policy switching",
                m.socket.as_ref().map_or_else(
                    || "none (no daemon)".into(),
                    |s| format!("live, through {s}"),
                ),
            ),
            ("command", format!("`{}`", m.command)),
        ];
        for (k, v) in fields {
            let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|"));
        }
    }
    let _ = writeln!(s, "\n## Read latency per run (microseconds)\n");
    let _ = writeln!(
        s,
        "| policy | source | job/clock | depth | IOPS | reads | avg | p50 | p99 | p99.9 | p99.99 | reroute % | extra I/O % | accuracy % |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for series in &input.series {
        let _ = writeln!(s, "{}", row(series));
    }
    let _ = writeln!(
        s,
        "\nfio percentiles come from fio's completion-latency histogram (`clat_ns.bins`); bench percentiles are the bench's own. `n/a`: the input does not say (fio without a daemon knows no reroutes; policies without a predictor have no accuracy).\n"
    );
    let _ = writeln!(s, "## Plots\n");
    for (name, title) in [
        ("ccdf", "Read-latency CCDF"),
        ("latency-over-time", "Read p50/p99/p99.9 over time"),
        ("iops-over-time", "IOPS over time"),
        ("p999-by-depth", "Read p99.9 across queue depths"),
    ] {
        let _ = writeln!(s, "### {title}\n\n![{title}]({name}.svg)\n");
    }
    s
}
