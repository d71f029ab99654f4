//! Turns a runtime that owns its decode loop and calls a logits hook at every step (mistral.rs's
//! `CustomLogitsProcessor`, say) into a step-driven [`Member`].
//!
//! The runtime side holds a [`Hook`]: at each step it hands the step's logits to
//! [`Hook::step`] and appends the token that comes back. The ensemble side is a
//! [`BridgeMember`]: [`Member::logits`] hands the ids pushed since its last evaluation to the
//! hook, which forces them one per runtime step (a union token that is several ids for this
//! member takes several steps, without another ensemble step), and waits for the logits after
//! the last of them.
//!
//! A runtime request runs only while the ensemble needs it. While the hook waits for the
//! ensemble's decision, the runtime's step (and so its engine) waits too; so when the gate skips
//! the member ([`Member::idle`]), when the generation ends, or when no decision comes within the
//! timeout, the hook answers the end token and the request ends. The next evaluation starts a
//! new request from the member's whole context. Whether a request is let go depends only on the
//! gate's decisions (or on a stalled ensemble), so outputs stay deterministic. When the runtime
//! stops calling (its engine dropped, an error), the member's evaluation fails after at most the
//! timeout, or at once when the runtime drops the hook or reports the failure.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::member::{Encoder, Member, Message};
use crate::vocab::Vocab;
use crate::{Error, Result};

/// What the bridge needs from a runtime: its tokenizer (the [`Encoder`]), and starting a
/// request.
pub trait Runtime: Encoder {
    /// Starts a generation from `prompt`; the runtime must call `hook.step` once per generated
    /// position and append the token it returns, until that token is the end token. A failure
    /// after the start can be reported with [`Hook::fail`].
    fn start(&mut self, prompt: &[u32], hook: Hook) -> Result<()>;
}

/// What both ends of one runtime request share.
#[derive(Debug, Default)]
struct Exchange {
    state: Mutex<BridgeState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct BridgeState {
    /// Ids the ensemble decided that the runtime has not appended yet.
    forced: VecDeque<u32>,
    /// The runtime's logits at its current position, not yet taken by the member.
    logits: Option<Vec<f32>>,
    /// The request is let go: the hook answers the end token once the forced ids are in.
    released: bool,
    /// The runtime failed (or stopped calling) with this message.
    failed: Option<String>,
}

impl Exchange {
    fn lock(&self) -> MutexGuard<'_, BridgeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, message: String) {
        self.lock().failed.get_or_insert(message);
        self.changed.notify_all();
    }

    fn release(&self) {
        self.lock().released = true;
        self.changed.notify_all();
    }
}

/// The runtime's end of a bridge; `Send + Sync` so it can live inside a logits processor.
#[derive(Debug)]
pub struct Hook {
    exchange: Arc<Exchange>,
    timeout: Duration,
    end_token: u32,
}

