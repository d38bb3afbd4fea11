//! The hand-written Flex kernels against burn's tensor path, on random shapes: values, batch
//! statistics and gradients.

use burn::prelude::*;
use burn::tensor::Distribution;
use proptest::prelude::*;
use ssl_models::kernels::batchnorm::{batch_norm_relu_train, batch_norm_train};
use ssl_models::kernels::conv::{ConvGeometry, conv2d};
use ssl_models::kernels::pool::{PoolGeometry, max_pool2d};

fn max_rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
    a.sub(b).abs().max().into_scalar::<f32>() / scale
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn fused_batch_norm_matches_burn_in_values_statistics_and_gradients(
        n in 1usize..5, c in 1usize..9, h in 1usize..12, w in 1usize..12,
        offset in -4.0f64..4.0, scale in 0.1f64..3.0, seed in any::<u64>(),
    ) {
        prop_assume!(n * h * w > 1);
        let device = Device::flex().autodiff();
        device.seed(seed);
        let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(offset, scale), &device);
        let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
        let r = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let eps = 1e-5;

        let (x1, g1, b1) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
        let (y1, m1, v1) = batch_norm_train(x1.clone(), g1.clone(), b1.clone(), eps);
        let grads1 = y1.clone().mul(r.clone()).sum().backward();

        let (x2, g2, b2) = (x.require_grad(), gamma.require_grad(), beta.require_grad());
        let reference = burn::tensor::module::batch_norm_train(x2.clone(), g2.clone(), b2.clone(), eps);
        let grads2 = reference.output.clone().mul(r).sum().backward();

        prop_assert!(max_rel_diff(y1.inner(), reference.output.inner()) < 2e-5);
        prop_assert!(max_rel_diff(m1.inner(), reference.mean.inner()) < 2e-5);
        prop_assert!(max_rel_diff(v1.inner(), reference.variance.inner()) < 5e-5);
        let dx = max_rel_diff(x1.grad(&grads1).unwrap(), x2.grad(&grads2).unwrap());
        let dg = max_rel_diff(g1.grad(&grads1).unwrap(), g2.grad(&grads2).unwrap());
        let db = max_rel_diff(b1.grad(&grads1).unwrap(), b2.grad(&grads2).unwrap());
        prop_assert!(dx < 1e-4, "dx {dx}");
        prop_assert!(dg < 1e-4, "dgamma {dg}");
        prop_assert!(db < 1e-5, "dbeta {db}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn fused_batch_norm_relu_is_the_batch_norm_followed_by_relu_in_values_and_gradients(
        n in 1usize..5, c in 1usize..9, h in 1usize..12, w in 1usize..12,
        offset in -2.0f64..2.0, seed in any::<u64>(),
    ) {
        // Against the unfused composition of the same BatchNorm kernel (itself checked against
        // burn above) with burn's relu: the same pre-activations, so the same ReLU mask.
        prop_assume!(n * h * w > 1);
        let device = Device::flex().autodiff();
        device.seed(seed);
        let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(offset, 1.0), &device);
        let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
        let r = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let (x, g, b) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
            let (y, m, v) = if fused {
                batch_norm_relu_train(x.clone(), g.clone(), b.clone(), 1e-5)
            } else {
                let (y, m, v) = batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5);
                (burn::tensor::activation::relu(y), m, v)
            };
            let grads = y.clone().mul(r.clone()).sum().backward();
            let (dx, dg, db) = (x.grad(&grads).unwrap(), g.grad(&grads).unwrap(), b.grad(&grads).unwrap());
            (y.inner(), m.inner(), v.inner(), dx, dg, db)
        };
        let (a, b) = (run(true), run(false));
        prop_assert_eq!(a.0.into_data(), b.0.into_data());
        prop_assert_eq!(a.1.into_data(), b.1.into_data());
        prop_assert_eq!(a.2.into_data(), b.2.into_data());
        let dx = max_rel_diff(a.3, b.3);
        let dg = max_rel_diff(a.4, b.4);
        let db = max_rel_diff(a.5, b.5);
        prop_assert!(dx < 1e-5, "dx {dx}");
        prop_assert!(dg < 1e-5, "dgamma {dg}");
        prop_assert!(db < 1e-5, "dbeta {db}");
    }
}

