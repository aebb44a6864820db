//! `augur report` from committed fixtures: a small simulated-clock
//! `augur bench --json` (`fixtures/report-bench.json`) and a small
//! `augur fio run` directory (`fixtures/report-fio-run/`, fio json+ on a
//! plain file). The Markdown's numbers are checked against the inputs (fio's
//! own percentiles, not ours), every image is checked to be a PNG or SVG of
//! the size the report promises, and bad inputs fail in one line.

use std::path::{Path, PathBuf};
use std::process::Command;

use augur::report::{PLOTS, load_inputs, plot_size, write_report};

const BIN: &str = env!("CARGO_BIN_EXE_augur");

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("fixture JSON")
}

/// The Markdown table row of `policy` whose third column is `job`.
fn row<'a>(md: &'a str, policy: &str, job: &str) -> Vec<&'a str> {
    md.lines()
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|c| c.len() > 4 && c[1] == policy && c[3] == job)
        .unwrap_or_else(|| panic!("no row for {policy} {job} in\n{md}"))
}

/// fio prints percentiles in ns; the report in us, to 0.1.
fn us(ns: u64) -> String {
    let v = (ns as f64 / 100.0).round() / 10.0;
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).expect("png");
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&b[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    // The whole file decodes: every chunk's length leads to the next, up to IEND.
    let mut at = 8;
    let mut chunks = Vec::new();
    while at + 8 <= b.len() {
        let len = be(at) as usize;
        chunks.push(String::from_utf8_lossy(&b[at + 4..at + 8]).to_string());
        at += 12 + len;
    }
    assert_eq!(
        at,
        b.len(),
        "{}: chunks do not end at the file's end",
        path.display()
    );
    assert_eq!(chunks.last().map(String::as_str), Some("IEND"));
    (be(16), be(20))
}

fn svg_size(path: &Path) -> (u32, u32) {
    let s = std::fs::read_to_string(path).expect("svg");
    assert!(s.contains("<svg"), "{} is not SVG", path.display());
    assert!(
        s.trim_end().ends_with("</svg>"),
        "{} is cut short",
        path.display()
    );
    let attr = |name: &str| -> u32 {
        let head = &s[s.find("<svg").expect("svg tag")..];
        let at = head.find(&format!("{name}=\"")).expect("size attribute") + name.len() + 2;
        head[at..]
            .split('"')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number")
    };
    (attr("width"), attr("height"))
}

#[test]
fn report_numbers_match_the_inputs_and_images_are_valid() {
    let bench = fixture("report-bench.json");
    let fio = fixture("report-fio-run");
    let input = load_inputs(&[bench.clone(), fio.clone()]).expect("inputs load");
    let out = tempfile::tempdir().expect("tempdir");
    let w = write_report(&input, out.path()).expect("report");
    let md = std::fs::read_to_string(&w.markdown).expect("markdown");

    // Bench rows: exactly the bench's own numbers.
    let b = json(&bench);
    let rows = b.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    for r in rows {
        let policy = r["policy"].as_str().expect("policy");
        let c = row(&md, policy, "sim");
        let l = &r["read_lat_us"];
        assert_eq!(
            c[5],
            format!("{:.0}", r["iops"].as_f64().unwrap()),
            "{policy} IOPS"
        );
        assert_eq!(c[6], r["reads"].as_u64().unwrap().to_string());
        assert_eq!(c[7], format!("{:.1}", l["avg"].as_f64().unwrap()));
        for (i, k) in [(8, "p50"), (9, "p99"), (10, "p999"), (11, "p9999")] {
            assert_eq!(c[i], l[k].as_u64().unwrap().to_string(), "{policy} {k}");
        }
        assert_eq!(c[12], format!("{:.2}", r["reroute_pct"].as_f64().unwrap()));
        assert_eq!(c[13], format!("{:.2}", r["extra_io_pct"].as_f64().unwrap()));
        match r.get("prediction_accuracy_pct") {
            Some(a) => assert_eq!(c[14], format!("{:.2}", a.as_f64().unwrap())),
            None => assert_eq!(c[14], "n/a"),
        }
    }
    assert_ne!(row(&md, "linnos", "sim")[14], "n/a", "linnos judged reads");

    // fio rows: the percentiles fio itself printed, from the same histogram.
    let m = json(&fio.join("manifest.json"));
    for run in m["runs"].as_array().expect("runs") {
        let job = run["job"].as_str().unwrap();
        let f = json(&fio.join(run["result"].as_str().unwrap()));
        let read = &f["jobs"][0]["read"];
        let pct = &read["clat_ns"]["percentile"];
        let c = row(&md, "baseline", job);
        assert_eq!(c[2], "fio");
        assert_eq!(
            c[6],
            read["total_ios"].as_u64().unwrap().to_string(),
            "{job} reads"
        );
        for (i, k) in [
            (8, "50.000000"),
            (9, "99.000000"),
            (10, "99.900000"),
            (11, "99.990000"),
        ] {
            assert_eq!(c[i], us(pct[k].as_u64().unwrap()), "{job} percentile {k}");
        }
        let depth = f["jobs"][0]["job options"]["iodepth"].as_str().unwrap();
        assert_eq!(c[4], depth);
        assert_eq!(c[12], "n/a", "no daemon, no reroute rate");
    }
    assert!(md.contains("fio-3."), "the manifest's fio version: {md}");
    assert!(md.contains(m["commit"].as_str().unwrap()));

    // Every plot, SVG and PNG, at the size the report promises.
    assert_eq!(w.images.len(), 2 * PLOTS.len());
    for name in PLOTS {
        let want = plot_size(name, &input);
        assert_eq!(
            svg_size(&out.path().join(format!("{name}.svg"))),
            want,
            "{name}.svg"
        );
        assert_eq!(
            png_size(&out.path().join(format!("{name}.png"))),
            want,
            "{name}.png"
        );
    }
    // Two bench runs have latency over time: two panels.
    assert_eq!(plot_size("latency-over-time", &input), (960, 60 + 2 * 220));
}

#[test]
fn the_cli_writes_the_report_and_bad_inputs_fail_in_one_line() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("r");
    let o = Command::new(BIN)
        .arg("report")
        .arg(fixture("report-bench.json"))
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("report.md").is_file());
    assert!(dir.join("ccdf.png").is_file());

    let empty = out.path().join("empty.json");
    std::fs::write(&empty, "").unwrap();
    let garbage = out.path().join("garbage.json");
    std::fs::write(&garbage, "{\"hello\": 1}").unwrap();
    let truncated = out.path().join("truncated.json");
    let full = std::fs::read_to_string(fixture("report-bench.json")).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let no_rows = out.path().join("none.json");
    std::fs::write(&no_rows, "[]").unwrap();
    let empty_dir = out.path().join("emptydir");
    std::fs::create_dir(&empty_dir).unwrap();
    for bad in [
        &empty,
        &garbage,
        &truncated,
        &no_rows,
        &empty_dir,
        &out.path().join("missing"),
    ] {
        let o = Command::new(BIN)
            .arg("report")
            .arg(bad)
            .arg("--out")
            .arg(out.path().join("x"))
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", bad.display());
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(&bad.display().to_string()),
            "names the input: {err}"
        );
    }
}
