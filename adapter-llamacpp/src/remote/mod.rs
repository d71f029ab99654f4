//! Members that run in a llama-server, on this machine or another, reached over HTTP.
//!
//! gac keeps the member's vocabulary (read from the GGUF file the server runs, without its
//! weights) and its context as token ids. Each evaluation sends the whole context to the
//! server's `/completion` with its prompt cache on and a pinned slot, so the server evaluates
//! only what its cache lacks (a member the gate skipped catches up in one request), and asks
//! for the `n_probs` most probable next tokens. The first evaluation of a generation evaluates
//! the whole prompt unless [`RemoteOptions::prompt_cache`] says otherwise, because llama.cpp's
//! logits depend on how a prompt is split into batches (as for a local member's
//! [`LlamaOptions::prompt_cache`](crate::LlamaOptions::prompt_cache)). The member hands back
//! that head, with probabilities over the whole vocabulary ([`Evaluation::Head`]). The full
//! distribution, when the ensemble needs it at a greedy step the heads cannot decide, is the
//! same request with every id listed (slow: megabytes of JSON).

/// The [`Member`] methods a remote member leaves to its `context` ([`context::Context`]) and
/// its `server` ([`server::Server`]): name, reset, push, the top-k union and the interrupt.
macro_rules! remote_member_basics {
    () => {
        fn name(&self) -> &str {
            self.context.name()
        }

        fn reset(&mut self) -> gac_core::Result<()> {
            self.context.reset();
            Ok(())
        }

        fn push(&mut self, ids: &[u32]) -> gac_core::Result<()> {
            self.context.push(ids)
        }

        fn set_union_top_k(&mut self, k: Option<usize>) {
            self.context.set_union_top_k(k);
        }

        fn watch(&mut self, interrupt: gac_core::Interrupt) {
            self.server.watch(interrupt);
        }
    };
}

mod context;
mod openai;
mod server;

pub use openai::{OpenAiMember, OpenAiOptions, API_KEY_ENV};

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gac_core::vocab::Token;
use gac_core::{Encoder, Evaluation, Member, Vocab};
use serde::Deserialize;
use serde_json::json;

use crate::LoadError;
use context::Context;
use server::{Completion, Failure, Server};

/// How many most probable tokens a remote member asks for each step unless told otherwise.
pub const DEFAULT_N_PROBS: usize = 20;

/// How long a remote member waits for one answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a remote member's server is and how it is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOptions {
    /// The llama-server's address, `http://HOST:PORT`.
    pub url: String,
    /// How many most probable tokens each step asks for (llama-server's `n_probs`); more when
    /// the generation's top-k union takes more.
    pub n_probs: usize,
    /// The server slot the member's requests go to, so that its prompt cache stays this
    /// member's context (llama-server's `id_slot`).
    pub slot: u32,
    /// The longest wait for one answer (and for a loading server to become ready).
    pub timeout: Duration,
    /// How many more times a failed step is tried before the member fails.
    pub retries: u32,
    /// Let a prompt start from what the server's slot has cached from the previous context
    /// (default: off; each generation's prompt is evaluated whole, so that its output does
    /// not depend on what came before).
    pub prompt_cache: bool,
}

impl RemoteOptions {
    /// The server at `url`, 20 tokens a step, slot 0, 60 s per answer, 2 retries.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            n_probs: DEFAULT_N_PROBS,
            slot: 0,
            timeout: DEFAULT_TIMEOUT,
            retries: 2,
            prompt_cache: false,
        }
    }
}

/// What a remote member's requests cost, counted as they are answered and shared with
/// whoever measures them.
#[derive(Debug, Default)]
pub struct RemoteClock {
    requests: AtomicU64,
    positions: AtomicU64,
    wall_us: AtomicU64,
    server_us: AtomicU64,
}

/// A [`RemoteClock`]'s counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteTotals {
    /// Requests answered.
    pub requests: u64,
    /// Positions the server evaluated for them (not taken from its cache).
    pub positions: u64,
    /// Their wall time here.
    pub wall: Duration,
    /// The time the server reported for them (evaluation and sampling): `wall` minus this is
    /// the HTTP round trip, the JSON on both sides and the server's own bookkeeping.
    pub server: Duration,
}

impl RemoteClock {
    /// The counts so far.
    pub fn totals(&self) -> RemoteTotals {
        RemoteTotals {
            requests: self.requests.load(Ordering::Relaxed),
            positions: self.positions.load(Ordering::Relaxed),
            wall: Duration::from_micros(self.wall_us.load(Ordering::Relaxed)),
            server: Duration::from_micros(self.server_us.load(Ordering::Relaxed)),
        }
    }

