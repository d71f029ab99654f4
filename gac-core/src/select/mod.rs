//! Choosing one union token from the members' distributions, as a chain of small stages over
//! one candidates buffer (the way llama.cpp's sampler chain is built): the mode decides which
//! members decide the step (all; in selective mode the token they agree on is taken without
//! the rest of the chain; or a sure gate); a scatter puts
//! those members' weighted distributions into union space (all of them, only the heads when they
//! decide a greedy pick exactly, or the top-k union); stages narrow the candidates (top-k,
//! top-p, temperature); one chooser ends the chain (greedy, or a seeded draw). Everything is
//! reused from step to step: nothing proportional to a vocabulary is allocated per step.

mod candidates;
mod mode;
mod sampling;
mod stages;

pub use candidates::{argmax, descending, Candidates, Filled, MemberInput, Scatter, HEAD_FLOOR};
pub use mode::{Mode, Schedule, Signal, Weighting, WhenUnsure, DEFAULT_THRESHOLD};
pub use sampling::{Draw, Sampling, SplitMix64, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P};
pub use stages::{Chooser, Stage, Stages, Temperature, TopK, TopP};

use crate::union::UnionId;

/// A whole selection: which members decide, how they enter, the stages, and the chooser that
/// ends it.
#[derive(Debug)]
pub struct Chain {
    mode: Mode,
    scatter: Scatter,
    stages: Stages,
    chooser: Chooser,
}

impl Chain {
    /// A chain of these parts.
    pub fn new(mode: Mode, scatter: Scatter, stages: Stages, chooser: Chooser) -> Self {
        Self {
            mode,
            scatter,
            stages,
            chooser,
        }
    }

    /// gac's chain for a mode and a sampling: the mode's decision, then greedy (exact,
    /// deciding on the heads where it can) or top-k, top-p, temperature and a seeded draw, in
    /// that order (llama.cpp's default order); `union_top_k` combines only each member's k
    /// most probable tokens.
    pub fn build(mode: Mode, sampling: &Sampling, union_top_k: Option<usize>) -> Self {
        let (stages, chooser) = match sampling {
            Sampling::Greedy => (Stages::default(), Chooser::Greedy),
            Sampling::Draw(draw) => {
                let stages: Vec<Box<dyn Stage>> = vec![
                    Box::new(TopK(draw.top_k)),
                    Box::new(TopP(draw.top_p)),
                    Box::new(Temperature(draw.temperature)),
                ];
                (Stages(stages), Chooser::Draw(SplitMix64::new(draw.seed)))
            }
        };
        let scatter = match (union_top_k, sampling) {
            (Some(k), _) => Scatter::TopK(k),
            (None, Sampling::Greedy) => Scatter::Heads,
            (None, Sampling::Draw(_)) => Scatter::Full,
        };
        Self::new(mode, scatter, stages, chooser)
    }

    /// The mode: what the first stage reads.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The first stage: the members that decide this step, out of `all`, and whether it is
    /// ensembled ([`Mode::deciders`]).
    pub fn deciders(&self, all: &[usize], signal: Signal) -> (Vec<usize>, bool) {
        self.mode.deciders(all, signal)
    }

    /// How one member alone enters to find its most probable union token, as this chain would
    /// rank it: its top-k for a top-k union, what it gave for a draw, else its head (exact,
    /// with the whole distribution where the head cannot decide).
    pub fn argmax_scatter(&self) -> Scatter {
        match self.scatter {
            Scatter::Whole => Scatter::Heads,
            how => how,
        }
    }

    /// Whether a greedy pick may be decided on the members' heads alone: the candidates then
    /// hold only what decided it, not the whole combined distribution.
    pub fn decides_on_heads(&self) -> bool {
        self.scatter == Scatter::Heads
    }

    /// Runs the chain on this step's member distributions; `None` when no token has mass or
    /// a member's whole distribution is needed ([`Filled::NeedsFull`]).
    pub fn select(
        &mut self,
        candidates: &mut Candidates,
        members: &[MemberInput],
    ) -> Option<UnionId> {
        match self.scatter(candidates, members) {
            Filled::Mass => self.choose(candidates),
            Filled::Empty | Filled::NeedsFull => None,
        }
    }

