//! `thrombseg preview` on the example volume with masks written here: image size, the colour
//! of each mask region, and rejection of masks that do not fit the volume.

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Output};

use ndarray::{Array3, s};
use ndarray_npy::NpzWriter;
use thrombseg::render::montage::{GAP, LINE_HEIGHT, MARGIN};

use crate::support::{binary, fixture, temp_dir};

/// Shape of fixtures/input_file_example.npz, (H, W, D).
const EXAMPLE_SHAPE: (usize, usize, usize) = (60, 60, 61);
/// Enlargement of a 60 x 60 slice to reach 192 pixels.
const SCALE: usize = 4;
/// Tile side in pixels.
const TILE: usize = 60 * SCALE;

/// Rows and columns of the three square regions the test masks use, in voxels.
const REGION_A: (usize, usize) = (10, 10);
const REGION_B: (usize, usize) = (35, 35);
const REGION_C: (usize, usize) = (10, 40);
const REGION_SIDE: usize = 10;

/// Builds masks with regions on three slices. Slice 5 has region A in the 2-D mask only.
/// Slice 30 has A in the 2-D mask and B in the 3-D mask. Slice 50 has B in the 3-D mask and C
/// in both.
fn example_masks() -> (Array3<u8>, Array3<u8>) {
    let mut pred_2d = Array3::<u8>::zeros(EXAMPLE_SHAPE);
    let mut pred_3d = Array3::<u8>::zeros(EXAMPLE_SHAPE);
    fill_region(&mut pred_2d, REGION_A, 5);
    fill_region(&mut pred_2d, REGION_A, 30);
    fill_region(&mut pred_3d, REGION_B, 30);
    fill_region(&mut pred_3d, REGION_B, 50);
    fill_region(&mut pred_2d, REGION_C, 50);
    fill_region(&mut pred_3d, REGION_C, 50);
    (pred_2d, pred_3d)
}

fn fill_region(mask: &mut Array3<u8>, (row, column): (usize, usize), slice: usize) {
    mask.slice_mut(s![row..row + REGION_SIDE, column..column + REGION_SIDE, slice])
        .fill(1);
}

/// Encodes masks as `thrombseg segment` does: a compressed .npz with `pred_2d` and `pred_3d`.
fn masks_npz(pred_2d: &Array3<u8>, pred_3d: &Array3<u8>) -> Vec<u8> {
    let mut writer = NpzWriter::new_compressed(Cursor::new(Vec::new()));
    writer.add_array("pred_2d", pred_2d).unwrap();
    writer.add_array("pred_3d", pred_3d).unwrap();
    writer.finish().unwrap().into_inner()
}

fn preview(masks: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(binary())
        .arg("preview")
        .arg(fixture("input_file_example.npz"))
        .arg(masks)
        .arg("-o")
        .arg(output)
        .args(extra)
        .output()
        .expect("the binary runs")
}

/// Decoded 8-bit RGB image.
struct Decoded {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Decoded {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        pixels.truncate(info.buffer_size());
        Self {
            width: info.width as usize,
            height: info.height as usize,
            pixels,
        }
    }

    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let start = (y * self.width + x) * 3;
        [self.pixels[start], self.pixels[start + 1], self.pixels[start + 2]]
    }
}

/// Top of the tile grid with three title lines: margin, title, gap, legend, gap.
fn grid_top() -> usize {
    MARGIN + 3 * LINE_HEIGHT + GAP + LINE_HEIGHT + GAP
}

/// Returns the pixel at the centre of voxel (`row`, `column`) of tile (`tile_row`, `tile_column`).
fn voxel_centre(image: &Decoded, (tile_row, tile_column): (usize, usize), (row, column): (usize, usize)) -> [u8; 3] {
    let x = MARGIN + tile_column * (TILE + GAP) + column * SCALE + SCALE / 2;
    let y = grid_top() + tile_row * (TILE + GAP) + row * SCALE + SCALE / 2;
    image.pixel(x, y)
}

/// Returns the middle voxel of a region.
fn middle((row, column): (usize, usize)) -> (usize, usize) {
    (row + REGION_SIDE / 2, column + REGION_SIDE / 2)
}

/// Orange: red strongest, then green, then blue.
fn assert_2d_tint(pixel: [u8; 3], location: &str) {
    let [r, g, b] = pixel;
    assert!(
        r > g,
        "{location}: {pixel:?} should be orange, the 2-D colour, with red above green"
    );
    assert!(
        g > b,
        "{location}: {pixel:?} should be orange, the 2-D colour, with green above blue"
    );
}

/// Azure: blue strongest, then green, then red.
fn assert_3d_tint(pixel: [u8; 3], location: &str) {
    let [r, g, b] = pixel;
    assert!(
        b > g,
        "{location}: {pixel:?} should be azure, the 3-D colour, with blue above green"
    );
    assert!(
        g > r,
        "{location}: {pixel:?} should be azure, the 3-D colour, with green above red"
    );
}

