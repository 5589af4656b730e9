//! The pure job: a CT volume in, the 2-D and 3-D masks (and optional explanation outputs) out.
//!
//! Nothing here depends on queues, URLs or metrics, and callers time the stages through the
//! [`StageTimings`] this module fills.

pub mod model;
pub mod profile;
pub mod providers;
pub mod runtime;
pub mod sliding;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, Axis, Zip};

use crate::preprocess::{IntensityWindow, preprocess};
use crate::volume::{CtVolume, ExplainArrays, MaskArchive};
use model::{BundleError, BundleManifest, InferenceError, Network, NetworkSpec, OrtNetwork, SessionOptions};
use providers::Provider;
use sliding::{Blend, sliding_window_inference};

/// A loaded bundle: its manifest and one session per network.
pub struct Segmenter {
    manifest: BundleManifest,
    net_3d: Box<dyn Network>,
    net_2d: Box<dyn Network>,
    provider: Provider,
    slice_batch: usize,
}

/// Seconds spent in each compute stage of one job.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StageTimings {
    pub preprocess: f64,
    pub infer_3d: f64,
    pub infer_2d: f64,
    pub postprocess: f64,
}

/// The result of segmenting one volume.
pub struct Segmentation {
    pub pred_2d: Array3<u8>,
    pub pred_3d: Array3<u8>,
    pub explain: Option<Explanation>,
    pub timings: StageTimings,
}

/// Logits and scores kept when a job requests an explanation.
pub struct Explanation {
    pub logits_2d: Array4<f32>,
    pub logits_3d: Array4<f32>,
    pub scores: Scores,
}

/// The two 3-D scores of the explanation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Scores {
    /// Mean softmax probability of the thrombus class.
    pub thrombus_probability: f32,
    /// Mean over voxels of the larger of the two softmax probabilities.
    pub confidence: f32,
}

impl Segmenter {
    /// Loads the bundle in `dir`: reads the manifest, checks every file's hash and opens an
    /// ONNX Runtime session per network.
    pub fn load(dir: &Path, options: &SessionOptions) -> Result<Self, BundleError> {
        let manifest = BundleManifest::read(dir)?;
        manifest.verify_hashes(dir)?;
        let net_3d = OrtNetwork::load("3d", dir, &manifest.networks.three_d, options)?;
        let net_2d = OrtNetwork::load("2d", dir, &manifest.networks.two_d, options)?;
        let provider = net_3d.provider();
        let mut segmenter = Self::with_networks(manifest, Box::new(net_3d), Box::new(net_2d));
        segmenter.provider = provider;
        segmenter.slice_batch = options.slice_batch.max(1);
        Ok(segmenter)
    }

    /// Builds a segmenter from networks created elsewhere, such as test doubles. The 2-D
    /// network then takes the bundle's batch size.
    pub fn with_networks(manifest: BundleManifest, net_3d: Box<dyn Network>, net_2d: Box<dyn Network>) -> Self {
        let slice_batch = manifest.networks.two_d.batch_size;
        Self {
            manifest,
            net_3d,
            net_2d,
            provider: Provider::Cpu,
            slice_batch,
        }
    }

    pub fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    /// Returns the execution provider that runs the networks first.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Ends profiling of both networks and returns each profiled network's label ("3d" or
    /// "2d") with the profile file it wrote.
    pub fn end_profiling(&mut self) -> Result<Vec<(&'static str, PathBuf)>, InferenceError> {
        [("3d", self.net_3d.as_mut()), ("2d", self.net_2d.as_mut())]
            .into_iter()
            .filter_map(|(label, network)| Some(network.end_profiling()?.map(|path| (label, path))))
            .collect()
    }

    /// Segments `volume` with both networks.
    pub fn segment(&mut self, volume: &CtVolume, explain: bool) -> Result<Segmentation, InferenceError> {
        let started = Instant::now();
        let input = prepare(volume, self.manifest.window_sigmas);
        let preprocess_seconds = started.elapsed().as_secs_f64();

        let mut segmentation = self.infer(&input, explain)?;
        segmentation.timings.preprocess = preprocess_seconds;
        Ok(segmentation)
    }

