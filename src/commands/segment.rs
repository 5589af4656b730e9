//! `thrombseg segment`: local files in, masks out, with the model loaded once.
//!
//! Several inputs show a progress bar when standard error is a terminal, and one plain line
//! per file otherwise, so logs of scripted runs stay readable.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::write_atomically;
use crate::error::{ErrorKind, JobError};
use crate::job::{BundleInfo, EnvelopeError, Stages, StatusEnvelope};
use crate::segmentation::{self, Segmenter};
use crate::settings::ModelArgs;
use crate::volume::{Statistics, encode_masks, read_input, write_label_map};

/// Exit code for input that can never be segmented.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// INPUT OUTPUT for one file, or INPUT... with --output-dir. An input is an .npz with
    /// `volume`, `non_mdc_mean` and `non_mdc_var`, or a NIfTI-1 file (.nii or .nii.gz, found
    /// from the bytes) with --non-mdc-mean and --non-mdc-var. An output is an .npz for
    /// `pred_2d` and `pred_3d`, or, for a name ending in .nii or .nii.gz, a NIfTI label map
    /// (1 = 2-D mask, 2 = 3-D mask, 3 = both) with a NIfTI input's header. Outputs are written
    /// only for jobs that succeed. Exit codes: 0 when every job succeeds, 2 when every failure
    /// is input that cannot be segmented, 1 for anything else.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Folder for the outputs of several inputs: NAME_masks.npz for an npz input,
    /// NAME_labels.nii.gz for a NIfTI input (NAME_masks.npz with --explain).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Also write both branches' logits and the 3-D scores (.npz output only).
    #[arg(long)]
    pub explain: bool,

    /// Mean intensity of non-contrast blood in Hounsfield units, for a NIfTI input.
    #[arg(long, requires = "non_mdc_var", allow_negative_numbers = true)]
    pub non_mdc_mean: Option<f64>,

    /// Variance of that intensity in squared Hounsfield units, for a NIfTI input.
    #[arg(long, requires = "non_mdc_mean")]
    pub non_mdc_var: Option<f64>,

    #[command(flatten)]
    pub model: ModelArgs,
}

/// One input and where its masks go.
struct FileJob {
    input: PathBuf,
    output: PathBuf,
}

pub fn run(args: SegmentArgs) -> ExitCode {
    let jobs = match plan_jobs(&args).and_then(|jobs| {
        for job in &jobs {
            check_paths(job, args.explain)?;
        }
        check_distinct_outputs(&jobs)?;
        Ok(jobs)
    }) {
        Ok(jobs) => jobs,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };

    let bundle_dir = match segmentation::locate_bundle(args.model.bundle.as_deref()) {
        Ok(dir) => dir,
        Err(error) => return startup_failure(&error),
    };
    let mut segmenter = match args
        .model
        .session_options()
        .and_then(|options| Ok(Segmenter::load(&bundle_dir, &options)?))
    {
        Ok(segmenter) => segmenter,
        Err(error) => return startup_failure(error.as_ref()),
    };

    let progress = Progress::new(jobs.len());
    let mut worst = None;
    for (index, job) in jobs.iter().enumerate() {
        progress.start(index, &job.input);
        let (envelope, outcome) = run_job(&args, job, &mut segmenter);
        progress.print(&envelope);
        if let Err(kind) = outcome {
            worst = Some(match worst {
                Some(ErrorKind::BadInput) | None => kind,
                Some(other) => other,
            });
        }
    }
    progress.finish();

    match worst {
        None => ExitCode::SUCCESS,
        Some(ErrorKind::BadInput) => ExitCode::from(EXIT_BAD_INPUT),
        Some(_) => ExitCode::FAILURE,
    }
}

/// Pairs inputs with outputs: two paths without --output-dir, any number of inputs with it.
fn plan_jobs(args: &SegmentArgs) -> Result<Vec<FileJob>, String> {
    let Some(dir) = &args.output_dir else {
        return match args.paths.as_slice() {
            [input, output] => Ok(vec![FileJob {
                input: input.clone(),
                output: output.clone(),
            }]),
            _ => Err(format!(
                "got {} paths: give INPUT OUTPUT for one file, or several inputs with --output-dir DIR",
                args.paths.len()
            )),
        };
    };
    Ok(args
        .paths
        .iter()
        .map(|input| FileJob {
            input: input.clone(),
            output: dir.join(output_name(input, args.explain)),
        })
        .collect())
}

/// Names the output of `input` in an output folder.
fn output_name(input: &Path, explain: bool) -> String {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_lowercase();
    let nifti = lower.ends_with(".nii") || lower.ends_with(".nii.gz");
    let stem_length = [".nii.gz", ".nii", ".npz"]
        .iter()
        .find(|suffix| lower.ends_with(*suffix))
        .map_or(name.len(), |suffix| name.len() - suffix.len());
    let stem = &name[..stem_length];
    if nifti && !explain {
        format!("{stem}_labels.nii.gz")
    } else {
        format!("{stem}_masks.npz")
    }
}

