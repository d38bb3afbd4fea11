//! The random values of one MHCL step: λ, μ and the queue-column permutation.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Beta, Distribution};

use crate::error::{LossError, Result};

/// The mixing values of one MHCL training step, shared by the whole batch.
///
/// * `lam[i]` (one per plain scale `i`) is a Beta(a, b) draw **plus one**, so in `[1, 2]`; it
///   builds the hard positives `qh = lam*q + (1-lam)*k` and `kh = lam*k + (1-lam)*q`.
/// * `mu[i]` is a Beta(a, b) draw in `[0, 1]`; hard scale `S + i` uses the negatives
///   `mu*queue + (1-mu)*queue[:, perm]`.
/// * `perm` is one permutation of the `K` queue columns, shared by all hard scales.
///
/// Any finite `lam`/`mu` may be injected (tests use `lam = mu = 1`, which makes the hard scales
/// equal to the plain ones); [`HardMixing::validate`] checks lengths, finiteness and that `perm` is
/// a permutation, and the losses call it on every use.
#[derive(Debug, Clone, PartialEq)]
pub struct HardMixing {
    /// Beta(a, b) + 1, one per plain scale.
    pub lam: Vec<f32>,
    /// Beta(a, b), one per plain scale.
    pub mu: Vec<f32>,
    /// A permutation of `0..K`.
    pub perm: Vec<usize>,
}

impl HardMixing {
    /// Builds and validates injected values.
    ///
    /// # Errors
    /// [`LossError::Mixing`] when `lam` and `mu` differ in length, are empty, hold a non-finite
    /// value, or `perm` is not a permutation of `0..perm.len()`.
    pub fn new(lam: Vec<f32>, mu: Vec<f32>, perm: Vec<usize>) -> Result<Self> {
        let m = Self { lam, mu, perm };
        m.validate(m.lam.len(), m.perm.len())?;
        Ok(m)
    }

    /// Draws the values of one step from `rng`, in the reference's order: `scales` values
    /// `lam = Beta(a, b) + 1`, then `scales` values `mu = Beta(a, b)`, then one uniform
    /// permutation of `0..k` (Fisher-Yates).
    ///
    /// The reference draws λ and μ with NumPy's global RNG (`np.random.beta(a, b, 4)`) and the
    /// permutation with `torch.randperm`; a seeded [`StdRng`] makes runs repeat instead. As in the
    /// reference, `lam` is computed in f64 (`beta + 1`) and then rounded to f32.
    ///
    /// # Errors
    /// [`LossError::InvalidBeta`] unless `a` and `b` are finite and > 0;
    /// [`LossError::Config`] when `scales` or `k` is zero.
    pub fn draw(rng: &mut StdRng, scales: usize, k: usize, a: f64, b: f64) -> Result<Self> {
        let beta = beta_distribution(a, b)?;
        if scales == 0 || k == 0 {
            return Err(LossError::Config(format!(
                "HardMixing::draw needs scales > 0 and k > 0, got scales = {scales}, k = {k}"
            )));
        }
        let lam = (0..scales)
            .map(|_| (beta.sample(rng) + 1.0) as f32)
            .collect();
        let mu = (0..scales).map(|_| beta.sample(rng) as f32).collect();
        let mut perm: Vec<usize> = (0..k).collect();
        perm.shuffle(rng);
        Ok(Self { lam, mu, perm })
    }

    /// `lam = mu = 1` and the identity permutation: every hard scale then equals its plain scale
    /// (`qh = q`, `kh = k`, mixed queue = queue).
    pub fn identity(scales: usize, k: usize) -> Self {
        Self {
            lam: vec![1.0; scales],
            mu: vec![1.0; scales],
            perm: (0..k).collect(),
        }
    }

    /// Number of plain scales the values are for.
    pub fn scales(&self) -> usize {
        self.lam.len()
    }

    /// Queue length the permutation is for.
    pub fn k(&self) -> usize {
        self.perm.len()
    }

    /// The inverse permutation: `inv[perm[j]] = j`.
    ///
    /// # Panics
    /// Only if `perm` is not a permutation; call [`HardMixing::validate`] first.
    pub fn inverse_perm(&self) -> Vec<usize> {
        let mut inv = vec![0usize; self.perm.len()];
        for (j, &p) in self.perm.iter().enumerate() {
            inv[p] = j;
        }
        inv
    }

    /// Checks the values against `scales` plain scales and a queue of length `k`.
    ///
    /// # Errors
    /// [`LossError::Mixing`] describing the first problem found.
    pub fn validate(&self, scales: usize, k: usize) -> Result<()> {
        if scales == 0 {
            return Err(LossError::Mixing("no scales".into()));
        }
        if self.lam.len() != scales || self.mu.len() != scales {
            return Err(LossError::Mixing(format!(
                "expected {scales} lam and {scales} mu values, got {} and {}",
                self.lam.len(),
                self.mu.len()
            )));
        }
        if let Some(v) = self.lam.iter().chain(&self.mu).find(|v| !v.is_finite()) {
            return Err(LossError::Mixing(format!("non-finite lam/mu value {v}")));
        }
        if self.perm.len() != k {
            return Err(LossError::Mixing(format!(
                "permutation has length {}, the queue has K = {k}",
                self.perm.len()
            )));
        }
        let mut seen = vec![false; k];
        for &p in &self.perm {
            if p >= k || std::mem::replace(&mut seen[p], true) {
                return Err(LossError::Mixing(format!(
                    "perm is not a permutation of 0..{k} (value {p} out of range or repeated)"
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn beta_distribution(a: f64, b: f64) -> Result<Beta<f64>> {
    if !(a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0) {
        return Err(LossError::InvalidBeta { a, b });
    }
    Beta::new(a, b).map_err(|_| LossError::InvalidBeta { a, b })
}
