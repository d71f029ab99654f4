//! The generation loop: prompt, steps, stop rules, streaming and per-step statistics.
//!
//! Each member lives on its own thread for the length of a generation. A step sends "evaluate"
//! to the members it needs (all of them, or the gate first), each worker evaluates its pending
//! tokens and computes its softmax while the others run, and the loop combines, picks, and queues
//! the chosen token for every member in that member's own ids. A member that fails or panics
//! ends the generation with its error; the others see their channel close and stop.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use crate::combine::{scatter_add, softmax, Mode, Schedule, WhenUnsure};
use crate::member::Member;
use crate::pick::{PickConfig, Picker};
use crate::text::{find_stop, held_back, Utf8Stream};
use crate::union::{Union, UnionId, END};
use crate::{Error, Result};

/// Options of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Stop after this many generated tokens.
    pub max_tokens: usize,
    /// Stop when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// How to pick each token.
    pub pick: PickConfig,
    /// Wrap the prompt in each member's own chat template (where it has one); see
    /// [`Member::encode_chat`].
    pub chat: bool,
    /// Combine only each member's k most probable tokens (the top-k union of Yao et al.,
    /// "Determine-Then-Ensemble" / UniTE, 2024) instead of the full distributions; tokens below
    /// probability 1e-4 never enter. `None` combines everything.
    pub union_top_k: Option<usize>,
    /// When gated mode evaluates the non-gate members (ignored in average mode).
    pub schedule: Schedule,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            stop: Vec::new(),
            pick: PickConfig::default(),
            chat: false,
            union_top_k: None,
            schedule: Schedule::Lazy,
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
}

impl Finish {
    /// A short lower-case name (`end`, `stop`, `max_tokens`, `context_full`).
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::End => "end",
            Finish::Stop => "stop",
            Finish::MaxTokens => "max_tokens",
            Finish::ContextFull => "context_full",
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
    /// Time of the first evaluation (the prompt, plus any catch-up).
    pub prompt_time: Duration,
    /// Evaluations after the first one.
    pub decode_evals: usize,
    /// Time of the evaluations after the first one.
    pub decode_time: Duration,
    /// Time spent in softmax (on the member's thread).
    pub softmax_time: Duration,
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
    /// Timing and counts.
    pub stats: Stats,
}

/// Members, their union vocabulary and how they are combined.
pub struct Ensemble {
    members: Vec<Box<dyn Member>>,
    weights: Vec<f32>,
    mode: Mode,
    union: Union,
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
        validate_weights(&weights, n)?;
        validate_mode(&mode, n)?;
        let vocabs: Vec<_> = members.iter().map(|m| m.vocab()).collect();
        let union = Union::build(&vocabs)?;
        Ok(Self {
            members,
            weights,
            mode,
            union,
        })
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

    /// Changes how members are combined (validated).
    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        validate_mode(&mode, self.members.len())?;
        self.mode = mode;
        Ok(())
    }

    /// Generates from `prompt`, calling `on_text` with each piece of text as it becomes final.
    pub fn generate(
        &mut self,
        prompt: &str,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        options.pick.validate()?;
        if options.union_top_k == Some(0) {
            return Err(Error::config(
                "union_top_k",
                "0 keeps no token (use at least 1)",
            ));
        }
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let start = Instant::now();
        let mut prompt_lens = Vec::with_capacity(self.members.len());
        for member in &mut self.members {
            let ids = match options.chat.then(|| member.encode_chat(prompt)).flatten() {
                Some(ids) => ids?,
                None => member.encode_prompt(prompt)?,
            };
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
                    dist: Some(Dist {
                        probs: vec![0.0; vocab_len],
                        head: Vec::new(),
                    }),
                    top: 0.0,
                    pending: Vec::new(),
                });
            }
            let mut run = Run {
                workers,
                weights,
                mode,
                union,
                acc: vec![0.0; union.len() + 1],
                touched: Vec::new(),
                top: Vec::new(),
                step_weights: Vec::new(),
                union_top_k: options.union_top_k,
                schedule: options.schedule,
                picker: Picker::new(options.pick),
                stats: Stats::default(),
            };
            let result = run.generate(options, on_text);
            // After an error or a full context there is nothing consistent to flush.
            let member_ids = match &result {
                Ok((.., Finish::ContextFull)) | Err(_) => Ok(vec![Vec::new(); run.workers.len()]),
                Ok(_) => run.flush(),
            };
            // Dropping the workers' channels ends their threads.
            let Run {
                workers, mut stats, ..
            } = run;
            drop(workers);
            let (text, bytes, tokens, finish) = result?;
            let member_ids = member_ids?;
            stats.total_time = start.elapsed();
            for (s, len) in stats.members.iter_mut().zip(&prompt_lens) {
                s.prompt_tokens = *len;
            }
            Ok(Generation {
                text,
                bytes,
                tokens,
                member_ids,
                finish,
                stats,
            })
        });
        for member in &mut self.members {
            member.finish();
        }
        result
    }
}

