//! Bad input gives errors (never panics), and the documented behaviours of the API.

use burn::prelude::*;
use burn::tensor::Distribution;
use rand::SeedableRng;
use rand::rngs::StdRng;
use ssl_losses::{
    HardFeatureLossConfig, HardMixing, InfoNceLoss, LossError, MHCL_WEIGHTS, check_finite,
    cross_entropy, normalize, topk_accuracy,
};

fn dev() -> Device {
    Device::flex().autodiff()
}

fn unit<const D: usize>(shape: [usize; D], dim: usize) -> Tensor<D> {
    normalize(
        Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &dev()),
        dim,
    )
    .unwrap()
}

#[test]
fn shape_mismatches_are_errors() {
    let loss = HardFeatureLossConfig::new().init().unwrap();
    let (q, k) = (unit([4, 4, 8], 2), unit([4, 4, 8], 2));
    let cases = [
        (q.clone(), unit([3, 4, 8], 2), unit([8, 8, 16], 1)), // k rows
        (q.clone(), k.clone(), unit([4, 8, 16], 1)),          // 4 queue scales for 8
        (q.clone(), k.clone(), unit([8, 7, 16], 1)),          // queue dim
        (unit([0, 4, 8], 2), unit([0, 4, 8], 2), unit([8, 8, 16], 1)), // empty batch
    ];
    for (q, k, queue) in cases {
        let err = loss.forward(q, k, queue, None).unwrap_err();
        assert!(matches!(err, LossError::Shape(_)), "{err}");
    }
    let err = InfoNceLoss::new(0.2)
        .forward(unit([4, 8], 1), unit([4, 8], 1), unit([9, 16], 0))
        .unwrap_err();
    assert!(matches!(err, LossError::Shape(_)), "{err}");
}

#[test]
fn mixing_that_does_not_fit_is_an_error() {
    let loss = HardFeatureLossConfig::new().init().unwrap();
    let (q, k, queue) = (unit([2, 4, 8], 2), unit([2, 4, 8], 2), unit([8, 8, 16], 1));
    let bad = [
        HardMixing {
            lam: vec![1.5; 4],
            mu: vec![0.5; 4],
            perm: vec![0; 16], // not a permutation
        },
        HardMixing {
            lam: vec![1.5; 3], // 3 scales for 4
            mu: vec![0.5; 3],
            perm: (0..16).collect(),
        },
        HardMixing {
            lam: vec![1.5; 4],
            mu: vec![0.5; 4],
            perm: (0..15).collect(), // K = 16
        },
        HardMixing {
            lam: vec![f32::NAN, 1.0, 1.0, 1.0],
            mu: vec![0.5; 4],
            perm: (0..16).collect(),
        },
    ];
    for m in &bad {
        let err = loss
            .forward(q.clone(), k.clone(), queue.clone(), Some(m))
            .unwrap_err();
        assert!(matches!(err, LossError::Mixing(_)), "{err}");
    }
    assert!(HardMixing::new(vec![1.0], vec![1.0], vec![1, 1]).is_err());
}

#[test]
fn weights_of_the_wrong_length_are_an_error() {
    let loss = HardFeatureLossConfig::new()
        .with_weights(vec![1.0; 3])
        .init()
        .unwrap();
    let err = loss
        .forward(
            unit([2, 4, 8], 2),
            unit([2, 4, 8], 2),
            unit([8, 8, 16], 1),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, LossError::Config(_)), "{err}");
    assert!(
        HardFeatureLossConfig::new()
            .with_weights(vec![])
            .init()
            .is_err()
    );
    assert!(
        HardFeatureLossConfig::new()
            .with_weights(vec![f64::NAN])
            .init()
            .is_err()
    );
    // Two plain scales with hard scales have no default weights.
    let loss = HardFeatureLossConfig::new().init().unwrap();
    let err = loss
        .forward(
            unit([2, 2, 8], 2),
            unit([2, 2, 8], 2),
            unit([4, 8, 16], 1),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, LossError::Config(_)), "{err}");
}

