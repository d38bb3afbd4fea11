//! The CPU backend's matrix products, whichever kernels gemm picked at run time (AVX2/FMA, or
//! AVX-512 with the `avx512` feature on a CPU that has it): products and convolutions against a
//! plain f64 reference on random shapes, including the odd sizes that end in gemm's edge
//! kernels.
//!
//! `SSL_EXPECT_MATMUL_ISA=avx2-fma` (or `avx512`, ...) makes the run also require that choice:
//! `scripts/check-avx2-fallback.sh` runs this test under `qemu-x86_64 -cpu Haswell`, a CPU
//! without AVX-512, to check the AVX2 path of the same binary.

use burn::prelude::*;
use proptest::prelude::*;
use ssl_models::{MatmulIsa, matmul_isa};

/// `a (m x k) * b (k x n)` in f64.
fn reference_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = f64::from(a[i * k + p]);
            for j in 0..n {
                out[i * n + j] += x * f64::from(b[p * n + j]);
            }
        }
    }
    out
}

/// Deterministic values in [-1, 1) from a seed.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], k: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    // f32 accumulation of k products of values below 1: error grows like sqrt(k) ulps
    let tol = 1e-5 * (k as f64).sqrt().max(1.0) * 4.0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}: element {i}: {g} vs {w} (|err| {err:e} > {tol:e})"
        );
    }
}

#[test]
fn the_reported_isa_is_the_expected_one_when_a_run_names_it() {
    let isa = matmul_isa();
    eprintln!("gemm kernels on this CPU: {isa}");
    if let Ok(want) = std::env::var("SSL_EXPECT_MATMUL_ISA") {
        assert_eq!(isa.name(), want, "SSL_EXPECT_MATMUL_ISA");
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f");
        assert_eq!(isa == MatmulIsa::Avx512, avx512);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn matmul_matches_an_f64_reference(
        m in 1usize..70, k in 1usize..150, n in 1usize..70, batch in 1usize..3, seed in any::<u64>()
    ) {
        let device = Device::flex();
        let a = values(batch * m * k, seed);
        let b = values(batch * k * n, seed ^ 0xABCD);
        let ta = Tensor::<3>::from_data(TensorData::new(a.clone(), [batch, m, k]), &device);
        let tb = Tensor::<3>::from_data(TensorData::new(b.clone(), [batch, k, n]), &device);
        let got: Vec<f32> = ta.matmul(tb).into_data().try_to_vec::<f32>().unwrap();
        for bi in 0..batch {
            let want = reference_matmul(&a[bi * m * k..][..m * k], &b[bi * k * n..][..k * n], m, k, n);
            assert_close(&got[bi * m * n..][..m * n], &want, k, &format!("{m}x{k}x{n} batch {bi}"));
        }
    }

    #[test]
    fn conv2d_matches_an_f64_reference(
        c_in in 1usize..12, c_out in 1usize..20, size in 3usize..12, kernel in prop::sample::select(vec![1usize, 3]),
        stride in 1usize..3, seed in any::<u64>()
    ) {
        let device = Device::flex();
        let pad = kernel / 2;
        let x = values(2 * c_in * size * size, seed);
        let w = values(c_out * c_in * kernel * kernel, seed ^ 0x1234);
        let tx = Tensor::<4>::from_data(TensorData::new(x.clone(), [2, c_in, size, size]), &device);
        let tw = Tensor::<4>::from_data(TensorData::new(w.clone(), [c_out, c_in, kernel, kernel]), &device);
        let opts = burn::tensor::ops::ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
        let got: Vec<f32> = burn::tensor::module::conv2d(tx, tw, None, opts).into_data().try_to_vec::<f32>().unwrap();
        let out = (size + 2 * pad - kernel) / stride + 1;
        let mut want = vec![0.0f64; 2 * c_out * out * out];
        for b in 0..2 {
            for o in 0..c_out {
                for y in 0..out {
                    for xx in 0..out {
                        let mut acc = 0.0f64;
                        for c in 0..c_in {
                            for ky in 0..kernel {
                                for kx in 0..kernel {
                                    let iy = (y * stride + ky) as isize - pad as isize;
                                    let ix = (xx * stride + kx) as isize - pad as isize;
                                    if iy < 0 || ix < 0 || iy >= size as isize || ix >= size as isize {
                                        continue;
                                    }
                                    let xv = x[((b * c_in + c) * size + iy as usize) * size + ix as usize];
                                    let wv = w[((o * c_in + c) * kernel + ky) * kernel + kx];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        want[((b * c_out + o) * out + y) * out + xx] = acc;
                    }
                }
            }
        }
        assert_close(&got, &want, c_in * kernel * kernel, "conv2d");
    }
}
