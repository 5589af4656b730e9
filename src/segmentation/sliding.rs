//! Sliding-window inference with MONAI's `sliding_window_inference` semantics.
//!
//! The window positions, the zero padding of axes shorter than the ROI, the constant blending
//! and the final crop follow MONAI 1.6 (`monai.inferers.utils`). The network is a closure, so
//! tiling and blending are tested here without ONNX Runtime.
//!
//! Both branches use the same driver over an (H, W, D) volume. The 3-D network takes windows
//! of (256, 256, 64), and the 2-D network takes windows of (256, 256, 1). Each axial slice is
//! then its own window along D, exactly as MONAI treats a batch of slices.

use ndarray::{Array3, Array4, Array5, ArrayView3, ArrayView4, Axis, Zip, s};

/// Window layout along one padded axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AxisPlan {
    /// Zero voxels added before the data; MONAI puts the odd voxel after.
    pub pad_before: usize,
    /// Zero voxels added after the data.
    pub pad_after: usize,
    /// Window start offsets in padded coordinates, ascending.
    pub starts: Vec<usize>,
}

impl AxisPlan {
    /// Plans one axis of `size` voxels for windows of `roi` voxels overlapping by `overlap`.
    pub fn new(size: usize, roi: usize, overlap: f32) -> Self {
        let padding = roi.saturating_sub(size);
        let pad_before = padding / 2;
        let padded = size + padding;

        // `_get_scan_interval`: a window as long as the axis does not move; otherwise it moves by
        // `int(roi * (1 - overlap))`, at least 1.
        let interval = if roi == padded {
            roi
        } else {
            ((roi as f64 * (1.0 - f64::from(overlap))) as usize).max(1)
        };

        // `dense_patch_slices`: as many steps as it takes the last window to reach the end; the
        // last start is then pulled back so that the window ends at the edge.
        let steps = (0..)
            .find(|step| step * interval + roi >= padded)
            .expect("the step count is finite because interval >= 1");
        let starts = (0..=steps)
            .map(|step| {
                let start = step * interval;
                start - (start + roi).saturating_sub(padded)
            })
            .collect();

        Self {
            pad_before,
            pad_after: padding - pad_before,
            starts,
        }
    }

    fn padded_len(&self, size: usize) -> usize {
        self.pad_before + size + self.pad_after
    }
}

/// Returns the number of windows [`sliding_window_inference`] runs over an image of `size`.
pub fn window_count(size: [usize; 3], roi: [usize; 3], overlap: f32) -> usize {
    (0..3)
        .map(|axis| AxisPlan::new(size[axis], roi[axis], overlap).starts.len())
        .product()
}

/// The quantity [`sliding_window_inference`] accumulates over the windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blend {
    /// Every channel, averaged over the windows that cover a voxel, as MONAI returns it.
    Logits,
    /// The sum over windows of channel 1 minus channel 0 of a two-channel network, not divided
    /// by the window count. Its sign is the argmax, in half the memory of [`Blend::Logits`].
    LogitDifference,
}

