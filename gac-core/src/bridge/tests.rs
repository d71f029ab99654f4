//! The bridge over a threaded scripted runtime: forced multi-id tokens, skips, stalls, a
//! runtime that dies.

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
    /// The model's vocabulary (the runtime's tokenizer).
    vocab: Vocab,
}

impl Encoder for ThreadRuntime {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }
    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        self.model.lock().unwrap().encode(text)
    }
    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.model.lock().unwrap().encode(prompt.as_bytes())
    }
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
}

const A: &[&str] = &[
    "<end>", "h", "e", "l", "o", " ", "w", "r", "d", "he", "llo", " world",
];
const B: &[&str] = &[
    "h", "e", "l", "o", " ", "w", "r", "d", "hel", "lo", " wor", "ld", "<end>",
];

fn bridged(pieces: &'static [&'static str], die_after: Option<usize>) -> (Box<dyn Member>, Log) {
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
        vocab,
    };
    let end = pieces.iter().position(|p| *p == "<end>").unwrap() as u32;
    let member = BridgeMember::new("bridged", runtime, end, timeout).unwrap();
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

impl Encoder for Slow {
    fn vocab(&self) -> &Vocab {
        self.0.vocab()
    }
    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        self.0.encode(text)
    }
}

impl Member for Slow {
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