    fn record(&self, positions: usize, wall: Duration, server: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.positions
            .fetch_add(positions as u64, Ordering::Relaxed);
        self.wall_us
            .fetch_add(wall.as_micros() as u64, Ordering::Relaxed);
        self.server_us
            .fetch_add(server.as_micros() as u64, Ordering::Relaxed);
    }
}

/// An ensemble member whose model runs in a llama-server.
pub struct RemoteMember {
    text: Box<dyn Encoder>,
    server: Server,
    n_probs: usize,
    slot: u32,
    /// A token of plain ASCII text, for the server to sample (see [`Server::complete`]).
    plain: u32,
    prompt_cache: bool,
    context: Context,
    reused: usize,
    clock: Arc<RemoteClock>,
}

impl std::fmt::Debug for RemoteMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMember")
            .field("name", &self.context.name())
            .field("url", &self.server.url)
            .field("slot", &self.slot)
            .field("tokens", &self.context.tokens.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Props {
    default_generation_settings: Settings,
    total_slots: u32,
    #[serde(default)]
    model_path: String,
}

#[derive(Deserialize)]
struct Settings {
    n_ctx: usize,
}

#[derive(Deserialize)]
struct Models {
    data: Vec<ModelInfo>,
}

#[derive(Deserialize)]
struct ModelInfo {
    meta: Option<ModelMeta>,
}

#[derive(Deserialize)]
struct ModelMeta {
    n_vocab: usize,
}

#[derive(Deserialize)]
struct Detokenized {
    content: String,
}

/// How many of the vocabulary's text tokens are compared with the server's.
const SAMPLED_IDS: usize = 32;

impl RemoteMember {
    /// Connects to the llama-server at `options.url`, whose model's vocabulary `text` is
    /// (read from `vocab_file`, named in errors): waits until the server has loaded its model,
    /// then checks that its vocabulary is that one (size, and the text of sampled ids) and
    /// that the slot exists.
    pub fn connect(
        name: impl Into<String>,
        text: Box<dyn Encoder>,
        vocab_file: &Path,
        options: &RemoteOptions,
    ) -> Result<Self, LoadError> {
        let url = options.url.trim_end_matches('/').to_string();
        let fail = |message: String| LoadError::Remote(url.clone(), message);
        if !url.starts_with("http://") {
            return Err(fail("the address must start with http://".into()));
        }
        let plain = plain_token(text.vocab()).ok_or_else(|| {
            fail(format!(
                "{} has no token of plain ASCII text (needed to keep the server's answers whole)",
                vocab_file.display()
            ))
        })?;
        let server = Server::new(&url, "a llama-server", options.timeout, options.retries);
        match wait_until_ready(&server, "/health", options.timeout).map_err(fail)? {
            200 => {}
            code => return Err(fail(format!("/health answered {code}"))),
        }
        let props: Props = server.get("/props").map_err(|e| fail(e.into()))?;
        if options.slot >= props.total_slots {
            return Err(fail(format!(
                "slot {} asked for, but the server has {} (start it with --parallel {} or more)",
                options.slot,
                props.total_slots,
                options.slot + 1
            )));
        }
        let models: Models = server.get("/v1/models").map_err(|e| fail(e.into()))?;
        let n_vocab = models
            .data
            .first()
            .and_then(|m| m.meta.as_ref())
            .map(|m| m.n_vocab);
        check_vocab(&server, text.vocab(), n_vocab).map_err(|e| {
            fail(format!(
                "it runs {}, whose vocabulary is not the one of {}: {e}",
                props.model_path,
                vocab_file.display()
            ))
        })?;
        // llama-server refuses a request that fills its slot's whole context (it keeps room for
        // the token it predicts): one position less is what a context may hold here.
        let size = props.default_generation_settings.n_ctx.saturating_sub(1);
        Ok(Self {
            context: Context::new(name, size, text.vocab().len()),
            text,
            server,
            n_probs: options.n_probs.max(1),
            slot: options.slot,
            plain,
            prompt_cache: options.prompt_cache,
            reused: 0,
            clock: Arc::default(),
        })
    }

    /// The member's request times, shared: read it while the member works in an ensemble.
    pub fn clock(&self) -> Arc<RemoteClock> {
        self.clock.clone()
    }

    fn fail(&self, message: impl std::fmt::Display) -> gac_core::Error {
        gac_core::Error::member(self.context.name(), format!("llama-server {message}"))
    }

    /// Sends the context, asking for `n_probs` next tokens.
    fn request(&mut self, n_probs: usize) -> gac_core::Result<Completion> {
        let tokens = &self.context.tokens;
        if tokens.is_empty() {
            return Err(self.fail("asked for logits with nothing to evaluate"));
        }
        let started = Instant::now();
        let answer = self
            .server
            .complete(
                tokens,
                n_probs,
                Some(self.slot),
                self.plain,
                self.prompt_cache || !self.context.fresh,
            )
            .map_err(|e| match e {
                Failure::Interrupted => gac_core::Error::Interrupted {
                    member: self.context.name().to_string(),
                },
                e => self.fail(e),
            })?;
        self.context.fresh = false;
        self.clock
            .record(answer.evaluated(), started.elapsed(), answer.server_time());
        self.reused = answer.cached();
        let n_vocab = self.text.vocab().len();
        if answer.evaluated() + answer.cached() < self.context.tokens.len() {
            return Err(self.fail(format!(
                "{} evaluated {} positions and took {} from its cache for a context of {}",
                self.server.url,
                answer.evaluated(),
                answer.cached(),
                self.context.tokens.len()
            )));
        }
        match answer
            .candidates()
            .iter()
            .find(|c| c.id as usize >= n_vocab)
        {
            _ if answer.candidates().is_empty() => {
                Err(self.fail(format!("{} listed no next tokens", self.server.url)))
            }
            Some(c) => Err(self.fail(format!(
                "{} listed token id {}, outside the vocabulary of {n_vocab}",
                self.server.url, c.id
            ))),
            None => Ok(answer),
        }
    }
}

/// The first token that stands for ASCII letters or digits only.
fn plain_token(vocab: &Vocab) -> Option<u32> {
    vocab
        .tokens()
        .iter()
        .position(|t| matches!(t, Token::Text(b) if b.iter().all(u8::is_ascii_alphanumeric)))
        .map(|id| id as u32)
}

/// How long a server may refuse connections at start-up (it may be starting too).
const REFUSED_AT_START: Duration = Duration::from_secs(3);

/// Polls `path` until the server answers other than 503, and returns that status: for at most
/// `timeout` while it answers 503 (loading its model), for a few seconds while nothing answers.
fn wait_until_ready(server: &Server, path: &str, timeout: Duration) -> Result<u16, String> {
    let started = Instant::now();
    loop {
        let status = server.status(path);
        if let Some(code) = status.filter(|&code| code != 503) {
            return Ok(code);
        }
        let patience = match status {
            None => REFUSED_AT_START.min(timeout),
            Some(_) => timeout,
        };
        if started.elapsed() >= patience {
            return Err(match status {
                Some(_) => format!("still loading its model after {timeout:?}"),
                None => format!(
                    "no answer on {path} within {patience:?} (is {} running there?)",
                    server.kind()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Compares the server's vocabulary with ours: its size, and the text of a sample of ids
/// spread over the vocabulary (those that stand for whole UTF-8 text), detokenized by the
/// server.
fn check_vocab(server: &Server, vocab: &Vocab, n_vocab: Option<usize>) -> Result<(), String> {
    if let Some(n) = n_vocab {
        if n != vocab.len() {
            return Err(format!("{n} tokens there, {} here", vocab.len()));
        }
    }
    let texts: Vec<(u32, &str)> = vocab
        .tokens()
        .iter()
        .enumerate()
        .filter_map(|(id, t)| match t {
            Token::Text(bytes) => std::str::from_utf8(bytes).ok().map(|s| (id as u32, s)),
            _ => None,
        })
        .collect();
    let every = (texts.len() / SAMPLED_IDS).max(1);
    for &(id, ours) in texts.iter().step_by(every) {
        let theirs: Detokenized = server.post("/detokenize", &json!({ "tokens": [id] }))?;
        if theirs.content != ours {
            return Err(format!(
                "token {id} is {:?} there, {ours:?} here",
                theirs.content
            ));
        }
    }
    Ok(())
}

encoder_from_text!(RemoteMember, context.size);

impl Member for RemoteMember {
    remote_member_basics!();

    fn reused(&self) -> usize {
        self.reused
    }

    fn evaluate(&mut self) -> gac_core::Result<Evaluation<'_>> {
        let answer = self.request(self.context.asked(self.n_probs))?;
        let listed = answer.candidates().iter().map(|c| (c.id, c.logprob));
        Ok(self.context.head(listed))
    }

    fn logits(&mut self) -> gac_core::Result<&[f32]> {
        let answer = self.request(self.text.vocab().len())?;
        let listed = answer.candidates().iter().map(|c| (c.id, c.logprob));
        Ok(self.context.logits(listed))
    }
}
