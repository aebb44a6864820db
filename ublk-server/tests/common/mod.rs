//! Helpers shared by the end-to-end tests that run the `augur` binary.

use std::process::{Command, Output};

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
