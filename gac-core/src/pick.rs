//! Choosing one union token from the combined distribution: greedy, or seeded sampling with
//! top-k, top-p and temperature (applied in that order, as llama.cpp's default chain does).

use crate::union::UnionId;
use crate::{Error, Result};

/// How to pick a token. `temperature <= 0` means greedy; then the other fields are unused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PickConfig {
    /// Softmax temperature applied to the combined distribution; 0 picks the argmax.
    pub temperature: f32,
    /// Keep only the k most probable tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose mass reaches p (1 = all).
    pub top_p: f32,
    /// Seed of the sampler's random generator; the same seed gives the same output.
    pub seed: u64,
}

impl Default for PickConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

impl PickConfig {
    /// Checks the ranges: temperature finite and >= 0, top-p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::config(
                "temperature",
                format!("{} is not a number >= 0", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config(
                "top_p",
                format!("{} is outside (0, 1]", self.top_p),
            ));
        }
        Ok(())
    }

    /// Whether this config picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-7
    }
}

/// Picks tokens; owns the seeded random generator and a reusable candidate buffer.
#[derive(Debug)]
pub struct Picker {
    config: PickConfig,
    rng: SplitMix64,
    candidates: Vec<(f32, u32)>,
}

impl Picker {
    /// A picker for this configuration (validated by the caller).
    pub fn new(config: PickConfig) -> Self {
        Self {
            config,
            rng: SplitMix64::new(config.seed),
            candidates: Vec::new(),
        }
    }

    /// Whether this picker takes the argmax.
    pub fn is_greedy(&self) -> bool {
        self.config.is_greedy()
    }

    /// Restarts the random sequence from the seed, so a rerun is identical.
    pub fn reset(&mut self) {
        self.rng = SplitMix64::new(self.config.seed);
    }

    /// Picks a union token from `probs` (indexed by union id; need not be normalized).
    /// Returns `None` when no token has positive mass.
    pub fn pick(&mut self, probs: &[f32]) -> Option<UnionId> {
        if self.config.is_greedy() {
            return argmax(probs);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            probs
                .iter()
                .enumerate()
                .filter(|(_, &p)| p > 0.0)
                .map(|(i, &p)| (p, i as u32)),
        );
        if c.is_empty() {
            return None;
        }
        let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.config.top_k;
        if k > 0 && k < c.len() {
            c.select_nth_unstable_by(k - 1, desc);
            c.truncate(k);
        }
        c.sort_unstable_by(desc);
        if self.config.top_p < 1.0 {
            let total: f32 = c.iter().map(|x| x.0).sum();
            let mut mass = 0.0;
            let keep = c
                .iter()
                .position(|x| {
                    mass += x.0;
                    mass >= self.config.top_p * total
                })
                .map_or(c.len(), |i| i + 1);
            c.truncate(keep);
        }
        let inv_t = 1.0 / self.config.temperature;
        let log_top = c[0].0.ln();
        let mut total = 0.0f64;
        for x in c.iter_mut() {
            x.0 = ((x.0.ln() - log_top) * inv_t).exp();
            total += f64::from(x.0);
        }
        let mut target = self.rng.next_f64() * total;
        for &(w, id) in c.iter() {
            target -= f64::from(w);
            if target < 0.0 {
                return Some(UnionId(id));
            }
        }
        c.last().map(|&(_, id)| UnionId(id))
    }
}

/// The index of the largest value (the lowest index on ties), if any value is positive.
pub fn argmax(probs: &[f32]) -> Option<UnionId> {
    let mut best = 0usize;
    let mut best_p = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        if p > best_p {
            best_p = p;
            best = i;
        }
    }
    (best_p > 0.0).then_some(UnionId(best as u32))
}

/// A small, fast, seedable generator (Steele, Lea & Flood, "Fast splittable pseudorandom number
/// generators", 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(seed: u64) -> PickConfig {
        PickConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed,
        }
    }

    #[test]
    fn greedy_takes_argmax_lowest_on_ties() {
        let mut p = Picker::new(PickConfig::default());
        assert_eq!(p.pick(&[0.1, 0.4, 0.4, 0.1]), Some(UnionId(1)));
        assert_eq!(p.pick(&[0.0, 0.0]), None);
    }

    #[test]
    fn same_seed_same_draws_and_reset_replays() {
        let probs = [0.1, 0.2, 0.3, 0.4];
        let draw = |p: &mut Picker| {
            (0..20)
                .map(|_| p.pick(&probs).unwrap().0)
                .collect::<Vec<_>>()
        };
        let mut a = Picker::new(sampling(7));
        let mut b = Picker::new(sampling(7));
        let first = draw(&mut a);
        assert_eq!(first, draw(&mut b));
        a.reset();
        assert_eq!(first, draw(&mut a));
        let mut c = Picker::new(sampling(8));
        assert_ne!(first, draw(&mut c));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut p = Picker::new(PickConfig {
            top_k: 1,
            ..sampling(3)
        });
        for _ in 0..50 {
            assert_eq!(p.pick(&[0.3, 0.1, 0.6]), Some(UnionId(2)));
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let mut p = Picker::new(PickConfig {
            top_p: 0.5,
            ..sampling(3)
        });
        for _ in 0..50 {
            assert_eq!(p.pick(&[0.05, 0.55, 0.4]), Some(UnionId(1)));
        }
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        let probs = [0.1, 0.2, 0.7];
        let mut p = Picker::new(sampling(42));
        let mut counts = [0usize; 3];
        let n = 20_000;
        for _ in 0..n {
            counts[p.pick(&probs).unwrap().0 as usize] += 1;
        }
        for (c, want) in counts.iter().zip(probs) {
            assert!((*c as f32 / n as f32 - want).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn low_temperature_concentrates_mass() {
        let mut p = Picker::new(PickConfig {
            temperature: 0.05,
            ..sampling(1)
        });
        let hits = (0..200)
            .filter(|_| p.pick(&[0.4, 0.6]) == Some(UnionId(1)))
            .count();
        assert!(hits > 190, "{hits}");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = PickConfig {
            top_p: 1.5,
            ..PickConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
        let bad = PickConfig {
            temperature: -1.0,
            ..PickConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
    }
}