#[test]
fn fused_batch_norm_runs_without_autodiff_and_on_non_contiguous_input() {
    let device = Device::flex();
    let x = Tensor::<4>::random([3, 4, 5, 6], Distribution::Normal(1.0, 2.0), &device);
    let xt = x.clone().swap_dims(2, 3); // a strided view
    let gamma = Tensor::<1>::ones([4], &device);
    let beta = Tensor::<1>::zeros([4], &device);
    let (y, _, _) = batch_norm_train(xt.clone(), gamma.clone(), beta.clone(), 1e-5);
    let want = burn::tensor::module::batch_norm_train(xt, gamma, beta, 1e-5).output;
    assert!(max_rel_diff(y, want) < 2e-5);
}

#[test]
fn other_dtypes_take_burns_path() {
    let device = Device::flex();
    let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Default, &device)
        .cast(burn::tensor::DType::F16);
    let gamma = Tensor::<1>::ones([3], &device).cast(burn::tensor::DType::F16);
    let beta = Tensor::<1>::zeros([3], &device).cast(burn::tensor::DType::F16);
    let (y, m, v) = batch_norm_train(x, gamma, beta, 1e-5);
    assert_eq!(y.dims(), [2, 3, 4, 4]);
    assert_eq!((m.dims(), v.dims()), ([3], [3]));
    assert_eq!(y.dtype(), burn::tensor::DType::F16);
}

#[test]
fn fused_batch_norm_feeding_a_convolution_directly_has_burns_gradients() {
    let device = Device::flex().autodiff();
    device.seed(5);
    let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.5, 1.5), &device);
    let gamma = Tensor::<1>::random([3], Distribution::Normal(1.0, 0.5), &device);
    let beta = Tensor::<1>::random([3], Distribution::Normal(0.0, 0.5), &device);
    let weight = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 0.5), &device);
    let opts = burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let run = |fused: bool| {
        let (x, g, w) = (
            x.clone().require_grad(),
            gamma.clone().require_grad(),
            weight.clone().require_grad(),
        );
        let y = if fused {
            batch_norm_train(x.clone(), g.clone(), beta.clone(), 1e-5).0
        } else {
            burn::tensor::module::batch_norm_train(x.clone(), g.clone(), beta.clone(), 1e-5).output
        };
        let z = burn::tensor::module::conv2d(y, w.clone(), None, opts.clone());
        let grads = z.clone().mul(z).sum().backward();
        (
            x.grad(&grads).unwrap(),
            g.grad(&grads).unwrap(),
            w.grad(&grads).unwrap(),
        )
    };
    let (a, b) = (run(true), run(false));
    assert!(max_rel_diff(a.0, b.0) < 1e-4, "dx");
    assert!(max_rel_diff(a.1, b.1) < 1e-4, "dgamma");
    assert!(max_rel_diff(a.2, b.2) < 1e-4, "dweight");
}

