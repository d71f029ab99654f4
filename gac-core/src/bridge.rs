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

use crate::member::Member;
use crate::vocab::Vocab;
use crate::{Error, Result};

/// What the bridge needs from a runtime: starting a request, and its tokenizer.
pub trait Runtime: Send {
    /// Starts a generation from `prompt`; the runtime must call `hook.step` once per generated
    /// position and append the token it returns, until that token is the end token. A failure
    /// after the start can be reported with [`Hook::fail`].
    fn start(&mut self, prompt: &[u32], hook: Hook) -> Result<()>;

    /// The runtime's own ids for a piece of text, no special tokens added; see
    /// [`Member::encode`].
    fn encode(&self, text: &[u8]) -> Result<Vec<u32>>;

    /// The ids of a prompt with whatever the model expects around it; see
    /// [`Member::encode_prompt`].
    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>>;

    /// One user message in the model's chat template, as the runtime's own ids; see
    /// [`Member::encode_chat`].
    fn encode_chat(&self, _user: &str) -> Option<Result<Vec<u32>>> {
        None
    }

    /// The context window in tokens, if bounded.
    fn context_size(&self) -> Option<usize> {
        None
    }
}

/// What both ends of one runtime request share.
#[derive(Debug, Default)]
struct Exchange {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
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
    fn lock(&self) -> MutexGuard<'_, State> {
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
    vocab: Vocab,
    runtime: R,
    end_token: u32,
    timeout: Duration,
    /// The running request, if any.
    request: Option<Arc<Exchange>>,
    /// Everything pushed since the last reset, prompt included.
    context: Vec<u32>,
    /// How much of `context` the running request has been given.
    sent: usize,
    /// Requests started since the last reset.
    requests: usize,
    logits: Vec<f32>,
}

impl<R: Runtime> BridgeMember<R> {
    /// A member over `runtime`, whose vocabulary is `vocab`; `end_token` is the token that
    /// ends a runtime request (it must be an End token of `vocab`). The timeout bounds every wait
    /// on either side.
    pub fn new(
        name: impl Into<String>,
        vocab: Vocab,
        runtime: R,
        end_token: u32,
        timeout: Duration,
    ) -> Result<Self> {
        let name = name.into();
        if vocab.get(end_token) != Some(&crate::vocab::Token::End) {
            return Err(Error::vocab(
                &name,
                format!("token {end_token} is not an end-of-generation token"),
            ));
        }
        Ok(Self {
            name,
            vocab,
            runtime,
            end_token,
            timeout,
            request: None,
            context: Vec::new(),
            sent: 0,
            requests: 0,
            logits: Vec::new(),
        })
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// Runtime requests started since the last reset: one, plus one for every time the member
    /// was needed again after its request was let go.
    pub fn requests(&self) -> usize {
        self.requests
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
        self.requests += 1;
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

impl<R: Runtime> Member for BridgeMember<R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        self.runtime.encode(text)
    }

    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.runtime.encode_prompt(prompt)
    }

    fn encode_chat(&self, user: &str) -> Option<Result<Vec<u32>>> {
        self.runtime.encode_chat(user)
    }

    fn context_size(&self) -> Option<usize> {
        self.runtime.context_size()
    }

