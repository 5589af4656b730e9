//! Criterion benchmarks of the steps outside the networks, on the 202 x 202 x 179 CT atlas:
//! windowing, median filter, rescale, sliding-window tiling and blending, argmax and npz
//! encoding. Run with `cargo bench --bench stages`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array3, Array4, Array5};
use thrombseg::preprocess::{IntensityWindow, apply_window, median_filter_3x3x3, rescale_to_unit_range};
use thrombseg::segmentation::model::{BundleManifest, InferenceError, Network};
use thrombseg::segmentation::sliding::{Blend, sliding_window_inference};
use thrombseg::segmentation::{argmax_mask, positive_mask, run_slices};
use thrombseg::volume::{MaskArchive, ReadLimits, encode_masks, read_npz};

fn atlas() -> Array3<f32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ct_brain_atlas_1mm.npz");
    let bytes = std::fs::read(path).expect("the atlas fixture");
    read_npz(&bytes, ReadLimits::default()).expect("the atlas reads").voxels
}

fn preprocessing(c: &mut Criterion) {
    let voxels = atlas();
    let window = IntensityWindow::from_statistics(40.0, 400.0, 3.0);
    let mut windowed = voxels.clone();
    apply_window(windowed.view_mut(), window);

    c.bench_function("window atlas", |b| {
        b.iter_batched_ref(
            || voxels.clone(),
            |v| apply_window(v.view_mut(), window),
            criterion::BatchSize::LargeInput,
        )
    });
    c.bench_function("median 3x3x3 atlas", |b| {
        b.iter(|| median_filter_3x3x3(black_box(windowed.view())))
    });
    c.bench_function("rescale atlas", |b| {
        b.iter_batched_ref(
            || windowed.clone(),
            |v| rescale_to_unit_range(v.view_mut()),
            criterion::BatchSize::LargeInput,
        )
    });
}

/// A network that returns zeros, to isolate padding, window gathering, blending and cropping.
struct Zeros;

impl Network for Zeros {
    fn run(&mut self, windows: ndarray::ArrayView4<f32>) -> Result<Array5<f32>, InferenceError> {
        let (n, h, w, d) = windows.dim();
        Ok(Array5::zeros((n, 2, h, w, d)))
    }
}

fn sliding_and_masks(c: &mut Criterion) {
    let voxels = atlas();
    let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/models");
    let manifest = BundleManifest::read(std::path::Path::new(bundle)).expect("the committed bundle");
    let spec_2d = manifest.networks.two_d;

    for (name, blend) in [
        ("logit difference", Blend::LogitDifference),
        ("both logits", Blend::Logits),
    ] {
        c.bench_function(&format!("sliding 3-D blending, {name}, atlas"), |b| {
            b.iter(|| {
                sliding_window_inference(voxels.view(), [256, 256, 64], 0.25, 1, blend, |windows| {
                    Zeros.run(windows)
                })
                .unwrap()
            })
        });
        c.bench_function(&format!("sliding 2-D blending, {name}, atlas"), |b| {
            b.iter(|| run_slices(voxels.view(), &spec_2d, 4, blend, &mut Zeros).unwrap())
        });
    }

    let (h, w, d) = voxels.dim();
    let logits = Array4::from_shape_fn((2, h, w, d), |(c, i, j, k)| ((i * 7 + j * 3 + k + c * 5) % 11) as f32);
    c.bench_function("argmax atlas", |b| b.iter(|| argmax_mask(black_box(&logits))));
    let difference = Array4::from_shape_fn((1, h, w, d), |(_, i, j, k)| ((i * 7 + j * 3 + k) % 11) as f32 - 5.0);
    c.bench_function("sign mask atlas", |b| {
        b.iter(|| positive_mask(black_box(difference.view())))
    });

    let mask = argmax_mask(&logits);
    let archive = MaskArchive {
        pred_2d: &mask,
        pred_3d: &mask,
        explain: None,
    };
    c.bench_function("npz encode masks atlas", |b| {
        b.iter(|| encode_masks(black_box(&archive)).unwrap())
    });
}

criterion_group! {
    name = stages;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = preprocessing, sliding_and_masks
}
criterion_main!(stages);