/// The largest relative differences `(y, dx, dweight)` between `conv2d` and burn's convolution
/// of a random `x (n, c, h, w)` with a random `(o, c, k, k)` weight.
#[allow(clippy::too_many_arguments)]
fn conv2d_against_burn(
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    seed: u64,
) -> (f32, f32, f32) {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
    let weight = Tensor::<4>::random([o, c, k, k], Distribution::Normal(0.0, 0.5), &device);
    let geometry = ConvGeometry {
        stride: [stride, stride],
        padding: [pad, pad],
    };

    let (x1, w1) = (x.clone().require_grad(), weight.clone().require_grad());
    let y1 = conv2d(x1.clone(), w1.clone(), geometry);
    let r = Tensor::<4>::random(y1.dims(), Distribution::Normal(0.0, 1.0), &device);
    let grads1 = y1.clone().mul(r.clone()).sum().backward();

    let (x2, w2) = (x.require_grad(), weight.require_grad());
    let options = burn::tensor::ops::ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
    let y2 = burn::tensor::module::conv2d(x2.clone(), w2.clone(), None, options);
    let grads2 = y2.clone().mul(r).sum().backward();

    (
        max_rel_diff(y1.inner(), y2.inner()),
        max_rel_diff(x1.grad(&grads1).unwrap(), x2.grad(&grads2).unwrap()),
        max_rel_diff(w1.grad(&grads1).unwrap(), w2.grad(&grads2).unwrap()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn gemm_conv2d_matches_burn_in_values_and_both_gradients(
        n in 1usize..12, c in 1usize..6, o in 1usize..6, h in 1usize..10, w in 1usize..24,
        k in prop::sample::select(vec![1usize, 3, 5, 7]), stride in 1usize..4, pad in 0usize..4,
        seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let (y, dx, dw) = conv2d_against_burn(n, c, o, h, w, k, stride, pad, seed);
        prop_assert!(y < 1e-5, "y {y}");
        prop_assert!(dx < 1e-5, "dx {dx}");
        prop_assert!(dw < 1e-5, "dweight {dw}");
    }
}

#[test]
fn gemm_conv2d_with_several_images_per_product_and_a_short_last_chunk_matches_burn() {
    // 3 tasks share 11 images (4, 4, 3); at 2x2 and 3x3 outputs each product takes all of a
    // task's images, so the last product is one image short. 1 thread: one chunk of 11. The
    // 1x1 kernels at 4x4 (patches copied side by side) and at 12x12 (one image per product:
    // the image is its own patch matrix) take the pointwise paths.
    for threads in [3, 1] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (h, k, stride, pad) in [
            (2, 3, 1, 1),
            (5, 3, 2, 1),
            (6, 1, 2, 0),
            (4, 1, 1, 0),
            (12, 1, 1, 0),
        ] {
            let (y, dx, dw) =
                pool.install(|| conv2d_against_burn(11, 8, 9, h, h, k, stride, pad, 5));
            assert!(
                y < 1e-5 && dx < 1e-5 && dw < 1e-5,
                "{threads} threads, {h}x{h} k{k} s{stride}: {y} {dx} {dw}"
            );
        }
    }
}

#[test]
fn gemm_conv2d_of_an_input_without_gradient_gives_burns_weight_gradient_only() {
    // The stem: images need no gradient, the weight does (and the reverse, a frozen weight).
    let device = Device::flex().autodiff();
    device.seed(3);
    let x = Tensor::<4>::random([5, 3, 13, 13], Distribution::Normal(0.0, 1.0), &device);
    let weight = Tensor::<4>::random([4, 3, 7, 7], Distribution::Normal(0.0, 0.5), &device);
    let g = ConvGeometry {
        stride: [2, 2],
        padding: [3, 3],
    };
    let options = burn::tensor::ops::ConvOptions::new([2, 2], [3, 3], [1, 1], 1);
    for x_grad in [false, true] {
        let (x1, x2) = if x_grad {
            (x.clone().require_grad(), x.clone().require_grad())
        } else {
            (x.clone(), x.clone())
        };
        let (w1, w2) = if x_grad {
            (weight.clone(), weight.clone())
        } else {
            (weight.clone().require_grad(), weight.clone().require_grad())
        };
        let grads1 = conv2d(x1.clone(), w1.clone(), g).sum().backward();
        let grads2 = burn::tensor::module::conv2d(x2.clone(), w2.clone(), None, options.clone())
            .sum()
            .backward();
        if x_grad {
            assert!(w1.grad(&grads1).is_none());
            let d = max_rel_diff(x1.grad(&grads1).unwrap(), x2.grad(&grads2).unwrap());
            assert!(d < 1e-5, "dx {d}");
        } else {
            assert!(x1.grad(&grads1).is_none());
            let d = max_rel_diff(w1.grad(&grads1).unwrap(), w2.grad(&grads2).unwrap());
            assert!(d < 1e-5, "dweight {d}");
        }
    }
}

#[test]
fn gemm_conv2d_falls_back_to_burn_for_other_dtypes_and_without_autodiff() {
    let device = Device::flex();
    let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device);
    let weight = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
    let g = ConvGeometry {
        stride: [2, 2],
        padding: [1, 1],
    };
    let options = burn::tensor::ops::ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    let want = burn::tensor::module::conv2d(x.clone(), weight.clone(), None, options);
    assert!(max_rel_diff(conv2d(x.clone(), weight.clone(), g), want.clone()) < 1e-6);
    let half = conv2d(
        x.cast(burn::tensor::DType::BF16),
        weight.cast(burn::tensor::DType::BF16),
        g,
    );
    assert_eq!(half.dtype(), burn::tensor::DType::BF16);
    assert!(max_rel_diff(half.cast(burn::tensor::DType::F32), want) < 5e-2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn max_pool2d_matches_burn_in_values_and_gradient(
        n in 1usize..4, c in 1usize..5, h in 1usize..14, w in 1usize..40,
        k in 1usize..4, stride in 1usize..4, pad in 0usize..2, seed in any::<u64>(),
    ) {
        prop_assume!(2 * pad <= k && h + 2 * pad >= k && w + 2 * pad >= k);
        let device = Device::flex().autodiff();
        device.seed(seed);
        let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(-1.0, 1.0), &device);
        let geometry = PoolGeometry { kernel: [k, k], stride: [stride, stride], padding: [pad, pad] };
        let x1 = x.clone().require_grad();
        let y1 = max_pool2d(x1.clone(), geometry);
        let r = Tensor::<4>::random(y1.dims(), Distribution::Normal(0.0, 1.0), &device);
        let g1 = y1.clone().mul(r.clone()).sum().backward();
        let x2 = x.require_grad();
        let options = burn::tensor::ops::MaxPoolOptions::new([k, k])
            .with_stride([stride, stride])
            .with_padding([pad, pad]);
        let y2 = burn::tensor::module::max_pool2d(x2.clone(), options);
        let g2 = y2.clone().mul(r).sum().backward();
        prop_assert_eq!(y1.inner().into_data(), y2.inner().into_data());
        let dx = max_rel_diff(x1.grad(&g1).unwrap(), x2.grad(&g2).unwrap());
        prop_assert!(dx < 1e-6, "dx {dx}");
    }
}

#[test]
fn max_pool2d_gives_a_tie_to_the_first_maximum_and_never_to_padding() {
    // PyTorch: the first maximum in window order takes the gradient; padding is -inf.
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::from_data(TensorData::new(vec![-2.0f32; 4], [1, 1, 2, 2]), &device)
        .require_grad();
    let geometry = PoolGeometry {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
    };
    let y = max_pool2d(x.clone(), geometry);
    assert_eq!(
        y.clone().inner().into_data().try_to_vec::<f32>().unwrap(),
        vec![-2.0]
    );
    let dx = x.grad(&y.sum().backward()).unwrap();
    assert_eq!(
        dx.into_data().try_to_vec::<f32>().unwrap(),
        vec![1.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn max_pool2d_propagates_nan_as_pytorch() {
    let device = Device::flex();
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![1.0f32, f32::NAN, 3.0, 2.0], [1, 1, 2, 2]),
        &device,
    );
    let geometry = PoolGeometry {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
    };
    let y = max_pool2d(x, geometry)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(y[0].is_nan(), "{y:?}");
}
