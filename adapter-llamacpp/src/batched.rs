//! Several members on one llama.cpp context, for a server's slots: each member is one sequence
//! of the context and belongs to its own ensemble, and the evaluations that the members ask for
//! at about the same time run as one batched decode, the way llama-server batches its slots.
//!
//! A member that asks for logits leaves its request and waits. The first waiting member that
//! finds the context free decodes every pending request in one batch, once every other active
//! member has asked too, or once the requests have waited a window (twice the last decode,
//! within [`BATCH_WINDOW`]) since they were made or since the context became free, whichever
//! is later: a slot that fell out of step with the others waits for them once and then stays
//! in step. Members join and leave between decodes. A member is active from its first evaluation of a generation
//! until the gate skips it or the generation ends. llama.cpp's logits depend on how a batch is
//! made up, so a member's output can differ slightly from the same request decoded alone.
//!
//! [`Batching::Invariant`] trades that throughput for reproducible numerics: each sequence keeps
//! a KV cache of its own and every decode holds one sequence's tokens only, oldest request
//! first, so a member's logits are bit for bit those of the same request decoded alone.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gac_core::Member;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::model_text::ModelText;
use crate::{backend, context, LlamaOptions, LoadError};

/// The shortest and the longest a request waits for the other active members before it is
/// decoded without them.
pub const BATCH_WINDOW: (Duration, Duration) =
    (Duration::from_millis(2), Duration::from_millis(50));

/// How a [`SharedContext`] decodes the requests of its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batching {
    /// The requests made at about the same time share one decode (faster under load).
    #[default]
    Shared,
    /// One sequence per decode, each with a KV cache of its own: a member's logits never
    /// depend on the other members' requests.
    Invariant,
}

/// One context whose sequences are members; see the module doc.
pub struct SharedContext {
    shared: Arc<Shared>,
    text: Arc<ModelText>,
    sequences: usize,
    context_size: usize,
    prompt_cache: bool,
}

struct Shared {
    state: Mutex<SharedState>,
    wake: Condvar,
    batch_size: usize,
    batching: Batching,
}

struct SharedState {
    /// `None` while a member decodes with it.
    engine: Option<Engine>,
    sequences: Vec<Sequence>,
    /// Decodes run and evaluations served, for [`SharedContext::batching`].
    decodes: u64,
    evaluations: u64,
    decode_time: Duration,
    /// When the last decode ended, and how long it took.
    freed_at: Instant,
    last_decode: Duration,
}

impl SharedState {
    /// How long pending requests wait for the other active members.
    fn window(&self) -> Duration {
        (self.last_decode * 2).clamp(BATCH_WINDOW.0, BATCH_WINDOW.1)
    }
}

struct Engine {
    // Declared before `_model`, so it is dropped first: it borrows the model.
    ctx: LlamaContext<'static>,
    batch: LlamaBatch<'static>,
    _model: Arc<LlamaModel>,
}

#[derive(Default)]
struct Sequence {
    /// Expected to ask for logits soon (see the module doc).
    active: bool,
    /// The ids in the KV cache for this sequence, at positions 0, 1, ...
    cached: Vec<u32>,
    /// A pending evaluation.
    request: Option<Request>,
    /// The last evaluation's logits, or why it failed.
    result: Option<Result<Vec<f32>, String>>,
    /// Buffers of earlier steps, reused so that a step allocates nothing proportional to the
    /// context or the vocabulary: the last request's ids, and the member's previous logits.
    spare_tokens: Vec<u32>,
    spare_logits: Vec<f32>,
}

struct Request {
    /// The member's whole context.
    tokens: Vec<u32>,
    /// Whether the cached prefix may be reused (false for the first evaluation after a reset).
    reuse: bool,
    since: Instant,
}

