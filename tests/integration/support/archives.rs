//! Builds input archives in memory: valid ones of any dtype, and the malformed ones that the
//! reader must reject.

use std::io::{Cursor, Write};

use ndarray::{Array3, ArrayD, arr0};
use ndarray_npy::{NpzReader, NpzWriter, ReadableElement, WritableElement, WriteNpyExt};
use zip::write::SimpleFileOptions;

/// Builds an uncompressed archive with `volume`, `non_mdc_mean` and `non_mdc_var`.
pub fn valid_npz<A: WritableElement>(volume: &Array3<A>, mean: f64, variance: f64) -> Vec<u8> {
    let mut writer = NpzWriter::new(Cursor::new(Vec::new()));
    writer.add_array("volume", volume).unwrap();
    writer.add_array("non_mdc_mean", &arr0(mean)).unwrap();
    writer.add_array("non_mdc_var", &arr0(variance)).unwrap();
    writer.finish().unwrap().into_inner()
}

/// Returns the `.npy` bytes of `array`.
pub fn npy_bytes<T: WriteNpyExt + ?Sized>(array: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    array.write_npy(&mut bytes).unwrap();
    bytes
}

/// Builds a stored (uncompressed) zip archive of the given members.
pub fn zip_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// A hand-written `.npy` version 1.0 file with the header dictionary `header`.
pub fn raw_npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = header.to_owned();
    // NumPy pads the header so that the data starts at a multiple of 64 bytes.
    while !(10 + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Returns the two statistics members of a valid archive.
pub fn statistics_members(mean: f64, variance: f64) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("non_mdc_mean.npy", npy_bytes(&arr0(mean))),
        ("non_mdc_var.npy", npy_bytes(&arr0(variance))),
    ]
}

/// Reads one array of an `.npz` file.
pub fn read_member<A: ReadableElement>(bytes: &[u8], name: &str) -> ArrayD<A> {
    let mut reader = NpzReader::new(Cursor::new(bytes)).unwrap();
    reader.by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Returns the member names of an `.npz` file without `.npy`, sorted.
pub fn member_names(bytes: &[u8]) -> Vec<String> {
    let mut reader = NpzReader::new(Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = reader
        .names()
        .unwrap()
        .into_iter()
        .map(|name| name.trim_end_matches(".npy").to_owned())
        .collect();
    names.sort();
    names
}
