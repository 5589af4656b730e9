//! NIfTI-1 volumes (`.nii`, `.nii.gz`): CT inputs in, label maps out.
//!
//! Radiology tools such as 3D Slicer and ITK-SNAP read and write NIfTI. A NIfTI file has no
//! place for the non-contrast blood statistics, so the caller supplies them. The label map
//! keeps the input's header, so its affine places the masks on the input's voxels.

use std::io::{Cursor, Read};
use std::path::Path;

use flate2::read::GzDecoder;
use ndarray::{Array3, Axis, Ix3, Zip};
use nifti::{InMemNiftiObject, IntoNdArray, NiftiHeader, NiftiObject, NiftiType};

use super::{CtVolume, ReadLimits, VolumeError, check_statistics};

/// The statistics an npz input carries and a NIfTI input gets from its caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Statistics {
    /// Mean intensity of non-contrast blood, in Hounsfield units.
    pub non_mdc_mean: f64,
    /// Variance of that intensity, in squared Hounsfield units.
    pub non_mdc_var: f64,
}

/// Label map values: bit 0 is the 2-D mask, bit 1 the 3-D mask.
pub const LABEL_DESCRIPTION: &str = "thrombseg labels: 1 = 2-D mask, 2 = 3-D mask, 3 = both";

/// NIfTI intent code of a label map (`NIFTI_INTENT_LABEL`).
const INTENT_LABEL: i16 = 1002;

/// Size of a NIfTI-1 header; the volume of a single file starts at 352 or later.
const HEADER_BYTES: usize = 348;

/// Returns true when `bytes` start like a NIfTI-1 single file, gzip-compressed or not.
pub fn looks_like_nifti(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b]) || is_nifti_header(bytes)
}

fn is_nifti_header(bytes: &[u8]) -> bool {
    let Some(size) = bytes.get(..4) else {
        return false;
    };
    let sizeof_hdr_matches = size == 348i32.to_le_bytes() || size == 348i32.to_be_bytes();
    sizeof_hdr_matches && bytes.get(344..348) == Some(b"n+1\0".as_slice())
}

/// Parses a NIfTI-1 single file held in memory, gzip-compressed or not, and returns the
/// volume with the given statistics and the file's header.
pub fn read_nifti(
    bytes: &[u8],
    limits: ReadLimits,
    statistics: Option<Statistics>,
) -> Result<(CtVolume, NiftiHeader), VolumeError> {
    let statistics = statistics.ok_or(VolumeError::MissingStatistics)?;
    check_statistics(statistics.non_mdc_mean, statistics.non_mdc_var)?;

    let raw = decompress(bytes, limits)?;
    let header = read_header(&raw, limits)?;
    let object = InMemNiftiObject::from_reader(Cursor::new(&raw)).map_err(invalid)?;
    let values = object.into_volume().into_ndarray::<f32>().map_err(invalid)?;

    // Axes past the third have length 1 (checked with the header). The file stores x
    // fastest; the pipeline wants (H, W, D) = (x, y, z) in C order.
    let mut values = values;
    while values.ndim() > 3 {
        let last = Axis(values.ndim() - 1);
        values = values.index_axis_move(last, 0);
    }
    let voxels = values.into_dimensionality::<Ix3>().map_err(invalid)?;
    let voxels = voxels.as_standard_layout().into_owned();
    check_finite(&voxels)?;

    let volume = CtVolume {
        voxels,
        non_mdc_mean: statistics.non_mdc_mean,
        non_mdc_var: statistics.non_mdc_var,
    };
    Ok((volume, header))
}

