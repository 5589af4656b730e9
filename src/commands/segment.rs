//! `thrombseg segment`: one local file in, one masks archive out.

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
    /// Input: an .npz with `volume`, `non_mdc_mean` and `non_mdc_var`, or a NIfTI-1 file
    /// (.nii or .nii.gz, found from the bytes) with --non-mdc-mean and --non-mdc-var.
    pub input: PathBuf,

    /// Output .npz for `pred_2d` and `pred_3d`, or, for a name ending in .nii or .nii.gz, a
    /// NIfTI label map (1 = 2-D mask, 2 = 3-D mask, 3 = both) with a NIfTI input's header.
    /// Written only when the job succeeds. Exit codes: 0 on success, 2 for input that cannot
    /// be segmented, 1 for anything else.
    pub output: PathBuf,

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

pub fn run(args: SegmentArgs) -> ExitCode {
    if let Err(message) = check_paths(&args) {
        eprintln!("error: {message}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }

    let job_id = args
        .input
        .file_name()
        .map_or_else(|| "local".to_owned(), |name| name.to_string_lossy().into_owned());

    let bundle_dir = match segmentation::locate_bundle(args.model.bundle.as_deref()) {
        Ok(dir) => dir,
        Err(error) => return startup_failure(&error),
    };
    let segmenter = match args
        .model
        .session_options()
        .and_then(|options| Ok(Segmenter::load(&bundle_dir, &options)?))
    {
        Ok(segmenter) => segmenter,
        Err(error) => return startup_failure(error.as_ref()),
    };
    let bundle = BundleInfo {
        name: segmenter.manifest().name.clone(),
        version: segmenter.manifest().version.clone(),
    };

    let mut stages = Stages::default();
    let envelope = match segment_file(&args, segmenter, &mut stages) {
        Ok(scores) => StatusEnvelope::ok(job_id, 1, stages, bundle, scores),
        Err(error) => {
            tracing::error!(input = %args.input.display(), error = %error, "segmentation failed; no output written");
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
            println!("{}", envelope.to_json());
            return match kind {
                ErrorKind::BadInput => ExitCode::from(EXIT_BAD_INPUT),
                _ => ExitCode::FAILURE,
            };
        }
    };
    println!("{}", envelope.to_json());
    ExitCode::SUCCESS
}

fn segment_file(
    args: &SegmentArgs,
    mut segmenter: Segmenter,
    stages: &mut Stages,
) -> Result<Option<segmentation::Scores>, JobError> {
    let started = Instant::now();
    let bytes =
        std::fs::read(&args.input).map_err(|e| JobError::Internal(format!("read {}: {e}", args.input.display())))?;
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
    let write_error = |e: std::io::Error| JobError::Internal(format!("write {}: {e}", args.output.display()));
    if is_nifti_path(&args.output) {
        write_label_map(
            &args.output,
            &segmentation.pred_2d,
            &segmentation.pred_3d,
            input.nifti_header.as_ref(),
        )
        .map_err(write_error)?;
    } else {
        let encoded = encode_masks(&segmentation.archive()).map_err(|e| JobError::Encode(e.to_string()))?;
        write_atomically(&args.output, &encoded).map_err(write_error)?;
    }
    stages.encode = Some(started.elapsed().as_secs_f64());

    Ok(segmentation.explain.map(|explain| explain.scores))
}

/// Checks that the input is a readable file and the output's folder exists, so that a typo
/// fails before the model loads and runs.
fn check_paths(args: &SegmentArgs) -> Result<(), String> {
    std::fs::File::open(&args.input).map_err(|e| format!("cannot read input {}: {e}", args.input.display()))?;
    let folder = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(format!("output folder {} does not exist", folder.display()));
    }
    if args.explain && is_nifti_path(&args.output) {
        return Err(format!(
            "--explain adds logits and scores, which a NIfTI label map cannot hold; write {} as .npz",
            args.output.display()
        ));
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
