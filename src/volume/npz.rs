//! Reads the input `.npz` archive: a CT volume and the two contrast statistics.
//!
//! The archive comes from outside, so every size it declares is checked before anything is
//! allocated for it: the `.npy` header length, the element count against the voxel limit, and
//! the data length against what the archive entry holds. Object arrays are rejected from their
//! type descriptor and never unpickled.

use std::io::{Cursor, Read};

use ndarray::{Array3, ShapeBuilder};
use ndarray_npy::ReadableElement;
use ndarray_npy::npy::header::{Header, Layout};
use py_literal::Value as PyValue;
use zip::ZipArchive;
use zip::result::ZipError;

use super::{CtVolume, VolumeError, check_statistics};

/// Key of the CT volume inside the archive.
pub const VOLUME_KEY: &str = "volume";
/// Key of the mean of the non-contrast intensity, in Hounsfield units.
pub const MEAN_KEY: &str = "non_mdc_mean";
/// Key of the variance of the non-contrast intensity, in squared Hounsfield units.
pub const VARIANCE_KEY: &str = "non_mdc_var";

/// Largest `.npy` header accepted. NumPy writes headers of at most a few hundred bytes.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Bounds on what an input archive may make the reader allocate.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Largest number of voxels accepted in the volume.
    pub max_voxels: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        // 1024 x 1024 x 512 voxels: a whole-body CT at sub-millimetre spacing.
        Self {
            max_voxels: 512 * 1024 * 1024,
        }
    }
}

/// Parses an input archive held in memory.
pub fn read_npz(bytes: &[u8], limits: ReadLimits) -> Result<CtVolume, VolumeError> {
    if bytes.starts_with(b"\x93NUMPY") {
        return Err(VolumeError::NpyNotNpz);
    }
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(VolumeError::NotZip)?;

    let volume = read_volume(&mut archive, limits)?;
    let non_mdc_mean = read_scalar(&mut archive, MEAN_KEY)?;
    let non_mdc_var = read_scalar(&mut archive, VARIANCE_KEY)?;

    check_statistics(non_mdc_mean, non_mdc_var)?;

    Ok(CtVolume {
        voxels: volume,
        non_mdc_mean,
        non_mdc_var,
    })
}

fn read_volume(archive: &mut ZipArchive<Cursor<&[u8]>>, limits: ReadLimits) -> Result<Array3<f32>, VolumeError> {
    let array = read_array(archive, VOLUME_KEY, limits.max_voxels)?;
    let shape = array.shape.clone();
    if shape.len() != 3 {
        return Err(VolumeError::NotThreeDimensional {
            shape: format_shape(&shape),
        });
    }
    if shape.contains(&0) {
        return Err(VolumeError::EmptyAxis {
            shape: format_shape(&shape),
        });
    }

    let values = array.elements.into_f32();
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        return Err(VolumeError::NotFinite {
            count,
            first_index: format_index(index, &shape, array.layout.is_fortran()),
        });
    }

    let dim = (shape[0], shape[1], shape[2]);
    let voxels = if array.layout.is_fortran() {
        Array3::from_shape_vec(dim.f(), values)
    } else {
        Array3::from_shape_vec(dim, values)
    }
    .expect("element count was checked against the shape");

    // Downstream stages index the volume as contiguous (H, W, D) memory.
    Ok(voxels.as_standard_layout().into_owned())
}

fn read_scalar(archive: &mut ZipArchive<Cursor<&[u8]>>, key: &'static str) -> Result<f64, VolumeError> {
    let array = match read_array(archive, key, 1) {
        Err(VolumeError::TooLarge { shape, .. }) => return Err(VolumeError::NotScalar { key, shape }),
        other => other?,
    };
    let values = array.elements.into_f64();
    match values.as_slice() {
        [value] => Ok(*value),
        _ => Err(VolumeError::NotScalar {
            key,
            shape: format_shape(&array.shape),
        }),
    }
}

/// One `.npy` member of the archive, decoded but not yet converted.
struct RawArray {
    shape: Vec<usize>,
    layout: Layout,
    elements: Elements,
}