/// Inflates a gzip-compressed file, never past the largest volume `limits` allow.
fn decompress(bytes: &[u8], limits: ReadLimits) -> Result<Vec<u8>, VolumeError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes.to_vec());
    }
    // 8 bytes per voxel is the widest type read, plus room for the header and extensions.
    let cap = limits.max_voxels.saturating_mul(8).saturating_add(1 << 20);
    let mut raw = Vec::new();
    GzDecoder::new(bytes)
        .take(cap.saturating_add(1))
        .read_to_end(&mut raw)
        .map_err(|e| invalid(format!("cannot decompress the gzip stream: {e}")))?;
    if raw.len() as u64 > cap {
        return Err(VolumeError::TooLarge {
            key: "volume",
            shape: "(decompressed size)".into(),
            limit: limits.max_voxels,
        });
    }
    Ok(raw)
}

/// Reads and checks the header before any volume memory is allocated.
fn read_header(raw: &[u8], limits: ReadLimits) -> Result<NiftiHeader, VolumeError> {
    if raw.len() < HEADER_BYTES || !is_nifti_header(raw) {
        return Err(invalid("no NIfTI-1 single-file header (magic n+1)"));
    }
    let header = NiftiHeader::from_reader(Cursor::new(raw)).map_err(invalid)?;

    let rank = usize::from(header.dim[0]);
    let extra_axes_are_one = header.dim[4..=rank.clamp(3, 7)].iter().all(|&n| n == 1);
    if !(3..=7).contains(&rank) || !extra_axes_are_one {
        return Err(VolumeError::NotThreeDimensional {
            shape: format!("{:?}", &header.dim[1..=rank.clamp(1, 7)]),
        });
    }
    let shape = &header.dim[1..4];
    if shape.contains(&0) {
        return Err(VolumeError::EmptyAxis {
            shape: format!("{shape:?}"),
        });
    }
    let voxels: u64 = shape.iter().map(|&n| u64::from(n)).product();
    if voxels > limits.max_voxels {
        return Err(VolumeError::TooLarge {
            key: "volume",
            shape: format!("{shape:?}"),
            limit: limits.max_voxels,
        });
    }

    let datatype = header.data_type().map_err(invalid)?;
    if !matches!(
        datatype,
        NiftiType::Uint8
            | NiftiType::Int8
            | NiftiType::Uint16
            | NiftiType::Int16
            | NiftiType::Uint32
            | NiftiType::Int32
            | NiftiType::Uint64
            | NiftiType::Int64
            | NiftiType::Float32
            | NiftiType::Float64
    ) {
        return Err(VolumeError::UnsupportedDtype {
            key: "volume",
            dtype: format!("NIfTI {datatype:?}"),
        });
    }
    let needed = header.vox_offset as u64 + voxels * u64::from(datatype.size_of() as u32);
    if (raw.len() as u64) < needed {
        return Err(invalid(format!(
            "the header's shape {shape:?} and data offset need {needed} bytes, but the file holds {}; it may be truncated",
            raw.len()
        )));
    }
    Ok(header)
}

fn check_finite(voxels: &Array3<f32>) -> Result<(), VolumeError> {
    let count = voxels.iter().filter(|v| !v.is_finite()).count();
    if count == 0 {
        return Ok(());
    }
    let (index, _) = voxels
        .indexed_iter()
        .find(|(_, v)| !v.is_finite())
        .expect("count is positive");
    Err(VolumeError::NotFinite {
        count,
        first_index: format!("{index:?}"),
    })
}

fn invalid(reason: impl std::fmt::Display) -> VolumeError {
    VolumeError::NotNifti(reason.to_string())
}

/// Combines the masks into one label map: 0 background, 1 the 2-D mask only, 2 the 3-D mask
/// only, 3 both.
pub fn label_map(pred_2d: &Array3<u8>, pred_3d: &Array3<u8>) -> Array3<u8> {
    Zip::from(pred_2d)
        .and(pred_3d)
        .map_collect(|&two_d, &three_d| (two_d & 1) | ((three_d & 1) << 1))
}

