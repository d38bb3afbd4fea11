//! Which matrix-product kernels the CPU (Flex) backend runs on this machine.
//!
//! burn's Flex backend multiplies matrices, and so runs every convolution after its im2col, with
//! the `gemm` crate, which picks its kernels **at run time**, once per process: gemm-common
//! 0.19's `init_gemm_fn` takes the FMA (AVX2) kernels when `is_x86_feature_detected!("fma")`,
//! else scalar code; on aarch64 NEON. Built with this crate's `avx512` feature (burn's `x86-v4`,
//! off by default) gemm also carries AVX-512 kernels and takes them first when `avx512f` is
//! detected; the same binary still runs on AVX2-only CPUs. [`matmul_isa`] repeats that decision,
//! for logs and benchmarks (it assumes burn's `x86-v4` is on exactly when `avx512` is).

/// The instruction set of gemm's matrix kernels on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulIsa {
    /// x86-64 AVX-512 (F) kernels.
    Avx512,
    /// x86-64 AVX2 + FMA kernels.
    Avx2Fma,
    /// aarch64 NEON kernels.
    Neon,
    /// Portable scalar code.
    Scalar,
}

impl MatmulIsa {
    /// A short name: `avx512`, `avx2-fma`, `neon` or `scalar`.
    pub fn name(self) -> &'static str {
        match self {
            MatmulIsa::Avx512 => "avx512",
            MatmulIsa::Avx2Fma => "avx2-fma",
            MatmulIsa::Neon => "neon",
            MatmulIsa::Scalar => "scalar",
        }
    }
}

impl std::fmt::Display for MatmulIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernels gemm chooses on this CPU (the same tests, in the same order, as gemm-common
/// 0.19's `init_gemm_fn`).
pub fn matmul_isa() -> MatmulIsa {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return MatmulIsa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return MatmulIsa::Avx2Fma;
        }
        MatmulIsa::Scalar
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return MatmulIsa::Neon;
        }
        MatmulIsa::Scalar
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        MatmulIsa::Scalar
    }
}