    /// Runs both networks on a volume that [`prepare`] returned. The preprocess time of the
    /// result is zero; the caller timed that stage.
    pub fn infer(&mut self, input: &Array3<f32>, explain: bool) -> Result<Segmentation, InferenceError> {
        let mut timings = StageTimings::default();

        // Without an explanation only the argmax is needed, and for two classes that is the
        // sign of the logit difference: one accumulator instead of two.
        let blend = if explain { Blend::Logits } else { Blend::LogitDifference };

        let started = Instant::now();
        let spec_3d = &self.manifest.networks.three_d;
        let output_3d = sliding_window_inference(
            input.view(),
            spec_3d.roi_3d(),
            spec_3d.overlap,
            spec_3d.batch_size,
            blend,
            |windows| self.net_3d.run(windows),
        )?;
        timings.infer_3d = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let output_2d = run_slices(
            input.view(),
            &self.manifest.networks.two_d,
            self.slice_batch,
            blend,
            self.net_2d.as_mut(),
        )?;
        timings.infer_2d = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let (pred_3d, pred_2d, explain) = match blend {
            Blend::LogitDifference => (positive_mask(output_3d.view()), positive_mask(output_2d.view()), None),
            Blend::Logits => {
                let logits_2d = output_2d.as_standard_layout().into_owned();
                let explanation = Explanation {
                    scores: softmax_scores(&output_3d),
                    logits_2d,
                    logits_3d: output_3d,
                };
                (
                    argmax_mask(&explanation.logits_3d),
                    argmax_mask(&explanation.logits_2d),
                    Some(explanation),
                )
            }
        };
        timings.postprocess = started.elapsed().as_secs_f64();

        Ok(Segmentation {
            pred_2d,
            pred_3d,
            explain,
            timings,
        })
    }
}

/// Windows, median-filters and rescales `volume` for the networks, with the window width in
/// standard deviations from the bundle. It needs no model, so it can run while another job
/// uses the networks.
pub fn prepare(volume: &CtVolume, window_sigmas: f64) -> Array3<f32> {
    let window = IntensityWindow::from_statistics(volume.non_mdc_mean, volume.non_mdc_var, window_sigmas);
    preprocess(&volume.voxels, window)
}

impl Segmentation {
    /// Returns the arrays to write into the output archive.
    pub fn archive(&self) -> MaskArchive<'_> {
        MaskArchive {
            pred_2d: &self.pred_2d,
            pred_3d: &self.pred_3d,
            explain: self.explain.as_ref().map(|explain| ExplainArrays {
                logits_2d: &explain.logits_2d,
                logits_3d: &explain.logits_3d,
                thrombus_probability: explain.scores.thrombus_probability,
                confidence: explain.scores.confidence,
            }),
        }
    }
}

/// Runs the 2-D network over every axial slice and returns the blended output as a
/// (channels, H, W, D) view of a (channels, D, H, W) array.
///
/// The volume is turned to (D, H, W) first, so that each slice window and its logits are
/// contiguous. Accumulating slices of an (H, W, D) array would touch one cache line per voxel.
pub fn run_slices(
    input: ArrayView3<f32>,
    spec: &NetworkSpec,
    slice_batch: usize,
    blend: Blend,
    network: &mut dyn Network,
) -> Result<Array4<f32>, InferenceError> {
    let slices_first = input.permuted_axes([2, 0, 1]).as_standard_layout().into_owned();
    let [rh, rw, _] = spec.roi_3d();

    let output = sliding_window_inference(
        slices_first.view(),
        [1, rh, rw],
        spec.overlap,
        slice_batch,
        blend,
        |windows| {
            // (n, 1, h, w) and (n, h, w, 1) have the same memory order, and so have the logits'
            // (n, c, h, w, 1) and (n, c, 1, h, w): both reshapes are free.
            let (n, _, h, w) = windows.dim();
            let windows = windows
                .into_shape_with_order((n, h, w, 1))
                .expect("a window batch is contiguous");
            let logits = network.run(windows)?;
            let channels = logits.dim().1;
            Ok(logits
                .into_shape_with_order((n, channels, 1, h, w))
                .expect("network output is contiguous"))
        },
    )?;
    Ok(output.permuted_axes([0, 2, 3, 1]))
}

