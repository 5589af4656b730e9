//! NIfTI in and out, checked with nibabel: a volume that nibabel writes is segmented, and the
//! label map that comes back has the input's voxels grid, affine and the same masks as the npz
//! path. nibabel and numpy live in `.tools-venv/`, which `scripts/test` fills.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{fixture, installed_tool, run_segment, run_thrombseg, temp_dir};

/// Python of `.tools-venv/`, with nibabel and numpy.
fn python() -> PathBuf {
    installed_tool(
        ".tools-venv/bin/python",
        "run scripts/test, which installs nibabel and numpy there",
    )
}

/// Runs a Python script with `args` and returns the JSON object it prints last.
fn run_python(script: &str, args: &[&Path]) -> Value {
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

/// Writes the example volume as int16 NIfTI with a non-trivial affine and prints its statistics.
const WRITE_INPUT: &str = r#"
import json, sys
import nibabel, numpy
example = numpy.load(sys.argv[1])
affine = numpy.array([[0.8, 0, 0, -24.0], [0, 0.9, 0, 31.5], [0, 0, 2.5, -80.0], [0, 0, 0, 1]])
image = nibabel.Nifti1Image(example["volume"].astype(numpy.int16), affine)
nibabel.save(image, sys.argv[2])
# The header stores the affine in float32, so compare with what nibabel reads back.
print(json.dumps({"mean": float(example["non_mdc_mean"]), "var": float(example["non_mdc_var"]),
                  "affine": nibabel.load(sys.argv[2]).affine.tolist()}))
"#;

/// Reads the label map back and compares it with the npz masks.
const READ_OUTPUT: &str = r#"
import json, sys
import nibabel, numpy
labels = nibabel.load(sys.argv[1])
masks = numpy.load(sys.argv[2])
data = numpy.asanyarray(labels.dataobj)
expected = masks["pred_2d"] + 2 * masks["pred_3d"]
print(json.dumps({"shape": list(data.shape), "dtype": str(data.dtype), "affine": labels.affine.tolist(),
                  "intent": int(labels.header["intent_code"]), "values": sorted(int(v) for v in numpy.unique(data)),
                  "differing": int((data != expected).sum()), "voxels": int(expected.size)}))
"#;

fn segment(input: &Path, output: &Path, extra: &[&str]) {
    let result = run_segment(input, output, extra);
    assert!(
        result.status.success(),
        "segment {} failed: {}",
        input.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn nifti_round_trip_through_nibabel() {
    let dir = temp_dir();
    let example = fixture("input_file_example.npz");
    let input = dir.path().join("example.nii.gz");
    let labels = dir.path().join("labels.nii.gz");
    let masks = dir.path().join("masks.npz");

    let written = run_python(WRITE_INPUT, &[&example, &input]);
    let mean = written["mean"].as_f64().unwrap().to_string();
    let variance = written["var"].as_f64().unwrap().to_string();
    segment(&example, &masks, &[]);
    segment(&input, &labels, &["--non-mdc-mean", &mean, "--non-mdc-var", &variance]);
    let read = run_python(READ_OUTPUT, &[&labels, &masks]);

    assert_eq!(read["shape"], serde_json::json!([60, 60, 61]));
    assert_eq!(read["dtype"], "uint8");
    assert_eq!(
        read["affine"], written["affine"],
        "the label map keeps the input's affine"
    );
    assert_eq!(read["intent"], 1002, "NIFTI_INTENT_LABEL");
    assert_eq!(read["differing"], 0, "labels differ from the npz masks: {read}");
    assert!(read["values"].as_array().unwrap().len() >= 2, "{read}");
}

#[test]
fn nifti_input_without_statistics_exits_2() {
    let dir = temp_dir();
    let input = dir.path().join("example.nii");
    run_python(WRITE_INPUT, &[&fixture("input_file_example.npz"), &input]);
    let output = dir.path().join("labels.nii.gz");

    let result = run_thrombseg([OsStr::new("segment"), input.as_ref(), output.as_ref()]);

    assert_eq!(result.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.contains("--non-mdc-mean"), "{stdout}");
    assert!(!output.exists(), "no output after a failed job");
}
