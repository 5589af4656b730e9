//! Every kind of bad input gets a clear error naming the key and the fault.

use ndarray::{Array1, Array2, Array3, arr0};
use thrombseg::volume::{ReadLimits, read_npz};

use crate::support::archives::{npy_bytes, raw_npy, statistics_members, valid_npz, zip_of};

fn error_for(bytes: &[u8]) -> String {
    match read_npz(bytes, ReadLimits::default()) {
        Ok(volume) => panic!("expected an error, got a volume of shape {:?}", volume.voxels.shape()),
        Err(error) => error.to_string(),
    }
}

fn assert_error_mentions(bytes: &[u8], fragments: &[&str]) {
    let message = error_for(bytes);
    for fragment in fragments {
        assert!(message.contains(fragment), "{message:?} should mention {fragment:?}");
    }
}

fn with_volume_member(volume_npy: Vec<u8>) -> Vec<u8> {
    let mut members = statistics_members(250.0, 1000.0);
    members.push(("volume.npy", volume_npy));
    zip_of(&members)
}

#[test]
fn valid_archive_of_every_dtype_reads() {
    let shape = (3, 4, 5);
    let archives = [
        valid_npz(&Array3::<i8>::from_elem(shape, 7), 250.0, 1000.0),
        valid_npz(&Array3::<i16>::from_elem(shape, 7), 250.0, 1000.0),
        valid_npz(&Array3::<i32>::from_elem(shape, 7), 250.0, 1000.0),
        valid_npz(&Array3::<i64>::from_elem(shape, 7), 250.0, 1000.0),
        valid_npz(&Array3::<u8>::from_elem(shape, 7), 250.0, 1000.0),
        valid_npz(&Array3::<u16>::from_elem(shape, 7), 250.0, 1000.0),
        valid_npz(&Array3::<u32>::from_elem(shape, 7), 250.0, 1000.0),
        valid_npz(&Array3::<u64>::from_elem(shape, 7), 250.0, 1000.0),
        valid_npz(&Array3::<f32>::from_elem(shape, 7.0), 250.0, 1000.0),
        valid_npz(&Array3::<f64>::from_elem(shape, 7.0), 250.0, 1000.0),
    ];

    for bytes in archives {
        let volume = read_npz(&bytes, ReadLimits::default()).unwrap();
        assert_eq!(volume.voxels.shape(), &[3, 4, 5]);
        assert!(volume.voxels.iter().all(|&v| v == 7.0));
        assert_eq!(volume.non_mdc_mean, 250.0);
        assert_eq!(volume.non_mdc_var, 1000.0);
    }
}

#[test]
fn float16_and_big_endian_read() {
    // 1.5 as float16 is 0x3E00; 300 as big-endian int16 is 0x012C.
    let half = raw_npy(
        "{'descr': '<f2', 'fortran_order': False, 'shape': (1, 1, 2), }",
        &[0x00, 0x3E, 0x00, 0x3E],
    );
    let big = raw_npy(
        "{'descr': '>i2', 'fortran_order': False, 'shape': (1, 1, 2), }",
        &[0x01, 0x2C, 0x01, 0x2C],
    );

    let half = read_npz(&with_volume_member(half), ReadLimits::default()).unwrap();
    let big = read_npz(&with_volume_member(big), ReadLimits::default()).unwrap();

    assert_eq!(half.voxels.as_slice().unwrap(), &[1.5, 1.5]);
    assert_eq!(big.voxels.as_slice().unwrap(), &[300.0, 300.0]);
}

