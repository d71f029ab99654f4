//! Logits → probabilities and the weighted sum in union space (paper Eq. 3).
//!
//! The loops are written without per-element branches so that the compiler vectorizes them; the
//! exponential is a polynomial approximation (relative error below 3e-7) because `f32::exp` is a
//! library call that does not vectorize and dominates the step on a 262k vocabulary.

/// Writes the softmax of `logits` into `probs`, puts the indices of all probabilities
/// `>= floor` into `head` (the only tokens that can decide a greedy pick), and returns the
/// largest probability; `None` when a logit is NaN or +inf, or none is finite (`-inf` alone is
/// a zero probability).
pub fn softmax(logits: &[f32], probs: &mut [f32], floor: f32, head: &mut Vec<u32>) -> Option<f32> {
    assert_eq!(
        logits.len(),
        probs.len(),
        "softmax buffers differ in length"
    );
    head.clear();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { softmax_avx2(logits, probs, floor, head) };
    }
    softmax_lanes(logits, probs, floor, head)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_avx2(
    logits: &[f32],
    probs: &mut [f32],
    floor: f32,
    head: &mut Vec<u32>,
) -> Option<f32> {
    softmax_lanes(logits, probs, floor, head)
}

const LANES: usize = 16;

/// The softmax written as independent lanes, so that reductions vectorize; the same code is
/// compiled once for the baseline CPU and once with AVX2 (identical results: no FMA contraction).
#[inline(always)]
fn softmax_lanes(
    logits: &[f32],
    probs: &mut [f32],
    floor: f32,
    head: &mut Vec<u32>,
) -> Option<f32> {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            max[k] = if c[k] > max[k] { c[k] } else { max[k] };
            nan[k] |= c[k].is_nan();
        }
    }
    let max = max
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let nan = nan.iter().any(|&n| n) || tail.iter().any(|x| x.is_nan());
    // -inf is a legitimate zero probability; NaN, +inf or no finite logit at all are not.
    if !max.is_finite() || nan {
        return None;
    }
    let mut sum = [0.0f32; LANES];
    for (p, l) in probs
        .chunks_exact_mut(LANES)
        .zip(logits.chunks_exact(LANES))
    {
        for k in 0..LANES {
            let e = exp_nonpositive(l[k] - max);
            p[k] = e;
            sum[k] += e;
        }
    }
    let done = logits.len() - tail.len();
    let mut total: f32 = sum.iter().sum();
    for (p, &l) in probs[done..].iter_mut().zip(tail) {
        *p = exp_nonpositive(l - max);
        total += *p;
    }
    if !total.is_finite() || total <= 0.0 {
        return None;
    }
    let inv = 1.0 / total;
    for (c, chunk) in probs.chunks_mut(LANES).enumerate() {
        let mut chunk_max = 0.0f32;
        for p in chunk.iter_mut() {
            *p *= inv;
            chunk_max = if *p > chunk_max { *p } else { chunk_max };
        }
        if chunk_max >= floor {
            let base = c * LANES;
            head.extend(
                (0..chunk.len())
                    .filter(|&k| chunk[k] >= floor)
                    .map(|k| (base + k) as u32),
            );
        }
    }
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
    let x = if x > -87.0 { x } else { -87.0 };
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let poly = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `n` sits in the low mantissa bits of `shifted`; adding it to the exponent of `poly`
    // multiplies by 2^n without a float-to-int conversion (n >= -126 keeps the result normal).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(poly.to_bits().wrapping_add(n_bits << 23))
}

/// Adds `weight · probs` into `acc` through a projection (member id → union id).
/// `acc` must have a slot for every projected index, the sink included.
pub fn scatter_add(acc: &mut [f32], projection: &[u32], probs: &[f32], weight: f32) {
    assert_eq!(
        projection.len(),
        probs.len(),
        "projection and probabilities differ in length"
    );
    for (&u, &p) in projection.iter().zip(probs) {
        acc[u as usize] += weight * p;
    }
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
        let mut head = vec![7];
        let top = softmax(&logits, &mut p, 0.2, &mut head).unwrap();
        assert_eq!(head, [1, 2]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top, p[1]);
        assert!(p[1] > p[2] && p[2] > p[0] && p[0] > p[3]);
        let expect = 3.0f32.exp() / logits.iter().map(|l: &f32| l.exp()).sum::<f32>();
        assert!((p[1] - expect).abs() < 1e-6);
    }

    #[test]
    fn softmax_rejects_nan_and_inf_anywhere() {
        for len in [2, 16, 37] {
            for bad in [f32::NAN, f32::INFINITY] {
                let mut l = vec![0.5; len];
                l[len - 1] = bad;
                let mut p = vec![0.0; len];
                assert_eq!(softmax(&l, &mut p, 1.0, &mut vec![]), None, "{len} {bad}");
                l[len - 1] = 0.5;
                l[0] = bad;
                assert_eq!(softmax(&l, &mut p, 1.0, &mut vec![]), None, "{len} {bad}");
            }
            let all_masked = vec![f32::NEG_INFINITY; len];
            let mut p = vec![0.0; len];
            assert_eq!(softmax(&all_masked, &mut p, 1.0, &mut vec![]), None);
        }
    }

    #[test]
    fn a_negative_infinite_logit_is_a_zero_probability() {
        for len in [2, 16, 37] {
            for at in [0, len - 1] {
                let mut l = vec![0.0; len];
                l[at] = f32::NEG_INFINITY;
                let mut p = vec![0.0; len];
                let mut head = vec![];
                let top = softmax(&l, &mut p, 1e-4, &mut head).unwrap();
                assert!(p[at] < 1e-30, "{len} {at}: {}", p[at]);
                assert!((top - 1.0 / (len - 1) as f32).abs() < 1e-6);
                assert!(!head.contains(&(at as u32)));
            }
        }
    }

    #[test]
    fn softmax_on_a_long_vector_matches_std() {
        let logits: Vec<f32> = (0..1001)
            .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
            .collect();
        let mut p = vec![0.0; logits.len()];
        let mut head = vec![];
        let top = softmax(&logits, &mut p, 1e-3, &mut head).unwrap();
        let want_head: Vec<u32> = (0..p.len() as u32)
            .filter(|&i| p[i as usize] >= 1e-3)
            .collect();
        assert_eq!(head, want_head);
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let z: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        for (&l, &q) in logits.iter().zip(&p) {
            let want = (f64::from(l - max).exp() / z) as f32;
            assert!((q - want).abs() <= 1e-6 * want.max(1e-3), "{q} vs {want}");
        }
        assert!((top - (1.0 / z) as f32).abs() < 1e-7);
    }

    #[test]
    fn scatter_adds_through_projection() {
        let mut acc = [0.0; 4];
        scatter_add(&mut acc, &[2, 0, 3, 2], &[0.5, 0.25, 0.125, 0.125], 2.0);
        assert_eq!(acc, [0.5, 0.0, 1.25, 0.25]);
    }
}