    fn reset(&mut self) -> Result<()> {
        self.release();
        self.context.clear();
        self.sent = 0;
        self.requests = 0;
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
mod tests {
    use super::*;
    use crate::testutil::ScriptedMember;
    use crate::{Ensemble, GenerateOptions, Mode, WhenUnsure};
    use std::sync::Arc;
    use std::time::Instant;

    /// Per request: the prompt it started from and every token the runtime appended.
    type Log = Arc<Mutex<Vec<(Vec<u32>, Vec<u32>)>>>;

    /// A runtime that owns its decode loop on its own thread, like an inference engine: it asks
    /// a scripted model for logits, calls the hook, appends what comes back.
    struct ThreadRuntime {
        model: Arc<Mutex<ScriptedMember>>,
        /// Every token the runtime appended, per request.
        log: Log,
        /// Stop calling the hook after this many steps, as if the engine were dropped.
        die_after: Option<usize>,
        /// The length of the test prompt: what a request starts from beyond it was generated
        /// (the scripted model writes its target after the prompt).
        prompt_len: usize,
    }

    impl Runtime for ThreadRuntime {
        fn start(&mut self, prompt: &[u32], hook: Hook) -> Result<()> {
            let (model, log, die_after) = (self.model.clone(), self.log.clone(), self.die_after);
            let prompt = prompt.to_vec();
            let prompt_len = self.prompt_len;
            std::thread::spawn(move || {
                // The model is locked per call only: the tokenizer is used meanwhile.
                model.lock().unwrap().reset().unwrap();
                model.lock().unwrap().push(&prompt[..prompt_len]).unwrap();
                model.lock().unwrap().push(&prompt[prompt_len..]).unwrap();
                let request = {
                    let mut log = log.lock().unwrap();
                    log.push((prompt.clone(), Vec::new()));
                    log.len() - 1
                };
                for step in 0.. {
                    if die_after == Some(step) {
                        return; // drops the hook
                    }
                    let logits = model.lock().unwrap().logits().unwrap().to_vec();
                    let token = hook.step(logits);
                    log.lock().unwrap()[request].1.push(token);
                    if token == hook.end_token() {
                        return;
                    }
                    model.lock().unwrap().push(&[token]).unwrap();
                }
            });
            Ok(())
        }
        fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
            self.model.lock().unwrap().encode(text)
        }
        fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
            self.model.lock().unwrap().encode(prompt.as_bytes())
        }
    }

    const A: &[&str] = &[
        "<end>", "h", "e", "l", "o", " ", "w", "r", "d", "he", "llo", " world",
    ];
    const B: &[&str] = &[
        "h", "e", "l", "o", " ", "w", "r", "d", "hel", "lo", " wor", "ld", "<end>",
    ];