#[test]
fn fortran_order_is_transposed_to_c_order() {
    // Fortran order stores the first axis fastest: shape (2, 1, 2) holds [a000, a100, a001, a101].
    let data: Vec<u8> = [1i16, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let npy = raw_npy("{'descr': '<i2', 'fortran_order': True, 'shape': (2, 1, 2), }", &data);

    let volume = read_npz(&with_volume_member(npy), ReadLimits::default()).unwrap();

    assert_eq!(volume.voxels[[0, 0, 0]], 1.0);
    assert_eq!(volume.voxels[[1, 0, 0]], 2.0);
    assert_eq!(volume.voxels[[0, 0, 1]], 3.0);
    assert_eq!(volume.voxels[[1, 0, 1]], 4.0);
}

#[test]
fn not_a_zip() {
    assert_error_mentions(b"this is not an archive", &["not a valid npz"]);
}

#[test]
fn npy_instead_of_npz() {
    let bytes = npy_bytes(&Array3::<i16>::zeros((2, 2, 2)));

    assert_error_mentions(&bytes, &[".npy array, not an .npz", "numpy.savez"]);
}

#[test]
fn truncated_archive() {
    let bytes = valid_npz(&Array3::<i16>::zeros((8, 8, 8)), 250.0, 1000.0);

    assert_error_mentions(&bytes[..bytes.len() / 2], &["not a valid npz", "truncated"]);
}

#[test]
fn missing_keys() {
    let volume = ("volume.npy", npy_bytes(&Array3::<i16>::zeros((2, 2, 2))));
    let mean = ("non_mdc_mean.npy", npy_bytes(&arr0(250.0)));
    let variance = ("non_mdc_var.npy", npy_bytes(&arr0(1000.0)));

    assert_error_mentions(
        &zip_of(&[mean.clone(), variance.clone()]),
        &["missing the key `volume`"],
    );
    assert_error_mentions(
        &zip_of(&[volume.clone(), variance]),
        &["missing the key `non_mdc_mean`"],
    );
    assert_error_mentions(&zip_of(&[volume, mean]), &["missing the key `non_mdc_var`"]);
}

#[test]
fn volume_not_three_dimensional() {
    let bytes = with_volume_member(npy_bytes(&Array2::<i16>::zeros((64, 64))));

    assert_error_mentions(&bytes, &["`volume`", "expected 3 dimensions", "(64, 64)"]);
}

#[test]
fn volume_with_empty_axis() {
    let bytes = with_volume_member(npy_bytes(&Array3::<i16>::zeros((4, 0, 4))));

    assert_error_mentions(&bytes, &["`volume`", "empty axis", "(4, 0, 4)"]);
}

#[test]
fn object_and_other_dtypes_rejected_unread() {
    // A pickled object array: the reader must reject it from the descriptor alone.
    let object = raw_npy(
        "{'descr': '|O', 'fortran_order': False, 'shape': (1, 1, 1), }",
        b"\x80\x04\x95cos\nsystem\n.",
    );
    let boolean = raw_npy("{'descr': '|b1', 'fortran_order': False, 'shape': (1, 1, 1), }", &[1]);
    let complex = raw_npy(
        "{'descr': '<c8', 'fortran_order': False, 'shape': (1, 1, 1), }",
        &[0; 8],
    );
    let text = raw_npy(
        "{'descr': '<U3', 'fortran_order': False, 'shape': (1, 1, 1), }",
        &[0; 12],
    );

    assert_error_mentions(&with_volume_member(object), &["`volume`", "dtype |O"]);
    assert_error_mentions(&with_volume_member(boolean), &["`volume`", "dtype |b1"]);
    assert_error_mentions(&with_volume_member(complex), &["`volume`", "dtype <c8"]);
    assert_error_mentions(&with_volume_member(text), &["`volume`", "dtype <U3"]);
}

#[test]
fn nan_and_infinite_values() {
    let mut volume = Array3::<f32>::zeros((2, 2, 2));
    volume[[0, 1, 0]] = f32::NAN;
    volume[[1, 1, 1]] = f32::INFINITY;

    assert_error_mentions(
        &valid_npz(&volume, 250.0, 1000.0),
        &["`volume`", "2 values are NaN or infinite", "index (0, 1, 0)"],
    );
}

#[test]
fn variance_not_finite_and_positive() {
    let volume = Array3::<i16>::zeros((2, 2, 2));

    for variance in [0.0, -4.0, f64::NAN, f64::INFINITY] {
        assert_error_mentions(
            &valid_npz(&volume, 250.0, variance),
            &["`non_mdc_var`", "finite and positive"],
        );
    }
    assert_error_mentions(&valid_npz(&volume, f64::NAN, 1000.0), &["`non_mdc_mean`", "finite"]);
}

#[test]
fn statistics_with_several_elements() {
    let mut members = vec![
        ("volume.npy", npy_bytes(&Array3::<i16>::zeros((2, 2, 2)))),
        (
            "non_mdc_mean.npy",
            npy_bytes(&Array1::<f64>::from_vec(vec![250.0, 260.0])),
        ),
    ];
    members.push(("non_mdc_var.npy", npy_bytes(&arr0(1000.0))));

    assert_error_mentions(&zip_of(&members), &["`non_mdc_mean`", "single number", "shape (2,)"]);
}

#[test]
fn one_element_statistics_accepted() {
    let members = vec![
        ("volume.npy", npy_bytes(&Array3::<i16>::zeros((2, 2, 2)))),
        ("non_mdc_mean.npy", npy_bytes(&Array1::<f64>::from_vec(vec![250.0]))),
        ("non_mdc_var.npy", npy_bytes(&Array2::<f32>::from_elem((1, 1), 1000.0))),
    ];

    let volume = read_npz(&zip_of(&members), ReadLimits::default()).unwrap();

    assert_eq!(volume.non_mdc_mean, 250.0);
    assert_eq!(volume.non_mdc_var, 1000.0);
}

#[test]
fn header_promising_more_data_than_stored() {
    // The header claims 10^8 int16 voxels, within the voxel limit, but only 16 bytes follow.
    let npy = raw_npy(
        "{'descr': '<i2', 'fortran_order': False, 'shape': (1000, 1000, 100), }",
        &[0; 16],
    );

    assert_error_mentions(
        &with_volume_member(npy),
        &["`volume`", "declares 200000000 data bytes", "holds 16"],
    );
}

#[test]
fn volume_over_voxel_limit() {
    let bytes = valid_npz(&Array3::<u8>::zeros((10, 10, 10)), 250.0, 1000.0);

    let error = read_npz(&bytes, ReadLimits { max_voxels: 999 })
        .unwrap_err()
        .to_string();

    assert!(error.contains("`volume`"), "{error}");
    assert!(error.contains("(10, 10, 10)"), "{error}");
    assert!(error.contains("limit of 999"), "{error}");
    assert!(error.contains("--max-voxels"), "{error}");
}

#[test]
fn shape_overflowing_u64_rejected() {
    let npy = raw_npy(
        "{'descr': '<i2', 'fortran_order': False, 'shape': (18446744073709551615, 18446744073709551615, 2), }",
        &[],
    );

    assert_error_mentions(&with_volume_member(npy), &["`volume`", "more elements than the limit"]);
}

#[test]
fn oversized_header_length_rejected_before_reading() {
    // A version 2.0 header declaring a 4 GiB dictionary.
    let mut npy = b"\x93NUMPY\x02\x00".to_vec();
    npy.extend_from_slice(&u32::MAX.to_le_bytes());
    npy.extend_from_slice(b"{'descr': '<i2'");

    assert_error_mentions(
        &with_volume_member(npy),
        &["`volume`", "invalid .npy header", "header length"],
    );
}

#[test]
fn bad_magic_rejected() {
    assert_error_mentions(
        &with_volume_member(b"GARBAGE-NOT-NPY-DATA".to_vec()),
        &["`volume`", "magic"],
    );
}
