//! Turns a runtime that owns its decode loop and calls a logits hook at every step (mistral.rs's
//! `CustomLogitsProcessor`, say) into a step-driven [`Member`].
//!
//! The runtime side holds a [`Hook`]: at each step it hands the step's logits to
//! [`Hook::step`] and appends the token that comes back. The ensemble side is a
//! [`BridgeMember`]: [`Member::logits`] waits for the runtime's next logits, and the ids pushed
//! in between are forced one per runtime step (a union token that is several ids for this member
//! takes several steps, without another ensemble step). The first push after a reset is the
//! prompt; the runtime request starts at the first evaluation, and ids pushed before it are
//! forced like any others.
//!
//! Neither side can block the other for long: when the ensemble side is dropped, finishes or
//! does not answer within the timeout, the hook returns the end token so the runtime ends the
//! request; when the runtime stops calling (its engine dropped, an error), the member's
//! evaluation fails after at most the timeout, or at once when the runtime drops the hook.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

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

    /// The prompt in the model's chat template, if it has one.
    fn chat_prompt(&self, _user: &str) -> Option<String> {
        None
    }

    /// The context window in tokens, if bounded.
    fn context_size(&self) -> Option<usize> {
        None
    }
}

/// A message from the runtime side to the member.
type FromRuntime = std::result::Result<Vec<f32>, String>;

/// The runtime's end of a bridge; `Send + Sync` so it can live inside a logits processor.
#[derive(Debug)]
pub struct Hook {
    logits: Sender<FromRuntime>,
    decisions: Mutex<Receiver<u32>>,
    timeout: Duration,
    end_token: u32,
}

impl Hook {
    /// Hands over this step's logits and returns the token to append. Returns the end token when
    /// the ensemble has gone or does not answer within the timeout.
    pub fn step(&self, logits: Vec<f32>) -> u32 {
        if self.logits.send(Ok(logits)).is_err() {
            return self.end_token;
        }
        let decisions = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        decisions
            .recv_timeout(self.timeout)
            .unwrap_or(self.end_token)
    }

    /// Reports that the runtime failed; the member's pending evaluation ends with `message`.
    pub fn fail(&self, message: impl Into<String>) {
        let _ = self.logits.send(Err(message.into()));
    }

    /// A sender for failures that outlives the hook (e.g. for a thread that watches the request).
    pub fn failure_reporter(&self) -> FailureReporter {
        FailureReporter(self.logits.clone())
    }

    /// The token that ends the runtime's request.
    pub fn end_token(&self) -> u32 {
        self.end_token
    }
}

/// Reports a runtime failure to a bridge member; see [`Hook::failure_reporter`].
#[derive(Debug, Clone)]
pub struct FailureReporter(Sender<FromRuntime>);

impl FailureReporter {
    /// Ends the member's pending evaluation with `message`.
    pub fn fail(&self, message: impl Into<String>) {
        let _ = self.0.send(Err(message.into()));
    }
}

/// The ensemble's end of the bridge for one request.
struct Link {
    logits: Receiver<FromRuntime>,
    decisions: Sender<u32>,
    /// The runtime is inside `Hook::step`, waiting for a decision.
    waiting: bool,
}

