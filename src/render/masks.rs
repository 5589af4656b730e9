//! Reads the masks archive that `thrombseg segment` writes, checked against the shape of the
//! volume it belongs to.
//!
//! Each mask's `.npy` header is parsed and its shape compared with the volume's before the
//! data is read, so a mismatched archive is rejected without allocating for it.

use std::io::{Cursor, Read};

use ndarray::{Array3, ShapeBuilder};
use ndarray_npy::ReadableElement;
use ndarray_npy::npy::ReadDataError;
use ndarray_npy::npy::header::Header;
use zip::ZipArchive;
use zip::result::ZipError;

/// Key of the 2-D branch mask.
pub const PRED_2D_KEY: &str = "pred_2d";
/// Key of the 3-D branch mask.
pub const PRED_3D_KEY: &str = "pred_3d";

/// Both masks of one segmentation, uint8 (H, W, D). Any non-zero voxel counts as thrombus.
#[derive(Clone, Debug)]
pub struct Masks {
    pub pred_2d: Array3<u8>,
    pub pred_3d: Array3<u8>,
}

/// Reasons a masks archive cannot be drawn. Every variant after `NotZip` names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum MasksError {
    #[error("not a valid npz (zip) archive; it may be truncated ({0})")]
    NotZip(ZipError),
    #[error("missing the key `{key}` (expected `pred_2d` and `pred_3d`, as `thrombseg segment` writes them)")]
    MissingKey { key: &'static str },
    #[error("`{key}`: archive member is corrupt: {error}")]
    Corrupt {
        key: &'static str,
        #[source]
        error: ZipError,
    },
    #[error("`{key}`: invalid .npy header: {reason}")]
    Header { key: &'static str, reason: String },
    #[error(
        "`{key}`: shape {shape} does not match the volume's shape {expected}; pass the volume these masks were made from"
    )]
    ShapeMismatch {
        key: &'static str,
        shape: String,
        expected: String,
    },
    #[error("`{key}`: dtype {dtype} is not uint8")]
    NotUint8 { key: &'static str, dtype: String },
    #[error("`{key}`: cannot read the array data: {reason}")]
    Data { key: &'static str, reason: String },
}

/// Parses a masks archive held in memory. Both masks must have the shape `volume_shape`.
pub fn read_masks(bytes: &[u8], volume_shape: (usize, usize, usize)) -> Result<Masks, MasksError> {
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(MasksError::NotZip)?;

    let pred_2d = read_mask(&mut archive, PRED_2D_KEY, volume_shape)?;
    let pred_3d = read_mask(&mut archive, PRED_3D_KEY, volume_shape)?;

    Ok(Masks { pred_2d, pred_3d })
}

fn read_mask(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    key: &'static str,
    volume_shape: (usize, usize, usize),
) -> Result<Array3<u8>, MasksError> {
    let mut entry = open_member(archive, key)?;

    let header = Header::from_reader(&mut entry).map_err(|e| MasksError::Header {
        key,
        reason: e.to_string(),
    })?;
    let (height, width, depth) = volume_shape;
    if header.shape != [height, width, depth] {
        return Err(MasksError::ShapeMismatch {
            key,
            shape: format_shape(&header.shape),
            expected: format_shape(&[height, width, depth]),
        });
    }

    let values =
        u8::read_to_end_exact_vec(&mut entry, &header.type_descriptor, height * width * depth).map_err(|error| {
            match error {
                ReadDataError::WrongDescriptor(descriptor) => MasksError::NotUint8 {
                    key,
                    dtype: descriptor.to_string(),
                },
                other => MasksError::Data {
                    key,
                    reason: other.to_string(),
                },
            }
        })?;

    let mask = if header.layout.is_fortran() {
        Array3::from_shape_vec(volume_shape.f(), values)
    } else {
        Array3::from_shape_vec(volume_shape, values)
    }
    .expect("the element count was read for this shape");
    Ok(mask.as_standard_layout().into_owned())
}

/// Opens the member of `key`, named `KEY.npy` as NumPy and `segment` write it, or `KEY`.
fn open_member<'a>(
    archive: &'a mut ZipArchive<Cursor<&[u8]>>,
    key: &'static str,
) -> Result<impl Read + 'a, MasksError> {
    let name = [format!("{key}.npy"), key.to_owned()]
        .into_iter()
        .find(|name| archive.index_for_name(name).is_some())
        .ok_or(MasksError::MissingKey { key })?;
    archive
        .by_name(&name)
        .map_err(|error| MasksError::Corrupt { key, error })
}

