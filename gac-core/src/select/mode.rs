//! Which members decide a step: the mode (the average, or a gate deciding alone while it is
//! sure, paper Eq. 5), what an unsure step does, when the other members are evaluated, and how
//! their weights are set.

/// What the ensemble does at a step where the gate is unsure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnsure {
    /// Average all members (paper Eq. 5).
    Average,
    /// Take this member's distribution alone (the paper's variant for a small gate and a much
    /// larger second model).
    Defer(usize),
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

impl Mode {
    /// The members that decide a step, out of `all`, and whether it is ensembled: every member
    /// in the average; in gated mode the gate alone while its top probability `gate_top` is
    /// above the threshold, else as `when_unsure` says.
    pub fn deciders(&self, all: &[usize], gate_top: f32) -> (Vec<usize>, bool) {
        match *self {
            Mode::Average => (all.to_vec(), all.len() > 1),
            Mode::Gated {
                gate, threshold, ..
            } if gate_top > threshold => (vec![gate], false),
            Mode::Gated {
                when_unsure: WhenUnsure::Average,
                ..
            } => (all.to_vec(), true),
            Mode::Gated {
                when_unsure: WhenUnsure::Defer(k),
                ..
            } => (vec![k], true),
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
        assert_eq!(average.deciders(&all, 0.51), (vec![1], false));
        assert_eq!(average.deciders(&all, 0.5), (vec![0, 1, 2], true));
        assert_eq!(
            gated(WhenUnsure::Defer(2)).deciders(&all, 0.2),
            (vec![2], true)
        );
        assert_eq!(Mode::Average.deciders(&all, 0.0), (vec![0, 1, 2], true));
        assert_eq!(Mode::Average.deciders(&[0], 0.0), (vec![0], false));
    }
}
