//! Criterion benchmarks of the steps outside the networks, on the 202 x 202 x 179 CT atlas:
//! windowing, median filter, rescale, sliding-window tiling and blending, argmax and npz
//! encoding. Run with `cargo bench --bench stages`.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array3, Array4, Array5};
use thrombseg::preprocess::{IntensityWindow, apply_window, median_filter_3x3x3, rescale_to_unit_range};
use thrombseg::segmentation::argmax_mask;
use thrombseg::segmentation::sliding::sliding_window_inference;
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

fn sliding_and_masks(c: &mut Criterion) {
    let voxels = atlas();

    // A network that returns zeros isolates padding, window gathering, blending and cropping.
    let zeros = |windows: ndarray::ArrayView4<f32>| {
        let (n, h, w, d) = windows.dim();
        Ok::<_, Infallible>(Array5::<f32>::zeros((n, 2, h, w, d)))
    };
    c.bench_function("sliding 3-D tiling and blending atlas", |b| {
        b.iter(|| sliding_window_inference(voxels.view(), [256, 256, 64], 0.25, 1, zeros).unwrap())
    });
    c.bench_function("sliding 2-D tiling and blending atlas", |b| {
        b.iter(|| sliding_window_inference(voxels.view(), [256, 256, 1], 0.25, 16, zeros).unwrap())
    });

    let (h, w, d) = voxels.dim();
    let logits = Array4::from_shape_fn((2, h, w, d), |(c, i, j, k)| ((i * 7 + j * 3 + k + c * 5) % 11) as f32);
    c.bench_function("argmax atlas", |b| b.iter(|| argmax_mask(black_box(&logits))));

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
