//! An 8-bit RGB raster with the few drawing operations that preview images need, and its PNG
//! encoding.

use std::io::Cursor;

/// One pixel: red, green and blue, 0 to 255.
pub type Rgb = [u8; 3];

/// RGB pixels in row-major order, three bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// Creates an image of `width` x `height` pixels, all of them `background`.
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        Self {
            width,
            height,
            pixels: background.repeat(width * height),
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// Returns the pixel at column `x` and row `y`. Panics outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        let start = self.offset(x, y);
        [self.pixels[start], self.pixels[start + 1], self.pixels[start + 2]]
    }

    /// Sets the pixel at column `x` and row `y`. Panics outside the image.
    pub fn set_pixel(&mut self, x: usize, y: usize, colour: Rgb) {
        let start = self.offset(x, y);
        self.pixels[start..start + 3].copy_from_slice(&colour);
    }

    /// Fills the rectangle with top-left corner (`x`, `y`), clipped to the image.
    pub fn fill_rect(&mut self, x: usize, y: usize, width: usize, height: usize, colour: Rgb) {
        let right = x.saturating_add(width).min(self.width);
        let bottom = y.saturating_add(height).min(self.height);
        for row in y..bottom {
            for column in x..right {
                self.set_pixel(column, row, colour);
            }
        }
    }

    /// Returns the pixel bytes, row-major, three per pixel.
    pub fn as_raw(&self) -> &[u8] {
        &self.pixels
    }

    fn offset(&self, x: usize, y: usize) -> usize {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) is outside the {}x{} image",
            self.width,
            self.height
        );
        (y * self.width + x) * 3
    }
}

/// Draws `overlay` over `base` with opacity `alpha`, from 0 (only `base`) to 1 (only `overlay`).
pub fn blend(base: Rgb, overlay: Rgb, alpha: f32) -> Rgb {
    let alpha = alpha.clamp(0.0, 1.0);
    let mix = |b: u8, o: u8| (f32::from(b) * (1.0 - alpha) + f32::from(o) * alpha).round() as u8;
    [
        mix(base[0], overlay[0]),
        mix(base[1], overlay[1]),
        mix(base[2], overlay[2]),
    ]
}

/// Encodes `image` as an 8-bit RGB PNG.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, png::EncodingError> {
    let width = u32::try_from(image.width()).map_err(|_| png::EncodingError::LimitsExceeded)?;
    let height = u32::try_from(image.height()).map_err(|_| png::EncodingError::LimitsExceeded)?;

    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(Cursor::new(&mut bytes), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::High);

    let mut writer = encoder.write_header()?;
    writer.write_image_data(image.as_raw())?;
    writer.finish()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_mixes_channels_by_alpha() {
        assert_eq!(blend([100, 100, 100], [200, 0, 50], 0.0), [100, 100, 100]);
        assert_eq!(blend([100, 100, 100], [200, 0, 50], 1.0), [200, 0, 50]);
        assert_eq!(blend([100, 100, 100], [200, 0, 50], 0.5), [150, 50, 75]);
    }

    #[test]
    fn blend_clamps_alpha() {
        assert_eq!(blend([10, 20, 30], [250, 250, 250], 2.0), [250, 250, 250]);
        assert_eq!(blend([10, 20, 30], [250, 250, 250], -1.0), [10, 20, 30]);
    }

    #[test]
    fn fill_rect_clips_to_image() {
        let mut image = RgbImage::new(4, 3, [0, 0, 0]);

        image.fill_rect(2, 1, 10, 10, [9, 9, 9]);

        assert_eq!(image.pixel(1, 1), [0, 0, 0]);
        assert_eq!(image.pixel(2, 1), [9, 9, 9]);
        assert_eq!(image.pixel(3, 2), [9, 9, 9]);
        assert_eq!(image.pixel(2, 0), [0, 0, 0]);
    }

    #[test]
    fn png_round_trip_keeps_pixels() {
        let mut image = RgbImage::new(3, 2, [10, 20, 30]);
        image.set_pixel(2, 1, [200, 100, 0]);

        let bytes = encode_png(&image).unwrap();

        let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
        let mut decoded = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut decoded).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&decoded[..info.buffer_size()], image.as_raw());
    }
}
