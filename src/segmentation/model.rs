//! The model bundle and the ONNX Runtime sessions behind the [`Network`] trait.
//!
//! A bundle is a folder written by `tools/export_models.py`: two ONNX networks, the PyTorch
//! checkpoints they came from, and `bundle.json` with the SegResNet arguments, the sliding-window
//! settings and a SHA-256 of every file. Loading checks every hash, so a worker never runs
//! weights other than the ones the manifest names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array5, ArrayView4, Ix4, Ix5};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::TensorRef;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::providers::{Provider, ProviderChoice, ProviderError};
use super::runtime::{self, RuntimeError};

/// Manifest file name inside a bundle folder.
pub const MANIFEST: &str = "bundle.json";

/// The parsed `bundle.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct BundleManifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub source: String,
    pub window_sigmas: f64,
    pub networks: Networks,
    pub sha256: BTreeMap<String, String>,
}

/// The two networks of a bundle.
#[derive(Clone, Debug, Deserialize)]
pub struct Networks {
    #[serde(rename = "3d")]
    pub three_d: NetworkSpec,
    #[serde(rename = "2d")]
    pub two_d: NetworkSpec,
}

/// Storage and run settings of one network.
#[derive(Clone, Debug, Deserialize)]
pub struct NetworkSpec {
    pub onnx: String,
    pub input_name: String,
    pub output_name: String,
    pub spatial_dims: usize,
    pub roi_size: Vec<usize>,
    pub overlap: f32,
    pub blend_mode: String,
    pub batch_size: usize,
    #[serde(default)]
    pub gflop_per_window: Option<f64>,
}

/// Bundle loading failures.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("model bundle: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model bundle: {path} is not a valid manifest: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("model bundle: {0}")]
    Invalid(String),
    #[error(
        "model bundle: {file} has SHA-256 {actual}, but {MANIFEST} expects {expected}; the bundle is corrupt or was changed after export"
    )]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("model bundle: cannot create an ONNX Runtime session for {file}: {message}")]
    Session { file: String, message: String },
}

/// Network run failure.
#[derive(Debug, thiserror::Error)]
#[error("{network} network: {message}")]
pub struct InferenceError {
    pub network: &'static str,
    pub message: String,
}

/// A segmentation network: a batch of single-channel windows in, two-channel logits out.
///
/// The input is (n, h, w, d); for a 2-D network d is 1 and the implementation drops that axis.
/// The output is (n, channels, h, w, d).
pub trait Network: Send {
    fn run(&mut self, windows: ArrayView4<f32>) -> Result<Array5<f32>, InferenceError>;

    /// Ends profiling and returns the path of the profile written so far, for networks that
    /// were created with profiling on.
    fn end_profiling(&mut self) -> Option<Result<PathBuf, InferenceError>> {
        None
    }
}

