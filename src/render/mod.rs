//! Preview images of a segmentation, so that masks can be checked by eye without Python or a
//! medical image viewer.
//!
//! [`masks`] reads the archive that `thrombseg segment` writes, [`montage`] draws axial slices
//! of the CT with both masks over them, [`font`] draws the labels and [`image`] stores the pixels
//! and encodes them as PNG. Apart from reading the archive bytes, these are pure functions over
//! arrays: no files, no clock.

pub mod font;
pub mod image;
pub mod masks;
pub mod montage;
