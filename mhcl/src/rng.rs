//! The random state of a run: every draw of training step `t` comes from [`step_rng`]`(seed, t)`,
//! so `(seed, step)` is the whole state a checkpoint needs for an exact resume.

use rand::SeedableRng;
use rand::rngs::StdRng;

/// The generator of training step `step` of a run seeded with `seed` (the mixing draws λ, μ,
/// the permutation, shuffle-BN).
pub fn step_rng(seed: u64, step: u64) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ mix(step.wrapping_add(0x5851_f42d_4c95_7f2d))))
}

/// SplitMix64's finalizer: nearby seeds and steps give unrelated generators.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_generators_differ_and_repeat() {
        use rand::RngExt;
        let a: u64 = step_rng(1, 5).random();
        assert_eq!(a, step_rng(1, 5).random::<u64>());
        assert_ne!(a, step_rng(1, 6).random::<u64>());
        assert_ne!(a, step_rng(2, 5).random::<u64>());
    }
}
