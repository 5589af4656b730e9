//! Shared helpers: paths, the ONNX Runtime library, temporary folders, unique names, the
//! broker and a SeaweedFS server on loopback, and archive builders.

pub mod archives;
pub mod broker;
pub mod proxy;
pub mod seaweedfs;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::ArrayD;
use thrombseg::segmentation::Segmenter;
use thrombseg::segmentation::model::SessionOptions;
use thrombseg::segmentation::runtime;

/// Largest fraction of voxels allowed to differ in each mask against MONAI's.
pub const MASK_TOLERANCE: f64 = 1e-4;
/// Largest absolute logit difference allowed against MONAI's.
pub const LOGIT_TOLERANCE: f32 = 1e-3;

/// Returns the repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(relative: &str) -> PathBuf {
    repo().join("fixtures").join(relative)
}

/// Returns the `thrombseg` binary built for this test run.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_thrombseg"))
}

/// Runs the `thrombseg` binary with `args`, with ONNX Runtime from [`onnxruntime_library`].
pub fn run_thrombseg<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    std::process::Command::new(binary())
        .args(args)
        .env("ORT_DYLIB_PATH", onnxruntime_library())
        .output()
        .expect("thrombseg runs")
}

/// Runs `thrombseg segment INPUT OUTPUT EXTRA...`.
pub fn run_segment(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![std::ffi::OsStr::new("segment"), input.as_os_str(), output.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_thrombseg(args)
}

/// Returns a tool that the test scripts install under the repository root, such as
/// `.tools-venv/bin/python`; panics with `how_to_install` when it is missing.
pub fn installed_tool(relative: &str, how_to_install: &str) -> PathBuf {
    let tool = repo().join(relative);
    assert!(tool.is_file(), "{} not found: {how_to_install}", tool.display());
    tool
}

/// Returns the ONNX Runtime library that `scripts/fetch-onnxruntime` installed.
pub fn onnxruntime_library() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            runtime::locate_library(None).unwrap_or_else(|error| panic!("tests need ONNX Runtime: {error}"))
        })
        .clone()
}

/// Loads the committed default bundle.
pub fn default_segmenter() -> Segmenter {
    let options = SessionOptions::new(onnxruntime_library());
    Segmenter::load(&fixture("models"), &options).expect("the committed bundle loads")
}

/// Copies the default bundle with windows of 32 x 32 x 16 (3-D) and 32 x 32 (2-D), so that a
/// small volume takes milliseconds: for tests of delivery, not of results.
pub fn tiny_bundle() -> tempfile::TempDir {
    let dir = temp_dir();
    for entry in std::fs::read_dir(fixture("models")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let manifest_path = dir.path().join("bundle.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["version"] = "tiny-windows".into();
    manifest["networks"]["3d"]["roi_size"] = serde_json::json!([32, 32, 16]);
    manifest["networks"]["2d"]["roi_size"] = serde_json::json!([32, 32]);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    dir
}

/// Creates a fresh temporary folder, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("thrombseg-test-")
        .tempdir()
        .expect("a temporary folder")
}

/// Returns a name no other test or run uses, for queues and buckets.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Fraction of voxels where two masks differ.
pub fn mask_disagreement(actual: &ArrayD<u8>, expected: &ArrayD<u8>) -> f64 {
    assert_eq!(actual.shape(), expected.shape(), "mask shapes differ");
    let differing = actual.iter().zip(expected.iter()).filter(|(a, e)| a != e).count();
    differing as f64 / actual.len() as f64
}

/// Largest absolute difference between two float arrays of the same shape.
pub fn max_abs_difference(actual: &ArrayD<f32>, expected: &ArrayD<f32>) -> f32 {
    assert_eq!(actual.shape(), expected.shape(), "array shapes differ");
    actual
        .iter()
        .zip(expected.iter())
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f32::max)
}
