//! Montage of axial slices with both masks drawn over the CT: slice choice, layout and drawing.
//!
//! Each tile is one slice along D, the last axis of an (H, W, D) volume, with image rows along
//! H and columns along W. A tile enlarges the slice by an integer factor, nearest neighbour,
//! so every voxel stays a sharp square.

use ndarray::{Array2, Array3, ArrayView2, Axis, s};

use super::font::{CAP_HEIGHT, draw_text, text_height, text_width};
use super::image::{Rgb, RgbImage, blend};
use super::masks::Masks;
use crate::preprocess::{IntensityWindow, apply_window};

/// Colour of voxels only the 2-D mask contains: orange.
pub const COLOUR_2D: Rgb = [255, 110, 20];
/// Colour of voxels only the 3-D mask contains: azure.
pub const COLOUR_3D: Rgb = [30, 150, 255];
/// Colour of voxels both masks contain: the channel-wise maximum of the two, as two lights add.
pub const COLOUR_BOTH: Rgb = [255, 150, 255];
/// Opacity of the mask fills over the CT. Outlines are opaque.
pub const FILL_ALPHA: f32 = 0.55;

/// Shortest tile side the enlargement factor aims for, in pixels.
pub const MIN_TILE_SIDE: usize = 192;
/// Blank border around the whole image, in pixels.
pub const MARGIN: usize = 16;
/// Space between tiles, in pixels.
pub const GAP: usize = 8;
/// Enlargement of the 5 x 7 font.
pub const TEXT_SCALE: usize = 2;
/// Height of one text line, glyphs and the space below them.
pub const LINE_HEIGHT: usize = text_height(TEXT_SCALE) + 4;

const BACKGROUND: Rgb = [24, 24, 24];
const TEXT_COLOUR: Rgb = [235, 235, 235];
const LABEL_BACKGROUND: Rgb = [0, 0, 0];
/// Grey under the legend swatches, so they look like a mask over mid-grey CT.
const SWATCH_BASE: Rgb = [128, 128, 128];
/// Space between one legend entry's text and the next swatch.
const LEGEND_SPACING: usize = 28;

/// Slices chosen for a montage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceSelection {
    /// Indices along D, ascending.
    pub slices: Vec<usize>,
    /// True when neither mask has a voxel, so the slices are spread over the whole volume.
    pub masks_empty: bool,
}

/// Chooses up to `max_slices` slices where either mask has voxels, evenly spread over them.
/// When both masks are empty, the slices are evenly spread over the whole depth instead.
pub fn select_slices(masks: &Masks, max_slices: usize) -> SliceSelection {
    let depth = masks.pred_2d.len_of(Axis(2));
    let marked: Vec<usize> = (0..depth)
        .filter(|&slice| slice_has_voxels(&masks.pred_2d, slice) || slice_has_voxels(&masks.pred_3d, slice))
        .collect();

    if marked.is_empty() {
        let all: Vec<usize> = (0..depth).collect();
        return SliceSelection {
            slices: evenly_sample(&all, max_slices),
            masks_empty: true,
        };
    }
    SliceSelection {
        slices: evenly_sample(&marked, max_slices),
        masks_empty: false,
    }
}

fn slice_has_voxels(mask: &Array3<u8>, slice: usize) -> bool {
    mask.index_axis(Axis(2), slice).iter().any(|&v| v != 0)
}

/// Picks `count` items spread evenly from first to last, or all of them when there are no
/// more than `count`. A single pick is the middle item.
pub fn evenly_sample(items: &[usize], count: usize) -> Vec<usize> {
    if items.len() <= count {
        return items.to_vec();
    }
    if count == 1 {
        return vec![items[(items.len() - 1) / 2]];
    }

    // Pick i takes the item at i * last / (count - 1), rounded to the nearest index. With more
    // items than picks the step is at least one, so no item is picked twice.
    let last = items.len() - 1;
    (0..count)
        .map(|pick| items[(pick * last + (count - 1) / 2) / (count - 1)])
        .collect()
}

/// Maps one slice to display grey levels with the pipeline's window step: the window's lower
/// bound and below become 0 and its upper bound and above become 255.
pub fn windowed_slice(voxels: &Array3<f32>, slice: usize, window: IntensityWindow) -> Array2<u8> {
    let mut windowed = voxels.slice(s![.., .., slice..=slice]).to_owned();
    apply_window(windowed.view_mut(), window);
    windowed.index_axis(Axis(2), 0).mapv(|value| value.round() as u8)
}

