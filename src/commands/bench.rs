//! `thrombseg bench`: whole jobs from local files, timed stage by stage.
//!
//! Prints per-stage seconds (the median of the runs), the arithmetic rate each network reached,
//! counted from the bundle's GFLOP per window and the windows actually run, and the process's
//! peak resident memory. Pods are sized from these numbers.
//!
//! With several inputs the jobs alternate between them, as a worker's queue mixes sizes, and
//! the resident memory after each job shows whether it stays flat. `--profile` adds ONNX
//! Runtime's time per operator type.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;

use crate::segmentation::model::NetworkSpec;
use crate::segmentation::profile::{self, OperatorTime};
use crate::segmentation::sliding::window_count;
use crate::segmentation::{self, Segmenter};
use crate::settings::ModelArgs;
use crate::volume::{encode_masks, read_npz};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Input .npz files, each run as a whole job.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,

    /// Runs per input; the report shows the median of each stage.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// Print one JSON object per input instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Keep the logits and scores as an explained job does.
    #[arg(long)]
    pub explain: bool,

    /// Profile ONNX Runtime and print the kernel time per operator type of each network,
    /// summed over all runs. Profiling adds a little time to every operator.
    #[arg(long)]
    pub profile: bool,

    #[command(flatten)]
    pub model: ModelArgs,
}

/// Stage timings of one run, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct RunSeconds {
    read: f64,
    decode: f64,
    preprocess: f64,
    infer_3d: f64,
    infer_2d: f64,
    postprocess: f64,
    encode: f64,
    write: f64,
}

impl RunSeconds {
    fn total(&self) -> f64 {
        self.read
            + self.decode
            + self.preprocess
            + self.infer_3d
            + self.infer_2d
            + self.postprocess
            + self.encode
            + self.write
    }
}

/// The report for one input.
#[derive(Debug, Serialize)]
struct Report {
    input: String,
    shape: [usize; 3],
    runs: u32,
    /// Median seconds per stage.
    median_seconds: RunSeconds,
    total_seconds: f64,
    /// Share of the job spent outside the two networks.
    outside_networks_fraction: f64,
    branch_3d: BranchWork,
    branch_2d: BranchWork,
    /// Peak resident memory of the process so far, in bytes.
    peak_rss_bytes: Option<u64>,
    /// Resident memory right after each run of this input, in bytes.
    rss_after_runs_bytes: Vec<u64>,
    execution_provider: &'static str,
}

/// One input's runs so far.
struct InputRuns<'a> {
    input: &'a Path,
    shape: [usize; 3],
    runs: Vec<RunSeconds>,
    rss_after_runs: Vec<u64>,
}

/// Work done by one network over a volume.
#[derive(Debug, Serialize)]
struct BranchWork {
    windows: usize,
    gflop_per_window: Option<f64>,
    gflop: Option<f64>,
    gflop_per_second: Option<f64>,
}

impl BranchWork {
    fn new(spec: &NetworkSpec, shape: [usize; 3], seconds: f64) -> Self {
        let windows = window_count(shape, spec.roi_3d(), spec.overlap);
        let gflop = spec.gflop_per_window.map(|per_window| per_window * windows as f64);
        Self {
            windows,
            gflop_per_window: spec.gflop_per_window,
            gflop,
            gflop_per_second: gflop.map(|work| work / seconds),
        }
    }
}

