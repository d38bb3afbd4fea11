//! `mhcl split`: a per-class train/val split of an ImageFolder tree.
//!
//! `SRC/<class>/<image>` becomes `DST/train/<class>/<image>` and `DST/val/<class>/<image>`.
//! For each class the sorted list of image files is shuffled and the first
//! `round(n * a / (a + b))` files go to `train` (ratio `a:b`), the rest to `val`.
//!
//! The shuffle is Python's: the split equals
//!
//! ```python
//! rng = random.Random(seed)
//! for cls in sorted(classes):
//!     files = sorted(images of cls)
//!     rng.shuffle(files)
//!     k = round(len(files) * a / (a + b))   # Python's round: half to even
//!     train, val = files[:k], files[k:]
//! ```
//!
//! so a split made here is the same as one made by that script with the same seed (the
//! generator below is CPython's Mersenne Twister with its integer seeding and `_randbelow`).
//!
//! Files are hard-linked where possible and copied otherwise. The tree is written under a
//! temporary sibling of `DST` and renamed at the end, so a failed split leaves nothing behind;
//! a `DST` that exists and is not empty is refused.
//!
//! ```no_run
//! use mhcl::split::{split, SplitOptions};
//! let report = split("AID".as_ref(), "AID28".as_ref(), &SplitOptions::new(2.0, 8.0, 0)).unwrap();
//! println!("{} train / {} val images", report.train, report.val);
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{MhclError, Result};

/// Image file extensions taken into a split (torchvision's `IMG_EXTENSIONS`, case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// Options of [`split`].
#[derive(Clone, Debug, PartialEq)]
pub struct SplitOptions {
    /// Train part of the ratio (`a` in `a:b`).
    pub train: f64,
    /// Validation part of the ratio (`b` in `a:b`).
    pub val: f64,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Always copy files instead of hard-linking them.
    pub copy: bool,
}

impl SplitOptions {
    /// Ratio `train:val` with `seed`, hard links where possible.
    pub fn new(train: f64, val: f64, seed: u64) -> Self {
        Self {
            train,
            val,
            seed,
            copy: false,
        }
    }

    /// Forces copies.
    pub fn with_copy(mut self, copy: bool) -> Self {
        self.copy = copy;
        self
    }
}

/// Parses a ratio written `a:b` (for example `2:8` or `0.2:0.8`); both parts must be positive.
pub fn parse_ratio(s: &str) -> Result<(f64, f64)> {
    let bad = || {
        MhclError::arg(format!(
            "invalid --ratio `{s}`: expected A:B with A, B > 0, e.g. 2:8"
        ))
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let a: f64 = a.trim().parse().map_err(|_| bad())?;
    let b: f64 = b.trim().parse().map_err(|_| bad())?;
    if !(a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0) {
        return Err(bad());
    }
    Ok((a, b))
}

/// What [`split`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitReport {
    /// Class folder names, sorted.
    pub classes: Vec<String>,
    /// `(train, val)` image counts per class, in the order of `classes`.
    pub per_class: Vec<(usize, usize)>,
    /// Total train images.
    pub train: usize,
    /// Total validation images.
    pub val: usize,
    /// Files hard-linked (the others were copied).
    pub linked: usize,
}

/// Splits `src` into `dst/train` and `dst/val`; see the module docs.
pub fn split(src: &Path, dst: &Path, opts: &SplitOptions) -> Result<SplitReport> {
    if !(opts.train > 0.0 && opts.val > 0.0 && opts.train.is_finite() && opts.val.is_finite()) {
        return Err(MhclError::arg("split ratio parts must be positive"));
    }
    let classes = list_classes(src)?;
    if dst.exists() {
        let mut entries = fs::read_dir(dst).map_err(|e| MhclError::io(dst, e))?;
        if entries.next().is_some() {
            return Err(MhclError::arg(format!(
                "{} exists and is not empty; refusing to overwrite it",
                dst.display()
            )));
        }
    }
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| MhclError::io(&parent, e))?;
    let name = dst
        .file_name()
        .ok_or_else(|| MhclError::arg(format!("invalid destination {}", dst.display())))?;
    let tmp = parent.join(format!(
        ".{}.split-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| MhclError::io(&tmp, e))?;
    }
    let result = write_split(src, &tmp, &classes, opts);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if dst.exists() {
        // empty directory (checked above)
        fs::remove_dir(dst).map_err(|e| MhclError::io(dst, e))?;
    }
    if let Err(e) = fs::rename(&tmp, dst) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(MhclError::io(dst, e));
    }
    Ok(report)
}