/// Segments one file; returns its envelope as JSON and the error kind of a failed job.
fn run_job(args: &SegmentArgs, job: &FileJob, segmenter: &mut Segmenter) -> (String, Result<(), ErrorKind>) {
    let job_id = job
        .input
        .file_name()
        .map_or_else(|| "local".to_owned(), |name| name.to_string_lossy().into_owned());
    let bundle = BundleInfo {
        name: segmenter.manifest().name.clone(),
        version: segmenter.manifest().version.clone(),
    };

    let mut stages = Stages::default();
    match segment_file(args, job, segmenter, &mut stages) {
        Ok(scores) => (StatusEnvelope::ok(job_id, 1, stages, bundle, scores).to_json(), Ok(())),
        Err(error) => {
            tracing::error!(input = %job.input.display(), error = %error, "segmentation failed; no output written");
            let kind = error.kind();
            let envelope = StatusEnvelope::error(
                job_id,
                1,
                stages,
                bundle,
                EnvelopeError {
                    kind: kind.as_str(),
                    message: error.to_string(),
                },
            );
            (envelope.to_json(), Err(kind))
        }
    }
}

/// Progress over several inputs: a bar on a terminal, plain lines elsewhere, nothing for one.
struct Progress {
    total: usize,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total: usize) -> Self {
        let bar = (total > 1 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
                .expect("the template is valid");
            bar.set_style(style);
            bar
        });
        Self { total, bar }
    }

    fn start(&self, index: usize, input: &Path) {
        if self.total < 2 {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(index as u64);
                bar.set_message(input.display().to_string());
            }
            None => eprintln!("[{}/{}] segmenting {}", index + 1, self.total, input.display()),
        }
    }

    /// Prints a line on standard output without tearing the bar.
    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message("done");
        }
    }
}

fn segment_file(
    args: &SegmentArgs,
    job: &FileJob,
    segmenter: &mut Segmenter,
    stages: &mut Stages,
) -> Result<Option<segmentation::Scores>, JobError> {
    let started = Instant::now();
    let bytes =
        std::fs::read(&job.input).map_err(|e| JobError::Internal(format!("read {}: {e}", job.input.display())))?;
    let statistics = args
        .non_mdc_mean
        .zip(args.non_mdc_var)
        .map(|(non_mdc_mean, non_mdc_var)| Statistics {
            non_mdc_mean,
            non_mdc_var,
        });
    let input = read_input(&bytes, args.model.read_limits(), statistics)?;
    drop(bytes);
    stages.decode = Some(started.elapsed().as_secs_f64());

    let segmentation = segmenter.segment(&input.volume, args.explain)?;
    stages.record_compute(&segmentation.timings);

    let started = Instant::now();
    let write_error = |e: std::io::Error| JobError::Internal(format!("write {}: {e}", job.output.display()));
    if is_nifti_path(&job.output) {
        write_label_map(
            &job.output,
            &segmentation.pred_2d,
            &segmentation.pred_3d,
            input.nifti_header.as_ref(),
        )
        .map_err(write_error)?;
    } else {
        let encoded = encode_masks(&segmentation.archive()).map_err(|e| JobError::Encode(e.to_string()))?;
        write_atomically(&job.output, &encoded).map_err(write_error)?;
    }
    stages.encode = Some(started.elapsed().as_secs_f64());

    Ok(segmentation.explain.map(|explain| explain.scores))
}

/// Checks that the input is a readable file and the output's folder exists, so that a typo
/// fails before the model loads and runs.
fn check_paths(job: &FileJob, explain: bool) -> Result<(), String> {
    std::fs::File::open(&job.input).map_err(|e| format!("cannot read input {}: {e}", job.input.display()))?;
    let folder = job
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(format!("output folder {} does not exist", folder.display()));
    }
    if job.output.is_dir() {
        return Err(format!(
            "output {} is a folder; give a file name, or use --output-dir for several inputs",
            job.output.display()
        ));
    }
    if same_file(&job.input, &job.output) {
        return Err(format!(
            "output {} is the input file; writing it would destroy the input",
            job.output.display()
        ));
    }
    if explain && is_nifti_path(&job.output) {
        return Err(format!(
            "--explain adds logits and scores, which a NIfTI label map cannot hold; write {} as .npz",
            job.output.display()
        ));
    }
    Ok(())
}

/// Returns true when both paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Rejects two inputs whose outputs would land on the same file, such as equal names from two
/// folders, before any work.
fn check_distinct_outputs(jobs: &[FileJob]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for job in jobs {
        if !seen.insert(&job.output) {
            return Err(format!(
                "two inputs would both write {}; give inputs with distinct file names",
                job.output.display()
            ));
        }
    }
    Ok(())
}

/// Returns true for output names ending in .nii or .nii.gz.
fn is_nifti_path(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

fn startup_failure(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