    fn bridged(
        pieces: &'static [&'static str],
        die_after: Option<usize>,
    ) -> (Box<dyn Member>, Log) {
        bridged_with_timeout(pieces, die_after, Duration::from_secs(5))
    }

    fn bridged_with_timeout(
        pieces: &'static [&'static str],
        die_after: Option<usize>,
        timeout: Duration,
    ) -> (Box<dyn Member>, Log) {
        let model = ScriptedMember::new("bridged", pieces, "hello world");
        let vocab = model.vocab().clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let prompt_len = model.encode(b"he").unwrap().len();
        let runtime = ThreadRuntime {
            model: Arc::new(Mutex::new(model)),
            log: log.clone(),
            die_after,
            prompt_len,
        };
        let end = pieces.iter().position(|p| *p == "<end>").unwrap() as u32;
        let member = BridgeMember::new("bridged", vocab, runtime, end, timeout).unwrap();
        (Box::new(member), log)
    }

    /// Waits (up to 5 s) until every runtime request has ended, and returns the log.
    fn ended(log: &Log, end: u32) -> std::sync::MutexGuard<'_, Vec<(Vec<u32>, Vec<u32>)>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let guard = log.lock().unwrap();
            let done = guard.iter().all(|r| r.1.last() == Some(&end));
            if done || Instant::now() > deadline {
                return guard;
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spelled(pieces: &[&str], ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| pieces[i as usize])
            .filter(|p| *p != "<end>")
            .collect()
    }

    #[test]
    fn a_bridged_member_alone_generates_and_its_request_ends() {
        let (member, log) = bridged(A, None);
        let mut e = Ensemble::new(vec![member], None, Mode::Average).unwrap();
        let g = e
            .generate("he", &GenerateOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(g.text, "hello world");
        drop(e);
        let log = ended(&log, 0);
        assert_eq!(spelled(A, &log[0].1), "hello world");
        assert_eq!(
            *log[0].1.last().unwrap(),
            0,
            "the request ended with the end token"
        );
    }

    #[test]
    fn multi_id_tokens_are_forced_over_several_runtime_steps() {
        // Member A proposes " world"; the bridged member (vocabulary B) has no such token and
        // gets " wor" + "ld" forced in two runtime steps.
        let (member, log) = bridged(B, None);
        let a = Box::new(ScriptedMember::new("a", A, "hello world"));
        let mut e = Ensemble::new(vec![a, member], None, Mode::Average).unwrap();
        let g = e
            .generate("he", &GenerateOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(g.text, "hello world");
        assert_eq!(spelled(B, &g.member_ids[1]), "hello world");
        e.generate("he", &GenerateOptions::default(), &mut |_| {})
            .unwrap();
        drop(e);
        let log = ended(&log, 12);
        assert_eq!(log.len(), 2, "one runtime request per generation");
        assert_eq!(spelled(B, &log[0].1), "hello world");
        assert_eq!(*log[0].1.last().unwrap(), 12, "ended with the end token");
    }

    fn gated() -> Mode {
        Mode::Gated {
            gate: 0,
            threshold: 0.5,
            when_unsure: WhenUnsure::Average,
        }
    }

    #[test]
    fn a_skipped_bridged_member_lets_its_request_go_and_starts_again_from_its_context() {
        let (member, log) = bridged(B, None);
        let mut a = ScriptedMember::new("a", A, "hello world");
        a.unsure_every = Some(3);
        let mut e = Ensemble::new(vec![Box::new(a), member], None, gated()).unwrap();
        let g = e
            .generate("he", &GenerateOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(g.text, "hello world");
        assert!(g.stats.ensembled_steps > 1 && g.stats.ensembled_steps < g.stats.steps);
        assert_eq!(spelled(B, &g.member_ids[1]), "hello world");
        drop(e);
        let log = ended(&log, 12);
        assert!(log.len() > 1, "a request per run of unsure steps: {log:?}");
        let prompt = 2; // "he" in vocabulary B
        for (i, (start, appended)) in log.iter().enumerate() {
            let (end, forced) = appended.split_last().unwrap();
            assert_eq!(*end, 12, "request {i} ended with the end token");
            // Each request starts from the whole context: prompt and every token so far.
            let so_far = spelled(B, &start[prompt..]) + &spelled(B, forced);
            assert!("hello world".starts_with(&so_far), "{so_far:?} {log:?}");
            if i > 0 {
                assert!(start.len() > log[i - 1].0.len(), "request {i} starts later");
            }
        }
    }

    /// A member that takes `delay` for every evaluation.
    struct Slow(ScriptedMember, Duration);

    impl Member for Slow {
        fn vocab(&self) -> &Vocab {
            self.0.vocab()
        }
        fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
            self.0.encode(text)
        }
        fn reset(&mut self) -> Result<()> {
            self.0.reset()
        }
        fn push(&mut self, ids: &[u32]) -> Result<()> {
            self.0.push(ids)
        }
        fn logits(&mut self) -> Result<&[f32]> {
            std::thread::sleep(self.1);
            self.0.logits()
        }
    }

    #[test]
    fn a_bridged_member_outlasts_skips_and_co_members_slower_than_its_timeout() {
        // The bridged member's timeout is 0.2 s, the gate's evaluations take longer.
        let slow = Duration::from_millis(300);
        for mode in [Mode::Average, gated()] {
            let (member, log) = bridged_with_timeout(B, None, Duration::from_millis(200));
            let mut a = ScriptedMember::new("a", A, "hello");
            a.unsure_every = Some(2);
            let mut e = Ensemble::new(vec![Box::new(Slow(a, slow)), member], None, mode).unwrap();
            let g = e
                .generate("he", &GenerateOptions::default(), &mut |_| {})
                .unwrap();
            assert_eq!(g.text, "hello", "{mode:?}");
            assert_eq!(spelled(B, &g.member_ids[1]), "hello");
            drop(e);
            assert!(
                ended(&log, 12).len() > 1,
                "{mode:?}: requests let go and started again"
            );
        }
    }

    #[test]
    fn a_runtime_that_dies_ends_the_generation_quickly() {
        let (member, _) = bridged(A, Some(2));
        let a = Box::new(ScriptedMember::new("a", A, "hello world"));
        let mut e = Ensemble::new(vec![a, member], None, Mode::Average).unwrap();
        let t = Instant::now();
        let err = e
            .generate("he", &GenerateOptions::default(), &mut |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("runtime stopped"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_hook_nobody_answers_lets_the_request_go() {
        let hook = Hook {
            exchange: Arc::default(),
            timeout: Duration::from_millis(20),
            end_token: 7,
        };
        let exchange = hook.exchange.clone();
        // Nobody answers: the hook gives up after the timeout and lets the request go.
        assert_eq!(hook.step(vec![0.0]), 7);
        assert!(exchange.lock().released && exchange.lock().logits.is_none());
        // From then on it answers at once.
        let t = Instant::now();
        assert_eq!(hook.step(vec![0.0]), 7);
        assert!(t.elapsed() < Duration::from_millis(20));
        drop(hook);
        assert!(
            exchange.lock().failed.is_some(),
            "a dropped hook is a stopped runtime"
        );
    }
}
