//! Learning-rate schedules of `main_mhcl.py` / `main_lincls.py` (MoCo's `adjust_learning_rate`):
//! the learning rate is set once per epoch.
//!
//! ```
//! use mhcl::schedule::LrSchedule;
//! let cos = LrSchedule::cosine(0.03, 10);
//! assert_eq!(cos.lr(0), 0.03);
//! let step = LrSchedule::step(0.1, vec![3, 6]);
//! assert!((step.lr(6) - 0.001).abs() < 1e-12);
//! ```

use serde::{Deserialize, Serialize};

/// `base * 0.5 * (1 + cos(pi * epoch / epochs))`, MoCo's `--cos` schedule (evaluated in the same
/// order as the reference's `cosine_lr`).
pub fn cosine_lr(base: f64, epoch: usize, epochs: usize) -> f64 {
    if epochs == 0 {
        return base;
    }
    base * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos())
}

/// MoCo's step schedule: `lr *= 0.1` for every milestone `<= epoch`, multiplied in the order of
/// `milestones` as `adjust_learning_rate` does (so `0.1 * 0.1 * 0.1` rounds like PyTorch's run).
pub fn step_lr(base: f64, epoch: usize, milestones: &[usize]) -> f64 {
    let mut lr = base;
    for &m in milestones {
        lr *= if epoch >= m { 0.1 } else { 1.0 };
    }
    lr
}

/// A per-epoch learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// Half-cosine from `base` over `epochs` epochs (`--cos`).
    Cosine { base: f64, epochs: usize },
    /// `base`, divided by 10 at each milestone (`--schedule`).
    Step { base: f64, milestones: Vec<usize> },
}

impl LrSchedule {
    /// The cosine schedule.
    pub fn cosine(base: f64, epochs: usize) -> Self {
        Self::Cosine { base, epochs }
    }

    /// The step schedule.
    pub fn step(base: f64, milestones: Vec<usize>) -> Self {
        Self::Step { base, milestones }
    }

    /// `--cos` picks the cosine schedule, else the step schedule with `--schedule`.
    pub fn from_flags(base: f64, cos: bool, epochs: usize, milestones: &[usize]) -> Self {
        if cos {
            Self::cosine(base, epochs)
        } else {
            Self::step(base, milestones.to_vec())
        }
    }

    /// The learning rate of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize) -> f64 {
        match self {
            Self::Cosine { base, epochs } => cosine_lr(*base, epoch, *epochs),
            Self::Step { base, milestones } => step_lr(*base, epoch, milestones),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_base_and_ends_near_zero() {
        assert_eq!(cosine_lr(0.5, 0, 100), 0.5);
        assert!((cosine_lr(0.5, 50, 100) - 0.25).abs() < 1e-15);
        assert!(cosine_lr(0.5, 99, 100) < 1e-3);
    }

    #[test]
    fn step_multiplies_per_milestone() {
        assert_eq!(step_lr(0.03, 119, &[120, 160]), 0.03);
        assert_eq!(step_lr(0.03, 120, &[120, 160]), 0.03 * 0.1);
        assert_eq!(step_lr(0.03, 160, &[120, 160]), 0.03 * 0.1 * 0.1);
        assert_eq!(step_lr(0.03, 5, &[]), 0.03);
    }
}
