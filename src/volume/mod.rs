//! Volume input and mask output: the file formats at both ends of a job.
//!
//! Reading turns untrusted bytes into a checked [`CtVolume`], and writing turns a finished
//! segmentation into the output archive. Neither depends on where the bytes come from or go.

mod masks;
mod nifti;
mod npz;

pub use masks::{ExplainArrays, MaskArchive, encode_masks};
pub use nifti::{LABEL_DESCRIPTION, Statistics, label_map, looks_like_nifti, read_nifti, write_label_map};
pub use npz::{MEAN_KEY, ReadLimits, VARIANCE_KEY, VOLUME_KEY, read_npz};

use ndarray::Array3;

/// A CT volume with the statistics that place its intensity window.
#[derive(Clone, Debug)]
pub struct CtVolume {
    /// Voxels in Hounsfield units, shape (H, W, D) with D the axial axis, in C order.
    pub voxels: Array3<f32>,
    /// Mean intensity of non-contrast blood, in Hounsfield units.
    pub non_mdc_mean: f64,
    /// Variance of that intensity, in squared Hounsfield units.
    pub non_mdc_var: f64,
}

/// A volume read from either input format, with the NIfTI header when there was one.
pub struct InputVolume {
    pub volume: CtVolume,
    pub nifti_header: Option<::nifti::NiftiHeader>,
}

/// Reads an input whose format is found from its bytes: an npz archive (which carries its own
/// statistics) or a NIfTI-1 file, gzip-compressed or not (which takes `statistics`).
pub fn read_input(
    bytes: &[u8],
    limits: ReadLimits,
    statistics: Option<Statistics>,
) -> Result<InputVolume, VolumeError> {
    if looks_like_nifti(bytes) {
        let (volume, header) = read_nifti(bytes, limits, statistics)?;
        return Ok(InputVolume {
            volume,
            nifti_header: Some(header),
        });
    }
    Ok(InputVolume {
        volume: read_npz(bytes, limits)?,
        nifti_header: None,
    })
}

/// Checks the two statistics: a finite mean and a finite, positive variance.
fn check_statistics(non_mdc_mean: f64, non_mdc_var: f64) -> Result<(), VolumeError> {
    if !non_mdc_mean.is_finite() {
        return Err(VolumeError::InvalidStatistic {
            key: MEAN_KEY,
            reason: format!("must be finite, got {non_mdc_mean}"),
        });
    }
    if !(non_mdc_var.is_finite() && non_mdc_var > 0.0) {
        return Err(VolumeError::InvalidStatistic {
            key: VARIANCE_KEY,
            reason: format!("must be finite and positive, got {non_mdc_var}"),
        });
    }
    Ok(())
}

/// Reasons an input archive cannot be segmented. Every variant names the archive key at fault.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("input is not a valid npz (zip) archive; it may be truncated ({0})")]
    NotZip(zip::result::ZipError),
    #[error("input is a single .npy array, not an .npz archive; save it with numpy.savez")]
    NpyNotNpz,
    #[error("input is missing the key `{key}` (expected `volume`, `non_mdc_mean` and `non_mdc_var`)")]
    MissingKey { key: &'static str },
    #[error("`{key}`: archive member is corrupt: {error}")]
    Corrupt {
        key: &'static str,
        #[source]
        error: zip::result::ZipError,
    },
    #[error("`{key}`: invalid .npy header: {reason}")]
    Header { key: &'static str, reason: String },
    #[error("`{key}`: dtype {dtype} is not an integer or float type of 8 to 64 bits")]
    UnsupportedDtype { key: &'static str, dtype: String },
    #[error(
        "`{key}`: shape {shape} has more elements than the limit of {limit}; raise --max-voxels (THROMBSEG_MAX_VOXELS) to accept it"
    )]
    TooLarge {
        key: &'static str,
        shape: String,
        limit: u64,
    },
    #[error("`{key}`: header declares {expected} data bytes for shape {shape}, but the archive member holds {actual}")]
    SizeMismatch {
        key: &'static str,
        shape: String,
        expected: u64,
        actual: u64,
    },
    #[error("`{key}`: cannot read the array data: {reason}")]
    Data { key: &'static str, reason: String },
    #[error("`volume`: expected 3 dimensions (H, W, D), got shape {shape}")]
    NotThreeDimensional { shape: String },
    #[error("`volume`: shape {shape} has an empty axis")]
    EmptyAxis { shape: String },
    #[error(
        "`volume`: {count} values are NaN or infinite (the first at index {first_index}); the volume must hold finite numbers"
    )]
    NotFinite { count: usize, first_index: String },
    #[error("`{key}`: expected a single number, got shape {shape}")]
    NotScalar { key: &'static str, shape: String },
    #[error("`{key}`: {reason}")]
    InvalidStatistic { key: &'static str, reason: String },
    #[error("input is not a valid NIfTI-1 file: {0}")]
    NotNifti(String),
    #[error(
        "a NIfTI input carries no non_mdc_mean and non_mdc_var: give them with --non-mdc-mean and --non-mdc-var, or as non_mdc_mean and non_mdc_var in the job"
    )]
    MissingStatistics,
}
