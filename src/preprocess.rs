//! Intensity preprocessing: CT window, 3x3x3 median, rescale to [-1, 1].
//!
//! Each step reproduces a MONAI 1.6 transform on a single-channel float32 volume, so that the
//! networks see the same input they were trained on:
//! `ScaleIntensityRange(a, b, 0, 255, clip=True)`, `MedianSmooth(radius=1)` and
//! `ScaleIntensity(minv=-1, maxv=1)`. Pure functions over arrays: no I/O, no clock.

use std::thread;

use ndarray::{Array3, ArrayView3, ArrayViewMut3, Axis};

/// Upper end of the window's output range; MONAI's `b_max`.
const WINDOW_OUTPUT_MAX: f32 = 255.0;

/// Intensity window [lower, upper] in Hounsfield units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntensityWindow {
    pub lower: f64,
    pub upper: f64,
}

impl IntensityWindow {
    /// Centres the window on `mean` with a half-width of `sigmas` standard deviations.
    pub fn from_statistics(mean: f64, variance: f64, sigmas: f64) -> Self {
        let sigma = variance.sqrt();
        Self {
            lower: mean - sigmas * sigma,
            upper: mean + sigmas * sigma,
        }
    }
}

/// Runs the three preprocessing steps and returns the network input.
pub fn preprocess(voxels: &Array3<f32>, window: IntensityWindow) -> Array3<f32> {
    let mut windowed = voxels.clone();
    apply_window(windowed.view_mut(), window);

    let mut smoothed = median_filter_3x3x3(windowed.view());
    drop(windowed);

    rescale_to_unit_range(smoothed.view_mut());
    smoothed
}

/// Maps `window` linearly onto [0, 255] and clips, as MONAI `ScaleIntensityRange` does.
///
/// MONAI computes `(x - a) / (b - a)` then `* (b_max - b_min) + b_min` in the tensor's float32,
/// with `a` and `b - a` converted from Python floats; the same order of operations is kept here.
pub fn apply_window(mut voxels: ArrayViewMut3<f32>, window: IntensityWindow) {
    let lower = window.lower as f32;
    let width = (window.upper - window.lower) as f32;
    voxels.mapv_inplace(|v| ((v - lower) / width * WINDOW_OUTPUT_MAX).clamp(0.0, WINDOW_OUTPUT_MAX));
}

/// Replaces each voxel by the median of its 3x3x3 neighbourhood, replicating edge voxels,
/// as MONAI `MedianSmooth(radius=1)` does.
pub fn median_filter_3x3x3(voxels: ArrayView3<f32>) -> Array3<f32> {
    let (height, _, _) = voxels.dim();
    let mut output = Array3::<f32>::zeros(voxels.raw_dim());
    let workers = thread::available_parallelism().map_or(1, |n| n.get()).min(height);
    let rows_per_worker = height.div_ceil(workers);

    thread::scope(|scope| {
        for (chunk_index, mut chunk) in output.axis_chunks_iter_mut(Axis(0), rows_per_worker).enumerate() {
            let first_row = chunk_index * rows_per_worker;
            scope.spawn(move || median_rows(voxels, chunk.view_mut(), first_row));
        }
    });
    output
}

/// Fills `output`, which covers rows `first_row..` of the volume, with 3x3x3 medians.
fn median_rows(voxels: ArrayView3<f32>, mut output: ArrayViewMut3<f32>, first_row: usize) {
    let (height, width, depth) = voxels.dim();
    let clamp = |i: usize, delta: isize, len: usize| (i as isize + delta).clamp(0, len as isize - 1) as usize;
    let mut neighbourhood = [0f32; 27];

    for ((row, col, slice), out) in output.indexed_iter_mut() {
        let h = first_row + row;
        let mut k = 0;
        for dh in -1..=1 {
            let hh = clamp(h, dh, height);
            for dw in -1..=1 {
                let ww = clamp(col, dw, width);
                for dd in -1..=1 {
                    neighbourhood[k] = voxels[[hh, ww, clamp(slice, dd, depth)]];
                    k += 1;
                }
            }
        }
        let (_, median, _) = neighbourhood.select_nth_unstable_by(13, f32::total_cmp);
        *out = *median;
    }
}

