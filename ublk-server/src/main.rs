//! `augur`: the daemon and command line of Augur, the replicated flash block
//! device that predicts slow reads and sends them elsewhere. The subcommands
//! live in `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
