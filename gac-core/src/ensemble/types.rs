//! What a generation takes and gives: options, the result, and its statistics.

use std::time::Duration;

use crate::constraint::Grammar;
use crate::member::Message;
use crate::select::Sampling;
use crate::select::{Schedule, Weighting};
use crate::served::Piece;
use crate::union::UnionId;

/// Options of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Stop after this many generated tokens.
    pub max_tokens: usize,
    /// Stop when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// How each token is picked.
    pub sampling: Sampling,
    /// Wrap the prompt in each member's own chat template (where it has one); see
    /// [`Encoder::encode_chat`](crate::Encoder::encode_chat).
    pub chat: bool,
    /// Combine only each member's k most probable tokens (the top-k union of Yao et al.,
    /// "Determine-Then-Ensemble" / UniTE, 2024) instead of the full distributions; tokens below
    /// probability 1e-4 never enter. `None` combines everything.
    pub union_top_k: Option<usize>,
    /// When gated mode evaluates the non-gate members (ignored in average mode).
    pub schedule: Schedule,
    /// Fixed weights, or each member's weight times its confidence at the step.
    pub weighting: Weighting,
    /// Report each picked token's probability under the combined distribution, with this many
    /// of that step's most probable tokens (see [`TokenLogprob`]); `None` reports nothing.
    pub logprobs: Option<usize>,
    /// The grammar the generated text must match (structured outputs); see
    /// [`crate::constraint`].
    pub grammar: Option<Grammar>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            stop: Vec::new(),
            sampling: Sampling::Greedy,
            chat: false,
            union_top_k: None,
            schedule: Schedule::Lazy,
            weighting: Weighting::Fixed,
            logprobs: None,
            grammar: None,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The End class was picked.
    End,
    /// A stop string appeared.
    Stop,
    /// `max_tokens` were generated.
    MaxTokens,
    /// A member's context window is full.
    ContextFull,
    /// The observer asked to stop (see [`Observer::cancelled`]).
    Cancelled,
}

impl Finish {
    /// A short lower-case name (`end`, `stop`, `max_tokens`, `context_full`, `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::End => "end",
            Finish::Stop => "stop",
            Finish::MaxTokens => "max_tokens",
            Finish::ContextFull => "context_full",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// Time and work of one member in a generation.
#[derive(Debug, Clone, Default)]
pub struct MemberStats {
    /// The member's name.
    pub name: String,
    /// Prompt length in this member's tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens the member took from its cache instead of evaluating them.
    pub prompt_reused: usize,
    /// Time of the first evaluation (the prompt, plus any catch-up).
    pub prompt_time: Duration,
    /// Evaluations after the first one.
    pub decode_evals: usize,
    /// Time of the evaluations after the first one.
    pub decode_time: Duration,
    /// Time spent in softmax (on the member's thread).
    pub softmax_time: Duration,
    /// Evaluations where the member gave only its most probable tokens
    /// ([`Evaluation::Head`](crate::Evaluation::Head)).
    pub head_evals: usize,
    /// Greedy steps where the heads could not decide and the member's whole distribution was
    /// asked for after its head.
    pub full_after_head: usize,
    /// Time of those evaluations.
    pub full_after_head_time: Duration,
    /// Time spent re-encoding chosen tokens and pushing them.
    pub push_time: Duration,
}

impl MemberStats {
    /// Mean time of one decode evaluation.
    pub fn ms_per_eval(&self) -> f64 {
        ms(self.decode_time) / self.decode_evals.max(1) as f64
    }
}

/// Statistics of one generation.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Tokens generated (the final End not counted).
    pub tokens: usize,
    /// Steps taken (tokens plus a final End step, if any).
    pub steps: usize,
    /// Steps whose distribution combined more than one member, or deferred to another member.
    pub ensembled_steps: usize,
    /// Time in the loop's own work: combining, picking, bookkeeping (softmax and re-encoding are
    /// in the member statistics).
    pub combine_time: Duration,
    /// The part of `combine_time` spent picking the token (the rest is projecting into the
    /// union and bookkeeping).
    pub pick_time: Duration,
    /// Time spent computing which tokens the grammar allows (overlapping the members'
    /// evaluations: it is not part of `combine_time`).
    pub constraint_time: Duration,
    /// Wall time of the whole generation, prompt included.
    pub total_time: Duration,
    /// Wall time of the first step (prompt evaluation).
    pub first_step_time: Duration,
    /// Per member.
    pub members: Vec<MemberStats>,
    /// Per step, in order.
    pub per_step: Vec<StepStats>,
}