impl BundleManifest {
    /// Reads and checks `bundle.json` in `dir` without touching the model files.
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let manifest: Self = serde_json::from_str(&text).map_err(|source| BundleError::Manifest { path, source })?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), BundleError> {
        if self.format != 1 {
            return Err(BundleError::Invalid(format!(
                "manifest format {} is not supported (expected 1)",
                self.format
            )));
        }
        if !(self.window_sigmas.is_finite() && self.window_sigmas > 0.0) {
            return Err(BundleError::Invalid(format!(
                "window_sigmas must be positive, got {}",
                self.window_sigmas
            )));
        }
        for (label, spec, dims) in [("3d", &self.networks.three_d, 3), ("2d", &self.networks.two_d, 2)] {
            spec.validate(label, dims)?;
            if !self.sha256.contains_key(&spec.onnx) {
                return Err(BundleError::Invalid(format!(
                    "network {label}: {} has no entry in sha256",
                    spec.onnx
                )));
            }
        }
        Ok(())
    }

    /// Checks the SHA-256 of every file the manifest lists.
    pub fn verify_hashes(&self, dir: &Path) -> Result<(), BundleError> {
        for (file, expected) in &self.sha256 {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).map_err(|source| BundleError::Read { path, source })?;
            let actual = hex(&Sha256::digest(&bytes));
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(BundleError::HashMismatch {
                    file: file.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

impl NetworkSpec {
    fn validate(&self, label: &str, dims: usize) -> Result<(), BundleError> {
        let invalid = |what: String| Err(BundleError::Invalid(format!("network {label}: {what}")));
        if self.spatial_dims != dims || self.roi_size.len() != dims {
            return invalid(format!(
                "expected {dims} spatial dimensions, got spatial_dims {} and roi_size {:?}",
                self.spatial_dims, self.roi_size
            ));
        }
        if self.roi_size.contains(&0) {
            return invalid(format!("roi_size {:?} has an empty axis", self.roi_size));
        }
        if !(0.0..1.0).contains(&self.overlap) {
            return invalid(format!("overlap must be in [0, 1), got {}", self.overlap));
        }
        if self.blend_mode != "constant" {
            return invalid(format!(
                "blend_mode {:?} is not supported (only \"constant\")",
                self.blend_mode
            ));
        }
        if self.batch_size == 0 {
            return invalid("batch_size must be at least 1".into());
        }
        Ok(())
    }

    /// Returns the ROI as (h, w, d). A 2-D network's windows are one slice deep.
    pub fn roi_3d(&self) -> [usize; 3] {
        match self.roi_size.as_slice() {
            [h, w, d] => [*h, *w, *d],
            [h, w] => [*h, *w, 1],
            _ => unreachable!("validated to have 2 or 3 axes"),
        }
    }
}

/// Options for the ONNX Runtime sessions.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Path of `libonnxruntime.so`.
    pub library: PathBuf,
    /// Threads each session uses inside one operator; 0 means one per CPU this process may use.
    pub intra_threads: usize,
    /// Execution providers to register on every session.
    pub providers: ProviderChoice,
    /// Slices the 2-D network takes per run. Any count gives the same logits, so this is a
    /// speed and memory setting, independent of the bundle's MONAI batch size.
    pub slice_batch: usize,
    /// File name prefix for ONNX Runtime's per-operator profile; `None` turns profiling off.
    pub profile_prefix: Option<PathBuf>,
}

impl SessionOptions {
    /// Default options on the CPU provider with the library at `library`.
    pub fn new(library: PathBuf) -> Self {
        Self {
            library,
            intra_threads: 0,
            providers: ProviderChoice::default(),
            slice_batch: DEFAULT_SLICE_BATCH,
            profile_prefix: None,
        }
    }
}

impl SessionOptions {
    /// Returns the intra-operator thread count: the setting, or else the CPUs this process may use,
    /// which respects a container's CPU quota.
    ///
    /// ONNX Runtime's own default was 15-40% slower on a 2-core virtual machine than 2 threads
    /// set explicitly (onnxruntime 1.31.1, one 3-D window 2.44 s against 2.15 s).
    pub fn resolved_intra_threads(&self) -> usize {
        if self.intra_threads > 0 {
            return self.intra_threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Slices per 2-D run by default. Per slice, onnxruntime 1.31.1 on 2 AVX-512 cores took
/// 18 ms in batches of 4, 20 ms in batches of 8 and 23 ms in batches of 16.
pub const DEFAULT_SLICE_BATCH: usize = 4;

/// A network run by an ONNX Runtime session.
pub struct OrtNetwork {
    label: &'static str,
    session: Session,
    run_options: RunOptions,
    provider: Provider,
    profiling: bool,
    input_name: String,
    output_name: String,
    spatial_dims: usize,
}

impl OrtNetwork {
    /// Creates a session for `spec` from the bundle folder `dir`.
    pub fn load(
        label: &'static str,
        dir: &Path,
        spec: &NetworkSpec,
        options: &SessionOptions,
    ) -> Result<Self, BundleError> {
        let environment = runtime::environment(&options.library)?;
        let session_error = |message: String| BundleError::Session {
            file: spec.onnx.clone(),
            message,
        };

        let mut builder = Session::builder(&environment)
            .map_err(|e| session_error(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| session_error(e.to_string()))?
            // NOTE: the memory pattern pre-plans one block for every intermediate tensor of a
            // window. Off, one 3-D window of the default bundle peaked at 617 MB instead of
            // 999 MB (onnxruntime 1.31.1, Python, 2 threads) at the same speed.
            .with_memory_pattern(false)
            .map_err(|e| session_error(e.to_string()))?;
        builder = builder
            .with_intra_threads(options.resolved_intra_threads())
            .map_err(|e| session_error(e.to_string()))?;
        if let Some(prefix) = &options.profile_prefix {
            let prefix = format!("{}-{label}", prefix.display());
            builder = builder
                .with_profiling(prefix)
                .map_err(|e| session_error(e.to_string()))?;
        }
        let provider = register_providers(&mut builder, &options.providers, label)?;
        let session = builder
            .commit_from_file(dir.join(&spec.onnx))
            .map_err(|e| session_error(e.to_string()))?;

        // NOTE: shrinking the CPU arena after each run hands the memory of one network's
        // activations back before the other network runs, so the two do not add up in the
        // peak. The default bundle's atlas job peaked at 958 MB without it.
        let mut run_options = RunOptions::new().map_err(|e| session_error(e.to_string()))?;
        run_options
            .set("memory.enable_memory_arena_shrinkage", "cpu:0")
            .map_err(|e| session_error(e.to_string()))?;

        Ok(Self {
            label,
            session,
            run_options,
            provider,
            profiling: options.profile_prefix.is_some(),
            input_name: spec.input_name.clone(),
            output_name: spec.output_name.clone(),
            spatial_dims: spec.spatial_dims,
        })
    }
}

impl OrtNetwork {
    /// Returns the primary execution provider of this session.
    pub fn provider(&self) -> Provider {
        self.provider
    }
}

/// Registers the chosen providers on `builder`; returns the primary one. A provider left out
/// under fallback is logged as a warning.
fn register_providers(
    builder: &mut ort::session::builder::SessionBuilder,
    choice: &ProviderChoice,
    network: &'static str,
) -> Result<Provider, ProviderError> {
    let register = |provider: Provider| {
        let Some(dispatch) = provider.dispatch() else {
            return Ok(());
        };
        dispatch.register(builder).map_err(|error| ProviderError {
            provider,
            message: error.to_string().trim_end_matches('.').to_owned(),
        })
    };
    let skipped = |error: &ProviderError| {
        tracing::warn!(
            network,
            provider = %error.provider,
            error = %error.message,
            "execution provider left out; its operators run on the next listed provider or the CPU"
        );
    };
    choice.register_all(register, skipped)
}

impl Network for OrtNetwork {
    fn end_profiling(&mut self) -> Option<Result<PathBuf, InferenceError>> {
        if !self.profiling {
            return None;
        }
        self.profiling = false;
        Some(
            self.session
                .end_profiling()
                .map(PathBuf::from)
                .map_err(|e| InferenceError {
                    network: self.label,
                    message: format!("cannot end profiling: {e}"),
                }),
        )
    }

    fn run(&mut self, windows: ArrayView4<f32>) -> Result<Array5<f32>, InferenceError> {
        let label = self.label;
        let error = |message: &dyn std::fmt::Display| InferenceError {
            network: label,
            message: message.to_string(),
        };
        let (n, h, w, d) = windows.dim();
        let windows = windows.as_standard_layout();

        // Insert the channel axis; a 2-D network takes (n, 1, h, w), so the window depth of 1
        // is dropped. Both are reshapes of contiguous memory, not copies.
        let input_shape: Vec<usize> = match self.spatial_dims {
            2 => vec![n, 1, h, w],
            _ => vec![n, 1, h, w, d],
        };
        let input = windows
            .view()
            .into_shape_with_order(input_shape)
            .map_err(|e| error(&e))?;
        let tensor = TensorRef::from_array_view(input).map_err(|e| error(&e))?;

        let outputs = self
            .session
            .run_with_options(ort::inputs![self.input_name.as_str() => tensor], &self.run_options)
            .map_err(|e| error(&e))?;
        let logits = outputs[self.output_name.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| error(&e))?;

        let logits = match self.spatial_dims {
            2 => {
                let logits = logits.into_dimensionality::<Ix4>().map_err(|e| error(&e))?;
                let (batch, channels, oh, ow) = logits.dim();
                logits
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((batch, channels, oh, ow, 1))
                    .map_err(|e| error(&e))?
            }
            _ => logits.into_dimensionality::<Ix5>().map_err(|e| error(&e))?.to_owned(),
        };

        let (out_n, _, out_h, out_w, out_d) = logits.dim();
        if (out_n, out_h, out_w, out_d) != (n, h, w, d) {
            let message = format!(
                "output shape {:?} does not match the input windows ({n}, {h}, {w}, {d})",
                logits.shape()
            );
            return Err(error(&message));
        }
        Ok(logits)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(blend_mode: &str) -> String {
        format!(
            r#"{{
              "format": 1, "name": "test", "version": "1", "window_sigmas": 3.0,
              "networks": {{
                "3d": {{"onnx": "a.onnx", "input_name": "input", "output_name": "output",
                        "spatial_dims": 3, "roi_size": [8, 8, 4], "overlap": 0.25,
                        "blend_mode": "{blend_mode}", "batch_size": 1}},
                "2d": {{"onnx": "b.onnx", "input_name": "input", "output_name": "output",
                        "spatial_dims": 2, "roi_size": [8, 8], "overlap": 0.25,
                        "blend_mode": "constant", "batch_size": 4}}
              }},
              "sha256": {{"a.onnx": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
                          "b.onnx": "00"}}
            }}"#
        )
    }

    #[test]
    fn manifest_rejects_gaussian_blending() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), manifest_json("gaussian")).unwrap();

        let message = BundleManifest::read(dir.path()).unwrap_err().to_string();

        assert!(message.contains("blend_mode"), "{message}");
    }

    #[test]
    fn hash_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), manifest_json("constant")).unwrap();
        std::fs::write(dir.path().join("a.onnx"), b"a").unwrap();
        std::fs::write(dir.path().join("b.onnx"), b"b").unwrap();
        let manifest = BundleManifest::read(dir.path()).unwrap();

        let message = manifest.verify_hashes(dir.path()).unwrap_err().to_string();

        assert!(message.contains("b.onnx"), "{message}");
        assert!(!message.contains("a.onnx"), "a.onnx matches its hash: {message}");
    }

    #[test]
    fn slice_network_roi_is_one_deep() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), manifest_json("constant")).unwrap();

        let manifest = BundleManifest::read(dir.path()).unwrap();

        assert_eq!(manifest.networks.two_d.roi_3d(), [8, 8, 1]);
        assert_eq!(manifest.networks.three_d.roi_3d(), [8, 8, 4]);
    }
}
