//! `thrombseg preview`: a PNG montage of axial slices with both masks drawn over the CT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::write_atomically;
use crate::preprocess::IntensityWindow;
use crate::render::image::encode_png;
use crate::render::masks::{Masks, read_masks};
use crate::render::montage::{MontageInput, render_montage, select_slices};
use crate::volume::{CtVolume, ReadLimits, read_npz};

/// Exit code for input files that are missing, unreadable or invalid.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// Input .npz with `volume`, `non_mdc_mean` and `non_mdc_var`, as given to `segment`.
    pub volume: PathBuf,

    /// Masks .npz that `segment` wrote for VOLUME: uint8 `pred_2d` and `pred_3d` of the
    /// volume's shape.
    pub masks: PathBuf,

    /// Output PNG file, written only when the whole image is ready. Exit codes: 0 on success,
    /// 2 for input files that are missing, unreadable or invalid, 1 for anything else.
    #[arg(short, long)]
    pub output: PathBuf,

    /// Maximum number of tiles. Slices where either mask has voxels are evenly sampled down to
    /// it. When both masks are empty, slices are evenly spaced through the volume instead.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u16).range(1..))]
    pub slices: u16,

    /// Maximum number of tiles per row.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub columns: u16,

    /// Half-width of the display window, in standard deviations of the non-contrast intensity
    /// around its mean. The pipeline windows the network input the same way, with 3 in the
    /// default bundle.
    #[arg(long, default_value_t = 3.0, value_parser = parse_sigmas)]
    pub window_sigmas: f64,

    /// Extra line under the title, for example where the masks come from.
    #[arg(long)]
    pub caption: Option<String>,

    /// Largest volume accepted, in voxels.
    #[arg(long, env = "THROMBSEG_MAX_VOXELS", default_value_t = ReadLimits::default().max_voxels)]
    pub max_voxels: u64,
}

/// Why a preview failed, which decides the exit code.
#[derive(Debug)]
enum Failure {
    BadInput(String),
    Internal(String),
}