/// Rescales to [-1, 1] by the volume's own minimum and maximum, as MONAI
/// `ScaleIntensity(minv=-1, maxv=1)` does. A constant volume is multiplied by -1, which is
/// MONAI's rule when the minimum equals the maximum.
pub fn rescale_to_unit_range(mut voxels: ArrayViewMut3<f32>) {
    let (min, max) = voxels.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });

    if min == max {
        voxels.mapv_inplace(|v| -v);
        return;
    }

    let range = max - min;
    voxels.mapv_inplace(|v| (v - min) / range * 2.0 - 1.0);
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    #[test]
    fn window_maps_bounds_to_output_range_and_clips() {
        let window = IntensityWindow::from_statistics(250.0, 1000.0, 3.0);
        let sigma = 1000f64.sqrt();
        let mut voxels = Array3::from_shape_vec(
            (1, 1, 5),
            vec![
                (250.0 - 3.0 * sigma) as f32,
                250.0,
                (250.0 + 3.0 * sigma) as f32,
                -1000.0,
                3000.0,
            ],
        )
        .unwrap();

        apply_window(voxels.view_mut(), window);

        let got = voxels.as_slice().unwrap();
        assert!(got[0].abs() < 1e-3, "lower bound maps to 0, got {}", got[0]);
        assert!((got[1] - 127.5).abs() < 1e-3, "mean maps to 127.5, got {}", got[1]);
        assert!((got[2] - 255.0).abs() < 1e-3, "upper bound maps to 255, got {}", got[2]);
        assert_eq!(got[3], 0.0);
        assert_eq!(got[4], 255.0);
    }

    #[test]
    fn median_removes_single_outlier() {
        let mut voxels = Array3::<f32>::from_elem((5, 5, 5), 10.0);
        voxels[[2, 2, 2]] = 1000.0;

        let smoothed = median_filter_3x3x3(voxels.view());

        assert!(smoothed.iter().all(|&v| v == 10.0));
    }

    #[test]
    fn median_replicates_edges() {
        // Values rise along D: at the first slice the replicated neighbourhood holds 9 copies
        // each of slices 0, 0 and 1, so its median is slice 0's value.
        let voxels = Array3::from_shape_fn((3, 3, 4), |(_, _, d)| d as f32);

        let smoothed = median_filter_3x3x3(voxels.view());

        assert_eq!(smoothed[[0, 0, 0]], 0.0);
        assert_eq!(smoothed[[1, 1, 1]], 1.0);
        assert_eq!(smoothed[[2, 2, 3]], 3.0);
    }

    #[test]
    fn median_matches_brute_force_on_noise() {
        let voxels = Array3::from_shape_fn((7, 6, 5), |(h, w, d)| ((h * 31 + w * 17 + d * 7) % 13) as f32);

        let smoothed = median_filter_3x3x3(voxels.view());

        for ((h, w, d), &got) in smoothed.indexed_iter() {
            let mut values = Vec::new();
            for dh in -1i64..=1 {
                for dw in -1i64..=1 {
                    for dd in -1i64..=1 {
                        let hh = (h as i64 + dh).clamp(0, 6) as usize;
                        let ww = (w as i64 + dw).clamp(0, 5) as usize;
                        let d2 = (d as i64 + dd).clamp(0, 4) as usize;
                        values.push(voxels[[hh, ww, d2]]);
                    }
                }
            }
            values.sort_by(f32::total_cmp);
            assert_eq!(got, values[13], "median at ({h}, {w}, {d})");
        }
    }

    #[test]
    fn rescale_spans_minus_one_to_one() {
        let mut voxels = Array3::from_shape_vec((1, 1, 3), vec![0.0, 127.5, 255.0]).unwrap();

        rescale_to_unit_range(voxels.view_mut());

        assert_eq!(voxels.as_slice().unwrap(), &[-1.0, 0.0, 1.0]);
    }

    #[test]
    fn rescale_negates_constant_volume() {
        let mut voxels = Array3::from_elem((2, 2, 2), 255.0f32);

        rescale_to_unit_range(voxels.view_mut());

        assert!(voxels.iter().all(|&v| v == -255.0));
    }
}
