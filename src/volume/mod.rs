//! Volume input and mask output: the file formats at both ends of a job.
//!
//! Reading turns untrusted bytes into a checked [`CtVolume`], and writing turns a finished
//! segmentation into the output archive. Neither depends on where the bytes come from or go.

mod masks;
mod npz;

pub use masks::{ExplainArrays, MaskArchive, encode_masks};
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
}