/// What happened at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The picked union token.
    pub token: UnionId,
    /// Whether more than one member (or a deferred-to member) decided it.
    pub ensembled: bool,
    /// The gate's top probability (gated mode only).
    pub gate_confidence: Option<f32>,
    /// Wall time of the step, evaluations included.
    pub time: Duration,
}

impl Stats {
    /// Fraction of steps that were ensembled.
    pub fn ensembled_fraction(&self) -> f64 {
        self.ensembled_steps as f64 / self.steps.max(1) as f64
    }

    /// Generated tokens per second after the first step.
    pub fn tokens_per_sec(&self) -> f64 {
        let t = (self.total_time - self.first_step_time).as_secs_f64();
        if self.steps > 1 && t > 0.0 {
            (self.steps - 1) as f64 / t
        } else {
            0.0
        }
    }

    /// Milliseconds per step after the first one.
    pub fn ms_per_token(&self) -> f64 {
        ms(self.total_time - self.first_step_time) / (self.steps.max(2) - 1) as f64
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text, cut before a stop string.
    pub text: String,
    /// Every generated byte (a stop string and what followed it in its token included); each
    /// member's context after the prompt spells exactly these bytes.
    pub bytes: Vec<u8>,
    /// The picked union tokens.
    pub tokens: Vec<UnionId>,
    /// Per member: the ids pushed after the prompt (empty when the context filled up).
    pub member_ids: Vec<Vec<u32>>,
    /// Why it ended.
    pub finish: Finish,
    /// Per picked token, when [`GenerateOptions::logprobs`] asked for them; the last is End's
    /// when the generation ended with it (End is not in [`Generation::tokens`]).
    pub logprobs: Vec<TokenLogprob>,
    /// Timing and counts.
    pub stats: Stats,
}

/// What the step loop hands back.
pub(super) struct Outcome {
    pub(super) text: String,
    pub(super) bytes: Vec<u8>,
    pub(super) tokens: Vec<UnionId>,
    pub(super) logprobs: Vec<TokenLogprob>,
    pub(super) finish: Finish,
}

/// What a generation starts from.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// Plain text (wrapped in each member's chat template when [`GenerateOptions::chat`] is set).
    Text(&'a str),
    /// A conversation, rendered by each member's own chat template (every member needs one).
    Chat(&'a [Message]),
    /// Pieces of a prompt given as the ensemble's served ids (see [`crate::served`]): each
    /// member's own ids for them, whatever [`GenerateOptions::chat`] says.
    Served(&'a [Piece]),
}

/// A picked token's probability under the step's combined distribution (the members' weighted
/// average, or the one member that decided the step): normalized over the union tokens that
/// received mass and, where the members' whole distributions were combined, the special tokens'
/// mass (never picked) too.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The picked token.
    pub token: UnionId,
    /// Its natural log-probability.
    pub logprob: f32,
    /// The step's most probable tokens, most probable first, with their log-probabilities.
    pub top: Vec<(UnionId, f32)>,
}

/// Watches a generation as it runs.
pub trait Observer {
    /// A piece of generated text that is final (never cut by a stop string, whole UTF-8).
    fn text(&mut self, text: &str);

    /// A token was picked (called before any text it completes); `logprob` is set when
    /// [`GenerateOptions::logprobs`] asks for it.
    fn token(&mut self, _token: UnionId, _logprob: Option<&TokenLogprob>) {}

    /// Checked before every step: true ends the generation with [`Finish::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// An [`Observer`] that only streams text to a closure.
pub(super) struct OnText<'a>(pub(super) &'a mut dyn FnMut(&str));

impl Observer for OnText<'_> {
    fn text(&mut self, text: &str) {
        (self.0)(text)
    }
}
