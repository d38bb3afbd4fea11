//! Weighted k-nearest-neighbour accuracy of frozen features (the monitor of InstDisc / MoCo
//! style training): cosine similarity of L2-normalised features, the `k` nearest training
//! samples vote for their class with weight `exp(sim / T)`.
//!
//! ```
//! use burn::prelude::*;
//! use mhcl::knn::weighted_knn;
//! let d = Device::flex();
//! let train = Tensor::<2>::from_floats([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], &d);
//! let val = Tensor::<2>::from_floats([[1.0, 0.05], [0.05, 1.0]], &d);
//! let r = weighted_knn(train, &[0, 0, 1, 1], val, &[0, 1], 2, 2, 0.07).unwrap();
//! assert_eq!(r.acc1, 100.0);
//! ```

use burn::prelude::*;

use crate::error::{MhclError, Result};

/// Default number of neighbours.
pub const KNN_K: usize = 20;
/// Default temperature of the vote weights.
pub const KNN_T: f64 = 0.07;

/// kNN accuracies in percent.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnnResult {
    /// Top-1 accuracy.
    pub acc1: f64,
    /// Top-5 accuracy (top-`classes` when there are fewer than 5 classes).
    pub acc5: f64,
}

/// Weighted kNN classification of `val` `(M, d)` against `train` `(N, d)` (features need not
/// be normalised; they are here). `classes` is the number of classes.
pub fn weighted_knn(
    train: Tensor<2>,
    train_labels: &[usize],
    val: Tensor<2>,
    val_labels: &[usize],
    classes: usize,
    k: usize,
    t: f64,
) -> Result<KnnResult> {
    let [n, d] = train.dims();
    let [m, dv] = val.dims();
    if n != train_labels.len() || m != val_labels.len() || d != dv || n == 0 || m == 0 {
        return Err(MhclError::arg(format!(
            "kNN: {n} train features ({} labels) and {m} val features ({} labels) of dims {d}/{dv}",
            train_labels.len(),
            val_labels.len()
        )));
    }
    if classes == 0 || k == 0 || t.is_nan() || t <= 0.0 {
        return Err(MhclError::arg("kNN needs classes > 0, k > 0 and T > 0"));
    }
    let k = k.min(n);
    let norm = |x: Tensor<2>| {
        let len = x
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        x.div(len)
    };
    let train_t = norm(train).transpose();
    let val = norm(val);
    let (mut c1, mut c5) = (0usize, 0usize);
    let chunk = 256;
    for start in (0..m).step_by(chunk) {
        let end = (start + chunk).min(m);
        let sim = val.clone().slice(s![start..end]).matmul(train_t.clone());
        let (vals, idx) = sim.topk_with_indices(k, 1);
        let vals: Vec<f32> = vals
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| MhclError::readback("kNN similarities", e))?;
        let idx: Vec<i64> = idx
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| MhclError::readback("kNN indices", e))?;
        for r in 0..end - start {
            let mut votes = vec![0f64; classes];
            for j in 0..k {
                let label = train_labels[idx[r * k + j] as usize];
                if label < classes {
                    votes[label] += (f64::from(vals[r * k + j]) / t).exp();
                }
            }
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]).then(a.cmp(&b)));
            let truth = val_labels[start + r];
            c1 += usize::from(order[0] == truth);
            c5 += usize::from(order.iter().take(5).any(|&c| c == truth));
        }
    }
    Ok(KnnResult {
        acc1: 100.0 * c1 as f64 / m as f64,
        acc5: 100.0 * c5 as f64 / m as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_are_weighted_by_similarity() {
        let d = Device::flex();
        // two far class-0 neighbours, one very close class-1 neighbour: weights decide
        let train = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0], [0.2, 1.0]], &d);
        let val = Tensor::<2>::from_floats([[0.05, 1.0]], &d);
        let r = weighted_knn(train.clone(), &[1, 0, 0], val.clone(), &[0], 2, 3, 0.07).unwrap();
        assert_eq!(r.acc1, 100.0);
        assert!(weighted_knn(train, &[1, 0], val, &[0], 2, 3, 0.07).is_err());
    }
}
