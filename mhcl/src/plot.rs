//! PNG line charts drawn directly with the `image` crate (no font or plotting dependency):
//! the linear probe's train-loss and validation-accuracy curves.
//!
//! Text uses a built-in 5x7 pixel font that covers digits, lowercase letters and `.-@%:()/`.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{MhclError, Result};
use crate::metrics::LinclsEpoch;

const W: u32 = 480;
const H: u32 = 320;
const BG: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);
const GREEN: Rgb<u8> = Rgb([44, 160, 44]);

/// 5x7 glyphs, one string of 7 rows of 5 pixels per character.
fn glyph(c: char) -> Option<[&'static str; 7]> {
    Some(match c {
        '0' => [
            " ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### ",
        ],
        '1' => [
            "  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        '2' => [
            " ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####",
        ],
        '3' => [
            "#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### ",
        ],
        '4' => [
            "   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # ",
        ],
        '5' => [
            "#####", "#    ", "#### ", "    #", "    #", "#   #", " ### ",
        ],
        '6' => [
            "  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### ",
        ],
        '7' => [
            "#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ",
        ],
        '8' => [
            " ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### ",
        ],
        '9' => [
            " ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  ",
        ],
        '.' => [
            "     ", "     ", "     ", "     ", "     ", " ##  ", " ##  ",
        ],
        '-' => [
            "     ", "     ", "     ", "#####", "     ", "     ", "     ",
        ],
        ':' => [
            "     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     ",
        ],
        '/' => [
            "    #", "    #", "   # ", "  #  ", " #   ", "#    ", "#    ",
        ],
        '(' => [
            "   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # ",
        ],
        ')' => [
            " #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   ",
        ],
        '%' => [
            "##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##",
        ],
        '@' => [
            " ### ", "#   #", "# ###", "# # #", "# ###", "#    ", " ####",
        ],
        ' ' => ["     "; 7],
        'a' => [
            "     ", "     ", " ### ", "    #", " ####", "#   #", " ####",
        ],
        'b' => [
            "#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#### ",
        ],
        'c' => [
            "     ", "     ", " ### ", "#    ", "#    ", "#   #", " ### ",
        ],
        'd' => [
            "    #", "    #", " ## #", "#  ##", "#   #", "#   #", " ####",
        ],
        'e' => [
            "     ", "     ", " ### ", "#   #", "#####", "#    ", " ### ",
        ],
        'f' => [
            "  ## ", " #  #", " #   ", "###  ", " #   ", " #   ", " #   ",
        ],
        'g' => [
            "     ", " ####", "#   #", "#   #", " ####", "    #", " ### ",
        ],
        'h' => [
            "#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#   #",
        ],
        'i' => [
            "  #  ", "     ", " ##  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        'k' => [
            "#    ", "#    ", "#  # ", "# #  ", "##   ", "# #  ", "#  # ",
        ],
        'l' => [
            " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        'm' => [
            "     ", "     ", "## # ", "# # #", "# # #", "#   #", "#   #",
        ],
        'n' => [
            "     ", "     ", "# ## ", "##  #", "#   #", "#   #", "#   #",
        ],
        'o' => [
            "     ", "     ", " ### ", "#   #", "#   #", "#   #", " ### ",
        ],
        'p' => [
            "     ", "     ", "#### ", "#   #", "#### ", "#    ", "#    ",
        ],
        'r' => [
            "     ", "     ", "# ## ", "##  #", "#    ", "#    ", "#    ",
        ],
        's' => [
            "     ", "     ", " ####", "#    ", " ### ", "    #", "#### ",
        ],
        't' => [
            " #   ", " #   ", "###  ", " #   ", " #   ", " #  #", "  ## ",
        ],
        'u' => [
            "     ", "     ", "#   #", "#   #", "#   #", "#  ##", " ## #",
        ],
        'v' => [
            "     ", "     ", "#   #", "#   #", "#   #", " # # ", "  #  ",
        ],
        'w' => [
            "     ", "     ", "#   #", "#   #", "# # #", "# # #", " # # ",
        ],
        'x' => [
            "     ", "     ", "#   #", " # # ", "  #  ", " # # ", "#   #",
        ],
        'y' => [
            "     ", "     ", "#   #", "#   #", " ####", "    #", " ### ",
        ],
        _ => return None,
    })
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, color: Rgb<u8>) {
    let mut cx = x;
    for c in s.chars() {
        if let Some(g) = glyph(c.to_ascii_lowercase()) {
            for (r, row) in g.iter().enumerate() {
                for (col, ch) in row.chars().enumerate() {
                    if ch == '#' {
                        put(img, cx + col as i64, y + r as i64, color);
                    }
                }
            }
        }
        cx += 6;
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            put(img, x.round() as i64 + dx, y.round() as i64 + dy, c);
        }
    }
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// One panel: `series` of `(values, color, legend)` against the epoch, in the rectangle
/// starting at `x_off`.
fn panel(
    img: &mut RgbImage,
    x_off: u32,
    title: &str,
    epochs: &[usize],
    series: &[(&[f64], Rgb<u8>, &str)],
) {
    let (left, right) = (f64::from(x_off) + 46.0, f64::from(x_off + W) - 12.0);
    let (top, bottom) = (30.0, f64::from(H) - 34.0);
    let finite = series
        .iter()
        .flat_map(|s| s.0.iter().copied())
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        lo -= 0.5;
        hi += 0.5;
    }
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let (e0, e1) = (
        epochs.first().copied().unwrap_or(0) as f64,
        epochs.last().copied().unwrap_or(1) as f64,
    );
    let span = (e1 - e0).max(1.0);
    let px = |e: f64| left + (e - e0) / span * (right - left);
    let py = |v: f64| bottom - (v - lo) / (hi - lo) * (bottom - top);
    for i in 0..=4 {
        let v = lo + (hi - lo) * f64::from(i) / 4.0;
        let y = py(v);
        line(img, (left, y), (right, y), GRID);
        text(img, i64::from(x_off) + 2, y as i64 - 3, &label(v), AXIS);
    }
    line(img, (left, top), (left, bottom), AXIS);
    line(img, (left, bottom), (right, bottom), AXIS);
    text(
        img,
        left as i64,
        bottom as i64 + 6,
        &format!("{}", epochs.first().copied().unwrap_or(0)),
        AXIS,
    );
    let last = format!("{}", epochs.last().copied().unwrap_or(0));
    text(
        img,
        right as i64 - 6 * last.len() as i64,
        bottom as i64 + 6,
        &last,
        AXIS,
    );
    text(
        img,
        ((left + right) / 2.0) as i64 - 15,
        bottom as i64 + 18,
        "epoch",
        AXIS,
    );
    text(img, left as i64, 10, title, AXIS);
    let mut legend_x = right as i64 - 6 * series.iter().map(|s| s.2.len() as i64 + 3).sum::<i64>();
    for (values, color, name) in series {
        let pts: Vec<(f64, f64)> = epochs
            .iter()
            .zip(values.iter())
            .filter(|(_, v)| v.is_finite())
            .map(|(&e, &v)| (px(e as f64), py(v)))
            .collect();
        for w in pts.windows(2) {
            line(img, w[0], w[1], *color);
        }
        for &(x, y) in &pts {
            for dx in -1..=1 {
                for dy in -1..=1 {
                    put(img, x as i64 + dx, y as i64 + dy, *color);
                }
            }
        }
        line(
            img,
            (legend_x as f64, 13.0),
            (legend_x as f64 + 10.0, 13.0),
            *color,
        );
        text(img, legend_x + 13, 10, name, *color);
        legend_x += 6 * (name.len() as i64 + 3);
    }
}

/// Writes the probe's curves: train loss (left) and validation acc@1 / acc@5 (right).
pub fn lincls_curves(path: &Path, history: &[LinclsEpoch]) -> Result<()> {
    let mut img = RgbImage::from_pixel(2 * W, H, BG);
    let epochs: Vec<usize> = history.iter().map(|h| h.epoch).collect();
    let loss: Vec<f64> = history.iter().map(|h| h.train_loss).collect();
    let a1: Vec<f64> = history.iter().map(|h| h.val_acc1).collect();
    let a5: Vec<f64> = history.iter().map(|h| h.val_acc5).collect();
    panel(&mut img, 0, "train loss", &epochs, &[(&loss, BLUE, "loss")]);
    panel(
        &mut img,
        W,
        "val accuracy (%)",
        &epochs,
        &[(&a1, ORANGE, "acc@1"), (&a5, GREEN, "acc@5")],
    );
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| MhclError::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    ssl_models::weights::write_file_atomic(path, buf.get_ref()).map_err(MhclError::from)
}