pub fn run(args: PreviewArgs) -> ExitCode {
    match preview(&args) {
        Ok(summary) => {
            tracing::info!(
                output = %args.output.display(),
                tiles = summary.tiles,
                width = summary.width,
                height = summary.height,
                bytes = summary.bytes,
                "preview written"
            );
            ExitCode::SUCCESS
        }
        Err(Failure::BadInput(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(Failure::Internal(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Size of a written preview, for the log.
struct Summary {
    tiles: usize,
    width: usize,
    height: usize,
    bytes: usize,
}

fn preview(args: &PreviewArgs) -> Result<Summary, Failure> {
    check_output_folder(&args.output).map_err(Failure::BadInput)?;

    let volume = read_volume(&args.volume, args.max_voxels).map_err(Failure::BadInput)?;
    let masks = read_mask_file(&args.masks, volume.voxels.dim()).map_err(Failure::BadInput)?;

    let selection = select_slices(&masks, usize::from(args.slices));
    let window = IntensityWindow::from_statistics(volume.non_mdc_mean, volume.non_mdc_var, args.window_sigmas);
    let title = Title {
        volume_path: &args.volume,
        masks_path: &args.masks,
        shape: volume.voxels.dim(),
        tile_count: selection.slices.len(),
        masks_empty: selection.masks_empty,
        window,
        window_sigmas: args.window_sigmas,
        caption: args.caption.as_deref(),
    };
    let title_lines = title.lines(&masks);

    let image = render_montage(&MontageInput {
        voxels: &volume.voxels,
        masks: &masks,
        window,
        slices: &selection.slices,
        title_lines: &title_lines,
        columns: usize::from(args.columns),
    });
    let png = encode_png(&image).map_err(|e| Failure::Internal(format!("failed to encode the PNG: {e}")))?;
    write_atomically(&args.output, &png)
        .map_err(|e| Failure::Internal(format!("failed to write {}: {e}", args.output.display())))?;

    Ok(Summary {
        tiles: selection.slices.len(),
        width: image.width(),
        height: image.height(),
        bytes: png.len(),
    })
}

fn read_volume(path: &Path, max_voxels: u64) -> Result<CtVolume, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read volume {}: {e}", path.display()))?;
    read_npz(&bytes, ReadLimits { max_voxels }).map_err(|e| format!("volume {}: {e}", path.display()))
}

fn read_mask_file(path: &Path, volume_shape: (usize, usize, usize)) -> Result<Masks, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read masks {}: {e}", path.display()))?;
    read_masks(&bytes, volume_shape).map_err(|e| format!("masks {}: {e}", path.display()))
}

/// Text above the montage: what was drawn, from which files, and with which window.
struct Title<'a> {
    volume_path: &'a Path,
    masks_path: &'a Path,
    /// Volume shape (H, W, D).
    shape: (usize, usize, usize),
    tile_count: usize,
    masks_empty: bool,
    window: IntensityWindow,
    window_sigmas: f64,
    caption: Option<&'a str>,
}

impl Title<'_> {
    /// Formats the title: input name, shape and tile count, then mask voxel counts or a note
    /// that the masks are empty, then the window, then the caption if there is one.
    fn lines(&self, masks: &Masks) -> Vec<String> {
        let (height, width, depth) = self.shape;
        let mut lines = vec![format!(
            "{}: {height} × {width} × {depth} voxels (H × W × D), {} of {depth} axial slices shown",
            file_name(self.volume_path),
            self.tile_count,
        )];

        let masks_name = file_name(self.masks_path);
        if self.masks_empty {
            lines.push(format!(
                "{masks_name}: both masks are empty, so the slices are evenly spaced through the volume"
            ));
        } else {
            let counts = VoxelCounts::of(masks);
            lines.push(format!(
                "{masks_name}: 2-D mask {} voxels, 3-D mask {} voxels, {} in both",
                counts.pred_2d, counts.pred_3d, counts.both
            ));
        }

        lines.push(format!(
            "window {:.0} to {:.0} HU (mean ± {} SD), tile rows along H, columns along W",
            self.window.lower, self.window.upper, self.window_sigmas
        ));
        if let Some(caption) = self.caption {
            lines.push(caption.to_owned());
        }
        lines
    }
}

/// Mask voxels in the whole volume.
struct VoxelCounts {
    pred_2d: usize,
    pred_3d: usize,
    both: usize,
}

impl VoxelCounts {
    fn of(masks: &Masks) -> Self {
        let both = masks.pred_2d.iter().zip(masks.pred_3d.iter());
        Self {
            pred_2d: masks.pred_2d.iter().filter(|&&v| v != 0).count(),
            pred_3d: masks.pred_3d.iter().filter(|&&v| v != 0).count(),
            both: both.filter(|&(&a, &b)| a != 0 && b != 0).count(),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn parse_sigmas(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("must be a positive number, got {value}"));
    }
    Ok(value)
}

/// Checks that the output's folder exists, so that a typo fails before the inputs are read.
fn check_output_folder(output: &Path) -> Result<(), String> {
    let folder = output_folder(output);
    if !folder.is_dir() {
        return Err(format!("output folder {} does not exist", folder.display()));
    }
    Ok(())
}

fn output_folder(output: &Path) -> &Path {
    output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    fn title(masks_empty: bool) -> Title<'static> {
        Title {
            volume_path: Path::new("/data/case.npz"),
            masks_path: Path::new("/out/case_masks.npz"),
            shape: (60, 50, 40),
            tile_count: 12,
            masks_empty,
            window: IntensityWindow::from_statistics(250.0, 1000.0, 3.0),
            window_sigmas: 3.0,
            caption: Some("random weights"),
        }
    }

    #[test]
    fn title_names_files_shape_and_counts() {
        let mut masks = Masks {
            pred_2d: Array3::zeros((60, 50, 40)),
            pred_3d: Array3::zeros((60, 50, 40)),
        };
        masks.pred_2d[[1, 1, 1]] = 1;
        masks.pred_2d[[2, 2, 2]] = 1;
        masks.pred_3d[[2, 2, 2]] = 1;

        let lines = title(false).lines(&masks);

        assert_eq!(
            lines[0],
            "case.npz: 60 × 50 × 40 voxels (H × W × D), 12 of 40 axial slices shown"
        );
        assert_eq!(
            lines[1],
            "case_masks.npz: 2-D mask 2 voxels, 3-D mask 1 voxels, 1 in both"
        );
        assert!(
            lines[2].starts_with("window 155 to 345 HU (mean ± 3 SD)"),
            "{}",
            lines[2]
        );
        assert_eq!(lines[3], "random weights");
    }

    #[test]
    fn title_says_masks_are_empty() {
        let masks = Masks {
            pred_2d: Array3::zeros((60, 50, 40)),
            pred_3d: Array3::zeros((60, 50, 40)),
        };

        let lines = title(true).lines(&masks);

        assert!(lines[1].contains("both masks are empty"), "{}", lines[1]);
    }

    #[test]
    fn sigmas_must_be_positive() {
        assert_eq!(parse_sigmas("2.5"), Ok(2.5));
        assert!(parse_sigmas("0").is_err());
        assert!(parse_sigmas("-1").is_err());
        assert!(parse_sigmas("inf").is_err());
        assert!(parse_sigmas("three").is_err());
    }
}
