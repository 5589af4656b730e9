//! The Rust pipeline against MONAI's own outputs (`tools/reference.py` with PyTorch).

use ndarray::ArrayD;
use thrombseg::volume::{ReadLimits, encode_masks, read_npz};

use crate::support::archives::read_member;
use crate::support::{
    LOGIT_TOLERANCE, MASK_TOLERANCE, default_segmenter, fixture, mask_disagreement, max_abs_difference,
};

/// Segments a golden input with explain on and off and compares every output with the
/// expected file. Without explain the masks come from the summed logit difference instead of
/// the averaged logits, so both paths are checked.
fn check_golden_case(name: &str) {
    let input = std::fs::read(fixture(&format!("golden/{name}.input.npz"))).unwrap();
    let expected = std::fs::read(fixture(&format!("golden/{name}.expected.npz"))).unwrap();
    let volume = read_npz(&input, ReadLimits::default()).unwrap();
    let mut segmenter = default_segmenter();

    let masks_only = encode_masks(&segmenter.segment(&volume, false).unwrap().archive()).unwrap();
    let actual = encode_masks(&segmenter.segment(&volume, true).unwrap().archive()).unwrap();

    for (path, archive) in [("explain", &actual), ("masks only", &masks_only)] {
        for mask in ["pred_2d", "pred_3d"] {
            let disagreement =
                mask_disagreement(&read_member::<u8>(archive, mask), &read_member::<u8>(&expected, mask));
            assert!(
                disagreement <= MASK_TOLERANCE,
                "{name} ({path}): {mask} differs from MONAI in {:.4}% of voxels",
                disagreement * 100.0
            );
        }
    }
    for logits in ["logits_2d", "logits_3d"] {
        let difference = max_abs_difference(
            &read_member::<f32>(&actual, logits),
            &read_member::<f32>(&expected, logits),
        );
        assert!(
            difference <= LOGIT_TOLERANCE,
            "{name}: {logits} differs from MONAI by {difference}"
        );
    }
    for score in ["thrombus_probability", "confidence"] {
        let actual: ArrayD<f32> = read_member(&actual, score);
        let expected: ArrayD<f32> = read_member(&expected, score);
        assert_eq!(actual.ndim(), 0, "{name}: {score} is a scalar");
        let difference = (actual.sum() - expected.sum()).abs();
        assert!(difference <= 1e-4, "{name}: {score} differs from MONAI by {difference}");
    }
}

#[test]
fn golden_shorter_than_roi_on_every_axis() {
    check_golden_case("small");
}

#[test]
fn golden_longer_than_roi_on_h_and_d() {
    check_golden_case("long");
}

#[test]
fn golden_big_endian_fortran_uncompressed() {
    check_golden_case("bigendian");
}

#[test]
fn golden_uint8_volume() {
    check_golden_case("uint8");
}

#[test]
fn golden_constant_volume() {
    check_golden_case("constant");
}