fn validate_weights(weights: &[f32], n: usize) -> Result<()> {
    if weights.len() != n {
        return Err(Error::config(
            "weights",
            format!("{} weights given for {n} members", weights.len()),
        ));
    }
    for (i, w) in weights.iter().enumerate() {
        if !w.is_finite() || *w < 0.0 {
            return Err(Error::config(
                format!("member[{i}].weight"),
                format!("{w} is not a number >= 0"),
            ));
        }
    }
    if weights.iter().sum::<f32>() <= 0.0 {
        return Err(Error::config("weights", "all weights are 0"));
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
            return Err(Error::config(
                "gate",
                format!("member {gate} does not exist (members are 0..{})", n - 1),
            ));
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::config(
                "threshold",
                format!("{threshold} is outside [0, 1]"),
            ));
        }
        if let WhenUnsure::Defer(k) = when_unsure {
            if k >= n {
                return Err(Error::config(
                    "when_unsure",
                    format!("member {k} does not exist (members are 0..{})", n - 1),
                ));
            }
        }
    }
    Ok(())
}

/// A token queued for a member: its own id, or text it must encode itself.
enum Piece {
    Id(u32),
    Text(Box<[u8]>),
}

/// Probabilities below this are left out of a member's head (see [`softmax`]); a greedy pick is
/// decided on the heads alone whenever its margin over the runner-up exceeds the mass that the
/// left-out tails could add, and falls back to the full distributions otherwise.
const HEAD_FLOOR: f32 = 1e-4;

/// A member's distribution after an evaluation; the buffers travel between threads and are
/// reused, so the loop allocates nothing proportional to a vocabulary.
struct Dist {
    probs: Vec<f32>,
    head: Vec<u32>,
}

enum Cmd {
    /// Push the pieces, evaluate, and send back the distribution in these buffers.
    Eval(Vec<Piece>, Dist),
    /// Push the pieces of a step that skipped the member; no reply (an error is kept for the
    /// next command's reply).
    Idle(Vec<Piece>),
    /// Push the pieces and send back every id pushed since the prompt.
    Flush(Vec<Piece>),
}

enum Reply {
    Evaluated {
        dist: Dist,
        top: f32,
        timing: Timing,
    },
    Flushed(Vec<u32>),
}

#[derive(Default)]
struct Timing {
    push: Duration,
    eval: Duration,
    softmax: Duration,
}

fn worker(member: &mut dyn Member, rx: Receiver<Cmd>, tx: Sender<Result<Reply>>) {
    let mut generated = Vec::new();
    let name = member.name().to_string();
    let mut deferred = None;
    for cmd in rx {
        let idle = matches!(cmd, Cmd::Idle(_));
        let reply = catch_unwind(AssertUnwindSafe(|| match deferred.take() {
            Some(e) => Err(e),
            None => handle(member, &name, cmd, &mut generated),
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::member(&name, format!("panicked: {what}")))
        });
        if idle {
            deferred = reply.err();
            continue;
        }
        let failed = reply.is_err();
        if tx.send(reply).is_err() || failed {
            return;
        }
    }
}

fn handle(
    member: &mut dyn Member,
    name: &str,
    cmd: Cmd,
    generated: &mut Vec<u32>,
) -> Result<Reply> {
    let mut timing = Timing::default();
    let pieces = match &cmd {
        Cmd::Eval(pieces, _) | Cmd::Idle(pieces) | Cmd::Flush(pieces) => pieces,
    };
    let t = Instant::now();
    let before = generated.len();
    for piece in pieces {
        match piece {
            Piece::Id(id) => generated.push(*id),
            Piece::Text(bytes) => generated.extend(member.encode(bytes)?),
        }
    }
    member.push(&generated[before..])?;
    timing.push = t.elapsed();
    match cmd {
        Cmd::Idle(_) => {
            member.idle();
            Ok(Reply::Flushed(Vec::new()))
        }
        Cmd::Flush(_) => Ok(Reply::Flushed(std::mem::take(generated))),
        Cmd::Eval(_, mut dist) => {
            let t = Instant::now();
            let logits = member.logits()?;
            timing.eval = t.elapsed();
            let t = Instant::now();
            if logits.len() != dist.probs.len() {
                return Err(Error::member(
                    name,
                    format!(
                        "{} logits for a vocabulary of {}",
                        logits.len(),
                        dist.probs.len()
                    ),
                ));
            }
            let top = softmax(logits, &mut dist.probs, HEAD_FLOOR, &mut dist.head)
                .ok_or_else(|| Error::member(name, "logits are not finite (NaN or inf)"))?;
            timing.softmax = t.elapsed();
            Ok(Reply::Evaluated { dist, top, timing })
        }
    }
}

