//! mistral.rs members (through gac-core's bridge), alone and mixed with llama.cpp members.

use std::time::{Duration, Instant};

use gac_core::{Ensemble, GenerateOptions, Member, Mode, WhenUnsure};
use gac_tests::{
    member, mistral_member, mistral_reference_greedy, reference_greedy, GEMMA, PROMPTS, SMOLLM,
};

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