impl SharedContext {
    /// A context on `model` with room for `sequences` members of `options.context` tokens each
    /// (default: the model's training context, at most 4096).
    pub fn new(
        name: String,
        model: Arc<LlamaModel>,
        path: &Path,
        options: &LlamaOptions,
        sequences: usize,
        batching: Batching,
    ) -> Result<Self, LoadError> {
        if options.device_top_k.is_some() {
            return Err(LoadError::Context(
                path.to_path_buf(),
                "the device-side top-k needs a context of its own, not one shared by several \
                 sequences (serve it with one slot)"
                    .into(),
            ));
        }
        let sequences = sequences.max(1);
        let text = Arc::new(ModelText::new(name, model.clone(), path)?);
        let (params, shape) = context::params(&model, options, sequences as u32);
        let params = params
            .with_n_seq_max(sequences as u32)
            .with_kv_unified(batching == Batching::Shared);
        let ctx = model
            .new_context(backend(), params)
            .map_err(|e| LoadError::Context(path.to_path_buf(), e.to_string()))?;
        // SAFETY: the context borrows the model, which lives in an `Arc` that `Engine` keeps
        // alive for as long as the context; `ctx` is declared first, so it is dropped first.
        let ctx = unsafe { std::mem::transmute::<LlamaContext<'_>, LlamaContext<'static>>(ctx) };
        let engine = Engine {
            ctx,
            batch: LlamaBatch::new(shape.batch as usize, 1),
            _model: model,
        };
        let state = SharedState {
            engine: Some(engine),
            sequences: (0..sequences).map(|_| Sequence::default()).collect(),
            decodes: 0,
            evaluations: 0,
            decode_time: Duration::ZERO,
            freed_at: Instant::now(),
            last_decode: Duration::ZERO,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                wake: Condvar::new(),
                batch_size: shape.batch as usize,
                batching,
            }),
            text,
            sequences,
            context_size: shape.per_sequence as usize,
            prompt_cache: options.prompt_cache,
        })
    }

    /// One member per sequence, each named after the model.
    pub fn members(&self) -> Vec<BatchedMember> {
        (0..self.sequences)
            .map(|seq| BatchedMember {
                seq,
                shared: self.shared.clone(),
                text: self.text.clone(),
                tokens: Vec::new(),
                logits: Vec::new(),
                context_size: self.context_size,
                reuse: false,
                prompt_cache: self.prompt_cache,
            })
            .collect()
    }

    /// Decodes run so far, the evaluations they served (more evaluations than decodes:
    /// batching happened) and their time.
    pub fn batching(&self) -> (u64, u64, Duration) {
        let state = self.shared.lock();
        (state.decodes, state.evaluations, state.decode_time)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        // A panic while locked is caught before it can poison the state (see `lead`).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves a request for `seq` and waits for its logits (decoding them itself, with every
    /// other pending request, when it is its turn).
    fn evaluate(
        &self,
        seq: usize,
        tokens: &[u32],
        reuse: bool,
        out: &mut Vec<f32>,
    ) -> Result<(), String> {
        let mut state = self.lock();
        let me = &mut state.sequences[seq];
        me.active = true;
        me.result = None;
        let mut ids = std::mem::take(&mut me.spare_tokens);
        ids.clear();
        ids.extend_from_slice(tokens);
        me.request = Some(Request {
            tokens: ids,
            reuse,
            since: Instant::now(),
        });
        loop {
            let me = &mut state.sequences[seq];
            if let Some(result) = me.result.take() {
                me.spare_logits = std::mem::replace(out, result?);
                return Ok(());
            }
            let oldest = state
                .sequences
                .iter()
                .filter_map(|s| s.request.as_ref())
                .map(|r| r.since.max(state.freed_at))
                .min();
            let everyone = state
                .sequences
                .iter()
                .all(|s| !s.active || s.request.is_some());
            let waited = oldest.map_or(Duration::ZERO, |t| t.elapsed());
            let window = state.window();
            let alone = self.batching == Batching::Invariant;
            if state.engine.is_some() && oldest.is_some() && (alone || everyone || waited >= window)
            {
                state = self.lead(state);
                continue;
            }
            let wait = window
                .saturating_sub(waited)
                .max(Duration::from_micros(200));
            state = self
                .wake
                .wait_timeout(state, wait)
                .map_or_else(|e| e.into_inner().0, |r| r.0);
        }
    }

    /// Takes the engine and every pending request (only the oldest one under
    /// [`Batching::Invariant`]), decodes them without holding the lock, and hands back the
    /// results.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, SharedState>) -> MutexGuard<'a, SharedState> {
        let only = match self.batching {
            Batching::Shared => None,
            Batching::Invariant => {
                let oldest = (state.sequences.iter().enumerate())
                    .filter_map(|(seq, s)| Some((s.request.as_ref()?.since, seq)))
                    .min();
                match oldest {
                    Some((_, seq)) => Some(seq),
                    None => return state, // nothing pending
                }
            }
        };
        let Some(mut engine) = state.engine.take() else {
            return state; // another member decodes
        };
        let mut work: Vec<Work> = state
            .sequences
            .iter_mut()
            .enumerate()
            .filter(|(seq, _)| only.is_none_or(|o| o == *seq))
            .filter_map(|(seq, s)| {
                let request = s.request.take()?;
                Some(Work {
                    seq,
                    request,
                    cached: std::mem::take(&mut s.cached),
                    logits: std::mem::take(&mut s.spare_logits),
                    result: None,
                })
            })
            .collect();
        drop(state);
        let started = Instant::now();
        let decodes = catch_unwind(AssertUnwindSafe(|| {
            decode_all(&mut engine, &mut work, self.batch_size)
        }))
        .unwrap_or(0);
        let mut state = self.lock();
        state.engine = Some(engine);
        state.freed_at = Instant::now();
        let took = started.elapsed();
        state.last_decode = took;
        state.decode_time += took;
        state.decodes += decodes;
        state.evaluations += work.len() as u64;
        for w in work {
            let s = &mut state.sequences[w.seq];
            s.cached = w.cached;
            s.spare_tokens = w.request.tokens;
            s.spare_logits = w.logits;
            s.result = Some(
                w.result
                    .unwrap_or_else(|| Err("the batched decode panicked".into())),
            );
        }
        self.wake.notify_all();
        state
    }

    /// The member will not ask for logits for a while: nobody waits for it.
    fn rest(&self, seq: usize) {
        let mut state = self.lock();
        state.sequences[seq].active = false;
        drop(state);
        self.wake.notify_all();
    }
}