/// Runs `network` over every window of `image` and returns the blended output, shape
/// (channels, H, W, D): the network's channels for [`Blend::Logits`], one for
/// [`Blend::LogitDifference`].
///
/// `network` receives a batch of windows shaped (n, rh, rw, rd), with n at most
/// `batch_size`, and returns their logits shaped (n, channels, rh, rw, rd). Windows are taken
/// in MONAI's order, with the last axis varying fastest.
///
/// # Panics
/// With [`Blend::LogitDifference`], when the network returns other than two channels.
pub fn sliding_window_inference<E>(
    image: ArrayView3<f32>,
    roi: [usize; 3],
    overlap: f32,
    batch_size: usize,
    blend: Blend,
    mut network: impl FnMut(ArrayView4<f32>) -> Result<Array5<f32>, E>,
) -> Result<Array4<f32>, E> {
    let size = [image.dim().0, image.dim().1, image.dim().2];
    let plans: Vec<AxisPlan> = (0..3)
        .map(|axis| AxisPlan::new(size[axis], roi[axis], overlap))
        .collect();
    let roi = [
        roi[0].min(plans[0].padded_len(size[0])),
        roi[1].min(plans[1].padded_len(size[1])),
        roi[2].min(plans[2].padded_len(size[2])),
    ];

    let padded = pad_with_zeros(image, &plans);
    let padded_dim = padded.dim();

    let windows: Vec<[usize; 3]> = plans[0]
        .starts
        .iter()
        .flat_map(|&h| plans[1].starts.iter().map(move |&w| (h, w)))
        .flat_map(|(h, w)| plans[2].starts.iter().map(move |&d| [h, w, d]))
        .collect();

    let mut sum: Option<Array4<f32>> = None;
    let mut batch = Array4::<f32>::zeros((batch_size.max(1), roi[0], roi[1], roi[2]));

    for chunk in windows.chunks(batch_size.max(1)) {
        for (slot, start) in chunk.iter().enumerate() {
            batch
                .index_axis_mut(Axis(0), slot)
                .assign(&padded.slice(window_slice(*start, roi)));
        }

        let logits = network(batch.slice(s![..chunk.len(), .., .., ..]))?;
        let channels = match blend {
            Blend::Logits => logits.dim().1,
            Blend::LogitDifference => 1,
        };
        let sum = sum.get_or_insert_with(|| Array4::zeros((channels, padded_dim.0, padded_dim.1, padded_dim.2)));

        for (slot, start) in chunk.iter().enumerate() {
            add_window(sum, logits.index_axis(Axis(0), slot), window_slice(*start, roi), blend);
        }
    }
    let mut sum = sum.expect("every axis plan has at least one window");

    let crop = s![
        ..,
        plans[0].pad_before..plans[0].pad_before + size[0],
        plans[1].pad_before..plans[1].pad_before + size[1],
        plans[2].pad_before..plans[2].pad_before + size[2]
    ];
    if blend == Blend::Logits {
        divide_by_window_count(&mut sum, &plans, roi);
    }
    Ok(sum.slice(crop).to_owned())
}

/// Adds one window's logits, shape (channels, rh, rw, rd), into `sum` over `region`.
fn add_window(
    sum: &mut Array4<f32>,
    logits: ArrayView4<f32>,
    region: ndarray::SliceInfo<[ndarray::SliceInfoElem; 3], ndarray::Ix3, ndarray::Ix3>,
    blend: Blend,
) {
    match blend {
        Blend::Logits => {
            for (channel, window) in logits.axis_iter(Axis(0)).enumerate() {
                let mut target = sum.index_axis_mut(Axis(0), channel);
                Zip::from(target.slice_mut(region))
                    .and(&window)
                    .for_each(|total, &logit| *total += logit);
            }
        }
        Blend::LogitDifference => {
            assert_eq!(logits.dim().0, 2, "a logit difference needs a two-channel network");
            let mut target = sum.index_axis_mut(Axis(0), 0);
            Zip::from(target.slice_mut(region))
                .and(logits.index_axis(Axis(0), 0))
                .and(logits.index_axis(Axis(0), 1))
                .for_each(|total, &background, &thrombus| *total += thrombus - background);
        }
    }
}

/// Divides every voxel by the number of windows that cover it, as MONAI's `count_map` does.
///
/// The windows form a grid, so that number is the product of the per-axis counts. Each factor
/// is a small integer, so the product is exact in f32 and the division rounds as MONAI's does.
fn divide_by_window_count(sum: &mut Array4<f32>, plans: &[AxisPlan], roi: [usize; 3]) {
    let (_, h, w, d) = sum.dim();
    let per_axis: Vec<Vec<f32>> = [h, w, d]
        .iter()
        .zip(plans)
        .zip(roi)
        .map(|((&len, plan), roi)| {
            let mut counts = vec![0f32; len];
            for &start in &plan.starts {
                counts[start..start + roi].iter_mut().for_each(|count| *count += 1.0);
            }
            counts
        })
        .collect();

    for mut channel in sum.axis_iter_mut(Axis(0)) {
        Zip::indexed(&mut channel).for_each(|(i, j, k), total| {
            *total /= per_axis[0][i] * per_axis[1][j] * per_axis[2][k];
        });
    }
}

