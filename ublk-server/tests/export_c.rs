//! `augur model export-c` and `augur model predict`: the generated C, built
//! by its own Makefile with the host's C compiler, gives the Rust integer
//! path's outputs, scores and decisions bit for bit, for every architecture
//! the predictor ships, on random and edge inputs, and on a model whose
//! every score is a tie. Needs `cc` and `make` (scripts/test-all installs
//! them).

use std::path::{Path, PathBuf};
use std::process::Command;

use augur_predictor::model::Layer;
use augur_predictor::train::Arch;
use augur_predictor::{Activation, FeatureSet, Model};

mod common;
use common::{augur, stderr, which};

/// Exports `model`, builds the check program, and compares its lines with
/// `augur model predict` on `n` generated vectors. Returns the lines.
/// Saves `model` as DIR/NAME.augm, exports it as C into DIR/NAME and builds
/// the check program there; returns the model file and that directory.
fn export_and_make(dir: &Path, name: &str, model: &Model) -> (PathBuf, PathBuf) {
    let file = dir.join(format!("{name}.augm"));
    model.save(&file).unwrap();
    let out = dir.join(name);
    let o = augur(&[
        "model",
        "export-c",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    let make = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        make.status.success(),
        "{name}: make failed:\n{}{}",
        String::from_utf8_lossy(&make.stdout),
        stderr(&make)
    );
    (file, out)
}

fn same_in_c_and_rust(dir: &Path, name: &str, model: &Model, n: usize) -> String {
    let (file, out) = export_and_make(dir, name, model);
    let f = file.to_str().unwrap();
    let inputs = dir.join(format!("{name}.in"));
    let rust = augur(&[
        "model",
        "predict",
        "--model",
        f,
        "--random",
        &n.to_string(),
        "--seed",
        "7",
        "--emit-inputs",
        inputs.to_str().unwrap(),
    ]);
    assert!(rust.status.success(), "{name}: {}", stderr(&rust));
    let c = Command::new(out.join("check"))
        .stdin(std::fs::File::open(&inputs).unwrap())
        .output()
        .unwrap();
    assert!(c.status.success(), "{name}: check failed: {}", stderr(&c));
    let (r, c) = (
        String::from_utf8(rust.stdout).unwrap(),
        String::from_utf8(c.stdout).unwrap(),
    );
    assert_eq!(r.lines().count(), n, "{name}");
    for (k, (a, b)) in r.lines().zip(c.lines()).enumerate() {
        assert_eq!(a, b, "{name}: vector {} differs (Rust, then C)", k + 1);
    }
    assert_eq!(r, c, "{name}");
    // The same with the model file read at run time by the C parser (the
    // kernel module's).
    let c = Command::new(out.join("check"))
        .arg("--model")
        .arg(&file)
        .stdin(std::fs::File::open(&inputs).unwrap())
        .output()
        .unwrap();
    assert!(c.status.success(), "{name}: check --model: {}", stderr(&c));
    assert_eq!(
        r,
        String::from_utf8(c.stdout).unwrap(),
        "{name}: check --model"
    );
    // The stack report the Makefile promises.
    let stack = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&out)
        .arg("stack")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&stack.stdout).contains("augur_forward"),
        "{name}: make stack printed no frame sizes"
    );
    r
}

fn arch_model(arch: Arch, fs: Option<FeatureSet>, seed: u64) -> Model {
    let w = arch.widths();
    let fs = fs.unwrap_or(arch.feature_set());
    Model::random(fs, &w[1..w.len() - 1], w[w.len() - 1], seed).unwrap()
}

fn have_tools() -> bool {
    let ok = which("cc").is_some() && which("make").is_some();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "cc and make are needed (scripts/test-all installs them)"
        );
        eprintln!("skipped: no cc or make");
    }
    ok
}

#[test]
fn generated_c_matches_the_rust_integer_path_for_every_architecture() {
    if !have_tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("base", arch_model(Arch::Base, None, 1), 3000),
        ("deep1", arch_model(Arch::Deep1, None, 2), 1500),
        ("deep2", arch_model(Arch::Deep2, None, 3), 1000),
        (
            "linnos-ext",
            arch_model(Arch::Base, Some(FeatureSet::LinnOsExt), 4),
            3000,
        ),
        (
            "linnos-write-deep2",
            arch_model(Arch::Deep2, Some(FeatureSet::LinnOsWrite), 5),
            1000,
        ),
        ("heimdall", arch_model(Arch::Heimdall, None, 6), 3000),
        (
            "no-hidden-layer",
            Model::random(FeatureSet::LinnOs, &[], 2, 8).unwrap(),
            500,
        ),
    ];
    for (name, m, n) in &cases {
        let lines = same_in_c_and_rust(d.path(), name, m, *n);
        let slow = lines.lines().filter(|l| l.ends_with(" slow")).count();
        // Random weights split decisions both ways: both branches ran.
        assert!(slow > 0 && slow < *n, "{name}: {slow} of {n} slow");
    }
    // The shipped model too.
    let m = Model::default_model().unwrap();
    same_in_c_and_rust(d.path(), "default", &m, 3000);
}