fn read_array(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    key: &'static str,
    max_elements: u64,
) -> Result<RawArray, VolumeError> {
    let mut entry = match archive.by_name(&format!("{key}.npy")) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => return Err(VolumeError::MissingKey { key }),
        Err(error) => return Err(VolumeError::Corrupt { key, error }),
    };
    let entry_size = entry.size();

    let header_bytes = read_header_bytes(&mut entry, key, entry_size)?;
    let header = Header::from_reader(&mut header_bytes.as_slice()).map_err(|e| VolumeError::Header {
        key,
        reason: e.to_string(),
    })?;
    let dtype = Dtype::parse(&header.type_descriptor)
        .map_err(|descriptor| VolumeError::UnsupportedDtype { key, dtype: descriptor })?;

    let element_count = header
        .shape
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n as u64))
        .filter(|&n| n <= max_elements);
    let Some(element_count) = element_count else {
        return Err(VolumeError::TooLarge {
            key,
            shape: format_shape(&header.shape),
            limit: max_elements,
        });
    };

    let data_bytes = element_count * dtype.item_size as u64;
    let available = entry_size.saturating_sub(header_bytes.len() as u64);
    if data_bytes != available {
        return Err(VolumeError::SizeMismatch {
            key,
            shape: format_shape(&header.shape),
            expected: data_bytes,
            actual: available,
        });
    }

    let elements = Elements::read(&mut entry, &header.type_descriptor, dtype, element_count).map_err(|error| {
        VolumeError::Data {
            key,
            reason: error.to_string(),
        }
    })?;

    Ok(RawArray {
        shape: header.shape,
        layout: header.layout,
        elements,
    })
}

/// Reads the magic string, version, length field and header dictionary of an `.npy` member,
/// rejecting a declared header length over [`MAX_HEADER_BYTES`] before reading it.
fn read_header_bytes(reader: &mut impl Read, key: &'static str, entry_size: u64) -> Result<Vec<u8>, VolumeError> {
    let invalid = |reason: String| VolumeError::Header { key, reason };

    let mut prefix = vec![0u8; 8];
    read_exact_or_truncated(reader, &mut prefix, key)?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err(invalid("missing the \\x93NUMPY magic string".into()));
    }

    let length_field_size = match prefix[6] {
        1 => 2,
        2 | 3 => 4,
        version => return Err(invalid(format!("unsupported .npy format version {version}"))),
    };
    let mut length_field = vec![0u8; length_field_size];
    read_exact_or_truncated(reader, &mut length_field, key)?;
    let header_len = length_field
        .iter()
        .rev()
        .fold(0usize, |acc, &byte| (acc << 8) | byte as usize);

    let total = prefix.len() + length_field_size + header_len;
    if header_len > MAX_HEADER_BYTES || total as u64 > entry_size {
        return Err(invalid(format!(
            "header length {header_len} is larger than the {} bytes allowed or the member holds",
            MAX_HEADER_BYTES.min(entry_size as usize)
        )));
    }

    let mut bytes = prefix;
    bytes.extend_from_slice(&length_field);
    bytes.resize(total, 0);
    read_exact_or_truncated(reader, &mut bytes[8 + length_field_size..], key)?;
    Ok(bytes)
}

fn read_exact_or_truncated(reader: &mut impl Read, buffer: &mut [u8], key: &'static str) -> Result<(), VolumeError> {
    reader.read_exact(buffer).map_err(|e| VolumeError::Data {
        key,
        reason: format!("member is truncated or corrupt: {e}"),
    })
}

/// Integer or floating-point element type of an `.npy` array, of either byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dtype {
    kind: DtypeKind,
    item_size: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DtypeKind {
    Signed,
    Unsigned,
    Float,
}

impl Dtype {
    /// Parses a NumPy type descriptor such as `<i2`, `>f8` or `|u1`. An unsupported type comes
    /// back as the descriptor's text, for the error message.
    fn parse(descriptor: &PyValue) -> Result<Self, String> {
        let PyValue::String(text) = descriptor else {
            return Err(descriptor.to_string());
        };
        let unsupported = || text.clone();

        let mut chars = text.chars();
        let order = chars.next().ok_or_else(unsupported)?;
        if !matches!(order, '<' | '>' | '|' | '=') {
            return Err(unsupported());
        }
        let kind = match chars.next() {
            Some('i') => DtypeKind::Signed,
            Some('u') => DtypeKind::Unsigned,
            Some('f') => DtypeKind::Float,
            _ => return Err(unsupported()),
        };
        let item_size: usize = chars.as_str().parse().map_err(|_| unsupported())?;

        let supported = match kind {
            DtypeKind::Signed | DtypeKind::Unsigned => matches!(item_size, 1 | 2 | 4 | 8),
            DtypeKind::Float => matches!(item_size, 2 | 4 | 8),
        };
        if !supported {
            return Err(unsupported());
        }
        Ok(Self { kind, item_size })
    }
}

