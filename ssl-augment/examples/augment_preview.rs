//! Writes a PNG grid to look at what the MoCo v2 pipeline does: one row per image, the original
//! (fitted into the cell) then two independent MoCo v2 crops (the query and key views).
//!
//! ```text
//! cargo run --release -p ssl-augment --example augment_preview -- --data DIR [--n 8] [--size 224] [--seed 0] [--out preview.png]
//! ```
//! Images are taken at even steps through the folder, so several classes show up.

use std::process::ExitCode;

use ssl_augment::{
    ImageFolder, ImageFolderOptions, RgbImage, moco_v2_transform, resample, sample_rng,
};

const USAGE: &str =
    "usage: augment_preview --data DIR [--n 8] [--size 224] [--seed 0] [--out preview.png]";

struct Args {
    data: String,
    n: usize,
    size: usize,
    seed: u64,
    out: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        data: String::new(),
        n: 8,
        size: 224,
        seed: 0,
        out: "preview.png".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--data" => a.data = v,
            "--n" => a.n = num(&v)?,
            "--size" => a.size = num(&v)?,
            "--seed" => a.seed = num(&v)? as u64,
            "--out" => a.out = v,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.data.is_empty() || a.n == 0 || a.size == 0 {
        return Err(USAGE.into());
    }
    Ok(a)
}

/// `img` scaled to fit a `size x size` cell (aspect kept), centred on gray.
fn fit(img: &RgbImage, size: usize) -> RgbImage {
    let (h, w) = img.hw();
    let s = size as f64 / h.max(w) as f64;
    let (nh, nw) = (
        ((h as f64 * s).round() as usize).max(1),
        ((w as f64 * s).round() as usize).max(1),
    );
    let r = resample::resize_bilinear(img, nh, nw);
    let mut cell = RgbImage::filled(size, size, [128, 128, 128]);
    let (top, left) = ((size - nh) / 2, (size - nw) / 2);
    for y in 0..nh {
        for x in 0..nw {
            cell.put(left + x, top + y, r.get(x, y).unwrap_or([0, 0, 0]));
        }
    }
    cell
}

fn run(a: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let folder = ImageFolder::new(&a.data, &ImageFolderOptions::default())?;
    let pipeline = moco_v2_transform(a.size)?;
    let n = a.n.min(folder.len());
    let (gap, cell) = (4usize, a.size);
    let (gw, gh) = (3 * cell + 4 * gap, n * cell + (n + 1) * gap);
    let mut grid = RgbImage::filled(gw, gh, [255, 255, 255]);
    for row in 0..n {
        let index = row * folder.len() / n;
        let img = folder.load(index)?;
        let mut rng = sample_rng(a.seed, 0, index as u64, 0);
        let views = [
            fit(&img, cell),
            pipeline.apply_image(&img, &mut rng)?,
            pipeline.apply_image(&img, &mut rng)?,
        ];
        for (col, v) in views.iter().enumerate() {
            let (x0, y0) = (gap + col * (cell + gap), gap + row * (cell + gap));
            for y in 0..cell {
                for x in 0..cell {
                    grid.put(x0 + x, y0 + y, v.get(x, y).unwrap_or([0, 0, 0]));
                }
            }
        }
    }
    let out: image::RgbImage = grid.try_into()?;
    out.save(&a.out)?;
    Ok(format!(
        "wrote {} ({n} images: original, query crop, key crop)",
        a.out
    ))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
