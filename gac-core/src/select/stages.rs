//! The stages that narrow the candidates (top-k, top-p, temperature) and the choosers that end
//! a chain (greedy, seeded draw), in the manner of llama.cpp's sampler chain.

use super::candidates::{descending, Candidates};
use super::sampling::SplitMix64;

/// A step of the chain that reads and narrows the candidates.
pub trait Stage: std::fmt::Debug + Send {
    /// Narrows (or reweighs) the candidates.
    fn apply(&mut self, candidates: &mut Candidates);
}

/// Keeps the k most massive tokens (0 keeps all).
#[derive(Debug, Clone, Copy)]
pub struct TopK(pub usize);

impl Stage for TopK {
    fn apply(&mut self, candidates: &mut Candidates) {
        let k = self.0;
        let list = candidates.list();
        if k > 0 && k < list.len() {
            list.select_nth_unstable_by(k - 1, descending);
            list.truncate(k);
            candidates.unsorted();
        }
    }
}

/// Keeps the smallest set of the most massive tokens whose mass reaches p of the total (1
/// keeps all).
#[derive(Debug, Clone, Copy)]
pub struct TopP(pub f32);

impl Stage for TopP {
    fn apply(&mut self, candidates: &mut Candidates) {
        let list = candidates.sorted();
        if self.0 < 1.0 {
            let total: f32 = list.iter().map(|x| x.0).sum();
            let mut mass = 0.0;
            let keep = list
                .iter()
                .position(|x| {
                    mass += x.0;
                    mass >= self.0 * total
                })
                .map_or(list.len(), |i| i + 1);
            list.truncate(keep);
        }
    }
}

/// Reweighs each token's mass m to (m / m_max)^(1/t): the softmax temperature t applied to the
/// combined distribution.
#[derive(Debug, Clone, Copy)]
pub struct Temperature(pub f32);

impl Stage for Temperature {
    fn apply(&mut self, candidates: &mut Candidates) {
        let list = candidates.sorted();
        let Some(&(top, _)) = list.first() else {
            return;
        };
        let (inv_t, log_top) = (1.0 / self.0, top.ln());
        for x in list.iter_mut() {
            x.0 = ((x.0.ln() - log_top) * inv_t).exp();
        }
    }
}

/// A chain of stages is itself a stage: they apply in order.
#[derive(Debug, Default)]
pub struct Stages(pub Vec<Box<dyn Stage>>);

impl Stage for Stages {
    fn apply(&mut self, candidates: &mut Candidates) {
        for stage in &mut self.0 {
            stage.apply(candidates);
        }
    }
}

/// What ends a chain: one token out of the candidates.
#[derive(Debug, Clone)]
pub enum Chooser {
    /// The most massive token.
    Greedy,
    /// A draw proportional to mass, from a seeded generator.
    Draw(SplitMix64),
}

impl Chooser {
    /// The chosen union id, or `None` when no candidate has mass.
    pub fn choose(&mut self, candidates: &mut Candidates) -> Option<u32> {
        let rng = match self {
            Chooser::Greedy => return candidates.best(),
            Chooser::Draw(rng) => rng,
        };
        let list = candidates.sorted();
        let total: f64 = list.iter().map(|x| f64::from(x.0)).sum();
        let mut target = rng.next_f64() * total;
        for &(w, id) in list.iter() {
            target -= f64::from(w);
            if target < 0.0 {
                return Some(id);
            }
        }
        list.last().map(|&(_, id)| id)
    }
}
