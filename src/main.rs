use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    thrombseg::commands::run(thrombseg::commands::Cli::parse())
}
