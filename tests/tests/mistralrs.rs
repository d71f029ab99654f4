//! mistral.rs members (through gac-core's bridge), alone and mixed with llama.cpp members.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gac_core::{Encoder, Ensemble, GenerateOptions, Member, Mode, WhenUnsure};
use gac_tests::{
    asset, member, mistral_member, mistral_reference_greedy, reference_greedy, GEMMA, PROMPTS,
    SMOLLM,
};
use mistralrs_core::{MistralRs, NormalRequest, Request, RequestMessage, Response, SamplingParams};

const TOKENS: usize = 24;

fn options(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        ..GenerateOptions::default()
    }
}

#[test]
fn one_mistralrs_member_is_mistralrs_greedy() {
    let m = mistral_member(SMOLLM);
    let want: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| mistral_reference_greedy(&m, p, TOKENS))
        .collect();
    let mut e = Ensemble::new(vec![Box::new(m)], None, Mode::Average).unwrap();
    for (prompt, want) in PROMPTS.iter().zip(want) {
        let g = e.generate(prompt, &options(TOKENS), &mut |_| {}).unwrap();
        assert!(
            !want.is_empty(),
            "mistral.rs generated nothing for {prompt:?}"
        );
        let got = &g.member_ids[0][..want.len().min(g.member_ids[0].len())];
        assert_eq!(got, &want[..], "{prompt:?}: {:?}", g.text);
    }
}

#[test]
fn mixed_runtimes_and_vocabularies_run_deterministically() {
    // SmolLM2 in mistral.rs (mistral.rs cannot load gemma3 GGUF) + Gemma-3 in llama.cpp.
    let members: Vec<Box<dyn Member>> =
        vec![Box::new(mistral_member(SMOLLM)), Box::new(member(GEMMA))];
    let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
    let gated = Mode::Gated {
        gate: 0,
        threshold: 0.5,
        when_unsure: WhenUnsure::Average,
    };
    for mode in [Mode::Average, gated] {
        e.set_mode(mode).unwrap();
        for prompt in PROMPTS {
            let a = e.generate(prompt, &options(TOKENS), &mut |_| {}).unwrap();
            let b = e.generate(prompt, &options(TOKENS), &mut |_| {}).unwrap();
            assert_eq!(a.tokens, b.tokens, "{prompt:?} {mode:?}");
            assert!(!a.tokens.is_empty());
            for (i, ids) in a.member_ids.iter().enumerate() {
                let vocab = e.members()[i].vocab();
                assert_eq!(vocab.decode(ids), a.bytes, "member {i} on {prompt:?}");
            }
        }
    }
}

#[test]
fn same_model_in_both_runtimes_follows_the_model() {
    // Where llama.cpp and mistral.rs agree on SmolLM2's argmax, the ensemble of the two must
    // give that token; we report where the two runtimes disagree (numerics).
    let (mut differing, mut agreed) = (Vec::new(), 0);
    for prompt in PROMPTS {
        let llama = reference_greedy(SMOLLM, prompt, TOKENS);
        let m = mistral_member(SMOLLM);
        let mistral = mistral_reference_greedy(&m, prompt, TOKENS);
        let members: Vec<Box<dyn Member>> = vec![Box::new(m), Box::new(member(SMOLLM))];
        let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
        let g = e.generate(prompt, &options(TOKENS), &mut |_| {}).unwrap();
        let agree = llama
            .iter()
            .zip(&mistral)
            .take_while(|(a, b)| a == b)
            .count();
        agreed += agree;
        assert_eq!(&g.member_ids[1][..agree], &llama[..agree], "{prompt:?}");
        if agree < llama.len().min(mistral.len()) {
            differing.push(format!("{prompt:?}: runtimes diverge at token {agree}"));
        }
    }
    eprintln!("runtime differences: {differing:?}");
    assert!(
        agreed > 0,
        "the runtimes never agreed, so nothing was checked"
    );
}

#[test]
fn a_dropped_engine_ends_the_generation_with_an_error_in_bounded_time() {
    let m = mistral_member(SMOLLM);
    let engine = m.runtime().engine().clone();
    let members: Vec<Box<dyn Member>> = vec![Box::new(m), Box::new(member(GEMMA))];
    let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // What dropping the engine does: terminate its loop.
        let _ = engine
            .get_sender(None)
            .unwrap()
            .blocking_send(mistralrs_core::Request::Terminate);
    });
    let t = Instant::now();
    let result = e.generate(PROMPTS[0], &options(400), &mut |_| {});
    stopper.join().unwrap();
    let err = result.expect_err("the engine stopped mid-generation");
    assert!(err.to_string().contains("SmolLM2"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "took {:?}",
        t.elapsed()
    );
}

/// A llama.cpp gate whose confidence follows a script: its logits are sharpened (sure) or
/// flattened (unsure) per evaluation, and `before` runs before each evaluation.
struct ScriptedGate {
    inner: gac_llamacpp::LlamaMember,
    evals: usize,
    unsure: fn(usize) -> bool,
    before: Box<dyn FnMut(usize) + Send>,
    logits: Vec<f32>,
}

