//! Which members decide a step, the first stage of the selection: the mode (the average, the
//! average only where the members disagree, or a gate deciding alone while it is sure, paper
//! Eq. 5), what an unsure step does, when the other members are evaluated, and how their
//! weights are set.

use crate::{Error, Result, Setting};

/// What the ensemble does at a step where the gate is unsure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnsure {
    /// Average all members (paper Eq. 5).
    Average,
    /// Take this member's distribution alone (the paper's variant for a small gate and a much
    /// larger second model).
    Defer(usize),
}

impl WhenUnsure {
    /// Reads `average` or `member:K`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "average" {
            return Ok(WhenUnsure::Average);
        }
        s.strip_prefix("member:")
            .and_then(|k| k.parse().ok())
            .map(WhenUnsure::Defer)
            .ok_or_else(|| {
                Error::setting(
                    Setting::WhenUnsure,
                    format!("'{s}' is neither 'average' nor 'member:K'"),
                )
            })
    }

    /// Its name as [`WhenUnsure::parse`] reads it.
    pub fn name(&self) -> String {
        match self {
            WhenUnsure::Average => "average".into(),
            WhenUnsure::Defer(k) => format!("member:{k}"),
        }
    }
}

/// When gated mode evaluates the members other than the gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Only at the steps where the gate is unsure; a skipped member catches up on everything it
    /// missed in one batch. Right when members share a device with the gate.
    #[default]
    Lazy,
    /// Every step, beside the gate, one token at a time; their distributions are used only where
    /// the gate is unsure. The latency of the average without catch-up spikes, for members with
    /// devices of their own.
    Eager,
}

/// How the members' weights are set at a step where several are combined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Weighting {
    /// The ensemble's own weights, the same at every step (paper Eq. 3).
    #[default]
    Fixed,
    /// Each member's weight times its confidence at this step (its top probability), so a
    /// member that is sure of its next token counts more than one that is not.
    Confidence,
}

/// The gate threshold where none is given: steps where the gate's top probability is at most
/// one half are ensembled.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// How members are combined at each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Every step averages all members (paper Eq. 3).
    Average,
    /// Every member is evaluated at every step; where the most probable union tokens of the
    /// members with weight agree,
    /// that token is taken whatever the sampling; only where they disagree does the chain pick
    /// from the average (ensembling at the points of disagreement only). Under greedy picks
    /// this is the average token for token (a token that is every member's argmax is the
    /// argmax of any weighted average of them); with sampling, the steps the members agree on
    /// are not drawn.
    Selective,
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

/// What a step's decision reads besides the mode: the gate's top probability (gated mode), or
/// whether the members' most probable union tokens agree (selective mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Nothing: the average needs no signal.
    None,
    /// The gate's top probability at this step.
    GateTop(f32),
    /// Whether every member with weight has the same most probable union token.
    Agreed(bool),
}

impl Mode {
    /// The members that decide a step, out of `all`, and whether it is ensembled: every member
    /// in the average and in selective mode (where the members agree, unanimously: the step is
    /// not ensembled); in gated mode the gate alone while its top probability is above the
    /// threshold, else as `when_unsure` says. A signal the mode does not read counts as the
    /// unsure (ensembling) case.
    pub fn deciders(&self, all: &[usize], signal: Signal) -> (Vec<usize>, bool) {
        match (*self, signal) {
            (Mode::Selective, Signal::Agreed(true)) => (all.to_vec(), false),
            (Mode::Average | Mode::Selective, _) => (all.to_vec(), all.len() > 1),
            (
                Mode::Gated {
                    gate, threshold, ..
                },
                Signal::GateTop(top),
            ) if top > threshold => (vec![gate], false),
            (
                Mode::Gated {
                    when_unsure: WhenUnsure::Average,
                    ..
                },
                _,
            ) => (all.to_vec(), true),
            (
                Mode::Gated {
                    when_unsure: WhenUnsure::Defer(k),
                    ..
                },
                _,
            ) => (vec![k], true),
        }
    }

    /// The mode's name in messages and files: `average`, `selective` or `gated`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Average => "average",
            Mode::Selective => "selective",
            Mode::Gated { .. } => "gated",
        }
    }

    /// The mode of a name: `average` or `selective` (a gated mode is described by its gate's
    /// settings, not by name).
    pub fn named(name: &str) -> Result<Self> {
        match [Mode::Average, Mode::Selective]
            .into_iter()
            .find(|m| m.name() == name)
        {
            Some(mode) => Ok(mode),
            None => Err(Error::setting(
                Setting::Mode,
                format!("'{name}' is neither 'average' nor 'selective' (a gate, or a [gate] table, makes it gated)"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_decides_alone_only_above_its_threshold() {
        let gated = |when_unsure| Mode::Gated {
            gate: 1,
            threshold: 0.5,
            when_unsure,
        };
        let all = [0, 1, 2];
        let average = gated(WhenUnsure::Average);
        let top = Signal::GateTop;
        assert_eq!(average.deciders(&all, top(0.51)), (vec![1], false));
        assert_eq!(average.deciders(&all, top(0.5)), (vec![0, 1, 2], true));
        assert_eq!(
            gated(WhenUnsure::Defer(2)).deciders(&all, top(0.2)),
            (vec![2], true)
        );
        let none = Signal::None;
        assert_eq!(Mode::Average.deciders(&all, none), (vec![0, 1, 2], true));
        assert_eq!(Mode::Average.deciders(&[0], none), (vec![0], false));
    }

    #[test]
    fn names_read_back() {
        for mode in [Mode::Average, Mode::Selective] {
            assert_eq!(Mode::named(mode.name()), Ok(mode));
        }
        assert!(Mode::named("gated").is_err());
        for w in [WhenUnsure::Average, WhenUnsure::Defer(3)] {
            assert_eq!(WhenUnsure::parse(&w.name()), Ok(w));
        }
        assert!(WhenUnsure::parse("member:x").is_err());
    }

    #[test]
    fn selective_ensembles_only_where_the_members_disagree() {
        let all = [0, 1];
        let selective = Mode::Selective;
        assert_eq!(
            selective.deciders(&all, Signal::Agreed(true)),
            (vec![0, 1], false)
        );
        assert_eq!(
            selective.deciders(&all, Signal::Agreed(false)),
            (vec![0, 1], true)
        );
        assert_eq!(
            selective.deciders(&[0], Signal::Agreed(true)),
            (vec![0], false)
        );
    }
}
