//! Runtime dispatch of hot loops to an AVX2 build of the same code.
//!
//! The loops are plain integer/float Rust that LLVM vectorizes; compiling them a second time
//! with AVX2 enabled (8 lanes of `i32`/`f32`, and `vpmulld`, which SSE2 lacks) and choosing at run
//! time keeps the crate portable. Both builds compute the same values: no operation is
//! reassociated or contracted, only executed on wider registers.

/// Defines `fn $name(args) -> ret` that runs `$body` through an AVX2-enabled copy when the CPU
/// has AVX2, else through the baseline copy.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    #[target_feature(enable = "avx2")]
                    fn avx2($($arg: $ty),*) $(-> $ret)? {
                        imp($($arg),*)
                    }
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use multiversion;

multiversion! {
    /// Transposes `h` rows of `w` interleaved RGB pixels (rows `stride` bytes apart in `src`)
    /// into `dst`: `w` rows of `h` pixels.
    pub(crate) fn transpose_strided(src: &[u8], stride: usize, dst: &mut [u8], w: usize, h: usize) {
        if w == 0 || h == 0 {
            return;
        }
        assert!(src.len() >= (h - 1) * stride + w * 3 && dst.len() >= w * h * 3);
        const B: usize = 32;
        for x0 in (0..w).step_by(B) {
            for y0 in (0..h).step_by(B) {
                for x in x0..(x0 + B).min(w) {
                    let drow = &mut dst[x * h * 3..(x + 1) * h * 3];
                    for y in y0..(y0 + B).min(h) {
                        let s = y * stride + x * 3;
                        drow[y * 3..y * 3 + 3].copy_from_slice(&src[s..s + 3]);
                    }
                }
            }
        }
    }
}

/// Transposes an interleaved RGB image of `w x h` pixels into `dst` (`h x w` pixels).
pub(crate) fn transpose_rgb(src: &[u8], dst: &mut [u8], w: usize, h: usize) {
    transpose_strided(src, w * 3, dst, w, h);
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_moves_pixels() {
        let (w, h) = (5, 3);
        let src: Vec<u8> = (0..w * h * 3).map(|v| v as u8).collect();
        let mut dst = vec![0; src.len()];
        super::transpose_rgb(&src, &mut dst, w, h);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    assert_eq!(dst[(x * h + y) * 3 + c], src[(y * w + x) * 3 + c]);
                }
            }
        }
    }
}
