//! End-to-end tests of operating a live `augur fuse` daemon: its control
//! socket (every command, bad requests, callers that are not root), model
//! swaps under fio verify, online adaptation. Same needs as `tests/fuse.rs`
//! (root, /dev/fuse, fio); not root: each test prints why and passes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::fuse::*;
use common::run_timeout;

/// One request over the socket, the reply as JSON.
fn ctl(sock: &Path, cmd: augur::control::Command) -> augur::control::Reply {
    augur::control::request(sock, cmd, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("control request failed: {e}"))
}

/// Sends raw bytes as one request and reads the framed reply.
fn raw_request(sock: &Path, bytes: &[u8]) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A model file that differs from the shipped one (random weights).
fn other_model(dir: &Path, seed: u64) -> PathBuf {
    let m =
        augur_predictor::Model::random(augur_predictor::FeatureSet::LinnOsWrite, &[64], 2, seed)
            .unwrap();
    let p = dir.join(format!("other-{seed}.augm"));
    m.save(&p).unwrap();
    p
}

/// The control socket of a live FUSE daemon: its modes, every command
/// through `augur ctl`, malformed, unknown and oversized requests, a caller
/// that is not root (refused by the modes, then by the peer check once the
/// modes are loosened), a bad model file that leaves the active one; and the
/// data still reads back after all of it.
#[test]
fn control_socket_commands_bad_requests_and_non_root_callers() {
    use augur::control::Command as C;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx.start("linnos", false).file.clone();
    let sock = fx.socket();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(mode(sock.parent().unwrap()), 0o700);
    let s = sock.to_str().unwrap();
    let ctl_cli = |args: &[&str]| {
        let mut a = vec!["ctl", "--socket", s];
        a.extend_from_slice(args);
        common::augur(&a)
    };
    // Some I/O, then every read command.
    let data = pattern(3, 1 << 20);
    OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .write_all_at(&data, 0)
        .unwrap();
    let o = ctl_cli(&["status"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        out.contains("policy linnos") && out.contains("live"),
        "{out}"
    );
    let o = ctl_cli(&["stats"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success() && out.contains("predictor (cpu)"),
        "{out}"
    );
    let st = ctl(&sock, C::Stats);
    assert!(
        st.result["counters"]["writes"].as_u64().unwrap() > 0,
        "{st:?}"
    );
    let shipped = ctl(&sock, C::ModelShow).result["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        shipped,
        augur_predictor::Model::default_model().unwrap().id()
    );
    // A bad model file: refused with its reason, the active one stays.
    let bad = fx.tmp.path().join("bad.augm");
    std::fs::write(&bad, b"not a model").unwrap();
    let o = ctl_cli(&["model", "load", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("not an Augur model file"),
        "{}",
        common::stderr(&o)
    );
    assert_eq!(ctl(&sock, C::ModelShow).result["id"], shipped.as_str());
    // A good one swaps in; the reply names both; rollback restores.
    let other = other_model(fx.tmp.path(), 5);
    let r = ctl(
        &sock,
        C::ModelLoad {
            file: other.display().to_string(),
        },
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(r.result["old"], shipped.as_str());
    let new = r.result["new"].as_str().unwrap().to_string();
    assert_ne!(new, shipped);
    assert_eq!(ctl(&sock, C::ModelShow).result["id"], new.as_str());
    // Save writes the active model; it loads back with the same id, and an
    // existing file is left alone.
    let saved = fx.tmp.path().join("saved.augm");
    let o = ctl_cli(&["model", "save", saved.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(augur_predictor::Model::load(&saved).unwrap().id(), new);
    let o = ctl_cli(&["model", "save", saved.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("not overwritten"),
        "{}",
        common::stderr(&o)
    );
    let o = ctl_cli(&["model", "rollback"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(ctl(&sock, C::ModelShow).result["id"], shipped.as_str());
    assert_eq!(ctl_cli(&["model", "rollback"]).status.code(), Some(2));
    let h = ctl(&sock, C::ModelHistory).result["events"].clone();
    let events: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["start", "rejected", "load", "rollback"], "{h}");
    // Policy.
    assert!(ctl_cli(&["policy", "set", "hedge"]).status.success());
    assert_eq!(ctl(&sock, C::Status).result["policy"], "hedge");
    assert_eq!(
        ctl_cli(&["policy", "set", "fastest"]).status.code(),
        Some(2)
    );
    assert!(ctl_cli(&["policy", "set", "linnos"]).status.success());
    // The emulated replicas change profile under the running device.
    let o = ctl_cli(&["emu", "set-profile", "fast-nvme"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("3 emulated replica(s) now run profile fast-nvme")
    );
    let o = ctl_cli(&["emu", "set-profile", "no-such-profile"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("no-such-profile"),
        "{}",
        common::stderr(&o)
    );
    // Recording the live device.
    let log = fx.tmp.path().join("live.log");
    assert!(
        ctl_cli(&["record", "start", log.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(
        ctl_cli(&["record", "start", log.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
    let mut back = vec![0u8; data.len()];
    File::open(&file)
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    let r = ctl(&sock, C::RecordStop);
    let n = r.result["records"].as_u64().unwrap();
    assert!(n > 0, "{r:?}");
    let recs = augur_feature_store::read_log(&log).unwrap();
    assert_eq!(recs.len() as u64, n);
    // Raw protocol: every bad request gets an error reply naming the problem.
    for (bytes, says) in [
        (framed(b"{not json"), "malformed request"),
        (
            framed(br#"{"version":1,"command":"format"}"#),
            "unknown command 'format'",
        ),
        (framed(br#"{"version":9,"command":"status"}"#), "version 9"),
        (
            framed(&vec![b' '; 100_000]),
            "100000 bytes is over the 65536-byte limit",
        ),
        (
            (1u32 << 30).to_be_bytes().to_vec(),
            "over the 65536-byte limit",
        ),
    ] {
        let r = raw_request(&sock, &bytes);
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains(says), "{r}");
    }
    // Not root: the socket's modes refuse the connection...
    let nobody = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["ctl", "--socket", s])
            .args(args)
            .uid(65534)
            .gid(65534);
        run_timeout(&mut c, 30)
    };
    let o = nobody(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("Permission denied"),
        "{}",
        common::stderr(&o)
    );
    // ...and with the modes loosened, the peer check does.
    let dir = sock.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = nobody(&["model", "load", "default"]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("permission denied: uid 65534 is not root"),
        "{}",
        common::stderr(&o)
    );
    assert_eq!(ctl(&sock, C::ModelShow).result["id"], shipped.as_str());
    // I/O was never disturbed.
    assert_eq!(back, data);
    let st = ctl(&sock, C::Stats).result;
    assert_eq!(st["counters"]["failed_requests"], 0, "{st}");
    fx.stop();
}

/// Models swapped every 100 ms while fio writes and verifies (crc32c) on
/// the FUSE device: no verify error, no failed request.
#[test]
fn fio_verify_while_models_swap_every_100ms() {
    use augur::control::Command as C;
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx.start("linnos", false).file.to_str().unwrap().to_string();
    let sock = fx.socket();
    let models = [
        "default".to_string(),
        other_model(fx.tmp.path(), 7).display().to_string(),
        other_model(fx.tmp.path(), 8).display().to_string(),
    ];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, sock) = (stop.clone(), sock.clone());
        std::thread::spawn(move || {
            let mut swaps = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let file = models[swaps % models.len()].clone();
                let r = ctl(&sock, C::ModelLoad { file });
                assert!(r.ok, "{r:?}");
                swaps += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            swaps
        })
    };
    // Passes of at most the file's size each: fio cannot verify blocks a
    // later pass of the same job overwrote with other block sizes.
    for pass in 0..4 {
        fio_verify_sized(&file, &format!("swap{pass}"), "64M");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps >= 5, "only {swaps} swaps during the fio run");
    let st = ctl(&sock, C::Stats).result;
    assert_eq!(st["counters"]["failed_requests"], 0, "{st}");
    assert!(st["counters"]["predictions"].as_u64().unwrap() > 0, "{st}");
    let h = ctl(&sock, C::ModelHistory).result["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(h, swaps + 1, "every swap is in the history");
    eprintln!("{swaps} model swaps during fio verify");
    fx.stop();
}

/// `--adapt` on a live FUSE device: rounds run in the background on the
/// device's reads and each one, installed or rejected, is in the model
/// history with what it measured; a recording of the same live log runs
/// beside it.
#[test]
fn adapt_runs_rounds_in_the_background_and_writes_them_down() {
    use augur::control::Command as C;
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx
        .start_with(
            "linnos",
            false,
            &[
                "--adapt",
                "--adapt-every",
                "1s",
                "--adapt-min-new",
                "5000",
                // No pacing: the dev build trains slowly enough as it is.
                "--adapt-duty",
                "1",
            ],
        )
        .file
        .to_str()
        .unwrap()
        .to_string();
    let sock = fx.socket();
    let log = fx.tmp.path().join("x.log");
    let r = ctl(&sock, C::RecordStart { file: log.clone() });
    assert!(r.ok, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let round = loop {
        fio_verify_sized(&file, "adapt", "64M");
        let h = ctl(&sock, C::ModelHistory).result["events"].clone();
        let found = h
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("adapt round"))
            })
            .cloned();
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no adaptation round within 120 s: {h}"
        );
    };
    eprintln!("adaptation round: {round}");
    let r = ctl(&sock, C::RecordStop);
    assert!(r.ok, "{r:?}");
    let n = r.result["records"].as_u64().unwrap();
    let recs = augur_feature_store::read_log(&log).unwrap();
    assert!(
        n > 5000 && recs.len() as u64 == n,
        "{n} records, {} read back",
        recs.len()
    );
    // Installed or rejected, it says what it measured.
    let detail = round["detail"].as_str().unwrap();
    assert!(
        detail.contains("accuracy")
            && detail.contains("false-submit")
            && detail.contains("val loss"),
        "{round}"
    );
    let st = ctl(&sock, C::Stats).result;
    assert_eq!(st["counters"]["failed_requests"], 0, "{st}");
    fx.stop();
}

/// `--predict-on gpu` on a live FUSE device (needs a wgpu adapter: lavapipe
/// in CI; without one it prints why and passes unless `AUGUR_REQUIRE_GPU`
/// is set): reads are routed with GPU batches, `status` and `stats`
/// count them per device, and a model of another shape loaded through the
/// socket reaches the GPU (calibrated there) while reads keep going to it.
#[test]
fn predict_on_gpu_counts_gpu_batches_and_a_swapped_model_reaches_the_gpu() {
    use augur::control::Command as C;
    if !ready() {
        return;
    }
    if let Err(e) = augur_gpu_batcher::Gpu::open() {
        assert!(
            std::env::var_os("AUGUR_REQUIRE_GPU").is_none(),
            "AUGUR_REQUIRE_GPU is set and there is no adapter: {e}"
        );
        eprintln!("skipped: {e}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx
        .start_with("linnos", false, &["--predict-on", "gpu"])
        .file
        .clone();
    let sock = fx.socket();
    let read_for = |d: Duration| {
        let f = File::open(&file).unwrap();
        let mut buf = vec![0u8; 4096];
        let end = Instant::now() + d;
        let mut k = 0u64;
        while Instant::now() < end {
            f.read_at(&mut buf, (k * 7919 % 16_000) * 4096).unwrap();
            k += 1;
        }
    };
    let gpu_batches = || {
        ctl(&sock, C::Stats).result["counters"]["gpu_batches"]
            .as_u64()
            .unwrap()
    };
    read_for(Duration::from_secs(1));
    let before = gpu_batches();
    assert!(before > 0, "no GPU batches");
    let st = ctl(&sock, C::Status).result;
    assert_eq!(st["predict_on"]["mode"], "gpu", "{st}");
    assert_eq!(st["predict_on"]["device"], "gpu", "{st}");
    let other = other_model(fx.tmp.path(), 9);
    let r = ctl(
        &sock,
        C::ModelLoad {
            file: other.display().to_string(),
        },
    );
    assert!(r.ok, "{r:?}");
    // Upload, pipelines and a calibration for the new shape happen on the
    // GPU thread; meanwhile its batches run on the CPU.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        read_for(Duration::from_millis(200));
        let st = ctl(&sock, C::Status).result;
        let shapes = st["predict_on"]["crossovers"].to_string();
        if shapes.contains("47-64-2") {
            break;
        }
        assert!(
            Instant::now() < end,
            "the new model never reached the GPU: {st}"
        );
    }
    let mid = gpu_batches();
    read_for(Duration::from_secs(1));
    assert!(gpu_batches() > mid, "no GPU batches with the swapped model");
    let st = ctl(&sock, C::Status).result;
    assert_eq!(st["predict_on"]["failures"], 0, "{st}");
    fx.stop();
}