/// Writes the label map of the two masks to `path` (`.nii` or `.nii.gz`), with `reference`'s
/// orientation, spacing and units when the input was NIfTI, or a 1 mm identity header when not.
///
/// The file appears complete or not at all: it is written beside `path` and then renamed.
pub fn write_label_map(
    path: &Path,
    pred_2d: &Array3<u8>,
    pred_3d: &Array3<u8>,
    reference: Option<&NiftiHeader>,
) -> std::io::Result<()> {
    let mut header = reference.cloned().unwrap_or_default();
    header.intent_code = INTENT_LABEL;
    header.cal_min = 0.0;
    header.cal_max = 3.0;
    header.descrip = LABEL_DESCRIPTION.as_bytes().to_vec();
    header.descrip.resize(80, 0);

    let labels = label_map(pred_2d, pred_3d);
    // The writer derives the file name from the path's extensions, so the partial file's name
    // keeps them and has no other dot.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let compressed = name.ends_with(".gz");
    let extension = if compressed { "nii.gz" } else { "nii" };
    let stem = name.split('.').next().unwrap_or("labels");
    let partial = path.with_file_name(format!(".{stem}-partial.{extension}"));

    let written = nifti::writer::WriterOptions::new(&partial)
        .compress(compressed)
        .reference_header(&header)
        .write_nifti(&labels)
        .map_err(|e| std::io::Error::other(e.to_string()));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    #[test]
    fn label_map_sets_one_bit_per_mask() {
        let pred_2d = Array3::from_shape_vec((1, 1, 4), vec![0, 1, 0, 1]).unwrap();
        let pred_3d = Array3::from_shape_vec((1, 1, 4), vec![0, 0, 1, 1]).unwrap();

        let labels = label_map(&pred_2d, &pred_3d);

        assert_eq!(labels.as_slice().unwrap(), &[0, 1, 2, 3]);
    }

    #[test]
    fn nifti_round_trip_keeps_voxels_and_affine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.nii.gz");
        let pred_2d = Array3::from_shape_fn((5, 4, 3), |(h, w, d)| u8::from((h + w + d) % 2 == 0));
        let pred_3d = Array3::from_shape_fn((5, 4, 3), |(h, _, d)| u8::from(h > d));
        let reference = NiftiHeader {
            sform_code: 1,
            srow_x: [0.5, 0.0, 0.0, -10.0],
            srow_y: [0.0, 0.7, 0.0, 20.0],
            srow_z: [0.0, 0.0, 2.0, 30.0],
            scl_slope: 2.0,
            ..NiftiHeader::default()
        };

        write_label_map(&path, &pred_2d, &pred_3d, Some(&reference)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let statistics = Statistics {
            non_mdc_mean: 40.0,
            non_mdc_var: 100.0,
        };
        let (volume, header) = read_nifti(&bytes, ReadLimits::default(), Some(statistics)).unwrap();

        assert!(looks_like_nifti(&bytes));
        assert_eq!(volume.voxels.dim(), (5, 4, 3));
        assert_eq!(volume.voxels.mapv(|v| v as u8), label_map(&pred_2d, &pred_3d));
        assert_eq!(header.srow_y, [0.0, 0.7, 0.0, 20.0]);
        assert_eq!(header.scl_slope, 1.0, "labels are not scaled");
        assert_eq!(header.intent_code, INTENT_LABEL);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no partial file left"
        );
    }

    #[test]
    fn nifti_without_statistics_is_rejected() {
        let error = read_nifti(b"", ReadLimits::default(), None).unwrap_err();

        assert!(error.to_string().contains("--non-mdc-mean"), "{error}");
    }

    #[test]
    fn oversized_nifti_is_rejected_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.nii");
        let mask = Array3::<u8>::zeros((10, 10, 10));
        write_label_map(&path, &mask, &mask, None).unwrap();
        let statistics = Statistics {
            non_mdc_mean: 40.0,
            non_mdc_var: 100.0,
        };

        let error = read_nifti(
            &std::fs::read(&path).unwrap(),
            ReadLimits { max_voxels: 999 },
            Some(statistics),
        )
        .unwrap_err();

        assert!(matches!(error, VolumeError::TooLarge { .. }), "{error}");
    }
}
