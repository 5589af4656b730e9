//! A 5 x 7 bitmap font for the labels of preview images, so that drawing text needs no font
//! files or font libraries.
//!
//! Capitals and digits fill the 5 x 7 cell. Two more rows below it hold the descenders of
//! g, j, p, q, y and the comma, so that those letters do not read as P, 9 or 2. It covers ASCII letters and digits, the space and the punctuation that file names, shapes and
//! captions use. Any other character is drawn as `?`.

use super::image::{Rgb, RgbImage};

/// Glyph width in font pixels.
pub const GLYPH_WIDTH: usize = 5;
/// Height of capitals and digits in font pixels, from the top of the cell to the baseline.
pub const CAP_HEIGHT: usize = 7;
/// Glyph height in font pixels, the descender rows below the baseline included.
pub const GLYPH_HEIGHT: usize = CAP_HEIGHT + 2;
/// Blank font pixels between two glyphs.
const GLYPH_SPACING: usize = 1;

/// Rows of one glyph from top to bottom. Bit 4 of a row is its leftmost pixel.
pub type Glyph = [u8; GLYPH_HEIGHT];

/// Glyph drawn for characters the table lacks.
const FALLBACK: char = '?';

#[rustfmt::skip]
const GLYPHS: &[(char, Glyph)] = &[
    (' ', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('!', [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100, 0b00000, 0b00000]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0b00000, 0b00000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0b00000, 0b00000]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0b00000, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b00000, 0b00000]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00100, 0b01000]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0b00000, 0b00000]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000, 0b00000]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0b00000, 0b00000]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00000, 0b00000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0b00000, 0b00000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000, 0b00000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100, 0b00000, 0b00000]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0b00000, 0b00000]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0b00000, 0b00000]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0b00000, 0b00000]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0b00000, 0b00000]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0b00000, 0b00000]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0b00000, 0b00000]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0b00000, 0b00000]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000, 0b00000]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0b00000, 0b00000]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('Y', [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000]),
    ('a', [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('b', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b00000, 0b00000]),
    ('c', [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('d', [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('e', [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000, 0b00000]),
    ('f', [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0b00000, 0b00000]),
    ('g', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('h', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('i', [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('j', [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('k', [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b00000, 0b00000]),
    ('l', [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('m', [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('n', [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('o', [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('p', [0b00000, 0b00000, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('q', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001]),
    ('r', [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('s', [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110, 0b00000, 0b00000]),
    ('t', [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0b00000, 0b00000]),
    ('u', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00000, 0b00000]),
    ('v', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000, 0b00000]),
    ('w', [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0b00000, 0b00000]),
    ('x', [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000, 0b00000]),
    ('y', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('z', [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000, 0b00000]),
    ('±', [0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b11111, 0b00000, 0b00000]),
    ('×', [0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000, 0b00000, 0b00000]),
];

/// Returns the glyph of `character`, or the `?` glyph when the font lacks it.
pub fn glyph(character: char) -> Glyph {
    lookup(character)
        .or_else(|| lookup(FALLBACK))
        .expect("the font has a glyph for the fallback character")
}

fn lookup(character: char) -> Option<Glyph> {
    GLYPHS
        .iter()
        .find(|(entry, _)| *entry == character)
        .map(|(_, rows)| *rows)
}

/// Width in image pixels of `text` drawn at `scale`, without spacing after the last glyph.
pub fn text_width(text: &str, scale: usize) -> usize {
    let count = text.chars().count();
    if count == 0 {
        return 0;
    }
    (count * (GLYPH_WIDTH + GLYPH_SPACING) - GLYPH_SPACING) * scale
}

/// Height in image pixels of one line of text drawn at `scale`, descenders included.
pub const fn text_height(scale: usize) -> usize {
    GLYPH_HEIGHT * scale
}

/// Draws `text` with its top-left corner at (`x`, `y`), each font pixel a `scale` x `scale`
/// square of `colour`. Pixels outside the image are skipped.
pub fn draw_text(image: &mut RgbImage, x: usize, y: usize, text: &str, scale: usize, colour: Rgb) {
    let advance = (GLYPH_WIDTH + GLYPH_SPACING) * scale;
    for (index, character) in text.chars().enumerate() {
        draw_glyph(image, x + index * advance, y, glyph(character), scale, colour);
    }
}

fn draw_glyph(image: &mut RgbImage, x: usize, y: usize, rows: Glyph, scale: usize, colour: Rgb) {
    for (row, bits) in rows.iter().enumerate() {
        for column in 0..GLYPH_WIDTH {
            let lit = bits & (1 << (GLYPH_WIDTH - 1 - column)) != 0;
            if lit {
                image.fill_rect(x + column * scale, y + row * scale, scale, scale, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLACK: Rgb = [0, 0, 0];
    const WHITE: Rgb = [255, 255, 255];

    /// Renders `image` as one string per row, `#` for white and `.` for anything else.
    fn ascii_rows(image: &RgbImage) -> Vec<String> {
        (0..image.height())
            .map(|y| {
                (0..image.width())
                    .map(|x| if image.pixel(x, y) == WHITE { '#' } else { '.' })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn digit_four_renders_expected_pixels() {
        let mut image = RgbImage::new(GLYPH_WIDTH, GLYPH_HEIGHT, BLACK);

        draw_text(&mut image, 0, 0, "4", 1, WHITE);

        let expected = [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.", ".....", ".....",
        ];
        assert_eq!(ascii_rows(&image), expected);
    }

    #[test]
    fn scale_two_doubles_each_pixel() {
        let mut image = RgbImage::new(2 * GLYPH_WIDTH, 2 * GLYPH_HEIGHT, BLACK);

        draw_text(&mut image, 0, 0, "-", 2, WHITE);

        let rows = ascii_rows(&image);
        let lit_rows: Vec<usize> = (0..rows.len()).filter(|&y| rows[y].contains('#')).collect();
        assert_eq!(lit_rows, [6, 7], "the bar of '-' is font row 3, image rows 6 and 7");
        assert_eq!(rows[6], "##########");
        assert_eq!(rows[7], "##########");
    }

    #[test]
    fn second_glyph_starts_after_spacing() {
        let mut image = RgbImage::new(text_width("11", 1), GLYPH_HEIGHT, BLACK);

        draw_text(&mut image, 0, 0, "11", 1, WHITE);

        assert_eq!(ascii_rows(&image)[0], "..#.....#..");
    }

    #[test]
    fn descender_reaches_below_baseline() {
        let mut image = RgbImage::new(GLYPH_WIDTH, GLYPH_HEIGHT, BLACK);

        draw_text(&mut image, 0, 0, "p", 1, WHITE);

        let rows = ascii_rows(&image);
        assert_eq!(
            rows[CAP_HEIGHT], "#....",
            "the stem of 'p' continues below the baseline"
        );
        assert_eq!(rows[CAP_HEIGHT + 1], "#....");
    }

    #[test]
    fn text_width_counts_glyphs_and_gaps() {
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("a", 1), 5);
        assert_eq!(text_width("2-D mask", 2), (8 * 6 - 1) * 2);
    }

    #[test]
    fn unknown_character_draws_fallback() {
        assert_eq!(glyph('\u{2603}'), glyph('?'));
        assert_ne!(glyph('a'), glyph('?'));
    }

    #[test]
    fn glyph_table_is_well_formed() {
        for (index, (character, rows)) in GLYPHS.iter().enumerate() {
            assert!(
                rows.iter().all(|&row| row < 1 << GLYPH_WIDTH),
                "{character:?} uses bits beyond the glyph width"
            );
            assert!(
                GLYPHS[index + 1..].iter().all(|(other, _)| other != character),
                "{character:?} appears twice"
            );
        }
    }

    #[test]
    fn font_covers_letters_digits_and_label_punctuation() {
        let required = ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .chain(" -(),.:×±_".chars());
        for character in required {
            assert!(lookup(character).is_some(), "no glyph for {character:?}");
        }
    }
}
