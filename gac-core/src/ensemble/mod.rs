//! The generation loop: prompt, steps, stop rules, streaming and per-step statistics.
//!
//! Each member lives on its own thread for the length of a generation. A step sends "evaluate"
//! to the members it needs (all of them, or the gate first), each worker evaluates its pending
//! tokens and computes its softmax while the others run, and the loop combines, picks, and queues
//! the chosen token for every member in that member's own ids. A member that fails or panics
//! ends the generation with its error; the others see their channel close and stop.
mod run;
#[cfg(test)]
mod tests;
mod types;
mod worker;

use std::sync::mpsc::channel;
use std::time::Instant;

use crate::constraint::Grammars;
use crate::member::{Interrupt, Member};
use crate::select::{Candidates, Chain};
use crate::select::{Mode, WhenUnsure};
use crate::served;
use crate::union::Union;
use crate::{Error, Result, Setting};

pub use types::{
    Finish, GenerateOptions, Generation, MemberStats, Observer, Prompt, Stats, StepStats,
    TokenLogprob,
};

use run::Run;
use types::OnText;
use worker::{worker, Dist, Worker};

/// Members, their union vocabulary and how they are combined.
pub struct Ensemble {
    members: Vec<Box<dyn Member>>,
    weights: Vec<f32>,
    mode: Mode,
    union: Union,
    /// The union prepared for grammars, on first use.
    grammars: Option<Grammars>,
    interrupt: Interrupt,
}

impl Ensemble {
    /// Builds an ensemble. `weights` (one per member, >= 0, not all 0) default to equal.
    pub fn new(
        members: Vec<Box<dyn Member>>,
        weights: Option<Vec<f32>>,
        mode: Mode,
    ) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::NoMembers);
        }
        let n = members.len();
        let weights = weights.unwrap_or_else(|| vec![1.0; n]);
        validate(&weights, &mode, n)?;
        let vocabs: Vec<_> = members.iter().map(|m| m.vocab()).collect();
        let union = Union::build(&vocabs)?;
        let interrupt = Interrupt::default();
        let mut members = members;
        for m in &mut members {
            m.watch(interrupt.clone());
        }
        Ok(Self {
            members,
            weights,
            mode,
            union,
            grammars: None,
            interrupt,
        })
    }

    /// Generations from now on stop when `interrupt` is set (from any thread): at the next
    /// step, and at once where a member waits on a server. Give each generation its own flag
    /// when a late signal must not reach the next one.
    pub fn set_interrupt(&mut self, interrupt: Interrupt) {
        for m in &mut self.members {
            m.watch(interrupt.clone());
        }
        self.interrupt = interrupt;
    }

    /// The union vocabulary.
    pub fn union(&self) -> &Union {
        &self.union
    }

    /// The members, in order.
    pub fn members(&self) -> &[Box<dyn Member>] {
        &self.members
    }

    /// Takes the members back (to reuse them in another ensemble).
    pub fn into_members(self) -> Vec<Box<dyn Member>> {
        self.members
    }

    /// How members are combined.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The members' weights, in order.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// Changes the members' weights (validated like [`Ensemble::new`]'s).
    pub fn set_weights(&mut self, weights: Vec<f32>) -> Result<()> {
        validate_weights(&weights, self.members.len())?;
        self.weights = weights;
        Ok(())
    }

    /// Changes how members are combined (validated).
    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        validate_mode(&mode, self.members.len())?;
        self.mode = mode;
        Ok(())
    }

    /// The union prepared for grammars (built on first use, then kept); share it with
    /// [`Ensemble::set_grammars`] among ensembles of the same members.
    pub fn grammars(&mut self) -> Result<&Grammars> {
        if self.grammars.is_none() {
            self.grammars = Some(Grammars::new(&self.union)?);
        }
        Ok(self.grammars.as_ref().expect("just built"))
    }

    /// Uses `grammars`, prepared for another ensemble of the same members in the same order.
    pub fn set_grammars(&mut self, grammars: Grammars) {
        self.grammars = Some(grammars);
    }

    /// Generates from `prompt`, calling `on_text` with each piece of text as it becomes final.
    pub fn generate(
        &mut self,
        prompt: &str,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        self.generate_with(Prompt::Text(prompt), options, &mut OnText(on_text))
    }

    /// Generates from a prompt or a conversation, reporting text and tokens to `observer`,
    /// which can also cancel the generation between steps.
    pub fn generate_with(
        &mut self,
        prompt: Prompt,
        options: &GenerateOptions,
        observer: &mut dyn Observer,
    ) -> Result<Generation> {
        options.sampling.validate()?;
        validate_union_top_k(options.union_top_k)?;
        let empty = match prompt {
            Prompt::Text(text) => text.is_empty(),
            Prompt::Chat(messages) => messages.is_empty(),
            Prompt::Served(pieces) => pieces.is_empty(),
        };
        if empty {
            return Err(Error::EmptyPrompt);
        }
        // Compiled before anything runs (the union is prepared once, on first use): a bad
        // grammar fails here, and the time is not the generation's.
        let constraint = match &options.grammar {
            Some(g) => Some(self.grammars()?.compile(g)?),
            None => None,
        };
        let start = Instant::now();
        let mut prompt_lens = Vec::with_capacity(self.members.len());
        for (i, member) in self.members.iter_mut().enumerate() {
            let ids = encode(member.as_ref(), i, &self.union, prompt, options.chat)?;
            if ids.is_empty() {
                return Err(Error::EmptyPrompt);
            }
            if let Some(context) = member.context_size() {
                if ids.len() >= context {
                    return Err(Error::PromptTooLong {
                        member: member.name().to_string(),
                        tokens: ids.len(),
                        context,
                    });
                }
            }
            member.set_union_top_k(options.union_top_k);
            member.reset()?;
            member.push(&ids)?;
            prompt_lens.push(ids.len());
        }
        let (weights, mode, union) = (&self.weights, self.mode, &self.union);
        let result = std::thread::scope(|scope| {
            let mut workers = Vec::with_capacity(self.members.len());
            for member in self.members.iter_mut() {
                let (cmd_tx, cmd_rx) = channel();
                let (reply_tx, reply_rx) = channel();
                let name = member.name().to_string();
                let vocab_len = member.vocab().len();
                scope.spawn(move || worker(member.as_mut(), cmd_rx, reply_tx));
                workers.push(Worker {
                    name,
                    tx: cmd_tx,
                    rx: reply_rx,
                    dist: Some(Dist::new(vocab_len)),
                    top: 0.0,
                    pending: Vec::new(),
                });
            }
            let mut run = Run {
                workers,
                weights,
                union,
                candidates: Candidates::new(union.len()),
                chain: Chain::build(mode, &options.sampling, options.union_top_k),
                schedule: options.schedule,
                weighting: options.weighting,
                logprobs: options.logprobs,
                constraint,
                interrupt: self.interrupt.clone(),
                stats: Stats::default(),
            };
            let result = run.generate(options, observer);
            // After an error, a full context or an interruption (a member may have given up
            // mid-step) there is nothing consistent to flush.
            let member_ids = match &result {
                Ok(out) if out.finish != Finish::ContextFull && !run.interrupt.is_set() => {
                    run.flush()
                }
                _ => Ok(vec![Vec::new(); run.workers.len()]),
            };
            // Dropping the workers' channels ends their threads.
            let Run {
                workers, mut stats, ..
            } = run;
            drop(workers);
            let out = result?;
            let member_ids = member_ids?;
            stats.total_time = start.elapsed();
            for (s, len) in stats.members.iter_mut().zip(&prompt_lens) {
                s.prompt_tokens = *len;
            }
            Ok(Generation {
                text: out.text,
                bytes: out.bytes,
                tokens: out.tokens,
                member_ids,
                finish: out.finish,
                logprobs: out.logprobs,
                stats,
            })
        });
        for member in &mut self.members {
            member.finish();
        }
        result
    }
}