/// Returns the smallest integer enlargement that makes the longer side of a `height` x `width`
/// slice at least [`MIN_TILE_SIDE`] pixels, and 1 for slices already that large.
pub fn tile_scale(height: usize, width: usize) -> usize {
    MIN_TILE_SIDE.div_ceil(height.max(width).max(1)).max(1)
}

/// Pixel positions of everything in a montage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MontageLayout {
    /// Tiles per row, at most the tile count.
    pub columns: usize,
    pub rows: usize,
    /// Enlargement of each voxel, in pixels per voxel side.
    pub scale: usize,
    pub tile_width: usize,
    pub tile_height: usize,
    /// Top of the legend strip, one gap below the title lines.
    pub legend_top: usize,
    /// Top of the first row of tiles.
    pub grid_top: usize,
    pub width: usize,
    pub height: usize,
}

impl MontageLayout {
    /// Lays out `tile_count` tiles of `slice_shape` (H, W) voxels in rows of up to `columns`,
    /// below `title_lines` and the legend. The image is wide enough for the longest text line.
    pub fn new(tile_count: usize, columns: usize, slice_shape: (usize, usize), title_lines: &[String]) -> Self {
        let (slice_height, slice_width) = slice_shape;
        let columns = columns.clamp(1, tile_count.max(1));
        let rows = tile_count.div_ceil(columns);
        let scale = tile_scale(slice_height, slice_width);
        let tile_width = slice_width * scale;
        let tile_height = slice_height * scale;

        let legend_top = MARGIN + title_lines.len() * LINE_HEIGHT + GAP;
        let grid_top = legend_top + LINE_HEIGHT + GAP;
        let grid_width = columns * tile_width + (columns - 1) * GAP;
        let grid_height = rows * tile_height + rows.saturating_sub(1) * GAP;

        let text_widths = title_lines.iter().map(|line| text_width(line, TEXT_SCALE));
        let content_width = text_widths.chain([legend_width(), grid_width]).max().unwrap_or(0);

        Self {
            columns,
            rows,
            scale,
            tile_width,
            tile_height,
            legend_top,
            grid_top,
            width: content_width + 2 * MARGIN,
            height: grid_top + grid_height + MARGIN,
        }
    }

    /// Returns the top-left pixel (x, y) of tile `index`, counted row by row.
    pub fn tile_origin(&self, index: usize) -> (usize, usize) {
        let column = index % self.columns;
        let row = index / self.columns;
        (
            MARGIN + column * (self.tile_width + GAP),
            self.grid_top + row * (self.tile_height + GAP),
        )
    }
}

/// Everything a montage shows.
#[derive(Clone, Copy, Debug)]
pub struct MontageInput<'a> {
    /// CT voxels, (H, W, D).
    pub voxels: &'a Array3<f32>,
    /// Masks of the same shape as `voxels`.
    pub masks: &'a Masks,
    /// Display window.
    pub window: IntensityWindow,
    /// Slice indices along D, one tile each, in order.
    pub slices: &'a [usize],
    /// Text lines above the legend.
    pub title_lines: &'a [String],
    /// Maximum tiles per row.
    pub columns: usize,
}

/// Draws the montage: title lines, legend, then one tile per slice with its index in the
/// top-left corner.
pub fn render_montage(input: &MontageInput<'_>) -> RgbImage {
    let (height, width, _) = input.voxels.dim();
    let layout = MontageLayout::new(input.slices.len(), input.columns, (height, width), input.title_lines);
    let mut image = RgbImage::new(layout.width, layout.height, BACKGROUND);

    for (index, line) in input.title_lines.iter().enumerate() {
        draw_text(
            &mut image,
            MARGIN,
            MARGIN + index * LINE_HEIGHT,
            line,
            TEXT_SCALE,
            TEXT_COLOUR,
        );
    }
    draw_legend(&mut image, MARGIN, layout.legend_top);

    for (index, &slice) in input.slices.iter().enumerate() {
        let origin = layout.tile_origin(index);
        let tile = Tile {
            grey: windowed_slice(input.voxels, slice, input.window),
            pred_2d: input.masks.pred_2d.index_axis(Axis(2), slice),
            pred_3d: input.masks.pred_3d.index_axis(Axis(2), slice),
        };
        draw_tile(&mut image, origin, layout.scale, &tile);
        draw_slice_label(&mut image, origin, slice);
    }
    image
}