/// Returns 1 where the summed logit difference (1, H, W, D) is positive. A zero is a tie, and
/// a tie is background, as `torch.argmax` returns the first maximum.
pub fn positive_mask(difference: ArrayView4<f32>) -> Array3<u8> {
    let difference = difference.index_axis_move(Axis(0), 0);
    let mask = difference.map(|&d| u8::from(d > 0.0));
    mask.as_standard_layout().into_owned()
}

/// Takes the argmax over the two channels of (2, H, W, D) logits; a tie is background, as
/// `torch.argmax` returns the first maximum.
pub fn argmax_mask(logits: &Array4<f32>) -> Array3<u8> {
    let background = logits.index_axis(Axis(0), 0);
    let thrombus = logits.index_axis(Axis(0), 1);
    Zip::from(&background)
        .and(&thrombus)
        .map_collect(|&b, &t| u8::from(t > b))
}

/// Computes the mean thrombus probability and the mean confidence from two-channel logits.
///
/// With two classes the softmax of the thrombus class is the logistic function of the logit
/// difference, and the larger probability is that of the class with the larger logit.
pub fn softmax_scores(logits: &Array4<f32>) -> Scores {
    let background = logits.index_axis(Axis(0), 0);
    let thrombus = logits.index_axis(Axis(0), 1);
    let mut probability_sum = 0f64;
    let mut confidence_sum = 0f64;
    Zip::from(&background).and(&thrombus).for_each(|&b, &t| {
        let p = 1.0 / (1.0 + (f64::from(b) - f64::from(t)).exp());
        probability_sum += p;
        confidence_sum += p.max(1.0 - p);
    });
    let count = background.len() as f64;
    Scores {
        thrombus_probability: (probability_sum / count) as f32,
        confidence: (confidence_sum / count) as f32,
    }
}

/// Folder, relative to the repository root, of the bundle committed with the source.
pub const DEFAULT_BUNDLE_DIR: &str = "fixtures/models";

/// Resolves the bundle folder: `flag` when given, else the committed bundle found from the
/// working directory or the executable's folder upwards.
pub fn locate_bundle(flag: Option<&Path>) -> Result<PathBuf, BundleError> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    runtime::search_upwards(DEFAULT_BUNDLE_DIR)
        .into_iter()
        .find(|dir| dir.join(model::MANIFEST).is_file())
        .ok_or_else(|| {
            BundleError::Invalid(format!(
                "no bundle given and no {DEFAULT_BUNDLE_DIR}/{} found in the working directory or beside the executable; pass --bundle DIR or set THROMBSEG_BUNDLE",
                model::MANIFEST
            ))
        })
}

#[cfg(test)]
mod tests {
    use ndarray::Array4;

    use super::*;

    #[test]
    fn argmax_tie_is_background() {
        let logits = Array4::from_shape_vec((2, 1, 1, 3), vec![0.0, 1.0, 2.0, 0.0, 2.0, 1.0]).unwrap();

        let mask = argmax_mask(&logits);

        assert_eq!(mask.as_slice().unwrap(), &[0, 1, 0]);
    }

    #[test]
    fn scores_of_equal_logits_are_one_half() {
        let logits = Array4::<f32>::zeros((2, 2, 2, 2));

        let scores = softmax_scores(&logits);

        assert_eq!(scores.thrombus_probability, 0.5);
        assert_eq!(scores.confidence, 0.5);
    }

    #[test]
    fn scores_match_softmax() {
        let logits = Array4::from_shape_vec((2, 1, 1, 2), vec![0.0, 3.0, 2.0, 1.0]).unwrap();
        let softmax_fg = |b: f64, t: f64| t.exp() / (b.exp() + t.exp());
        let p0 = softmax_fg(0.0, 2.0);
        let p1 = softmax_fg(3.0, 1.0);

        let scores = softmax_scores(&logits);

        assert!((f64::from(scores.thrombus_probability) - (p0 + p1) / 2.0).abs() < 1e-6);
        assert!((f64::from(scores.confidence) - (p0.max(1.0 - p0) + p1.max(1.0 - p1)) / 2.0).abs() < 1e-6);
    }
}