    /// The first part of [`Chain::select`]: fills the candidates.
    pub fn scatter(&self, candidates: &mut Candidates, members: &[MemberInput]) -> Filled {
        candidates.scatter(self.scatter, members)
    }

    /// Whether member `m` must give its whole distribution after [`Filled::NeedsFull`].
    pub fn needs_whole(&self, m: &MemberInput) -> bool {
        self.scatter.needs_whole(m)
    }

    /// The rest of [`Chain::select`]: the stages, then the chooser.
    pub fn choose(&mut self, candidates: &mut Candidates) -> Option<UnionId> {
        self.stages.apply(candidates);
        self.chooser.choose(candidates).map(UnionId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(seed: u64) -> Draw {
        Draw {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed,
        }
    }

    /// Runs `chain` on one member whose vocabulary is the union itself.
    fn pick(chain: &mut Chain, candidates: &mut Candidates, probs: &[f32]) -> Option<u32> {
        let projection: Vec<u32> = (0..probs.len() as u32).collect();
        let head: Vec<u32> = projection
            .iter()
            .copied()
            .filter(|&i| probs[i as usize] >= HEAD_FLOOR)
            .collect();
        let input = MemberInput {
            probs,
            head: &head,
            floor: HEAD_FLOOR,
            full: true,
            outside: f32::INFINITY,
            projection: &projection,
            weight: 1.0,
            max_fold: 1,
            folds: &vec![1; probs.len()],
        };
        chain.select(candidates, &[input]).map(|u| u.0)
    }

    fn draws(config: Draw, probs: &[f32], n: usize) -> Vec<u32> {
        let mut chain = Chain::build(Mode::Average, &Sampling::Draw(config), None);
        let mut candidates = Candidates::new(probs.len());
        (0..n)
            .map(|_| pick(&mut chain, &mut candidates, probs).unwrap())
            .collect()
    }

    #[test]
    fn greedy_takes_the_argmax_lowest_on_ties() {
        for union_top_k in [None, Some(2)] {
            let mut chain = Chain::build(Mode::Average, &Sampling::Greedy, union_top_k);
            let mut c = Candidates::new(4);
            assert_eq!(pick(&mut chain, &mut c, &[0.1, 0.4, 0.4, 0.1]), Some(1));
            assert_eq!(pick(&mut chain, &mut c, &[0.0, 0.0, 0.0, 0.0]), None);
        }
        // Too flat for the heads to decide: the full distributions do, with the same rule.
        let flat = vec![1.0 / 5000.0; 5000];
        let mut chain = Chain::build(Mode::Average, &Sampling::Greedy, None);
        assert_eq!(pick(&mut chain, &mut Candidates::new(5000), &flat), Some(0));
    }

    #[test]
    fn one_argmax_first_index_on_ties() {
        let inf = f32::INFINITY;
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), Some(1));
        assert_eq!(argmax(&[-inf, -inf]), Some(0));
        assert_eq!(argmax(&[f32::NAN, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, -inf]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN]), None);
    }

    #[test]
    fn same_seed_same_draws() {
        let probs = [0.1, 0.2, 0.3, 0.4];
        let first = draws(sampling(7), &probs, 20);
        assert_eq!(first, draws(sampling(7), &probs, 20));
        assert_ne!(first, draws(sampling(8), &probs, 20));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let config = Draw {
            top_k: 1,
            ..sampling(3)
        };
        assert!(draws(config, &[0.3, 0.1, 0.6], 50).iter().all(|&x| x == 2));
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let config = Draw {
            top_p: 0.5,
            ..sampling(3)
        };
        assert!(draws(config, &[0.05, 0.55, 0.4], 50)
            .iter()
            .all(|&x| x == 1));
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        let probs = [0.1, 0.2, 0.7];
        let n = 20_000;
        let mut counts = [0usize; 3];
        for x in draws(sampling(42), &probs, n) {
            counts[x as usize] += 1;
        }
        for (c, want) in counts.iter().zip(probs) {
            assert!((*c as f32 / n as f32 - want).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn low_temperature_concentrates_mass() {
        let config = Draw {
            temperature: 0.05,
            ..sampling(1)
        };
        let hits = draws(config, &[0.4, 0.6], 200)
            .iter()
            .filter(|&&x| x == 1)
            .count();
        assert!(hits > 190, "{hits}");
    }

    /// A member's whole distribution over a union that is its own vocabulary.
    fn whole<'a>(probs: &'a [f32], identity: &'a [u32], folds: &'a [u16]) -> MemberInput<'a> {
        MemberInput {
            probs,
            head: identity,
            floor: HEAD_FLOOR,
            full: true,
            outside: f32::INFINITY,
            projection: identity,
            weight: 1.0,
            max_fold: 1,
            folds,
        }
    }

    #[test]
    fn the_top_n_are_the_sorted_lists_first_n() {
        let probs = [0.1, 0.3, 0.0, 0.3, 0.05, 0.25];
        let projection = [0, 1, 2, 3, 4, 5];
        let input = whole(&probs, &projection, &[1; 6]);
        let mut c = Candidates::new(6);
        c.scatter(Scatter::Full, &[input]);
        let sorted = c.sorted().clone();
        assert_eq!(sorted.len(), 5, "no entry without mass");
        for n in 0..7 {
            c.scatter(Scatter::Full, &[input]);
            assert_eq!(c.top(n), &sorted[..n.min(5)], "{n}");
        }
    }

    #[test]
    fn a_chain_of_stages_is_a_stage() {
        // Top-k 2 inside a nested chain, then top-p: the same as both in one chain.
        let probs = [0.5, 0.3, 0.15, 0.05];
        let mut c = Candidates::new(4);
        let projection = [0, 1, 2, 3];
        let input = whole(&probs, &projection, &[1; 4]);
        let nested = Stages(vec![Box::new(TopK(2))]);
        let mut chain = Chain::new(
            Mode::Average,
            Scatter::Full,
            Stages(vec![Box::new(nested), Box::new(TopP(0.7))]),
            Chooser::Greedy,
        );
        assert_eq!(chain.select(&mut c, &[input]), Some(UnionId(0)));
        assert_eq!(c.list().iter().map(|x| x.1).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn a_head_alone_decides_a_greedy_pick_only_when_what_it_leaves_out_cannot() {
        // Member ids 1 and 2 spell the same union token 1.
        let projection = [0, 1, 1, 2];
        let folds = [1, 2, 1];
        let decide = |probs: &[f32], head: &[u32]| {
            let input = MemberInput {
                probs,
                head,
                floor: head.iter().map(|&j| probs[j as usize]).fold(1.0, f32::min),
                full: false,
                outside: 1.0 - head.iter().map(|&j| probs[j as usize]).sum::<f32>() + 1e-5,
                projection: &projection,
                weight: 1.0,
                max_fold: 2,
                folds: &folds,
            };
            let mut c = Candidates::new(3);
            let chain = Chain::build(Mode::Average, &Sampling::Greedy, None);
            chain.scatter(&mut c, &[input])
        };
        // The whole distribution listed: nothing is left out.
        assert_eq!(decide(&[0.5, 0.2, 0.1, 0.2], &[0, 1, 2, 3]), Filled::Mass);
        // Id 2, left out, may hold 0.3 and lift union token 1 to 0.6.
        assert_eq!(decide(&[0.4, 0.3, 0.0, 0.0], &[0, 1]), Filled::NeedsFull);
        // 0.1 left out cannot close a margin of 0.5.
        assert_eq!(decide(&[0.7, 0.2, 0.0, 0.0], &[0, 1]), Filled::Mass);
        // A token outside the head may be as probable as the only one listed.
        assert_eq!(decide(&[0.3, 0.0, 0.0, 0.0], &[0]), Filled::NeedsFull);
    }
}