/// One slice's grey levels and masks, each (H, W).
struct Tile<'a> {
    grey: Array2<u8>,
    pred_2d: ArrayView2<'a, u8>,
    pred_3d: ArrayView2<'a, u8>,
}

/// Draws each voxel as a `scale` x `scale` square: grey, tinted by the masks that contain it,
/// with a one-pixel outline on the inner edge of each mask's boundary.
fn draw_tile(image: &mut RgbImage, origin: (usize, usize), scale: usize, tile: &Tile<'_>) {
    let (height, width) = tile.grey.dim();
    for row in 0..height {
        for column in 0..width {
            let fill = voxel_colour(tile, row, column);
            let edges_2d = boundary_edges(tile.pred_2d, row, column);
            let edges_3d = boundary_edges(tile.pred_3d, row, column);

            for dy in 0..scale {
                for dx in 0..scale {
                    let on_2d = edges_2d.touches(dx, dy, scale);
                    let on_3d = edges_3d.touches(dx, dy, scale);
                    let colour = match (on_2d, on_3d) {
                        (true, true) => COLOUR_BOTH,
                        (true, false) => COLOUR_2D,
                        (false, true) => COLOUR_3D,
                        (false, false) => fill,
                    };
                    image.set_pixel(origin.0 + column * scale + dx, origin.1 + row * scale + dy, colour);
                }
            }
        }
    }
}

/// Returns the grey level of a voxel, blended with the colour of the masks that contain it.
fn voxel_colour(tile: &Tile<'_>, row: usize, column: usize) -> Rgb {
    let grey = tile.grey[[row, column]];
    let base = [grey, grey, grey];
    let in_2d = tile.pred_2d[[row, column]] != 0;
    let in_3d = tile.pred_3d[[row, column]] != 0;
    match (in_2d, in_3d) {
        (true, true) => blend(base, COLOUR_BOTH, FILL_ALPHA),
        (true, false) => blend(base, COLOUR_2D, FILL_ALPHA),
        (false, true) => blend(base, COLOUR_3D, FILL_ALPHA),
        (false, false) => base,
    }
}

/// Sides of a mask voxel that face a voxel outside the mask or the slice's border.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BoundaryEdges {
    top: bool,
    bottom: bool,
    left: bool,
    right: bool,
}

impl BoundaryEdges {
    /// True when pixel (`dx`, `dy`) of the voxel's `scale` x `scale` square lies on a boundary side.
    fn touches(self, dx: usize, dy: usize, scale: usize) -> bool {
        (self.top && dy == 0)
            || (self.bottom && dy == scale - 1)
            || (self.left && dx == 0)
            || (self.right && dx == scale - 1)
    }
}

fn boundary_edges(mask: ArrayView2<'_, u8>, row: usize, column: usize) -> BoundaryEdges {
    if mask[[row, column]] == 0 {
        return BoundaryEdges::default();
    }
    let (height, width) = mask.dim();
    let outside = |r: Option<usize>, c: Option<usize>| match (r, c) {
        (Some(r), Some(c)) if r < height && c < width => mask[[r, c]] == 0,
        _ => true,
    };
    BoundaryEdges {
        top: outside(row.checked_sub(1), Some(column)),
        bottom: outside(Some(row + 1), Some(column)),
        left: outside(Some(row), column.checked_sub(1)),
        right: outside(Some(row), Some(column + 1)),
    }
}

/// Draws the slice index on a black box in the tile's top-left corner.
fn draw_slice_label(image: &mut RgbImage, origin: (usize, usize), slice: usize) {
    let text = slice.to_string();
    let padding = 3;
    image.fill_rect(
        origin.0,
        origin.1,
        text_width(&text, TEXT_SCALE) + 2 * padding,
        CAP_HEIGHT * TEXT_SCALE + 2 * padding,
        LABEL_BACKGROUND,
    );
    draw_text(
        image,
        origin.0 + padding,
        origin.1 + padding,
        &text,
        TEXT_SCALE,
        TEXT_COLOUR,
    );
}

