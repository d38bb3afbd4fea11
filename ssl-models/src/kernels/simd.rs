//! Run-time choice of the instruction set for the kernels' own loops (the passes of
//! BatchNorm, patch copies, reorders): the crate is built for baseline x86-64 (SSE2) so that one
//! binary runs on every x86-64 CPU, and [`vectorized`] runs a loop compiled for AVX-512 where the
//! CPU has it, as gemm does for its matrix kernels (`gemm_common`'s `V4::vectorize`). Elsewhere,
//! and on other architectures, the same loop runs as compiled for the baseline.

/// Whether this CPU runs [`vectorized`] loops on AVX-512 (F, BW, DQ, VL with FMA).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f`, compiled for AVX-512 when [`avx512`] holds (the closure is inlined into a function
/// built with those target features, so its loops vectorize 16 floats wide), for the baseline
/// otherwise. Results are the same either way for the loops here: each lane computes what the
/// scalar code does, and reductions keep their lane order.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has every feature `with_avx512` is compiled for.
        return unsafe { with_avx512(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[inline]
fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}