struct Worker {
    name: String,
    tx: Sender<Cmd>,
    rx: Receiver<Result<Reply>>,
    dist: Option<Dist>,
    top: f32,
    pending: Vec<Piece>,
}

impl Worker {
    fn disconnected(&self) -> Error {
        Error::member(&self.name, "its worker thread stopped")
    }

    /// Tells a member the gate skipped it, handing over what it has to push.
    fn send_idle(&mut self) -> Result<()> {
        let pieces = std::mem::take(&mut self.pending);
        self.tx
            .send(Cmd::Idle(pieces))
            .map_err(|_| self.disconnected())
    }

    fn send_eval(&mut self) -> Result<()> {
        let dist = self.dist.take().expect("one evaluation at a time");
        let pieces = std::mem::take(&mut self.pending);
        self.tx
            .send(Cmd::Eval(pieces, dist))
            .map_err(|_| self.disconnected())
    }

    fn receive(&mut self, stats: &mut MemberStats) -> Result<()> {
        match self.rx.recv().map_err(|_| self.disconnected())?? {
            Reply::Evaluated { dist, top, timing } => {
                self.dist = Some(dist);
                self.top = top;
                if stats.prompt_time.is_zero() && stats.decode_evals == 0 {
                    stats.prompt_time = timing.eval;
                } else {
                    stats.decode_evals += 1;
                    stats.decode_time += timing.eval;
                }
                stats.softmax_time += timing.softmax;
                stats.push_time += timing.push;
                Ok(())
            }
            Reply::Flushed(_) => unreachable!("flush replies are read in flush()"),
        }
    }
}

type Outcome = (String, Vec<u8>, Vec<UnionId>, Finish);

struct Run<'a> {
    workers: Vec<Worker>,
    weights: &'a [f32],
    mode: Mode,
    union: &'a Union,
    /// Union-space accumulator (plus the sink slot); all zero between steps.
    acc: Vec<f32>,
    /// Union ids written in `acc` by the sparse paths.
    touched: Vec<u32>,
    /// A member's top-k (probability, token) pairs, for the top-k union.
    top: Vec<(f32, u32)>,
    /// Combine only each member's k most probable tokens.
    union_top_k: Option<usize>,
    /// When gated mode evaluates the non-gate members.
    schedule: Schedule,
    /// This step's normalized weights, parallel to the members combined.
    step_weights: Vec<f32>,
    picker: Picker,
    stats: Stats,
}