/// Legend entries: colour and text.
const LEGEND: [(Rgb, &str); 3] = [(COLOUR_2D, "2-D mask"), (COLOUR_3D, "3-D mask"), (COLOUR_BOTH, "both")];

fn legend_width() -> usize {
    let swatch = CAP_HEIGHT * TEXT_SCALE;
    let entries: usize = LEGEND
        .iter()
        .map(|(_, label)| swatch + GAP + text_width(label, TEXT_SCALE))
        .sum();
    entries + (LEGEND.len() - 1) * LEGEND_SPACING
}

/// Draws each legend entry as a swatch, a mask fill over mid-grey with its outline, then its text.
fn draw_legend(image: &mut RgbImage, left: usize, top: usize) {
    let swatch = CAP_HEIGHT * TEXT_SCALE;
    let mut x = left;
    for (colour, label) in LEGEND {
        image.fill_rect(x, top, swatch, swatch, colour);
        image.fill_rect(
            x + 1,
            top + 1,
            swatch - 2,
            swatch - 2,
            blend(SWATCH_BASE, colour, FILL_ALPHA),
        );
        x += swatch + GAP;

        draw_text(image, x, top, label, TEXT_SCALE, TEXT_COLOUR);
        x += text_width(label, TEXT_SCALE) + LEGEND_SPACING;
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    fn masks_with(depth: usize, marked_2d: &[usize], marked_3d: &[usize]) -> Masks {
        let mut masks = Masks {
            pred_2d: Array3::zeros((4, 4, depth)),
            pred_3d: Array3::zeros((4, 4, depth)),
        };
        for &slice in marked_2d {
            masks.pred_2d[[1, 1, slice]] = 1;
        }
        for &slice in marked_3d {
            masks.pred_3d[[2, 2, slice]] = 1;
        }
        masks
    }

    #[test]
    fn evenly_sample_keeps_short_lists() {
        assert_eq!(evenly_sample(&[3, 5, 9], 12), [3, 5, 9]);
        assert_eq!(evenly_sample(&[3, 5, 9], 3), [3, 5, 9]);
    }

    #[test]
    fn evenly_sample_spans_first_to_last() {
        let items: Vec<usize> = (0..100).collect();

        assert_eq!(evenly_sample(&items, 5), [0, 25, 50, 74, 99]);
        assert_eq!(evenly_sample(&items, 2), [0, 99]);
        assert_eq!(evenly_sample(&items, 1), [49]);
    }

    #[test]
    fn evenly_sample_never_repeats() {
        for len in 2..40 {
            let items: Vec<usize> = (0..len).collect();
            for count in 2..len {
                let picks = evenly_sample(&items, count);
                assert_eq!(picks.len(), count, "{count} of {len}");
                assert!(
                    picks.windows(2).all(|pair| pair[0] < pair[1]),
                    "{count} of {len}: {picks:?}"
                );
                assert_eq!((picks[0], picks[count - 1]), (0, len - 1), "{count} of {len}");
            }
        }
    }

    #[test]
    fn selection_takes_slices_of_either_mask() {
        let masks = masks_with(20, &[3, 7], &[7, 15]);

        let selection = select_slices(&masks, 12);

        assert_eq!(selection.slices, [3, 7, 15]);
        assert!(!selection.masks_empty);
    }

    #[test]
    fn selection_samples_down_to_maximum() {
        let marked: Vec<usize> = (10..30).collect();
        let masks = masks_with(40, &marked, &[]);

        let selection = select_slices(&masks, 3);

        assert_eq!(selection.slices, [10, 20, 29]);
    }

    #[test]
    fn empty_masks_spread_over_volume() {
        let masks = masks_with(50, &[], &[]);

        let selection = select_slices(&masks, 5);

        assert!(selection.masks_empty);
        assert_eq!(selection.slices, [0, 12, 25, 37, 49]);
    }

    #[test]
    fn window_maps_to_grey_levels() {
        let window = IntensityWindow::from_statistics(100.0, 100.0, 3.0);
        let values = vec![-1000.0, 70.0, 100.0, 130.0, 5000.0, 85.0];
        let voxels = Array3::from_shape_vec((1, 3, 2), values).unwrap();

        let first = windowed_slice(&voxels, 0, window);
        let second = windowed_slice(&voxels, 1, window);

        assert_eq!(first.as_slice().unwrap(), [0, 128, 255], "below, at the mean, above");
        assert_eq!(
            second.as_slice().unwrap(),
            [0, 255, 64],
            "lower bound, upper bound, quarter"
        );
    }

    #[test]
    fn tile_scale_reaches_minimum_side() {
        assert_eq!(tile_scale(60, 60), 4);
        assert_eq!(tile_scale(64, 64), 3);
        assert_eq!(tile_scale(10, 100), 2);
        assert_eq!(tile_scale(512, 512), 1);
        assert_eq!(tile_scale(192, 20), 1);
    }

    #[test]
    fn layout_dimensions_for_slices_and_columns() {
        let layout = MontageLayout::new(10, 4, (60, 50), &[]);

        assert_eq!((layout.columns, layout.rows, layout.scale), (4, 3, 4));
        assert_eq!((layout.tile_width, layout.tile_height), (200, 240));
        assert_eq!(layout.width, 2 * MARGIN + 4 * 200 + 3 * GAP);
        assert_eq!(layout.grid_top, MARGIN + GAP + LINE_HEIGHT + GAP);
        assert_eq!(layout.height, layout.grid_top + 3 * 240 + 2 * GAP + MARGIN);
        assert_eq!(layout.tile_origin(5), (MARGIN + 200 + GAP, layout.grid_top + 240 + GAP));
    }

    #[test]
    fn layout_narrows_to_tile_count() {
        let layout = MontageLayout::new(2, 4, (60, 60), &[]);

        assert_eq!((layout.columns, layout.rows), (2, 1));
    }

    #[test]
    fn layout_widens_for_long_title() {
        let title = vec!["x".repeat(200)];

        let layout = MontageLayout::new(1, 4, (60, 60), &title);

        assert_eq!(layout.width, text_width(&title[0], TEXT_SCALE) + 2 * MARGIN);
        assert_eq!(layout.legend_top, MARGIN + LINE_HEIGHT + GAP);
    }

    #[test]
    fn tile_tints_and_outlines_masks() {
        let voxels = Array3::<f32>::from_elem((6, 6, 1), 100.0);
        let mut masks = Masks {
            pred_2d: Array3::zeros((6, 6, 1)),
            pred_3d: Array3::zeros((6, 6, 1)),
        };
        masks.pred_2d.slice_mut(s![0..3, 0..3, 0]).fill(1);
        masks.pred_3d.slice_mut(s![2..5, 2..5, 0]).fill(1);
        let window = IntensityWindow::from_statistics(100.0, 100.0, 3.0);
        let input = MontageInput {
            voxels: &voxels,
            masks: &masks,
            window,
            slices: &[0],
            title_lines: &[],
            columns: 4,
        };

        let image = render_montage(&input);

        let layout = MontageLayout::new(1, 4, (6, 6), &[]);
        let (x0, y0) = layout.tile_origin(0);
        let centre_of = |row: usize, column: usize| {
            let half = layout.scale / 2;
            image.pixel(x0 + column * layout.scale + half, y0 + row * layout.scale + half)
        };
        let grey = [128, 128, 128];
        assert_eq!(centre_of(1, 1), blend(grey, COLOUR_2D, FILL_ALPHA), "2-D only");
        assert_eq!(centre_of(3, 3), blend(grey, COLOUR_3D, FILL_ALPHA), "3-D only");
        assert_eq!(centre_of(2, 2), blend(grey, COLOUR_BOTH, FILL_ALPHA), "both");
        assert_eq!(centre_of(5, 0), grey, "neither");

        let right_edge_of_2d = image.pixel(x0 + 3 * layout.scale - 1, y0 + layout.scale + 1);
        assert_eq!(
            right_edge_of_2d, COLOUR_2D,
            "outline on the last column of the 2-D mask"
        );
        let bottom_edge_of_3d = image.pixel(x0 + 3 * layout.scale + 1, y0 + 5 * layout.scale - 1);
        assert_eq!(bottom_edge_of_3d, COLOUR_3D, "outline on the last row of the 3-D mask");
    }
}