fn list_classes(src: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let rd = fs::read_dir(src).map_err(|e| MhclError::io(src, e))?;
    let mut classes = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| MhclError::io(src, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        for f in fs::read_dir(&path).map_err(|e| MhclError::io(&path, e))? {
            let f = f.map_err(|e| MhclError::io(&path, e))?;
            let fname = f.file_name().to_string_lossy().into_owned();
            if fname.starts_with('.') || !f.path().is_file() {
                continue;
            }
            let ext = Path::new(&fname)
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            if ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
                files.push(fname);
            }
        }
        if files.is_empty() {
            continue;
        }
        files.sort();
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(MhclError::data(format!(
            "{}: no class folders with images ({})",
            src.display(),
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    classes.sort();
    Ok(classes)
}

fn write_split(
    src: &Path,
    tmp: &Path,
    classes: &[(String, Vec<String>)],
    opts: &SplitOptions,
) -> Result<SplitReport> {
    let mut rng = PyRandom::new(opts.seed);
    let frac = opts.train / (opts.train + opts.val);
    let mut report = SplitReport {
        classes: Vec::new(),
        per_class: Vec::new(),
        train: 0,
        val: 0,
        linked: 0,
    };
    for (class, files) in classes {
        let mut files = files.clone();
        rng.shuffle(&mut files);
        let k = round_half_even(files.len() as f64 * frac).min(files.len());
        for (part, names) in [("train", &files[..k]), ("val", &files[k..])] {
            let dir = tmp.join(part).join(class);
            fs::create_dir_all(&dir).map_err(|e| MhclError::io(&dir, e))?;
            for f in names {
                let from = src.join(class).join(f);
                let to = dir.join(f);
                if !opts.copy && fs::hard_link(&from, &to).is_ok() {
                    report.linked += 1;
                } else {
                    fs::copy(&from, &to).map_err(|e| MhclError::io(&from, e))?;
                }
            }
        }
        report.classes.push(class.clone());
        report.per_class.push((k, files.len() - k));
        report.train += k;
        report.val += files.len() - k;
    }
    Ok(report)
}

fn round_half_even(x: f64) -> usize {
    let r = x.round_ties_even();
    if r < 0.0 { 0 } else { r as usize }
}

/// CPython's `random.Random` (MT19937, `init_by_array` seeding of an integer seed,
/// `_randbelow_with_getrandbits`, `shuffle`), enough to reproduce `Random(seed).shuffle`.
pub struct PyRandom {
    mt: [u32; 624],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        // CPython splits abs(seed) into 32-bit words, least significant first; 0 -> [0].
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut r = Self {
            mt: [0; 624],
            index: 624,
        };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..624 {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = 624;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let n = 624usize;
        let (mut i, mut j) = (1usize, 0usize);
        let mut k = n.max(key.len());
        while k > 0 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= n {
                self.mt[0] = self.mt[n - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
            k -= 1;
        }
        k = n - 1;
        while k > 0 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= n {
                self.mt[0] = self.mt[n - 1];
                i = 1;
            }
            k -= 1;
        }
        self.mt[0] = 0x8000_0000;
    }

    /// The next 32-bit output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        if self.index >= 624 {
            for kk in 0..624 {
                let y = (self.mt[kk] & UPPER) | (self.mt[(kk + 1) % 624] & LOWER);
                let mut v = self.mt[(kk + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[kk] = v;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `getrandbits(k)` for `1 <= k <= 32`.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)` for `1 <= n < 2^32`.
    pub fn randbelow(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(x)`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u32 + 1) as usize;
            x.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_random_outputs() {
        // random.Random(0).getrandbits(32) x3 and Random(0).shuffle(list(range(10)))
        let mut r = PyRandom::new(0);
        assert_eq!(
            [r.next_u32(), r.next_u32(), r.next_u32()],
            [3_626_764_237, 1_654_615_998, 3_255_389_356]
        );
        let mut v: Vec<u32> = (0..10).collect();
        PyRandom::new(0).shuffle(&mut v);
        assert_eq!(v, [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]);
        // seeds of one and two 32-bit words, lists longer than 256 (several getrandbits widths)
        for (seed, head, weighted) in [
            (7u64, [41, 258, 27, 4, 196, 289, 36, 40], 6_645_950usize),
            ((1 << 40) + 7, [31, 267, 286, 8, 247, 277, 13, 7], 6_696_105),
        ] {
            let mut v: Vec<usize> = (0..300).collect();
            PyRandom::new(seed).shuffle(&mut v);
            assert_eq!(v[..8], head);
            assert_eq!(
                v.iter().enumerate().map(|(i, x)| i * x).sum::<usize>(),
                weighted
            );
        }
    }

    #[test]
    fn ratio_parsing() {
        assert_eq!(parse_ratio("2:8").unwrap(), (2.0, 8.0));
        assert_eq!(parse_ratio("0.6:0.4").unwrap(), (0.6, 0.4));
        for bad in ["2", "0:8", "a:b", "-1:2", "2:8:1"] {
            assert!(parse_ratio(bad).is_err(), "{bad}");
        }
    }

    fn make_src(root: &Path) {
        for (c, n) in [("b_class", 10), ("a_class", 7)] {
            let d = root.join(c);
            fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                fs::write(d.join(format!("img_{i}.jpg")), format!("{c}{i}")).unwrap();
            }
            fs::write(d.join("notes.txt"), "not an image").unwrap();
        }
    }

    #[test]
    fn split_is_per_class_deterministic_and_refuses_non_empty_dst() {
        let tmp = std::env::temp_dir().join(format!("mhcl-split-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let src = tmp.join("src");
        make_src(&src);
        let opts = SplitOptions::new(2.0, 8.0, 0);
        let r = split(&src, &tmp.join("d1"), &opts).unwrap();
        assert_eq!(r.classes, ["a_class", "b_class"]);
        // round(7*0.2)=round(1.4)=1, round(10*0.2)=2
        assert_eq!(r.per_class, vec![(1, 6), (2, 8)]);
        let r2 = split(&src, &tmp.join("d2"), &opts.clone().with_copy(true)).unwrap();
        assert_eq!(r2.linked, 0);
        let list = |d: &Path| {
            let mut v: Vec<_> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        for part in [
            "train/a_class",
            "train/b_class",
            "val/a_class",
            "val/b_class",
        ] {
            assert_eq!(
                list(&tmp.join("d1").join(part)),
                list(&tmp.join("d2").join(part))
            );
        }
        let err = split(&src, &tmp.join("d1"), &opts).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        // an empty existing destination is fine
        fs::create_dir_all(tmp.join("d3")).unwrap();
        split(&src, &tmp.join("d3"), &SplitOptions::new(1.0, 1.0, 5)).unwrap();
        assert!(split(&tmp.join("missing"), &tmp.join("d4"), &opts).is_err());
        assert!(!tmp.join("d4").exists());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