#[test]
fn non_finite_features_are_reported_when_checked() {
    let nan = Tensor::<3>::full([2, 4, 8], f32::NAN, &dev());
    let (k, queue) = (unit([2, 4, 8], 2), unit([8, 8, 16], 1));
    let checked = HardFeatureLossConfig::new()
        .with_check_finite(true)
        .init()
        .unwrap();
    let err = checked
        .forward(nan.clone(), k.clone(), queue.clone(), None)
        .unwrap_err();
    assert_eq!(err, LossError::NonFinite("q".into()));
    // Unchecked, the NaN reaches the loss (no panic, no silent finite value).
    let unchecked = HardFeatureLossConfig::new().init().unwrap();
    let out = unchecked.forward(nan, k, queue.clone(), None).unwrap();
    assert!(out.loss.into_scalar::<f32>().is_nan());
    // A NaN in the queue makes the loss NaN too, which the check reports.
    let mut values = vec![0.1f32; 8 * 8 * 16];
    values[77] = f32::NAN;
    let bad_queue = Tensor::<3>::from_data(TensorData::new(values, [8, 8, 16]), &dev());
    let err = checked
        .forward(unit([2, 4, 8], 2), unit([2, 4, 8], 2), bad_queue, None)
        .unwrap_err();
    assert!(matches!(err, LossError::NonFinite(_)), "{err}");
    assert!(check_finite(&queue, "queue").is_ok());
}

#[test]
fn probe_metrics_reject_bad_targets() {
    let logits = Tensor::<2>::zeros([3, 4], &dev());
    let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 4, 1], [3]), &dev());
    let err = cross_entropy(logits.clone(), targets.clone()).unwrap_err();
    assert_eq!(
        err,
        LossError::Target {
            row: 1,
            target: 4,
            classes: 4
        }
    );
    assert!(topk_accuracy(logits.clone(), targets, &[1]).is_err());
    let short = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &dev());
    assert!(matches!(
        cross_entropy(logits.clone(), short),
        Err(LossError::Shape(_))
    ));
    let ok = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2], [3]), &dev());
    assert!(matches!(
        topk_accuracy(logits, ok, &[]),
        Err(LossError::Config(_))
    ));
    assert!(normalize(Tensor::<2>::zeros([2, 2], &dev()), 2).is_err());
}

#[test]
fn zero_vectors_normalize_to_zero() {
    let z = normalize(Tensor::<2>::zeros([2, 3], &dev()), 1).unwrap();
    assert_eq!(z.into_data().as_slice::<f32>().unwrap(), &[0.0; 6]);
}

#[test]
fn draws_repeat_with_the_seed() {
    let (q, k, queue) = (unit([4, 4, 8], 2), unit([4, 4, 8], 2), unit([8, 8, 32], 1));
    let run = |seed| {
        let loss = HardFeatureLossConfig::new().with_seed(seed).init().unwrap();
        let a = loss
            .forward(q.clone(), k.clone(), queue.clone(), None)
            .unwrap();
        a.loss.into_scalar::<f32>()
    };
    assert_eq!(run(7), run(7));
    // The loss's own draws are those of HardMixing::draw on a StdRng with the same seed.
    let loss = HardFeatureLossConfig::new().with_seed(3).init().unwrap();
    let mixing = HardMixing::draw(&mut StdRng::seed_from_u64(3), 4, 32, 1.0, 1.0).unwrap();
    assert_eq!(loss.draw(4, 32).unwrap(), mixing);
}

#[test]
fn one_scale_has_no_hard_scales() {
    // MoCo v2: S = 1, the queue holds one scale, weights default to [1].
    let loss = HardFeatureLossConfig::new().init().unwrap();
    let out = loss
        .forward(
            unit([4, 1, 8], 2),
            unit([4, 1, 8], 2),
            unit([1, 8, 16], 1),
            None,
        )
        .unwrap();
    assert_eq!(out.per_scale.dims(), [1]);
    assert_eq!(out.keys.dims(), [4, 1, 8]);
    assert_eq!(
        HardFeatureLossConfig::new().weights_for(8).unwrap(),
        MHCL_WEIGHTS
    );
}

#[test]
fn evaluation_without_autodiff_gives_the_same_value() {
    let (q, k, queue) = (unit([4, 4, 8], 2), unit([4, 4, 8], 2), unit([8, 8, 32], 1));
    let mixing = HardMixing::draw(&mut StdRng::seed_from_u64(1), 4, 32, 1.0, 1.0).unwrap();
    let loss = HardFeatureLossConfig::new().init().unwrap();
    let train = loss
        .forward(
            q.clone().require_grad(),
            k.clone(),
            queue.clone(),
            Some(&mixing),
        )
        .unwrap();
    let eval = loss
        .forward(q.inner(), k.inner(), queue.inner(), Some(&mixing))
        .unwrap();
    assert!(!eval.loss.is_autodiff());
    assert_eq!(
        train.loss.into_scalar::<f32>(),
        eval.loss.into_scalar::<f32>()
    );
    assert_eq!((train.acc1, train.acc5), (eval.acc1, eval.acc5));
}