/// Two identical output rows: every score is exactly 0, which both sides
/// must call fast (the tie rule).
#[test]
fn ties_are_fast_in_c_as_in_rust() {
    if !have_tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let base = Model::random(FeatureSet::LinnOs, &[64], 2, 9).unwrap();
    let mut layers: Vec<Layer> = base.layers().to_vec();
    let last = layers.last_mut().unwrap();
    let row: Vec<f32> = last.weights[..last.inputs].to_vec();
    last.weights = row.iter().chain(&row).copied().collect();
    last.bias = vec![0.25, 0.25];
    assert_eq!(last.activation, Activation::None);
    let tie = Model::from_layers(FeatureSet::LinnOs, layers, None, base.meta().clone()).unwrap();
    let lines = same_in_c_and_rust(d.path(), "tie", &tie, 300);
    assert!(
        lines.lines().all(|l| l.ends_with(" 0 fast")),
        "a tie was not scored 0 and fast:\n{}",
        lines.lines().take(3).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn predict_reports_a_bad_input_line_by_number() {
    let d = tempfile::tempdir().unwrap();
    let m = arch_model(Arch::Base, None, 1);
    let f = d.path().join("m.augm");
    m.save(&f).unwrap();
    let input = d.path().join("in.txt");
    let good = vec!["1"; 31].join(" ");
    let short = vec!["1"; 30].join(" ");
    std::fs::write(&input, format!("{good}\n{good}\n{short}\n")).unwrap();
    let o = augur(&[
        "model",
        "predict",
        "--model",
        f.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("line 3: 30 values, the model takes 31"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&input, format!("{good}\n1 2 x\n")).unwrap();
    let o = augur(&[
        "model",
        "predict",
        "--model",
        f.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("line 2: 'x' is not an integer in 0..=9"),
        "{}",
        stderr(&o)
    );
}

/// CRC-32 (IEEE), as the model file's last four bytes carry it.
fn crc32(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (0u32.wrapping_sub(crc & 1)));
        }
    }
    !crc
}

/// Rewrites the checksum so that only the change under test is wrong.
fn fix_crc(b: &mut [u8]) {
    let n = b.len();
    let c = crc32(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&c.to_le_bytes());
}

/// Damaged model files: the C parser (the kernel module's) refuses each one
/// the Rust loader refuses, with the errno and reason it documents.
#[test]
fn the_c_parser_refuses_what_the_rust_loader_refuses() {
    if !have_tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let m = Model::random(FeatureSet::LinnOs, &[4], 2, 3).unwrap();
    let good = m.to_bytes();
    let (_, out) = export_and_make(d.path(), "c", &m);
    // Layer 1 (31 -> 4): header at 20, f32 weights and bias, then Wq, bq.
    let wq = 20 + 12 + 4 * 4 * 31 + 4 * 4;
    let bq = wq + 2 * 4 * 31;
    let n = good.len();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "EINVAL"),
        (
            "magic",
            [b"AUGURMDX".as_slice(), &good[8..]].concat(),
            "EINVAL",
        ),
        ("truncated header", good[..15].to_vec(), "EINVAL"),
        ("truncated weights", good[..wq + 10].to_vec(), "EINVAL"),
        ("truncated checksum", good[..n - 2].to_vec(), "EINVAL"),
        ("trailing byte", [good.as_slice(), &[0]].concat(), "EINVAL"),
    ];
    let mut edit = |name: &'static str, at: usize, bytes: &[u8], errno: &'static str| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        fix_crc(&mut b);
        cases.push((name, b, errno));
    };
    edit("version 2", 8, &[2, 0], "EOPNOTSUPP");
    edit("retired feature set", 10, &[2], "EOPNOTSUPP");
    edit("unknown feature set", 10, &[9], "EOPNOTSUPP");
    edit("zero layers", 11, &[0], "E2BIG");
    edit("inputs", 12, &[30], "EINVAL");
    edit("width 0", 24, &[0, 0, 0, 0], "E2BIG");
    edit("linear hidden layer", 28, &[0], "EINVAL");
    edit("reserved byte", 31, &[1], "EINVAL");
    edit("weight -32768", wq, &(-32768i16).to_le_bytes(), "ERANGE");
    edit(
        "bias past 2^30",
        bq,
        &((1i64 << 30) + 1).to_le_bytes(),
        "ERANGE",
    );
    let mut b = good.clone();
    b[wq] ^= 1;
    cases.push(("checksum", b, "EBADMSG"));
    for (name, bytes, errno) in cases {
        let p = d.path().join("bad.augm");
        std::fs::write(&p, &bytes).unwrap();
        let rust = augur(&["model", "show", p.to_str().unwrap()]);
        assert!(!rust.status.success(), "{name}: the Rust loader took it");
        let c = Command::new(out.join("check"))
            .arg("--model")
            .arg(&p)
            .output()
            .unwrap();
        let err = stderr(&c);
        assert_eq!(
            c.status.code(),
            Some(2),
            "{name}: the C parser took it: {err}"
        );
        assert!(err.contains(&format!("refused ({errno})")), "{name}: {err}");
    }
    // And the good file still passes both.
    std::fs::write(d.path().join("ok.augm"), &good).unwrap();
    let c = Command::new(out.join("check"))
        .arg("--model")
        .arg(d.path().join("ok.augm"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", stderr(&c));
}

/// The model parser's fuzz corpus (`predictor/c/fuzz/corpus`, grown by
/// `predictor/c/fuzz/run` with libFuzzer) replayed through the fuzz target
/// built with gcc's AddressSanitizer and UBSan: no crash, no bad access.
#[test]
fn the_fuzz_corpus_replays_clean_under_asan() {
    if !have_tools() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(root.join("predictor/c/fuzz/run"))
        .arg("--replay")
        .env("CARGO_TARGET_DIR", d.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let n: usize = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(n >= 6, "replayed too few inputs: {out}");
}

/// The C feature encoders (the kernel module's) give the Rust encoders'
/// digits for random histories, including values past every cap and
/// history lengths past the arrays.
#[test]
fn the_c_encoders_match_the_rust_ones() {
    use augur_feature_store::{Completed, HistorySnapshot};
    if !have_tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut rng = augur_rng::Rng::new(17);
    let big = |rng: &mut augur_rng::Rng| match rng.below(4) {
        0 => 0,
        1 => rng.below(1000) as u32,
        2 => rng.below(20_000) as u32,
        _ => rng.next_u64() as u32,
    };
    let snaps: Vec<HistorySnapshot> = (0..3000)
        .map(|_| {
            let mut h = HistorySnapshot {
                pending_pages: big(&mut rng),
                pending_ios: big(&mut rng),
                len: rng.below(7) as u8,
                oldest_pending_us: big(&mut rng),
                read_max_us: big(&mut rng),
                write_len: rng.below(7) as u8,
                ..HistorySnapshot::default()
            };
            for c in h.recent.iter_mut() {
                *c = Completed {
                    latency_us: big(&mut rng),
                    pending_pages_at_issue: big(&mut rng),
                    pending_ios_at_issue: big(&mut rng),
                    size_bytes: big(&mut rng),
                };
            }
            for w in h.write_recent_us.iter_mut() {
                *w = big(&mut rng);
            }
            h
        })
        .collect();
    let mut text = String::new();
    for h in &snaps {
        let mut f = vec![h.pending_pages, h.pending_ios];
        for c in &h.recent {
            f.extend([
                c.latency_us,
                c.pending_pages_at_issue,
                c.pending_ios_at_issue,
                c.size_bytes,
            ]);
        }
        f.extend([u32::from(h.len), h.oldest_pending_us, h.read_max_us]);
        f.extend(h.write_recent_us);
        f.push(u32::from(h.write_len));
        let line: Vec<String> = f.iter().map(|v| v.to_string()).collect();
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    let histories = d.path().join("histories.txt");
    std::fs::write(&histories, text).unwrap();
    for fs in [
        FeatureSet::LinnOs,
        FeatureSet::LinnOsExt,
        FeatureSet::LinnOsWrite,
    ] {
        let m = Model::random(fs, &[4], 2, 1).unwrap();
        let (_, out) = export_and_make(d.path(), fs.name(), &m);
        let c = Command::new(out.join("check"))
            .arg("--encode")
            .stdin(std::fs::File::open(&histories).unwrap())
            .output()
            .unwrap();
        assert!(c.status.success(), "{}: {}", fs.name(), stderr(&c));
        let got = String::from_utf8(c.stdout).unwrap();
        let mut want = String::new();
        for h in &snaps {
            let mut x = [0i32; augur_predictor::features::MAX_INPUTS];
            let n = m.encode_int(h, augur_predictor::ReadInfo { size_bytes: 4096 }, &mut x);
            let line: Vec<String> = x[..n].iter().map(|v| v.to_string()).collect();
            want.push_str(&line.join(" "));
            want.push('\n');
        }
        for (k, (a, b)) in want.lines().zip(got.lines()).enumerate() {
            assert_eq!(a, b, "{}: history {} (Rust, then C)", fs.name(), k + 1);
        }
        assert_eq!(want.lines().count(), got.lines().count(), "{}", fs.name());
    }
}
