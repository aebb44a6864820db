//! Helpers shared by the end-to-end tests that run the `augur` binary.

#![allow(dead_code)] // each test file uses some of these

pub mod fuse;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the `augur` binary this test build made, with `args`.
pub fn augur(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_augur"))
        .args(args)
        .output()
        .expect("run augur")
}

/// Its standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The path of a tool, from PATH or the sbin directories.
pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Runs a command, killing it after `secs`; panics on timeout.
pub fn run_timeout(cmd: &mut Command, secs: u64) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let out = wait_timeout(&mut child, Duration::from_secs(secs));
    match out {
        Some(_) => child.wait_with_output().unwrap(),
        None => {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{shown} did not finish within {secs} s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// Waits up to `d` for `child` to exit.
pub fn wait_timeout(child: &mut Child, d: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + d;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command that must succeed within `secs`; returns its stdout.
pub fn must(cmd: &mut Command, secs: u64) -> String {
    let shown = format!("{cmd:?}");
    let o = run_timeout(cmd, secs);
    assert!(
        o.status.success(),
        "{shown} failed: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