fn window_slice(
    start: [usize; 3],
    roi: [usize; 3],
) -> ndarray::SliceInfo<[ndarray::SliceInfoElem; 3], ndarray::Ix3, ndarray::Ix3> {
    s![
        start[0]..start[0] + roi[0],
        start[1]..start[1] + roi[1],
        start[2]..start[2] + roi[2]
    ]
}

fn pad_with_zeros(image: ArrayView3<f32>, plans: &[AxisPlan]) -> Array3<f32> {
    let (h, w, d) = image.dim();
    let mut padded = Array3::<f32>::zeros((plans[0].padded_len(h), plans[1].padded_len(w), plans[2].padded_len(d)));
    padded
        .slice_mut(s![
            plans[0].pad_before..plans[0].pad_before + h,
            plans[1].pad_before..plans[1].pad_before + w,
            plans[2].pad_before..plans[2].pad_before + d
        ])
        .assign(&image);
    padded
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use ndarray::{Array3, Array5, ArrayView4, Axis};

    use super::*;

    #[test]
    fn axis_shorter_than_roi_is_padded_odd_voxel_after() {
        let plan = AxisPlan::new(61, 64, 0.25);

        assert_eq!(plan.pad_before, 1);
        assert_eq!(plan.pad_after, 2);
        assert_eq!(plan.starts, vec![0]);
    }

    #[test]
    fn axis_equal_to_roi_has_one_window() {
        let plan = AxisPlan::new(256, 256, 0.25);

        assert_eq!(plan.starts, vec![0]);
        assert_eq!((plan.pad_before, plan.pad_after), (0, 0));
    }

    #[test]
    fn axis_longer_than_roi_matches_monai_starts() {
        // Starts as MONAI 1.6 `dense_patch_slices` returns them for these sizes.
        assert_eq!(AxisPlan::new(179, 64, 0.25).starts, vec![0, 48, 96, 115]);
        assert_eq!(AxisPlan::new(264, 256, 0.25).starts, vec![0, 8]);
        assert_eq!(AxisPlan::new(72, 64, 0.25).starts, vec![0, 8]);
        assert_eq!(AxisPlan::new(600, 256, 0.25).starts, vec![0, 192, 344]);
        assert_eq!(AxisPlan::new(100, 64, 0.5).starts, vec![0, 32, 36]);
    }

    #[test]
    fn window_count_multiplies_axes() {
        assert_eq!(window_count([202, 202, 179], [256, 256, 64], 0.25), 4);
        assert_eq!(window_count([202, 202, 179], [256, 256, 1], 0.25), 179);
        assert_eq!(window_count([600, 264, 72], [256, 256, 64], 0.25), 3 * 2 * 2);
    }

    #[test]
    fn slice_windows_cover_every_slice_once() {
        let plan = AxisPlan::new(5, 1, 0.25);

        assert_eq!(plan.starts, vec![0, 1, 2, 3, 4]);
    }

    /// Returns the input as channel 0 and the input plus 1 as channel 1.
    fn shifted_identity(batch: ArrayView4<f32>) -> Result<Array5<f32>, Infallible> {
        let (n, h, w, d) = batch.dim();
        let mut out = Array5::zeros((n, 2, h, w, d));
        for i in 0..n {
            out.index_axis_mut(Axis(0), i)
                .index_axis_mut(Axis(0), 0)
                .assign(&batch.index_axis(Axis(0), i));
            out.index_axis_mut(Axis(0), i)
                .index_axis_mut(Axis(0), 1)
                .assign(&batch.index_axis(Axis(0), i).mapv(|v| v + 1.0));
        }
        Ok(out)
    }

    #[test]
    fn identity_network_returns_the_image() {
        let image = Array3::from_shape_fn((9, 7, 13), |(h, w, d)| (h * 100 + w * 10 + d) as f32);

        let logits =
            sliding_window_inference(image.view(), [4, 8, 5], 0.25, 3, Blend::Logits, shifted_identity).unwrap();

        assert_eq!(logits.dim(), (2, 9, 7, 13));
        for ((c, h, w, d), &v) in logits.indexed_iter() {
            let expected = image[[h, w, d]] + c as f32;
            assert!((v - expected).abs() < 1e-3, "({c}, {h}, {w}, {d}): {v} != {expected}");
        }
    }

    #[test]
    fn padding_is_zero() {
        // The network returns the sum of its window: an image of eight ones padded with zeros
        // to the ROI sums to 8.
        let image = Array3::<f32>::ones((2, 2, 2));
        let mut seen_shapes = Vec::new();

        let logits = sliding_window_inference(image.view(), [4, 4, 4], 0.25, 1, Blend::Logits, |batch| {
            seen_shapes.push(batch.dim());
            let total: f32 = batch.sum();
            Ok::<_, Infallible>(Array5::from_elem((1, 1, 4, 4, 4), total))
        })
        .unwrap();

        assert_eq!(seen_shapes, vec![(1, 4, 4, 4)]);
        assert!(logits.iter().all(|&v| v == 8.0));
    }

    #[test]
    fn overlapping_windows_are_averaged() {
        // Each window returns its own start along D as the logit; voxels covered by two windows
        // get the mean of both starts.
        let image = Array3::<f32>::zeros((1, 1, 6));
        let mut call = 0;
        let starts = AxisPlan::new(6, 4, 0.5).starts;
        assert_eq!(starts, vec![0, 2]);
        let logits = sliding_window_inference(image.view(), [1, 1, 4], 0.5, 1, Blend::Logits, |_| {
            let value = starts[call] as f32;
            call += 1;
            Ok::<_, Infallible>(Array5::from_elem((1, 1, 1, 1, 4), value))
        })
        .unwrap();

        let got: Vec<f32> = logits.iter().copied().collect();
        assert_eq!(got, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn batches_hold_at_most_batch_size_windows() {
        let image = Array3::<f32>::zeros((3, 3, 10));
        let mut sizes = Vec::new();

        sliding_window_inference(image.view(), [3, 3, 1], 0.25, 4, Blend::Logits, |batch| {
            sizes.push(batch.dim().0);
            Ok::<_, Infallible>(Array5::zeros((batch.dim().0, 2, 3, 3, 1)))
        })
        .unwrap();

        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[test]
    fn logit_difference_sums_channel_one_minus_zero() {
        // Windows along D start at 0 and 2; window k returns k + 1 as channel 0 and 4 as
        // channel 1, so voxels 2 and 3, covered twice, sum (4 - 1) + (4 - 2).
        let image = Array3::<f32>::zeros((1, 1, 6));
        let mut call = 0.0;

        let difference = sliding_window_inference(image.view(), [1, 1, 4], 0.5, 1, Blend::LogitDifference, |_| {
            call += 1.0;
            let mut out = Array5::from_elem((1, 2, 1, 1, 4), 4.0);
            out.index_axis_mut(Axis(1), 0).fill(call);
            Ok::<_, Infallible>(out)
        })
        .unwrap();

        assert_eq!(difference.dim(), (1, 1, 1, 6));
        let got: Vec<f32> = difference.iter().copied().collect();
        assert_eq!(got, vec![3.0, 3.0, 5.0, 5.0, 2.0, 2.0]);
    }
}