impl Hook {
    /// Hands over this step's logits and returns the token to append: the next id the ensemble
    /// forces, or the end token when the request is let go (the member was skipped, the
    /// generation ended, or no decision came within the timeout).
    pub fn step(&self, logits: Vec<f32>) -> u32 {
        let mut state = self.exchange.lock();
        if let Some(id) = state.forced.pop_front() {
            return id; // a position inside a multi-id token or a catch-up: nobody needs its logits
        }
        if state.released {
            return self.end_token;
        }
        state.logits = Some(logits);
        self.exchange.changed.notify_all();
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(id) = state.forced.pop_front() {
                return id;
            }
            if state.released {
                return self.end_token;
            }
            let now = Instant::now();
            if now >= deadline {
                // The ensemble is stalled: free the engine; the member starts a new request
                // when it needs logits again.
                state.released = true;
                state.logits = None;
                self.exchange.changed.notify_all();
                return self.end_token;
            }
            state = self
                .exchange
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Reports that the runtime failed; the member's pending evaluation ends with `message`.
    pub fn fail(&self, message: impl Into<String>) {
        self.exchange.fail(message.into());
    }

    /// A sender for failures that outlives the hook (e.g. for a thread that watches the request).
    pub fn failure_reporter(&self) -> FailureReporter {
        FailureReporter(self.exchange.clone())
    }

    /// The token that ends the runtime's request.
    pub fn end_token(&self) -> u32 {
        self.end_token
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.exchange
            .fail("the runtime stopped (its request or engine is gone)".into());
    }
}

/// Reports a runtime failure to a bridge member; see [`Hook::failure_reporter`].
#[derive(Debug, Clone)]
pub struct FailureReporter(Arc<Exchange>);

impl FailureReporter {
    /// Ends the member's pending evaluation with `message`.
    pub fn fail(&self, message: impl Into<String>) {
        self.0.fail(message.into());
    }
}

/// A [`Member`] whose runtime drives its own decode loop; see the module doc.
pub struct BridgeMember<R: Runtime> {
    name: String,
    runtime: R,
    end_token: u32,
    timeout: Duration,
    /// The running request, if any.
    request: Option<Arc<Exchange>>,
    /// Everything pushed since the last reset, prompt included.
    context: Vec<u32>,
    /// How much of `context` the running request has been given.
    sent: usize,
    logits: Vec<f32>,
}

impl<R: Runtime> BridgeMember<R> {
    /// A member over `runtime`; `end_token` is the token that ends a runtime request (it must be
    /// an End token of the runtime's vocabulary). The timeout bounds every wait on either side.
    pub fn new(
        name: impl Into<String>,
        runtime: R,
        end_token: u32,
        timeout: Duration,
    ) -> Result<Self> {
        let name = name.into();
        if runtime.vocab().get(end_token) != Some(&crate::vocab::Token::End) {
            return Err(Error::vocab(
                &name,
                format!("token {end_token} is not an end-of-generation token"),
            ));
        }
        Ok(Self {
            name,
            runtime,
            end_token,
            timeout,
            request: None,
            context: Vec::new(),
            sent: 0,
            logits: Vec::new(),
        })
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    fn start(&mut self) -> Result<Arc<Exchange>> {
        if self.context.is_empty() {
            return Err(Error::member(
                &self.name,
                "evaluated before a prompt was pushed",
            ));
        }
        let exchange = Arc::new(Exchange::default());
        let hook = Hook {
            exchange: exchange.clone(),
            timeout: self.timeout,
            end_token: self.end_token,
        };
        self.runtime.start(&self.context, hook)?;
        self.sent = self.context.len();
        self.request = Some(exchange.clone());
        Ok(exchange)
    }

    /// Lets the running request go (the runtime appends what it was given, then the end token).
    fn release(&mut self) {
        if let Some(exchange) = self.request.take() {
            exchange.release();
        }
    }

    /// Waits for the logits after everything pushed, or the request's end.
    fn wait(&mut self, exchange: &Exchange) -> Result<Option<Vec<f32>>> {
        let deadline = Instant::now() + self.timeout;
        let mut state = exchange.lock();
        state.forced.extend(&self.context[self.sent..]);
        exchange.changed.notify_all();
        loop {
            if let Some(logits) = state.logits.take() {
                return Ok(Some(logits));
            }
            if state.released {
                return Ok(None); // let go by a stalled hook: start again
            }
            if let Some(message) = &state.failed {
                return Err(Error::member(
                    &self.name,
                    format!("runtime error: {message}"),
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::member(
                    &self.name,
                    format!("no logits from the runtime within {:?}", self.timeout),
                ));
            }
            state = exchange
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl<R: Runtime> Encoder for BridgeMember<R> {
    fn vocab(&self) -> &Vocab {
        self.runtime.vocab()
    }

    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        self.runtime.encode(text)
    }

    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.runtime.encode_prompt(prompt)
    }

    fn encode_messages(&self, messages: &[Message]) -> Option<Result<Vec<u32>>> {
        self.runtime.encode_messages(messages)
    }

    fn context_size(&self) -> Option<usize> {
        self.runtime.context_size()
    }
}

impl<R: Runtime> Member for BridgeMember<R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn reset(&mut self) -> Result<()> {
        self.release();
        self.context.clear();
        self.sent = 0;
        Ok(())
    }

    fn push(&mut self, ids: &[u32]) -> Result<()> {
        if let Some(context) = self.context_size() {
            if self.context.len() + ids.len() > context {
                return Err(Error::ContextFull {
                    member: self.name.clone(),
                    context,
                });
            }
        }
        self.context.extend_from_slice(ids);
        Ok(())
    }

    fn logits(&mut self) -> Result<&[f32]> {
        if self.request.is_some() && self.sent == self.context.len() {
            return Ok(&self.logits); // nothing pushed since the last evaluation
        }
        // At most twice: a request let go by a stalled hook is started again once.
        for _ in 0..2 {
            let exchange = match &self.request {
                Some(exchange) => exchange.clone(),
                None => self.start()?,
            };
            let logits = self.wait(&exchange)?;
            self.sent = self.context.len();
            match logits {
                Some(logits) => {
                    self.logits = logits;
                    return Ok(&self.logits);
                }
                None => self.request = None,
            }
        }
        Err(Error::member(
            &self.name,
            format!(
                "the runtime let its request go twice (no decision within {:?})",
                self.timeout
            ),
        ))
    }

    fn idle(&mut self) {
        self.release();
    }

    fn finish(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests;
