//! The command line: one subcommand per use, each a thin wiring of the pipeline's stages.

mod bench;
mod segment;
mod submit;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::LogFormat;

/// Segments thrombus in CT volumes with a 3-D and a 2-D SegResNet on ONNX Runtime.
#[derive(Debug, Parser)]
#[command(name = "thrombseg", version, about)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, env = "THROMBSEG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment a local .npz volume and write the masks; prints the status envelope.
    Segment(segment::SegmentArgs),
    /// Time whole jobs on local files, stage by stage, with GFLOP/s and peak memory.
    Bench(bench::BenchArgs),
    /// Consume jobs from RabbitMQ until SIGTERM or Ctrl-C.
    Worker(worker::WorkerArgs),
    /// Upload a volume to S3, enqueue a job for it, wait for the result and download it.
    ///
    /// The S3 endpoint, region and keys come from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Exit codes: 0 for an OK envelope, 2 for
    /// bad input, 1 for anything else.
    Submit(submit::SubmitArgs),
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    crate::telemetry::init(cli.log_format);
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Segment(args) => segment::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Submit(args) => submit::run(args),
    }
}

/// Builds the multi-threaded runtime the networked commands use.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}