/// Member `i`'s ids for a prompt: a conversation through its chat template, text through its
/// chat template when `chat` is set and it has one, else as plain text; served ids as
/// [`served::member_ids`] reads them.
fn encode(
    member: &dyn Member,
    i: usize,
    union: &Union,
    prompt: Prompt,
    chat: bool,
) -> Result<Vec<u32>> {
    match prompt {
        Prompt::Chat(messages) => member.encode_messages(messages).unwrap_or_else(|| {
            Err(Error::config(
                "messages",
                format!("member '{}' has no chat template", member.name()),
            ))
        }),
        Prompt::Text(text) => match chat.then(|| member.encode_chat(text)).flatten() {
            Some(ids) => ids,
            None => member.encode_prompt(text),
        },
        Prompt::Served(pieces) => served::member_ids(member, i, union, pieces),
    }
}

/// The most tokens per member a top-k union may keep: beyond it the union is no cheaper than
/// whole distributions, and a remote member would ship its whole vocabulary every step.
pub const MAX_UNION_TOP_K: usize = 1000;

/// Checks a top-k union's K: between 1 and [`MAX_UNION_TOP_K`].
pub fn validate_union_top_k(k: Option<usize>) -> Result<()> {
    match k {
        Some(0) => Err(Error::setting(
            Setting::UnionTopK,
            "0 keeps no token (use at least 1)",
        )),
        Some(k) if k > MAX_UNION_TOP_K => Err(Error::setting(
            Setting::UnionTopK,
            format!("{k} is above {MAX_UNION_TOP_K} (for whole distributions, leave it unset)"),
        )),
        _ => Ok(()),
    }
}

/// Checks an ensemble's weights (one per member of `n`, each finite and >= 0, not all 0) and
/// mode (gate and deferred-to member among them, threshold in [0, 1]): the one validation of
/// both, shared by [`Ensemble::new`] and configuration files.
pub fn validate(weights: &[f32], mode: &Mode, n: usize) -> Result<()> {
    validate_weights(weights, n)?;
    validate_mode(mode, n)
}

fn validate_weights(weights: &[f32], n: usize) -> Result<()> {
    if weights.len() != n {
        return Err(Error::setting(
            Setting::Weights,
            format!("{} weights given for {n} members", weights.len()),
        ));
    }
    for (i, w) in weights.iter().enumerate() {
        if !w.is_finite() || *w < 0.0 {
            return Err(Error::setting(
                Setting::Weight(i),
                format!("{w} is not a number >= 0"),
            ));
        }
    }
    if weights.iter().sum::<f32>() <= 0.0 {
        return Err(Error::setting(Setting::Weights, "all weights are 0"));
    }
    Ok(())
}

fn validate_mode(mode: &Mode, n: usize) -> Result<()> {
    if let Mode::Gated {
        gate,
        threshold,
        when_unsure,
    } = *mode
    {
        if gate >= n {
            return Err(Error::setting(
                Setting::Gate,
                format!("member {gate} does not exist (members are 0..{})", n - 1),
            ));
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::setting(
                Setting::Threshold,
                format!("{threshold} is outside [0, 1]"),
            ));
        }
        if let WhenUnsure::Defer(k) = when_unsure {
            if k >= n {
                return Err(Error::setting(
                    Setting::WhenUnsure,
                    format!("member {k} does not exist (members are 0..{})", n - 1),
                ));
            }
        }
    }
    Ok(())
}