/// One sequence's part of a batched decode.
struct Work {
    seq: usize,
    request: Request,
    cached: Vec<u32>,
    /// The buffer the logits are copied into.
    logits: Vec<f32>,
    result: Option<Result<Vec<f32>, String>>,
}

/// Decodes every request's tokens past its cached prefix in batches of up to `batch_size`,
/// each sequence's last token with logits; returns the number of decodes.
fn decode_all(engine: &mut Engine, work: &mut [Work], batch_size: usize) -> u64 {
    for w in work.iter_mut() {
        trim_cache(&mut engine.ctx, w);
    }
    let mut decodes = 0;
    // (work index, next position) of what is still to evaluate.
    let mut next: Vec<usize> = work.iter().map(|w| w.cached.len()).collect();
    loop {
        engine.batch.clear();
        let mut rows = Vec::new();
        let mut added = vec![0usize; work.len()];
        for (i, w) in work.iter().enumerate() {
            let total = w.request.tokens.len();
            while next[i] + added[i] < total && (engine.batch.n_tokens() as usize) < batch_size {
                let pos = next[i] + added[i];
                let last = pos + 1 == total;
                let token = LlamaToken(w.request.tokens[pos] as i32);
                if engine
                    .batch
                    .add(token, pos as i32, &[w.seq as i32], last)
                    .is_err()
                {
                    break;
                }
                added[i] += 1;
                if last {
                    rows.push((i, engine.batch.n_tokens() - 1));
                }
            }
        }
        if engine.batch.n_tokens() == 0 {
            return decodes;
        }
        decodes += 1;
        if let Err(e) = engine.ctx.decode(&mut engine.batch) {
            for (i, w) in work.iter_mut().enumerate() {
                if added[i] > 0 || next[i] < w.request.tokens.len() {
                    let _ = engine
                        .ctx
                        .clear_kv_cache_seq(Some(w.seq as u32), None, None);
                    w.cached.clear();
                    w.result = Some(Err(format!("llama.cpp decode failed: {e}")));
                    next[i] = w.request.tokens.len();
                }
            }
            continue;
        }
        for (i, w) in work.iter_mut().enumerate() {
            w.cached
                .extend_from_slice(&w.request.tokens[next[i]..next[i] + added[i]]);
            next[i] += added[i];
        }
        for (i, row) in rows {
            let mut logits = std::mem::take(&mut work[i].logits);
            logits.clear();
            logits.extend_from_slice(engine.ctx.get_logits_ith(row));
            work[i].result = Some(Ok(logits));
        }
    }
}

/// Drops the sequence's cached positions past the longest prefix it shares with the request
/// (none when the request may not reuse them); at least the last id is left to evaluate.
fn trim_cache(ctx: &mut LlamaContext<'static>, w: &mut Work) {
    let common = match w.request.reuse {
        true => context::common_prefix(&w.cached, &w.request.tokens),
        false => 0,
    };
    if common == w.cached.len() {
        return;
    }
    let seq = w.seq as u32;
    if context::keep_prefix(ctx, seq, common) {
        w.cached.truncate(common);
    } else {
        let _ = ctx.clear_kv_cache_seq(Some(seq), None, None);
        w.cached.clear();
    }
}

/// A member that is one sequence of a [`SharedContext`].
pub struct BatchedMember {
    seq: usize,
    shared: Arc<Shared>,
    text: Arc<ModelText>,
    /// Every id pushed since the last reset, prompt included.
    tokens: Vec<u32>,
    logits: Vec<f32>,
    context_size: usize,
    /// Whether the next evaluation may reuse the sequence's cached prefix.
    reuse: bool,
    /// Whether the cache outlives a reset (see [`LlamaOptions::prompt_cache`]).
    prompt_cache: bool,
}

encoder_from_text!(BatchedMember);

impl Member for BatchedMember {
    fn name(&self) -> &str {
        &self.text.name
    }

    fn reset(&mut self) -> gac_core::Result<()> {
        self.tokens.clear();
        self.reuse = self.prompt_cache;
        Ok(())
    }

    fn push(&mut self, ids: &[u32]) -> gac_core::Result<()> {
        self.text.append(&mut self.tokens, ids, self.context_size)
    }

    fn logits(&mut self) -> gac_core::Result<&[f32]> {
        if self.tokens.is_empty() {
            return Err(self.text.fail("asked for logits with nothing to evaluate"));
        }
        self.shared
            .evaluate(self.seq, &self.tokens, self.reuse, &mut self.logits)
            .map_err(|e| self.text.fail(e))?;
        self.reuse = true;
        Ok(&self.logits)
    }

    fn idle(&mut self) {
        self.shared.rest(self.seq);
    }

    fn finish(&mut self) {
        self.shared.rest(self.seq);
    }
}