impl Run<'_> {
    /// Evaluates these members in parallel.
    fn evaluate(&mut self, which: &[usize]) -> Result<()> {
        for &i in which {
            self.workers[i].send_eval()?;
        }
        for &i in which {
            self.workers[i].receive(&mut self.stats.members[i])?;
        }
        Ok(())
    }

    /// Combines these members' last distributions (weights renormalized over them) and picks.
    fn choose(&mut self, which: &[usize], step: usize) -> Result<UnionId> {
        // In f64: large f32 weights must not overflow their sum and normalize to 0.
        let total: f64 = which.iter().map(|&i| f64::from(self.weights[i])).sum();
        self.step_weights.clear();
        self.step_weights
            .extend(which.iter().map(|&i| match total > 0.0 {
                true => (f64::from(self.weights[i]) / total) as f32,
                false => 1.0 / which.len() as f32,
            }));
        if let Some(k) = self.union_top_k {
            if let Some(x) = self.choose_top_k(which, k) {
                return Ok(x);
            }
            // Every member's head was special tokens only: fall back to the full distributions.
        } else if self.picker.is_greedy() {
            if let Some(x) = self.greedy_on_heads(which) {
                return Ok(x);
            }
        }
        for (&i, &w) in which.iter().zip(&self.step_weights) {
            let probs = &self.workers[i].dist.as_ref().expect("evaluated").probs;
            scatter_add(&mut self.acc, self.union.projection(i), probs, w);
        }
        let t = Instant::now();
        let x = self.picker.pick(&self.acc[..self.union.len()]);
        self.stats.pick_time += t.elapsed();
        self.acc.fill(0.0);
        x.ok_or(Error::ZeroMass { step })
    }

    /// The top-k union: each member's k most probable tokens that can be written (from its
    /// head; special tokens carry no mass and do not take a place), weighted and summed in
    /// union space; the pick sees nothing else. `None` when no member has such a token.
    fn choose_top_k(&mut self, which: &[usize], k: usize) -> Option<UnionId> {
        let sink = self.union.sink() as u32;
        self.touched.clear();
        for (&i, &w) in which.iter().zip(&self.step_weights) {
            let dist = self.workers[i].dist.as_ref().expect("evaluated");
            let projection = self.union.projection(i);
            self.top.clear();
            self.top.extend(
                dist.head
                    .iter()
                    .filter(|&&j| projection[j as usize] != sink)
                    .map(|&j| (dist.probs[j as usize], j)),
            );
            if self.top.len() > k {
                self.top
                    .select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                self.top.truncate(k);
            }
            for &(p, j) in &self.top {
                let u = projection[j as usize];
                if self.acc[u as usize] == 0.0 {
                    self.touched.push(u);
                }
                self.acc[u as usize] += w * p;
            }
        }
        let t = Instant::now();
        let x = if self.picker.is_greedy() {
            let best = self.touched.iter().copied().max_by(|&a, &b| {
                self.acc[a as usize]
                    .total_cmp(&self.acc[b as usize])
                    .then(b.cmp(&a))
            });
            best.map(UnionId)
        } else {
            self.picker.pick(&self.acc[..self.union.len()])
        };
        self.stats.pick_time += t.elapsed();
        for &u in &self.touched {
            self.acc[u as usize] = 0.0;
        }
        x
    }

    /// The exact greedy pick computed from the members' heads only, or `None` when the margin
    /// is too thin to be sure (then the caller combines the full distributions).
    fn greedy_on_heads(&mut self, which: &[usize]) -> Option<UnionId> {
        let sink = self.union.sink() as u32;
        self.touched.clear();
        for (&i, &w) in which.iter().zip(&self.step_weights) {
            let dist = self.workers[i].dist.as_ref().expect("evaluated");
            let projection = self.union.projection(i);
            for &j in &dist.head {
                let u = projection[j as usize];
                if u == sink {
                    continue;
                }
                let slot = &mut self.acc[u as usize];
                if *slot == 0.0 {
                    self.touched.push(u);
                }
                *slot += w * dist.probs[j as usize];
            }
        }
        let t = Instant::now();
        let (mut best, mut best_p, mut second_p) = (0u32, 0.0f32, 0.0f32);
        for &u in &self.touched {
            let p = self.acc[u as usize];
            if p > best_p || (p == best_p && u < best) {
                second_p = best_p;
                best_p = p;
                best = u;
            } else if p > second_p {
                second_p = p;
            }
            self.acc[u as usize] = 0.0;
        }
        self.stats.pick_time += t.elapsed();
        // A union token's true mass exceeds its head mass by at most this much: each member
        // adds less than HEAD_FLOOR for every one of its ids outside the head that maps to it.
        let tails: f32 = which
            .iter()
            .zip(&self.step_weights)
            .map(|(&i, w)| w * HEAD_FLOOR * self.union.max_fold(i) as f32)
            .sum();
        (best_p - second_p > tails && best_p > tails).then_some(UnionId(best))
    }

    /// One step: evaluates the members it needs and picks a token; returns it, whether the
    /// step was ensembled and the gate's confidence.
    fn step(&mut self, all: &[usize], step: usize) -> Result<(UnionId, bool, Option<f32>)> {
        let (which, ensembled, confidence) = match self.mode {
            Mode::Average => {
                self.evaluate(all)?;
                (all.to_vec(), all.len() > 1, None)
            }
            Mode::Gated {
                gate,
                threshold,
                when_unsure,
            } => {
                let eager = self.schedule == Schedule::Eager;
                let gate_only = [gate];
                self.evaluate(if eager { all } else { &gate_only })?;
                let top = self.workers[gate].top;
                let confident = top > threshold;
                let which: Vec<usize> = match (confident, when_unsure) {
                    (true, _) => vec![gate],
                    (false, WhenUnsure::Average) => all.to_vec(),
                    (false, WhenUnsure::Defer(k)) => vec![k],
                };
                if !eager {
                    let rest: Vec<usize> = which.iter().copied().filter(|&i| i != gate).collect();
                    for i in all.iter().filter(|i| !which.contains(i)) {
                        self.workers[*i].send_idle()?;
                    }
                    self.evaluate(&rest)?;
                }
                (which, !confident, Some(top))
            }
        };
        let t = Instant::now();
        let x = self.choose(&which, step)?;
        self.stats.combine_time += t.elapsed();
        Ok((x, ensembled, confidence))
    }

    fn generate(
        &mut self,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Outcome> {
        let all: Vec<usize> = (0..self.workers.len()).collect();
        self.stats.members = self
            .workers
            .iter()
            .map(|w| MemberStats {
                name: w.name.clone(),
                ..MemberStats::default()
            })
            .collect();
        let stops: Vec<Vec<u8>> = options.stop.iter().map(|s| s.as_bytes().to_vec()).collect();
        let mut bytes = Vec::new();
        let mut tokens = Vec::new();
        let mut released = 0;
        let mut stream = Utf8Stream::default();
        let mut finish = Finish::MaxTokens;
        let started = Instant::now();
        for step in 0..options.max_tokens {
            let step_start = Instant::now();
            let (x, ensembled, gate_confidence) = match self.step(&all, step) {
                Err(Error::ContextFull { .. }) => {
                    finish = Finish::ContextFull;
                    break;
                }
                other => other?,
            };
            let t = Instant::now();
            self.stats.steps += 1;
            self.stats.ensembled_steps += usize::from(ensembled);
            self.stats.per_step.push(StepStats {
                token: x,
                ensembled,
                gate_confidence,
                time: step_start.elapsed(),
            });
            if step == 0 {
                self.stats.first_step_time = started.elapsed();
            }
            if x == END {
                finish = Finish::End;
                self.stats.combine_time += t.elapsed();
                break;
            }
            tokens.push(x);
            self.stats.tokens += 1;
            let piece = self.union.bytes(x);
            for (i, w) in self.workers.iter_mut().enumerate() {
                w.pending.push(match self.union.member_token(i, x) {
                    Some(id) => Piece::Id(id),
                    None => Piece::Text(piece.into()),
                });
            }
            let new_from = bytes.len();
            bytes.extend_from_slice(piece);
            let stop = find_stop(&bytes, &stops, new_from);
            let end = stop.unwrap_or(bytes.len() - held_back(&bytes, &stops));
            if end > released {
                if let Some(s) = stream.push(&bytes[released..end]) {
                    on_text(s);
                }
                released = end;
            }
            self.stats.combine_time += t.elapsed();
            if stop.is_some() {
                finish = Finish::Stop;
                break;
            }
        }
        if finish != Finish::Stop && released < bytes.len() {
            if let Some(s) = stream.push(&bytes[released..]) {
                on_text(s);
            }
            released = bytes.len();
        }
        if let Some(s) = stream.finish() {
            on_text(s);
        }
        let text = String::from_utf8_lossy(&bytes[..released]).into_owned();
        Ok((text, bytes, tokens, finish))
    }

    /// Pushes every queued token, so each member's context spells all generated bytes, and
    /// returns the ids each member received after the prompt. A member whose context cannot
    /// take the last tokens gets an empty list: the generation itself is complete.
    fn flush(&mut self) -> Result<Vec<Vec<u32>>> {
        for w in &mut self.workers {
            let pieces = std::mem::take(&mut w.pending);
            w.tx.send(Cmd::Flush(pieces))
                .map_err(|_| w.disconnected())?;
        }
        let mut out = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            match w.rx.recv().map_err(|_| w.disconnected())? {
                Ok(Reply::Flushed(ids)) => out.push(ids),
                Err(Error::ContextFull { .. }) => out.push(Vec::new()),
                Err(e) => return Err(e),
                Ok(Reply::Evaluated { .. }) => unreachable!("no evaluation is in flight"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ScriptedMember;

    const A: &[&str] = &[
        "<end>",
        "h",
        "e",
        "l",
        "o",
        " ",
        "w",
        "r",
        "d",
        "he",
        "llo",
        " world",
        "<special>",
    ];
    const B: &[&str] = &[
        "<special>",
        "h",
        "e",
        "l",
        "o",
        " ",
        "w",
        "r",
        "d",
        "hel",
        "lo",
        " wor",
        "ld",
        "<end>",
    ];

    /// Two members over different vocabularies with pseudo-random logits (near-ties common).
    fn noisy_pair(seed: u64) -> Vec<Box<dyn Member>> {
        let mut a = ScriptedMember::new("a", A, "");
        a.noise = Some(seed);
        let mut b = ScriptedMember::new("b", B, "");
        b.noise = Some(seed + 100);
        vec![boxed(a), boxed(b)]
    }

    fn boxed(m: ScriptedMember) -> Box<dyn Member> {
        Box::new(m)
    }

    /// Both options pick the same tokens on `seeds` noisy member pairs.
    fn assert_same_tokens_on_noisy_pairs(seeds: u64, a: &GenerateOptions, b: &GenerateOptions) {
        for seed in 0..seeds {
            let (g1, _) = run(noisy_pair(seed), Mode::Average, a).unwrap();
            let (g2, _) = run(noisy_pair(seed), Mode::Average, b).unwrap();
            assert_eq!(g1.tokens, g2.tokens, "seed {seed}");
        }
    }

    fn run(
        members: Vec<Box<dyn Member>>,
        mode: Mode,
        opts: &GenerateOptions,
    ) -> Result<(Generation, String)> {
        let mut e = Ensemble::new(members, None, mode)?;
        let mut streamed = String::new();
        let g = e.generate("hello", opts, &mut |s| streamed.push_str(s))?;
        Ok((g, streamed))
    }

    #[test]
    fn two_vocabularies_spell_the_target_and_contexts_agree() {
        let a = ScriptedMember::new("a", A, "hello world");
        let b = ScriptedMember::new("b", B, "hello world");
        let (g, streamed) = run(
            vec![boxed(a), boxed(b)],
            Mode::Average,
            &GenerateOptions::default(),
        )
        .unwrap();
        assert_eq!(g.text, "hello world");
        assert_eq!(streamed, "hello world");
        assert_eq!(g.finish, Finish::End);
        assert_eq!(g.bytes, b"hello world");
        for (i, ids) in g.member_ids.iter().enumerate() {
            let vocab = if i == 0 { A } else { B };
            let spelled: String = ids.iter().map(|&id| vocab[id as usize]).collect();
            assert_eq!(spelled, "hello world", "member {i}");
        }
        assert_eq!(g.stats.steps, g.stats.tokens + 1);
        assert_eq!(g.stats.ensembled_steps, g.stats.steps);
    }

    #[test]
    fn greedy_on_heads_equals_dense_argmax() {
        // Sampling with top-k 1 always takes the dense path and picks the same argmax.
        let greedy = GenerateOptions {
            max_tokens: 30,
            ..Default::default()
        };
        let dense = GenerateOptions {
            pick: PickConfig {
                temperature: 1.0,
                top_k: 1,
                ..PickConfig::default()
            },
            ..greedy.clone()
        };
        assert_same_tokens_on_noisy_pairs(20, &greedy, &dense);
    }

    #[test]
    fn top_k_union_of_one_is_each_members_own_top_token_voted() {
        // With k = 1 only each member's favourite enters; two members who agree on the target
        // still write it, and k = 0 is rejected.
        let a = ScriptedMember::new("a", A, "hello world");
        let b = ScriptedMember::new("b", B, "hello world");
        let opts = GenerateOptions {
            union_top_k: Some(1),
            ..Default::default()
        };
        let (g, _) = run(vec![boxed(a), boxed(b)], Mode::Average, &opts).unwrap();
        assert_eq!(g.text, "hello world");
        let a = ScriptedMember::new("a", A, "hello world");
        let opts = GenerateOptions {
            union_top_k: Some(0),
            ..Default::default()
        };
        assert!(run(vec![boxed(a)], Mode::Average, &opts).is_err());
        // On noisy members, top-k with k >= the vocabulary equals the full union's argmax.
        let full = GenerateOptions {
            max_tokens: 20,
            ..Default::default()
        };
        let topk = GenerateOptions {
            union_top_k: Some(64),
            ..full.clone()
        };
        assert_same_tokens_on_noisy_pairs(10, &full, &topk);
    }

    #[test]
    fn stop_string_and_max_tokens() {
        let a = ScriptedMember::new("a", A, "hello world");
        let opts = GenerateOptions {
            stop: vec![" wo".into()],
            ..Default::default()
        };
        let (g, streamed) = run(vec![boxed(a)], Mode::Average, &opts).unwrap();
        assert_eq!(
            (g.text.as_str(), streamed.as_str(), g.finish),
            ("hello", "hello", Finish::Stop)
        );
        let a = ScriptedMember::new("a", A, "hello world");
        let opts = GenerateOptions {
            max_tokens: 2,
            ..Default::default()
        };
        let (g, _) = run(vec![boxed(a)], Mode::Average, &opts).unwrap();
        assert_eq!((g.text.as_str(), g.finish), ("hello", Finish::MaxTokens));
    }

    #[test]
    fn gate_threshold_zero_never_ensembles_and_one_always_does() {
        for threshold in [0.0, 1.0] {
            let a = ScriptedMember::new("a", A, "hello world");
            let b = ScriptedMember::new("b", B, "hello world");
            let mode = Mode::Gated {
                gate: 0,
                threshold,
                when_unsure: WhenUnsure::Average,
            };
            let (g, _) = run(vec![boxed(a), boxed(b)], mode, &GenerateOptions::default()).unwrap();
            assert_eq!(g.text, "hello world");
            let want = if threshold == 0.0 { 0 } else { g.stats.steps };
            assert_eq!(g.stats.ensembled_steps, want);
            // Member b was skipped (or not) but its context still spells everything.
            let spelled: String = g.member_ids[1].iter().map(|&id| B[id as usize]).collect();
            assert_eq!(spelled, "hello world");
        }
    }

    #[test]
    fn eager_gated_evaluates_every_member_each_step_and_uses_them_when_unsure() {
        for threshold in [0.0, 0.5, 1.0] {
            let mode = Mode::Gated {
                gate: 0,
                threshold,
                when_unsure: WhenUnsure::Average,
            };
            let [lazy, eager] = [Schedule::Lazy, Schedule::Eager].map(|schedule| {
                let mut a = ScriptedMember::new("a", A, "hello world");
                a.unsure_every = Some(2);
                let b = ScriptedMember::new("b", B, "hello world");
                let opts = GenerateOptions {
                    schedule,
                    ..Default::default()
                };
                run(vec![boxed(a), boxed(b)], mode, &opts).unwrap().0
            });
            assert_eq!(eager.text, "hello world");
            assert_eq!(eager.tokens, lazy.tokens, "t = {threshold}");
            assert_eq!(eager.stats.ensembled_steps, lazy.stats.ensembled_steps);
            // Eager: member b is evaluated at every step, lazily only where the gate is unsure.
            assert_eq!(eager.stats.members[1].decode_evals + 1, eager.stats.steps);
            assert!(
                lazy.stats.members[1].decode_evals < eager.stats.members[1].decode_evals
                    || threshold == 1.0
            );
        }
    }

    #[test]
    fn failing_or_panicking_member_ends_with_its_error() {
        for panic in [false, true] {
            let a = ScriptedMember::new("a", A, "hello world");
            let mut b = ScriptedMember::new("b", B, "hello world");
            if panic {
                b.panic_at = Some(1);
            } else {
                b.fail_at = Some(1);
            }
            let err = run(
                vec![boxed(a), boxed(b)],
                Mode::Average,
                &GenerateOptions::default(),
            )
            .unwrap_err();
            assert!(
                matches!(&err, Error::Member { member, .. } if member == "b"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_input_is_rejected() {
        let mk = || boxed(ScriptedMember::new("a", A, "hi"));
        assert_eq!(
            Ensemble::new(vec![], None, Mode::Average).err(),
            Some(Error::NoMembers)
        );
        let e = Ensemble::new(vec![mk()], Some(vec![-1.0]), Mode::Average)
            .err()
            .unwrap();
        assert!(e.to_string().contains("member[0].weight"), "{e}");
        let gated = |gate, threshold| Mode::Gated {
            gate,
            threshold,
            when_unsure: WhenUnsure::Average,
        };
        assert!(Ensemble::new(vec![mk()], None, gated(1, 0.5)).is_err());
        assert!(Ensemble::new(vec![mk()], None, gated(0, 1.5)).is_err());
        let mut e = Ensemble::new(vec![mk()], None, Mode::Average).unwrap();
        assert_eq!(
            e.generate("", &GenerateOptions::default(), &mut |_| {})
                .err(),
            Some(Error::EmptyPrompt)
        );
        let mut small = ScriptedMember::new("s", A, "hi");
        small.context_size = Some(3);
        let mut e = Ensemble::new(vec![boxed(small)], None, Mode::Average).unwrap();
        let err = e
            .generate("hello world", &GenerateOptions::default(), &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, Error::PromptTooLong { .. }), "{err}");
    }

    #[test]
    fn a_context_too_full_for_the_last_token_keeps_the_generation() {
        // The prompt "he" and "llo" fill the context of 2; the last token, " world", is picked
        // but only pushed at the final flush, which no longer fits.
        let mut a = ScriptedMember::new("a", A, "hello world");
        a.context_size = Some(2);
        let mut e = Ensemble::new(vec![boxed(a)], None, Mode::Average).unwrap();
        let opts = GenerateOptions {
            max_tokens: 2,
            ..Default::default()
        };
        let mut streamed = String::new();
        let g = e
            .generate("he", &opts, &mut |s| streamed.push_str(s))
            .unwrap();
        assert_eq!((g.text.as_str(), g.finish), ("hello", Finish::MaxTokens));
        assert_eq!(streamed, "hello");
        assert!(g.member_ids[0].is_empty());
    }

    /// A member over `pieces` that always returns these logits.
    fn fixed(name: &str, pieces: &[&str], logits: Vec<f32>) -> Box<dyn Member> {
        let mut m = ScriptedMember::new(name, pieces, "");
        m.fixed_logits = Some(logits);
        boxed(m)
    }

    fn three_tokens() -> GenerateOptions {
        GenerateOptions {
            max_tokens: 3,
            ..Default::default()
        }
    }

    #[test]
    fn top_k_union_skips_special_tokens_in_a_members_head() {
        // Both members put most mass on their special token; "h" is next.
        let mut a = vec![0.0; A.len()];
        (a[12], a[1]) = (12.0, 10.0);
        let mut b = vec![0.0; B.len()];
        (b[0], b[1]) = (12.0, 10.0);
        for k in [1, 2] {
            let members = vec![fixed("a", A, a.clone()), fixed("b", B, b.clone())];
            let opts = GenerateOptions {
                union_top_k: Some(k),
                ..three_tokens()
            };
            let (g, _) = run(members, Mode::Average, &opts).unwrap();
            assert_eq!(g.text, "hhh", "k = {k}");
        }
        // Only special tokens in the head: the full distributions decide.
        let mut a = vec![0.0; A.len()];
        (a[12], a[1]) = (30.0, 10.0);
        let opts = GenerateOptions {
            union_top_k: Some(1),
            ..three_tokens()
        };
        let (g, _) = run(vec![fixed("a", A, a)], Mode::Average, &opts).unwrap();
        assert_eq!(g.text, "hhh");
    }

    #[test]
    fn huge_weights_do_not_overflow_to_nothing() {
        let a = ScriptedMember::new("a", A, "hello world");
        let b = ScriptedMember::new("b", B, "hello world");
        let mut e = Ensemble::new(
            vec![boxed(a), boxed(b)],
            Some(vec![3e38, 3e38]),
            Mode::Average,
        )
        .unwrap();
        let g = e
            .generate("hello", &GenerateOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(g.text, "hello world");
    }

    #[test]
    fn a_negative_infinite_logit_is_no_member_error() {
        let mut a = vec![0.0; A.len()];
        (a[1], a[2]) = (5.0, f32::NEG_INFINITY);
        let (g, _) = run(vec![fixed("a", A, a)], Mode::Average, &three_tokens()).unwrap();
        assert_eq!(g.text, "hhh");
    }

    #[test]
    fn greedy_on_heads_counts_every_end_token_outside_the_head() {
        // 5,000 End tokens just under the head floor hold 0.495 together; "x" (0.3) and "y"
        // (0.205) are the only head tokens. The End class is the true argmax.
        let mut pieces = vec!["<end>"; 5000];
        pieces.extend(["x", "y", "hello"]);
        let mut logits = vec![0.99e-4f32.ln(); 5000];
        logits.extend([0.3f32.ln(), 0.205f32.ln(), f32::NEG_INFINITY]);
        let (g, _) = run(
            vec![fixed("a", &pieces, logits)],
            Mode::Average,
            &three_tokens(),
        )
        .unwrap();
        assert_eq!((g.text.as_str(), g.finish), ("", Finish::End));
    }

    #[test]
    fn full_context_finishes_cleanly() {
        let mut a = ScriptedMember::new("a", A, "hello world");
        a.context_size = Some(2);
        let mut e = Ensemble::new(vec![boxed(a)], None, Mode::Average).unwrap();
        let g = e
            .generate("he", &GenerateOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(g.finish, Finish::ContextFull);
    }
}
