//! Logits → probabilities, the weighted average in union space (paper Eq. 3) and the gate
//! decision (Eq. 5).
//!
//! The loops are written without per-element branches so that the compiler vectorizes them; the
//! exponential is a polynomial approximation (relative error below 3e-7) because `f32::exp` is a
//! library call that does not vectorize and dominates the step on a 262k vocabulary.

/// Writes the softmax of `logits` into `probs` and returns the largest probability, or `None`
/// when the logits are not finite (NaN or infinite values).
pub fn softmax(logits: &[f32], probs: &mut [f32]) -> Option<f32> {
    assert_eq!(logits.len(), probs.len(), "softmax buffers differ in length");
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let mut sum = 0.0f32;
    for (p, &l) in probs.iter_mut().zip(logits) {
        let e = exp_nonpositive(l - max);
        *p = e;
        sum += e;
    }
    if !sum.is_finite() || sum <= 0.0 {
        return None;
    }
    let inv = 1.0 / sum;
    probs.iter_mut().for_each(|p| *p *= inv);
    Some(inv)
}

/// `e^x` for `x <= 0`, by range reduction to `2^n · e^r` with `|r| <= ln 2 / 2` and a degree-6
/// polynomial for `e^r`. Inputs below -87 give about 1e-38 (effectively zero).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let poly = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    poly * scale
}

/// Adds `weight · probs` into `acc` through a projection (member id → union id).
/// `acc` must have a slot for every projected index, the sink included.
pub fn scatter_add(acc: &mut [f32], projection: &[u32], probs: &[f32], weight: f32) {
    assert_eq!(projection.len(), probs.len(), "projection and probabilities differ in length");
    for (&u, &p) in projection.iter().zip(probs) {
        acc[u as usize] += weight * p;
    }
}

/// What the ensemble does at a step where the gate is unsure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnsure {
    /// Average all members (paper Eq. 5).
    Average,
    /// Take this member's distribution alone (the paper's variant for a small gate and a much
    /// larger second model).
    Defer(usize),
}

/// How members are combined at each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Every step averages all members (paper Eq. 3).
    Average,
    /// Member `gate` decides alone while its top probability is above `threshold`; otherwise the
    /// ensemble does what `when_unsure` says (paper Eq. 5). Threshold 0 is the gate alone,
    /// threshold 1 the plain average.
    Gated {
        /// Index of the gate member.
        gate: usize,
        /// Confidence threshold t in [0, 1].
        threshold: f32,
        /// What to do at a key step.
        when_unsure: WhenUnsure,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std() {
        let mut worst = 0.0f32;
        let mut x = -80.0f32;
        while x <= 0.0 {
            let rel = (exp_nonpositive(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
            x += 0.001;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let logits = [1.0, 3.0, 2.0, -50.0];
        let mut p = [0.0; 4];
        let top = softmax(&logits, &mut p).unwrap();
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top, p[1]);
        assert!(p[1] > p[2] && p[2] > p[0] && p[0] > p[3]);
        let expect = 3.0f32.exp() / logits.iter().map(|l: &f32| l.exp()).sum::<f32>();
        assert!((p[1] - expect).abs() < 1e-6);
    }

    #[test]
    fn softmax_rejects_nan() {
        let mut p = [0.0; 2];
        assert_eq!(softmax(&[f32::NAN, f32::NAN], &mut p), None);
        assert_eq!(softmax(&[f32::INFINITY, 0.0], &mut p), None);
    }

    #[test]
    fn scatter_adds_through_projection() {
        let mut acc = [0.0; 4];
        scatter_add(&mut acc, &[2, 0, 3, 2], &[0.5, 0.25, 0.125, 0.125], 2.0);
        assert_eq!(acc, [0.5, 0.0, 1.25, 0.25]);
    }
}