/// Pink: red and blue equal and above green.
fn assert_both_tint(pixel: [u8; 3], location: &str) {
    let [r, g, b] = pixel;
    assert_eq!(
        r, b,
        "{location}: {pixel:?} should be pink, the overlap colour, with red equal to blue"
    );
    assert!(
        r > g,
        "{location}: {pixel:?} should be pink, the overlap colour, with red above green"
    );
}

fn assert_grey(pixel: [u8; 3], location: &str) {
    let [r, g, b] = pixel;
    assert_eq!(r, g, "{location}: {pixel:?} should be grey");
    assert_eq!(g, b, "{location}: {pixel:?} should be grey");
}

#[test]
fn preview_draws_mask_regions_in_their_colours() {
    let dir = temp_dir();
    let masks_path = dir.path().join("masks.npz");
    let (pred_2d, pred_3d) = example_masks();
    std::fs::write(&masks_path, masks_npz(&pred_2d, &pred_3d)).unwrap();
    let output_path = dir.path().join("preview.png");

    let output = preview(&masks_path, &output_path, &["--columns", "2"]);

    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let image = Decoded::read(&output_path);

    // Slices 5, 30 and 50 in rows of two: two rows of tiles.
    assert_eq!(image.height, grid_top() + 2 * TILE + GAP + MARGIN, "two rows of tiles");
    assert!(image.width >= 2 * MARGIN + 2 * TILE + GAP, "two columns of tiles fit");

    let slice_5 = (0, 0);
    let slice_30 = (0, 1);
    let slice_50 = (1, 0);
    assert_2d_tint(voxel_centre(&image, slice_5, middle(REGION_A)), "slice 5, region A");
    assert_grey(voxel_centre(&image, slice_5, middle(REGION_B)), "slice 5, region B");
    assert_grey(voxel_centre(&image, slice_5, middle(REGION_C)), "slice 5, region C");
    assert_2d_tint(voxel_centre(&image, slice_30, middle(REGION_A)), "slice 30, region A");
    assert_3d_tint(voxel_centre(&image, slice_30, middle(REGION_B)), "slice 30, region B");
    assert_3d_tint(voxel_centre(&image, slice_50, middle(REGION_B)), "slice 50, region B");
    assert_both_tint(voxel_centre(&image, slice_50, middle(REGION_C)), "slice 50, region C");
    assert_grey(voxel_centre(&image, slice_50, middle(REGION_A)), "slice 50, region A");
}

#[test]
fn preview_columns_set_grid_rows() {
    let dir = temp_dir();
    let masks_path = dir.path().join("masks.npz");
    let (pred_2d, pred_3d) = example_masks();
    std::fs::write(&masks_path, masks_npz(&pred_2d, &pred_3d)).unwrap();
    let output_path = dir.path().join("preview.png");

    let output = preview(&masks_path, &output_path, &["--columns", "1", "--slices", "2"]);

    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let image = Decoded::read(&output_path);
    assert_eq!(
        image.height,
        grid_top() + 2 * TILE + GAP + MARGIN,
        "two slices in one column"
    );
    // Two of slices 5, 30 and 50 spread from first to last are 5 and 50.
    assert_2d_tint(voxel_centre(&image, (0, 0), middle(REGION_A)), "slice 5, region A");
    assert_both_tint(voxel_centre(&image, (1, 0), middle(REGION_C)), "slice 50, region C");
}

#[test]
fn preview_wrong_mask_shape_exits_2_without_output() {
    let dir = temp_dir();
    let masks_path = dir.path().join("masks.npz");
    let small = Array3::<u8>::zeros((10, 10, 5));
    std::fs::write(&masks_path, masks_npz(&small, &small)).unwrap();
    let output_path = dir.path().join("preview.png");

    let output = preview(&masks_path, &output_path, &[]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(&masks_path.display().to_string()), "{stderr}");
    assert!(stderr.contains("(10, 10, 5)"), "{stderr}");
    assert!(stderr.contains("(60, 60, 61)"), "{stderr}");
    assert!(!output_path.exists(), "no preview is written");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name != "masks.npz")
        .collect();
    assert!(leftovers.is_empty(), "no partial file is left: {leftovers:?}");
}

#[test]
fn preview_missing_mask_key_exits_2() {
    let dir = temp_dir();
    let masks_path = dir.path().join("masks.npz");
    let mut writer = NpzWriter::new(Cursor::new(Vec::new()));
    writer
        .add_array("pred_2d", &Array3::<u8>::zeros(EXAMPLE_SHAPE))
        .unwrap();
    std::fs::write(&masks_path, writer.finish().unwrap().into_inner()).unwrap();
    let output_path = dir.path().join("preview.png");

    let output = preview(&masks_path, &output_path, &[]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(&masks_path.display().to_string()), "{stderr}");
    assert!(stderr.contains("`pred_3d`"), "{stderr}");
    assert!(!output_path.exists(), "no preview is written");
}

#[test]
fn preview_unreadable_masks_file_exits_2() {
    let dir = temp_dir();
    let masks_path = dir.path().join("absent.npz");
    let output_path = dir.path().join("preview.png");

    let output = preview(&masks_path, &output_path, &[]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cannot read masks"), "{stderr}");
    assert!(stderr.contains("absent.npz"), "{stderr}");
}