pub fn run(args: BenchArgs) -> ExitCode {
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile_dir()?;
    let mut options = args.model.session_options()?;
    if args.profile {
        options.profile_prefix = Some(scratch.join("profile"));
    }

    let started = Instant::now();
    let bundle_dir = segmentation::locate_bundle(args.model.bundle.as_deref())?;
    let mut segmenter = Segmenter::load(&bundle_dir, &options)?;
    let load_seconds = started.elapsed().as_secs_f64();
    if !args.json {
        let manifest = segmenter.manifest();
        println!(
            "bundle {} {} loaded in {load_seconds:.2} s on {}; {} run(s) per input, median seconds",
            manifest.name,
            manifest.version,
            segmenter.provider(),
            args.repeat
        );
    }

    let mut inputs: Vec<InputRuns> = args
        .inputs
        .iter()
        .map(|input| InputRuns {
            input,
            shape: [0; 3],
            runs: Vec::new(),
            rss_after_runs: Vec::new(),
        })
        .collect();
    let mut rss_after_jobs = Vec::new();
    for _ in 0..args.repeat {
        for input in &mut inputs {
            let (seconds, shape) = run_job(args, &mut segmenter, input.input, &scratch)?;
            input.shape = shape;
            input.runs.push(seconds);
            let rss = resident_bytes("VmRSS:").unwrap_or(0);
            input.rss_after_runs.push(rss);
            rss_after_jobs.push(rss);
        }
    }

    for input in &inputs {
        let report = summarize_runs(&segmenter, input);
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_table(&report);
        }
    }
    if !args.json {
        print_memory_trend(&rss_after_jobs);
    }
    if args.profile {
        print_profiles(&mut segmenter, args.json)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Runs one whole job from the file `input`; returns its stage times and the volume's shape.
fn run_job(
    args: &BenchArgs,
    segmenter: &mut Segmenter,
    input: &Path,
    scratch: &Path,
) -> anyhow::Result<(RunSeconds, [usize; 3])> {
    let limits = args.model.read_limits();
    let output = scratch.join("masks.npz");
    let mut seconds = RunSeconds::default();

    let started = Instant::now();
    let bytes = std::fs::read(input).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", input.display()))?;
    seconds.read = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let volume = read_npz(&bytes, limits).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    drop(bytes);
    seconds.decode = started.elapsed().as_secs_f64();
    let (h, w, d) = volume.voxels.dim();

    let segmentation = segmenter.segment(&volume, args.explain)?;
    seconds.preprocess = segmentation.timings.preprocess;
    seconds.infer_3d = segmentation.timings.infer_3d;
    seconds.infer_2d = segmentation.timings.infer_2d;
    seconds.postprocess = segmentation.timings.postprocess;

    let started = Instant::now();
    let encoded = encode_masks(&segmentation.archive())?;
    seconds.encode = started.elapsed().as_secs_f64();

    let started = Instant::now();
    std::fs::write(&output, &encoded)?;
    seconds.write = started.elapsed().as_secs_f64();

    Ok((seconds, [h, w, d]))
}

fn summarize_runs(segmenter: &Segmenter, input: &InputRuns) -> Report {
    let median_seconds = median_run(&input.runs);
    let networks = &segmenter.manifest().networks;
    let total_seconds = median_seconds.total();
    let network_seconds = median_seconds.infer_3d + median_seconds.infer_2d;
    Report {
        input: input.input.display().to_string(),
        shape: input.shape,
        runs: input.runs.len() as u32,
        median_seconds,
        total_seconds,
        outside_networks_fraction: (total_seconds - network_seconds) / total_seconds,
        branch_3d: BranchWork::new(&networks.three_d, input.shape, median_seconds.infer_3d),
        branch_2d: BranchWork::new(&networks.two_d, input.shape, median_seconds.infer_2d),
        peak_rss_bytes: resident_bytes("VmHWM:"),
        rss_after_runs_bytes: input.rss_after_runs.clone(),
        execution_provider: segmenter.provider().as_str(),
    }
}

/// Takes the median of each stage separately.
fn median_run(runs: &[RunSeconds]) -> RunSeconds {
    let median = |stage: fn(&RunSeconds) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(stage).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    RunSeconds {
        read: median(|r| r.read),
        decode: median(|r| r.decode),
        preprocess: median(|r| r.preprocess),
        infer_3d: median(|r| r.infer_3d),
        infer_2d: median(|r| r.infer_2d),
        postprocess: median(|r| r.postprocess),
        encode: median(|r| r.encode),
        write: median(|r| r.write),
    }
}

fn print_table(report: &Report) {
    let s = &report.median_seconds;
    println!();
    println!(
        "{}  shape ({}, {}, {})",
        report.input, report.shape[0], report.shape[1], report.shape[2]
    );
    for (stage, seconds) in [("read", s.read), ("decode", s.decode), ("preprocess", s.preprocess)] {
        println!("  {stage:<12}{seconds:>9.3} s");
    }
    for (stage, seconds, work) in [
        ("infer_3d", s.infer_3d, &report.branch_3d),
        ("infer_2d", s.infer_2d, &report.branch_2d),
    ] {
        let rate = match (work.gflop, work.gflop_per_second) {
            (Some(gflop), Some(rate)) => format!("{gflop:.1} GFLOP, {rate:.1} GFLOP/s"),
            _ => "bundle has no gflop_per_window".to_owned(),
        };
        println!("  {stage:<12}{seconds:>9.3} s   {} windows, {rate}", work.windows);
    }
    for (stage, seconds) in [("postprocess", s.postprocess), ("encode", s.encode), ("write", s.write)] {
        println!("  {stage:<12}{seconds:>9.3} s");
    }
    println!(
        "  {:<12}{:>9.3} s   {:.1}% outside the networks",
        "total",
        report.total_seconds,
        report.outside_networks_fraction * 100.0
    );
    match report.peak_rss_bytes {
        Some(bytes) => println!("  peak resident memory {:.0} MB", bytes as f64 / 1e6),
        None => println!("  peak resident memory unknown (no /proc/self/status)"),
    }
}

/// Prints the resident memory after the first, the fifth and the last jobs, so that growth
/// across jobs shows.
fn print_memory_trend(rss_after_jobs: &[u64]) {
    let megabytes = |bytes: u64| bytes as f64 / 1e6;
    let (Some(&first), Some(&last)) = (rss_after_jobs.first(), rss_after_jobs.last()) else {
        return;
    };
    let largest = rss_after_jobs.iter().copied().max().unwrap_or(last);
    let fifth = match rss_after_jobs.get(4) {
        Some(&bytes) if rss_after_jobs.len() > 5 => format!(", fifth {:.0} MB", megabytes(bytes)),
        _ => String::new(),
    };
    println!();
    println!(
        "resident memory after each of {} job(s): first {:.0} MB{fifth}, last {:.0} MB, largest {:.0} MB",
        rss_after_jobs.len(),
        megabytes(first),
        megabytes(last),
        megabytes(largest)
    );
}

/// Ends profiling and prints the kernel time per operator type of each network.
fn print_profiles(segmenter: &mut Segmenter, json: bool) -> anyhow::Result<()> {
    let mut profiles = serde_json::Map::new();
    for (network, file) in segmenter.end_profiling()? {
        let times = profile::summarize_file(&file)?;

        if json {
            profiles.insert(network.to_owned(), serde_json::to_value(&times)?);
            continue;
        }
        println!();
        println!("{network} network, kernel time per operator type over all runs:");
        for time in times.iter().take(12) {
            print_operator(time);
        }
    }
    if json {
        println!("{}", serde_json::json!({ "profile": profiles }));
    }
    Ok(())
}

fn print_operator(time: &OperatorTime) {
    println!(
        "  {:<24}{:>9.3} s {:>6.1}%  {:>6} calls",
        time.operator,
        time.seconds,
        time.share * 100.0,
        time.calls
    );
}

/// Reads one memory field of `/proc/self/status` in bytes: `VmHWM:` is the peak resident set,
/// `VmRSS:` the current one.
fn resident_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("thrombseg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
