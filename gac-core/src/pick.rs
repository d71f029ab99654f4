//! How a token is picked (greedy, or seeded sampling with top-k, top-p and temperature; see
//! [`crate::select`] for the chain that does it) and the seedable generator it draws with.

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

    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
