//! Members that hand back only their K most probable tokens, chosen inside llama.cpp's graph
//! (`LlamaOptions::device_top_k`), on the CPU backend: the head is the model's own top-K with
//! its true probabilities, and greedy ensembles pick what they pick on full distributions.

use gac_core::{Encoder, Ensemble, Evaluation, GenerateOptions, Generation, Member, Mode};
use gac_llamacpp::{LlamaMember, LlamaOptions};
use gac_tests::{asset, reference_greedy, GEMMA, PROMPTS, SMOLLM};

const TOKENS: usize = 24;

fn load(model: &str, device_top_k: Option<u32>) -> LlamaMember {
    let options = LlamaOptions {
        threads: Some(1),
        context: Some(2048),
        device_top_k,
        ..LlamaOptions::default()
    };
    LlamaMember::load(&asset(model), &options).unwrap_or_else(|e| panic!("{e}"))
}

/// The softmax of `logits` in f64, as (id, probability), most probable first.
fn ranked(logits: &[f32]) -> Vec<(u32, f64)> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    let mut all: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (f64::from(l) - max).exp() / sum))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    all
}

#[test]
fn a_head_is_the_models_own_top_k_with_its_whole_vocabulary_probabilities() {
    for model in [SMOLLM, GEMMA] {
        let mut full = load(model, None);
        let mut top = load(model, Some(16));
        let prompt = full.encode_prompt(PROMPTS[0]).unwrap();
        for m in [&mut full as &mut dyn Member, &mut top] {
            m.reset().unwrap();
            m.push(&prompt).unwrap();
        }
        let want = ranked(full.logits().unwrap());
        let Evaluation::Head(head) = top.evaluate().unwrap() else {
            panic!("{model}: full logits instead of a head");
        };
        let mut head = head.to_vec();
        head.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(head.len(), 16, "{model}");
        for (&(id, p), &(want_id, want_p)) in head.iter().zip(&want) {
            assert!(
                (f64::from(p) - want_p).abs() < 1e-4,
                "{model}: {p} vs {want_p}"
            );
            // Ranks may swap only between near-equal probabilities: the id the head puts at
            // this rank has, in the host's softmax, about the probability of this rank.
            if id != want_id {
                let host = want.iter().find(|w| w.0 == id).expect("a vocabulary id").1;
                assert!(
                    (want_p - host).abs() < 1e-4,
                    "{model}: id {id} {host} vs {want_p}"
                );
            }
        }
        // The full logits of the same position, computed again on request.
        let again = ranked(top.logits().unwrap());
        assert_eq!(again[0].0, want[0].0, "{model}");
        assert!((again[0].1 - want[0].1).abs() < 1e-3, "{model}");
    }
}

fn generate(members: Vec<LlamaMember>, prompt: &str) -> Generation {
    generate_reporting(members, prompt, None)
}

/// A greedy generation, with `logprobs` alternatives per token if asked for.
fn generate_reporting(
    members: Vec<LlamaMember>,
    prompt: &str,
    logprobs: Option<usize>,
) -> Generation {
    let members = members
        .into_iter()
        .map(|m| Box::new(m) as Box<dyn Member>)
        .collect();
    let mut ensemble = Ensemble::new(members, None, Mode::Average).unwrap();
    let options = GenerateOptions {
        max_tokens: TOKENS,
        logprobs,
        ..GenerateOptions::default()
    };
    ensemble.generate(prompt, &options, &mut |_| {}).unwrap()
}

#[test]
fn asking_for_logprobs_changes_no_pick_and_reports_the_whole_distribution() {
    // Heads of 1 token: with logprobs, the members give their whole distributions, so the
    // picks are those without, and the reported probabilities those of full logits.
    for prompt in PROMPTS {
        let heads = || vec![load(SMOLLM, Some(1)), load(GEMMA, Some(1))];
        let plain = generate_reporting(heads(), prompt, None);
        let reported = generate_reporting(heads(), prompt, Some(5));
        assert_eq!(reported.text, plain.text, "{prompt:?}");
        let full = generate_reporting(vec![load(SMOLLM, None), load(GEMMA, None)], prompt, Some(5));
        assert_eq!(reported.text, full.text, "{prompt:?}");
        // The full logits are computed again in a second sequence that shares the KV cache:
        // the same numbers up to the decode's rounding (a few percent of a probability).
        for (a, b) in reported.logprobs.iter().zip(&full.logprobs) {
            assert_eq!(a.top[0].0, b.top[0].0, "{prompt:?}");
            assert!(
                (a.logprob - b.logprob).abs() < 0.03,
                "{prompt:?}: {a:?} {b:?}"
            );
        }
    }
}

#[test]
fn one_member_with_a_device_top_k_is_the_model_itself() {
    for model in [SMOLLM, GEMMA] {
        for prompt in &PROMPTS[..3] {
            let g = generate(vec![load(model, Some(8))], prompt);
            assert_eq!(
                g.member_ids[0],
                reference_greedy(model, prompt, TOKENS),
                "{model} on {prompt:?}"
            );
            let stats = &g.stats.members[0];
            assert_eq!(stats.head_evals, g.stats.steps, "{stats:?}");
        }
    }
}

#[test]
fn two_members_with_device_top_k_pick_what_full_distributions_pick() {
    let (mut steps, mut fallbacks) = (0, 0);
    for prompt in PROMPTS {
        let full = generate(vec![load(SMOLLM, None), load(GEMMA, None)], prompt);
        let heads = generate(vec![load(SMOLLM, Some(16)), load(GEMMA, Some(16))], prompt);
        assert_eq!(heads.text, full.text, "{prompt:?}");
        steps += heads.stats.steps;
        fallbacks += heads
            .stats
            .members
            .iter()
            .map(|m| m.full_after_head)
            .sum::<usize>();
        // One member on full logits, one with a head.
        let mixed = generate(vec![load(SMOLLM, None), load(GEMMA, Some(16))], prompt);
        assert_eq!(mixed.text, full.text, "{prompt:?}");
    }
    println!("{fallbacks} full evaluations after a head in {steps} steps");
    assert!(fallbacks < steps, "{fallbacks} of {steps}");
}