/// A [`Member`] whose runtime drives its own decode loop; see the module doc.
pub struct BridgeMember<R: Runtime> {
    name: String,
    vocab: Vocab,
    runtime: R,
    end_token: u32,
    timeout: Duration,
    link: Option<Link>,
    prompt: Option<Vec<u32>>,
    queued: VecDeque<u32>,
    context: usize,
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
            link: None,
            prompt: None,
            queued: VecDeque::new(),
            context: 0,
            logits: Vec::new(),
        })
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    fn fail(&self, message: impl Into<String>) -> Error {
        Error::member(&self.name, message)
    }

    fn start(&mut self) -> Result<()> {
        let prompt = self
            .prompt
            .clone()
            .ok_or_else(|| self.fail("evaluated before a prompt was pushed"))?;
        let (logits_tx, logits_rx) = channel();
        let (decisions_tx, decisions_rx) = channel();
        let hook = Hook {
            logits: logits_tx,
            decisions: Mutex::new(decisions_rx),
            timeout: self.timeout,
            end_token: self.end_token,
        };
        self.runtime.start(&prompt, hook)?;
        self.link = Some(Link {
            logits: logits_rx,
            decisions: decisions_tx,
            waiting: false,
        });
        Ok(())
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

    fn chat_prompt(&self, user: &str) -> Option<String> {
        self.runtime.chat_prompt(user)
    }

    fn context_size(&self) -> Option<usize> {
        self.runtime.context_size()
    }

    fn reset(&mut self) -> Result<()> {
        self.finish();
        self.prompt = None;
        self.queued.clear();
        self.context = 0;
        Ok(())
    }

    fn push(&mut self, ids: &[u32]) -> Result<()> {
        if let Some(context) = self.context_size() {
            if self.context + ids.len() > context {
                return Err(Error::ContextFull {
                    member: self.name.clone(),
                    context,
                });
            }
        }
        self.context += ids.len();
        match &mut self.prompt {
            None => self.prompt = Some(ids.to_vec()),
            Some(_) => self.queued.extend(ids),
        }
        Ok(())
    }

    fn logits(&mut self) -> Result<&[f32]> {
        if self.link.is_none() {
            self.start()?;
        }
        let (name, timeout) = (self.name.clone(), self.timeout);
        let link = self.link.as_mut().expect("started above");
        if link.waiting && self.queued.is_empty() {
            return Ok(&self.logits); // nothing pushed since the last evaluation
        }
        loop {
            if link.waiting {
                let id = self.queued.pop_front().expect("a queued id to force");
                link.decisions
                    .send(id)
                    .map_err(|_| Error::member(&name, "the runtime ended the request"))?;
                link.waiting = false;
            }
            match link.logits.recv_timeout(timeout) {
                Ok(Ok(logits)) => self.logits = logits,
                Ok(Err(message)) => {
                    return Err(Error::member(&name, format!("runtime error: {message}")))
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::member(
                        &name,
                        format!("no logits from the runtime within {timeout:?}"),
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::member(
                        &name,
                        "the runtime stopped (its request or engine is gone)",
                    ))
                }
            }
            link.waiting = true;
            if self.queued.is_empty() {
                return Ok(&self.logits);
            }
        }
    }

    fn finish(&mut self) {
        // Dropping our end makes the hook answer with the end token at once.
        self.link = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ScriptedMember;
    use crate::{Ensemble, GenerateOptions, Mode, WhenUnsure};
    use std::sync::Arc;
    use std::time::Instant;

    /// Every token a test runtime appended, per request.
    type Log = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A runtime that owns its decode loop on its own thread, like an inference engine: it asks
    /// a scripted model for logits, calls the hook, appends what comes back.
    struct ThreadRuntime {
        model: Arc<Mutex<ScriptedMember>>,
        /// Every token the runtime appended, per request.
        log: Log,
        /// Stop calling the hook after this many steps, as if the engine were dropped.
        die_after: Option<usize>,
    }

    impl Runtime for ThreadRuntime {
        fn start(&mut self, prompt: &[u32], hook: Hook) -> Result<()> {
            let (model, log, die_after) = (self.model.clone(), self.log.clone(), self.die_after);
            let prompt = prompt.to_vec();
            std::thread::spawn(move || {
                // The model is locked per call only: the tokenizer is used meanwhile.
                model.lock().unwrap().reset().unwrap();
                model.lock().unwrap().push(&prompt).unwrap();
                let request = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                for step in 0.. {
                    if die_after == Some(step) {
                        return; // drops the hook
                    }
                    let logits = model.lock().unwrap().logits().unwrap().to_vec();
                    let token = hook.step(logits);
                    log.lock().unwrap()[request].push(token);
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
        let model = ScriptedMember::new("bridged", pieces, "hello world");
        let vocab = model.vocab().clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let runtime = ThreadRuntime {
            model: Arc::new(Mutex::new(model)),
            log: log.clone(),
            die_after,
        };
        let end = pieces.iter().position(|p| *p == "<end>").unwrap() as u32;
        let member =
            BridgeMember::new("bridged", vocab, runtime, end, Duration::from_secs(5)).unwrap();
        (Box::new(member), log)
    }

    /// Waits (up to 5 s) until every runtime request has ended, and returns the log.
    fn ended(log: &Mutex<Vec<Vec<u32>>>, end: u32) -> std::sync::MutexGuard<'_, Vec<Vec<u32>>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let guard = log.lock().unwrap();
            let done = guard.iter().all(|r| r.last() == Some(&end));
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
        assert_eq!(spelled(A, &log[0]), "hello world");
        assert_eq!(
            *log[0].last().unwrap(),
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
        assert_eq!(spelled(B, &log[0]), "hello world");
        assert_eq!(*log[0].last().unwrap(), 12, "ended with the end token");
    }

    #[test]
    fn a_skipped_bridged_member_catches_up_one_token_per_runtime_step() {
        let (member, log) = bridged(B, None);
        let mut a = ScriptedMember::new("a", A, "hello world");
        a.unsure_every = Some(3);
        let gated = Mode::Gated {
            gate: 0,
            threshold: 0.5,
            when_unsure: WhenUnsure::Average,
        };
        let mut e = Ensemble::new(vec![Box::new(a), member], None, gated).unwrap();
        let g = e
            .generate("he", &GenerateOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(g.text, "hello world");
        assert!(g.stats.ensembled_steps > 0 && g.stats.ensembled_steps < g.stats.steps);
        drop(e);
        let log = ended(&log, 12);
        assert_eq!(log.len(), 1);
        let (end, forced) = log[0].split_last().unwrap();
        assert_eq!(*end, 12);
        assert!(
            "hello world".starts_with(&spelled(B, forced)),
            "{:?}",
            spelled(B, forced)
        );
        assert!(forced.len() > 1, "the member caught up over several steps");
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
    fn a_hook_whose_member_is_gone_returns_the_end_token() {
        let (tx, _rx_dropped) = channel::<u32>();
        drop(tx);
        let (logits_tx, logits_rx) = channel();
        let hook = Hook {
            logits: logits_tx,
            decisions: Mutex::new(channel().1),
            timeout: Duration::from_millis(20),
            end_token: 7,
        };
        // Nobody answers: the hook gives up after the timeout.
        assert_eq!(hook.step(vec![0.0]), 7);
        drop(logits_rx);
        // The member side is gone: the hook answers at once.
        let t = Instant::now();
        assert_eq!(hook.step(vec![0.0]), 7);
        assert!(t.elapsed() < Duration::from_millis(20));
    }
}
