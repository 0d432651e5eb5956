//! The font every chart's text is drawn with: DejaVu Sans (Bitstream Vera licence, in
//! `fonts/LICENSE-DejaVu.txt`), compiled into the binary and registered with plotters' ab_glyph
//! text renderer under the family name charts ask for. No system font, fontconfig or freetype
//! is involved, so labels render on a machine with no fonts installed.

use std::sync::OnceLock;

/// The TrueType file, embedded.
pub const DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// The family name the charts use (plotters' default family, so every label finds it).
pub const FAMILY: &str = "sans-serif";

/// Register the embedded font (once per process; later calls return the first outcome).
pub fn register() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, plotters::style::FontStyle::Normal, DEJAVU_SANS)
            .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_registers_and_lays_out_text() {
        register().unwrap();
        let style = plotters::style::TextStyle::from((FAMILY, 20.0).into_font());
        use plotters::style::IntoFont;
        let (w, h) = style.font.box_size("Test loss").unwrap();
        assert!(w > 40 && h > 5, "{w}x{h}");
    }
}
