//! The command line: one subcommand per use, each a thin wiring of the pipeline's stages.

mod bench;
mod preview;
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
    /// Draw a PNG montage of axial slices with the 2-D and 3-D masks over the CT.
    ///
    /// Each tile is one slice along D, the volume's last axis, with its index counted from 0
    /// in the top-left corner. Tile rows run along H and tile columns along W, so a tile shows
    /// volume[:, :, d] as stored, enlarged by an integer factor (nearest neighbour) until its
    /// longer side is at least 192 pixels. The CT is windowed as the pipeline does: from
    /// non_mdc_mean - k * sqrt(non_mdc_var) to non_mdc_mean + k * sqrt(non_mdc_var), with k
    /// set by --window-sigmas. Orange marks the 2-D mask, azure the 3-D mask and pink their
    /// overlap, each filled at 55 % opacity inside a one-pixel outline.
    Preview(preview::PreviewArgs),
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    crate::telemetry::init(cli.log_format);
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Segment(args) => segment::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Preview(args) => preview::run(args),
    }
}

/// Builds the multi-threaded runtime the networked commands use.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Writes `bytes` to a temporary file beside `path`, then renames it, so that `path` either
/// contains the whole file or is left as it was.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;

    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("output path has no file name"))?;
    let temporary = dir.join(format!(
        ".{}.{}.partial",
        file_name.to_string_lossy(),
        std::process::id()
    ));

    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