impl Encoder for ScriptedGate {
    fn vocab(&self) -> &gac_core::Vocab {
        self.inner.vocab()
    }
    fn encode(&self, text: &[u8]) -> gac_core::Result<Vec<u32>> {
        self.inner.encode(text)
    }
    fn encode_prompt(&self, prompt: &str) -> gac_core::Result<Vec<u32>> {
        self.inner.encode_prompt(prompt)
    }
}

impl Member for ScriptedGate {
    fn reset(&mut self) -> gac_core::Result<()> {
        self.evals = 0;
        self.inner.reset()
    }
    fn push(&mut self, ids: &[u32]) -> gac_core::Result<()> {
        self.inner.push(ids)
    }
    fn logits(&mut self) -> gac_core::Result<&[f32]> {
        (self.before)(self.evals);
        let scale = if (self.unsure)(self.evals) {
            0.01
        } else {
            100.0
        };
        self.evals += 1;
        let logits = self.inner.logits()?;
        self.logits.clear();
        self.logits.extend(logits.iter().map(|l| l * scale));
        Ok(&self.logits)
    }
}

/// Serves an ordinary 4-token request on `engine`; the time it took, or `None` past `bound`.
fn plain_request(engine: Arc<MistralRs>, prompt: Vec<u32>, bound: Duration) -> Option<Duration> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let t = Instant::now();
    std::thread::spawn(move || {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let sampling = SamplingParams {
            max_len: Some(4),
            ..SamplingParams::deterministic()
        };
        let messages = RequestMessage::CompletionTokens(prompt);
        let request =
            NormalRequest::new_simple(messages, sampling, tx, engine.next_request_id(), None, None);
        let sender = engine.get_sender(None).unwrap();
        if sender
            .blocking_send(Request::Normal(Box::new(request)))
            .is_ok()
        {
            while let Some(response) = rx.blocking_recv() {
                if matches!(response, Response::CompletionDone(_)) {
                    let _ = done_tx.send(());
                    return;
                }
            }
        }
    });
    done_rx.recv_timeout(bound).ok().map(|()| t.elapsed())
}

#[test]
fn a_skipped_mistralrs_member_frees_its_engine_and_survives_a_long_skip() {
    // Member 1 (SmolLM2 in mistral.rs, timeout 10 s) is needed at the gate's unsure steps 0-1
    // and from 9 on, and skipped at steps 2-8. During the skip, a plain request on its engine
    // must be served at once (a request held by a waiting member would block the engine for
    // the whole timeout), and the skip outlasts the timeout.
    let timeout = Duration::from_secs(10);
    let unsure: fn(usize) -> bool = |e| !(2..9).contains(&e);
    let run = |before: Box<dyn FnMut(usize) + Send>, m: gac_mistralrs::MistralMember| {
        let gate = ScriptedGate {
            inner: member(SMOLLM),
            evals: 0,
            unsure,
            before,
            logits: Vec::new(),
        };
        let gated = Mode::Gated {
            gate: 0,
            threshold: 0.5,
            when_unsure: WhenUnsure::Average,
        };
        let mut e = Ensemble::new(vec![Box::new(gate), Box::new(m)], None, gated).unwrap();
        let g = e.generate(PROMPTS[0], &options(16), &mut |_| {}).unwrap();
        let member_1 = e.members()[1].vocab().decode(&g.member_ids[1]);
        (g, member_1)
    };
    let options = gac_mistralrs::MistralOptions {
        timeout,
        ..Default::default()
    };
    let load = || gac_mistralrs::load_gguf(&asset(SMOLLM), &options).unwrap();
    let (want, _) = run(Box::new(|_| {}), load());
    let m = load();
    let engine = m.runtime().engine().clone();
    let prompt = m.encode_prompt("The sky is").unwrap();
    let served: Arc<Mutex<Option<Option<Duration>>>> = Arc::default();
    let record = served.clone();
    let before = move |eval: usize| match eval {
        4 => {
            let took = plain_request(
                engine.clone(),
                prompt.clone(),
                timeout - Duration::from_secs(2),
            );
            *record.lock().unwrap() = Some(took);
        }
        6 => std::thread::sleep(timeout + Duration::from_secs(1)),
        _ => {}
    };
    let (g, member_1) = run(Box::new(before), m);
    let took = served.lock().unwrap().expect("the gate reached step 4");
    assert!(
        took.is_some(),
        "the plain request waited while the member was skipped"
    );
    eprintln!("plain request during the skip served in {took:?}");
    let ensembled: Vec<bool> = g.stats.per_step.iter().map(|s| s.ensembled).collect();
    assert!(ensembled.len() > 9, "{:?}", g.text);
    assert!(ensembled[..2].iter().all(|&x| x) && ensembled[2..9].iter().all(|&x| !x));
    assert_eq!(g.tokens, want.tokens, "{:?} vs {:?}", g.text, want.text);
    assert_eq!(member_1, g.bytes, "member 1's context spells the output");
}
