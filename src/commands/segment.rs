//! `thrombseg segment`: one local file in, one masks archive out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::error::{ErrorKind, JobError};
use crate::job::{BundleInfo, EnvelopeError, Stages, StatusEnvelope};
use crate::segmentation::{self, Segmenter};
use crate::settings::ModelArgs;
use crate::volume::{encode_masks, read_npz};

/// Exit code for input that can never be segmented.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// Input .npz with `volume`, `non_mdc_mean` and `non_mdc_var`.
    pub input: PathBuf,

    /// Output .npz for `pred_2d` and `pred_3d`; written only when the job succeeds. Exit codes:
    /// 0 on success, 2 for input that cannot be segmented, 1 for anything else.
    pub output: PathBuf,

    /// Also write both branches' logits and the 3-D scores.
    #[arg(long)]
    pub explain: bool,

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
    let volume = read_npz(&bytes, args.model.read_limits())?;
    drop(bytes);
    stages.decode = Some(started.elapsed().as_secs_f64());

    let segmentation = segmenter.segment(&volume, args.explain)?;
    stages.record_compute(&segmentation.timings);

    let started = Instant::now();
    let encoded = encode_masks(&segmentation.archive()).map_err(|e| JobError::Encode(e.to_string()))?;
    write_atomically(&args.output, &encoded)
        .map_err(|e| JobError::Internal(format!("write {}: {e}", args.output.display())))?;
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
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it, so that `path` either
/// contains the whole archive or is left as it was.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
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

fn startup_failure(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
