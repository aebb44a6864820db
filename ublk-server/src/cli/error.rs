//! The command line's own error: a flag the user must fix (exit status 2).

/// A bad flag or flag combination, named.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's value or combination is wrong; the message names the flag.
    #[error("{0}")]
    BadFlag(String),
}
