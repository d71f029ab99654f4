//! How a token is picked: greedy, or a seeded draw narrowed by top-k and top-p and reshaped
//! by a temperature (the settings of the chain in [`super::Chain::build`]), and the
//! seedable generator a draw uses.

use crate::{Error, Result, Setting};

/// Temperature of a draw where none is given (`gac chat`, `gac serve`): llama-server's
/// default (OpenAI's is 1).
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
/// Top-k of a draw where none is given.
pub const DEFAULT_TOP_K: usize = 40;
/// Top-p of a draw where none is given.
pub const DEFAULT_TOP_P: f32 = 0.95;

/// How a token is picked from the combined distribution.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Sampling {
    /// The most probable token (the lower union id on ties).
    #[default]
    Greedy,
    /// A seeded draw.
    Draw(Draw),
}

/// A draw's settings, applied in llama.cpp's default order: top-k, top-p, temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// Softmax temperature applied to the combined distribution (> 0).
    pub temperature: f32,
    /// Keep only the k most probable tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose mass reaches p (1 = all).
    pub top_p: f32,
    /// Seed of the generator; the same seed gives the same output.
    pub seed: u64,
}

impl Default for Draw {
    fn default() -> Self {
        Self {
            temperature: DEFAULT_TEMPERATURE,
            top_k: DEFAULT_TOP_K,
            top_p: DEFAULT_TOP_P,
            seed: 0,
        }
    }
}

impl Sampling {
    /// What a temperature means with these settings (a command line's or a request's):
    /// greedy at 0, where top-k and the seed play no part, else a draw. Every value is
    /// checked, top-p too.
    pub fn at(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Result<Self> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(Error::setting(
                Setting::Temperature,
                format!("{temperature} is not a number >= 0"),
            ));
        }
        check_top_p(top_p)?;
        if temperature < 1e-7 {
            return Ok(Sampling::Greedy);
        }
        let draw = Draw {
            temperature,
            top_k,
            top_p,
            seed,
        };
        let sampling = Sampling::Draw(draw);
        sampling.validate()?;
        Ok(sampling)
    }

    /// Checks the ranges: a draw's temperature finite and > 0, its top-p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        let Sampling::Draw(draw) = self else {
            return Ok(());
        };
        if !draw.temperature.is_finite() || draw.temperature <= 0.0 {
            return Err(Error::setting(
                Setting::Temperature,
                format!("{} is not a number > 0", draw.temperature),
            ));
        }
        check_top_p(draw.top_p)
    }
}

fn check_top_p(top_p: f32) -> Result<()> {
    match top_p > 0.0 && top_p <= 1.0 {
        true => Ok(()),
        false => Err(Error::setting(
            Setting::TopP,
            format!("{top_p} is outside (0, 1]"),
        )),
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
        let err = |r: Result<Sampling>| r.unwrap_err().to_string();
        assert!(err(Sampling::at(0.8, 40, 1.5, 0)).contains("top_p"));
        assert!(err(Sampling::at(0.0, 40, 0.0, 0)).contains("top_p"));
        assert!(err(Sampling::at(-1.0, 40, 0.9, 0)).contains("temperature"));
        assert!(err(Sampling::at(f32::NAN, 40, 0.9, 0)).contains("temperature"));
        let zero = Sampling::Draw(Draw {
            temperature: 0.0,
            ..Draw::default()
        });
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
    }

    #[test]
    fn temperature_zero_is_greedy_and_ignores_the_rest() {
        assert_eq!(Sampling::at(0.0, 3, 0.5, 9).unwrap(), Sampling::Greedy);
        let draw = Sampling::at(0.7, 3, 0.5, 9).unwrap();
        assert_eq!(
            draw,
            Sampling::Draw(Draw {
                temperature: 0.7,
                top_k: 3,
                top_p: 0.5,
                seed: 9
            })
        );
    }
}