/// Decoded elements in their stored type.
enum Elements {
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F16(Vec<half::f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Elements {
    fn read(
        reader: &mut impl Read,
        descriptor: &PyValue,
        dtype: Dtype,
        count: u64,
    ) -> Result<Self, ndarray_npy::ReadDataError> {
        let len = count as usize;
        Ok(match (dtype.kind, dtype.item_size) {
            (DtypeKind::Signed, 1) => Self::I8(i8::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Signed, 2) => Self::I16(i16::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Signed, 4) => Self::I32(i32::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Signed, _) => Self::I64(i64::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Unsigned, 1) => Self::U8(u8::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Unsigned, 2) => Self::U16(u16::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Unsigned, 4) => Self::U32(u32::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Unsigned, _) => Self::U64(u64::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Float, 2) => {
                // ndarray-npy has no float16 element, so the bits are read as `u2` of the same
                // byte order and reinterpreted.
                let PyValue::String(text) = descriptor else {
                    unreachable!("Dtype::parse accepts string descriptors only")
                };
                let as_bits = PyValue::String(text.replace('f', "u"));
                let bits = u16::read_to_end_exact_vec(reader, &as_bits, len)?;
                Self::F16(bits.into_iter().map(half::f16::from_bits).collect())
            }
            (DtypeKind::Float, 4) => Self::F32(f32::read_to_end_exact_vec(reader, descriptor, len)?),
            (DtypeKind::Float, _) => Self::F64(f64::read_to_end_exact_vec(reader, descriptor, len)?),
        })
    }

    /// Converts to `f32`, rounding 32- and 64-bit integers and `f64` to the nearest `f32`.
    fn into_f32(self) -> Vec<f32> {
        match self {
            Self::I8(v) => v.into_iter().map(f32::from).collect(),
            Self::I16(v) => v.into_iter().map(f32::from).collect(),
            Self::I32(v) => v.into_iter().map(|x| x as f32).collect(),
            Self::I64(v) => v.into_iter().map(|x| x as f32).collect(),
            Self::U8(v) => v.into_iter().map(f32::from).collect(),
            Self::U16(v) => v.into_iter().map(f32::from).collect(),
            Self::U32(v) => v.into_iter().map(|x| x as f32).collect(),
            Self::U64(v) => v.into_iter().map(|x| x as f32).collect(),
            Self::F16(v) => v.into_iter().map(f32::from).collect(),
            Self::F32(v) => v,
            Self::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        }
    }

    fn into_f64(self) -> Vec<f64> {
        match self {
            Self::F64(v) => v,
            Self::I64(v) => v.into_iter().map(|x| x as f64).collect(),
            Self::U64(v) => v.into_iter().map(|x| x as f64).collect(),
            other => other.into_f32().into_iter().map(f64::from).collect(),
        }
    }
}

/// Formats the position of the `flat`-th stored element as `(h, w, d)`.
fn format_index(flat: usize, shape: &[usize], fortran_order: bool) -> String {
    let mut remaining = flat;
    let mut index = vec![0; shape.len()];
    let axes: Vec<usize> = if fortran_order {
        (0..shape.len()).collect()
    } else {
        (0..shape.len()).rev().collect()
    };
    for axis in axes {
        index[axis] = remaining % shape[axis];
        remaining /= shape[axis];
    }
    format_shape(&index)
}

/// Formats a shape the way NumPy prints it: `(64, 64)`, `(3,)`, `()`.
pub(crate) fn format_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_accepts_integer_and_float_descriptors() {
        for text in ["<i2", ">i2", "|u1", "|i1", "<u8", ">f8", "<f4", "<f2", "=i4"] {
            let parsed = Dtype::parse(&PyValue::String(text.into()));
            assert!(parsed.is_ok(), "{text} should be accepted");
        }
    }

    #[test]
    fn dtype_rejects_object_bool_complex_and_strings() {
        for text in ["|O", "|b1", "<c8", "<U4", "|S3", "<M8[ns]", "<f16", "<i3", ""] {
            let parsed = Dtype::parse(&PyValue::String(text.into()));
            assert_eq!(parsed, Err(text.to_string()), "{text} should be rejected");
        }
    }

    #[test]
    fn shape_formats_like_numpy() {
        assert_eq!(format_shape(&[]), "()");
        assert_eq!(format_shape(&[3]), "(3,)");
        assert_eq!(format_shape(&[64, 64]), "(64, 64)");
    }
}