/// Formats a shape as NumPy prints it: `(60, 60, 61)`.
fn format_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("({})", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;
    use ndarray_npy::NpzWriter;

    use super::*;

    fn archive_of(members: &[(&str, &Array3<u8>)]) -> Vec<u8> {
        let mut writer = NpzWriter::new(Cursor::new(Vec::new()));
        for (name, array) in members {
            writer.add_array(*name, *array).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn masks_of_volume_shape_read() {
        let mut pred_2d = Array3::<u8>::zeros((3, 4, 5));
        pred_2d[[1, 2, 3]] = 1;
        let pred_3d = Array3::<u8>::ones((3, 4, 5));
        let bytes = archive_of(&[("pred_2d", &pred_2d), ("pred_3d", &pred_3d)]);

        let masks = read_masks(&bytes, (3, 4, 5)).unwrap();

        assert_eq!(masks.pred_2d, pred_2d);
        assert_eq!(masks.pred_3d, pred_3d);
    }

    #[test]
    fn fortran_order_mask_reads_in_place() {
        let standard = Array3::from_shape_fn((2, 3, 4), |(h, w, d)| (h * 12 + w * 4 + d) as u8);
        let fortran = standard.t().as_standard_layout().reversed_axes().to_owned();
        assert!(fortran.t().is_standard_layout(), "the copy is stored in Fortran order");
        let bytes = archive_of(&[("pred_2d", &fortran), ("pred_3d", &standard)]);

        let masks = read_masks(&bytes, (2, 3, 4)).unwrap();

        assert_eq!(masks.pred_2d, standard);
    }

    #[test]
    fn missing_key_names_it() {
        let mask = Array3::<u8>::zeros((3, 4, 5));
        let bytes = archive_of(&[("pred_2d", &mask)]);

        let error = read_masks(&bytes, (3, 4, 5)).unwrap_err().to_string();

        assert!(error.contains("`pred_3d`"), "{error}");
    }

    #[test]
    fn shape_mismatch_names_both_shapes() {
        let mask = Array3::<u8>::zeros((3, 4, 5));
        let bytes = archive_of(&[("pred_2d", &mask), ("pred_3d", &mask)]);

        let error = read_masks(&bytes, (3, 4, 6)).unwrap_err().to_string();

        assert!(error.contains("`pred_2d`"), "{error}");
        assert!(error.contains("(3, 4, 5)"), "{error}");
        assert!(error.contains("(3, 4, 6)"), "{error}");
    }

    #[test]
    fn float_mask_is_rejected() {
        let mask = Array3::<u8>::zeros((3, 4, 5));
        let float_mask = Array3::<f32>::zeros((3, 4, 5));
        let mut writer = NpzWriter::new(Cursor::new(Vec::new()));
        writer.add_array("pred_2d", &mask).unwrap();
        writer.add_array("pred_3d", &float_mask).unwrap();
        let bytes = writer.finish().unwrap().into_inner();

        let error = read_masks(&bytes, (3, 4, 5)).unwrap_err().to_string();

        assert!(error.contains("`pred_3d`: dtype"), "{error}");
        assert!(error.contains("not uint8"), "{error}");
    }

    #[test]
    fn non_zip_input_is_rejected() {
        let error = read_masks(b"not an archive", (1, 1, 1)).unwrap_err();

        assert!(matches!(error, MasksError::NotZip(_)), "{error}");
    }
}
