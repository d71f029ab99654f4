//! Ensembles that must reproduce a single model's greedy output exactly, token for token.

use gac_core::vocab::Token;
use gac_core::{
    Encoder, Ensemble, GenerateOptions, Generation, Member, Mode, Schedule, WhenUnsure,
};
use gac_llamacpp::{LlamaMember, LlamaOptions};
use gac_tests::{argmax_logit, asset, boxed, member, reference_greedy, GEMMA, PROMPTS, SMOLLM};

const TOKENS: usize = 24;

fn options() -> GenerateOptions {
    GenerateOptions {
        max_tokens: TOKENS,
        ..GenerateOptions::default()
    }
}

fn ensemble_ids(models: &[&str], mode: Mode, prompt: &str) -> (Vec<Vec<u32>>, Vec<u8>) {
    let g = generate(models, mode, Schedule::Lazy, prompt);
    (g.member_ids, g.bytes)
}

fn generate(models: &[&str], mode: Mode, schedule: Schedule, prompt: &str) -> Generation {
    let members = boxed(models.iter().map(|m| member(m)).collect());
    let mut ensemble = Ensemble::new(members, None, mode).unwrap();
    let options = GenerateOptions {
        schedule,
        ..options()
    };
    ensemble.generate(prompt, &options, &mut |_| {}).unwrap()
}

fn one_member_is_the_model_itself(model: &str) {
    for prompt in PROMPTS {
        let want = reference_greedy(model, prompt, TOKENS);
        let (ids, _) = ensemble_ids(&[model], Mode::Average, prompt);
        assert_eq!(ids[0], want, "{model} on {prompt:?}");
    }
}

#[test]
fn one_member_ensemble_is_smollm_greedy() {
    one_member_is_the_model_itself(SMOLLM);
}

#[test]
fn one_member_ensemble_is_gemma_greedy() {
    one_member_is_the_model_itself(GEMMA);
}

#[test]
fn smollm_with_itself_is_smollm() {
    for prompt in &PROMPTS[..3] {
        let want = reference_greedy(SMOLLM, prompt, TOKENS);
        let (ids, _) = ensemble_ids(&[SMOLLM, SMOLLM], Mode::Average, prompt);
        assert_eq!(ids[0], want, "{prompt:?}");
        assert_eq!(ids[1], want, "{prompt:?}");
    }
}

#[test]
fn gate_threshold_zero_is_the_gate_and_one_is_the_average() {
    let gated = |gate, threshold| Mode::Gated {
        gate,
        threshold,
        when_unsure: WhenUnsure::Average,
    };
    for prompt in &PROMPTS[..3] {
        for gate in [0, 1] {
            let model = [SMOLLM, GEMMA][gate];
            let (ids, _) = ensemble_ids(&[SMOLLM, GEMMA], gated(gate, 0.0), prompt);
            assert_eq!(
                ids[gate],
                reference_greedy(model, prompt, TOKENS),
                "gate {gate} on {prompt:?}"
            );
        }
        let (_, average) = ensemble_ids(&[SMOLLM, GEMMA], Mode::Average, prompt);
        let (_, all_gated) = ensemble_ids(&[SMOLLM, GEMMA], gated(0, 1.0), prompt);
        assert_eq!(
            String::from_utf8_lossy(&all_gated),
            String::from_utf8_lossy(&average),
            "{prompt:?}"
        );
    }
}

#[test]
fn eager_gated_is_the_gate_at_zero_and_the_average_at_one() {
    // The eager schedule evaluates every member at every step, one token at a time: at t = 0
    // the gate alone decides (its own greedy output), at t = 1 it is exactly the average.
    let gated = |threshold| Mode::Gated {
        gate: 1,
        threshold,
        when_unsure: WhenUnsure::Average,
    };
    for prompt in &PROMPTS[..3] {
        let g = generate(&[SMOLLM, GEMMA], gated(0.0), Schedule::Eager, prompt);
        assert_eq!(
            g.member_ids[1],
            reference_greedy(GEMMA, prompt, TOKENS),
            "{prompt:?}"
        );
        assert_eq!(
            g.stats.members[0].decode_evals + 1,
            g.stats.steps,
            "SmolLM2 ran every step"
        );
        let average = generate(&[SMOLLM, GEMMA], Mode::Average, Schedule::Lazy, prompt);
        let all = generate(&[SMOLLM, GEMMA], gated(1.0), Schedule::Eager, prompt);
        assert_eq!(all.tokens, average.tokens, "{prompt:?}");
        let half = generate(&[SMOLLM, GEMMA], gated(0.5), Schedule::Eager, prompt);
        assert_eq!(
            half.tokens,
            generate(&[SMOLLM, GEMMA], gated(0.5), Schedule::Eager, prompt).tokens
        );
        for (i, ids) in half.member_ids.iter().enumerate() {
            let vocab = gac_llamacpp::load_vocab(&asset([SMOLLM, GEMMA][i])).unwrap();
            assert_eq!(vocab.decode(ids), half.bytes, "member {i} on {prompt:?}");
        }
    }
}

/// Greedy ids from a member driven directly, without an ensemble, and how many prompt positions
/// its first evaluation took from the cache.
fn member_greedy(member: &mut LlamaMember, prompt: &str) -> (Vec<u32>, usize) {
    member.reset().unwrap();
    member.push(&member.encode_prompt(prompt).unwrap()).unwrap();
    member.logits().unwrap();
    let reused = member.reused();
    let mut out = Vec::new();
    for _ in 0..TOKENS {
        let next = argmax_logit(member.logits().unwrap());
        if member.vocab().get(next) == Some(&Token::End) {
            break;
        }
        out.push(next);
        member.push(&[next]).unwrap();
    }
    (out, reused)
}

/// A prompt that starts like the previous context reuses its cached prefix, and the output is
/// still exactly what a fresh context computes.
fn prompt_cache_keeps_the_output(model: &str) {
    let shots = "Question: What is 2 + 3?\nAnswer: 5\n\nQuestion: What is 7 - 4?\nAnswer: 3\n\n";
    let prompts = [
        format!("{shots}Question: What is 6 + 1?\nAnswer:"),
        format!("{shots}Question: What is 9 - 5?\nAnswer:"),
        format!("{shots}Question: What is 9 - 5?\nAnswer:"),
        PROMPTS[1].to_string(),
    ];
    let options = LlamaOptions {
        threads: Some(1),
        prompt_cache: true,
        ..LlamaOptions::default()
    };
    let mut member = LlamaMember::load(&asset(model), &options).unwrap();
    let mut previous: Vec<u32> = Vec::new();
    for prompt in &prompts {
        let ids = member.encode_prompt(prompt).unwrap();
        let common = ids
            .iter()
            .zip(&previous)
            .take_while(|(a, b)| a == b)
            .count();
        let (got, reused) = member_greedy(&mut member, prompt);
        assert_eq!(
            got,
            reference_greedy(model, prompt, TOKENS),
            "{model} on {prompt:?}"
        );
        assert_eq!(reused, common.min(ids.len() - 1), "{model} on {prompt:?}");
        previous = member.tokens().to_vec();
    }
    assert!(prompts[..3].iter().all(|p| p.len() > shots.len()));
}

#[test]
fn prompt_cache_keeps_smollm_output() {
    prompt_cache_keeps_the_output(SMOLLM);
}

#[test]
fn prompt_cache_keeps_gemma_output() {
    prompt_cache_keeps_the_output(GEMMA);
}

#[test]
fn without_prompt_cache_every_prompt_is_evaluated_afresh() {
    let mut member = member(SMOLLM);
    for _ in 0..2 {
        let (got, reused) = member_greedy(&mut member, PROMPTS[0]);
        assert_eq!(got, reference_greedy(SMOLLM, PROMPTS[0], TOKENS));
        assert_eq!(reused, 0);
    }
}

#[test]
fn selective_is_the_average_token_for_token_and_ensembles_only_disagreements() {
    // A model with itself always agrees: never ensembled, its own greedy output.
    for prompt in &PROMPTS[..2] {
        let g = generate(&[SMOLLM, SMOLLM], Mode::Selective, Schedule::Lazy, prompt);
        assert_eq!(g.member_ids[0], reference_greedy(SMOLLM, prompt, TOKENS));
        assert_eq!(g.stats.ensembled_steps, 0, "{prompt:?}");
    }
    // Two models: greedy, a token both find most probable is the average's pick too, so the
    // text is the average's; only the steps where they differ are ensembled.
    let (mut ensembled, mut steps) = (0, 0);
    for prompt in &PROMPTS[..3] {
        let selective = generate(&[SMOLLM, GEMMA], Mode::Selective, Schedule::Lazy, prompt);
        let average = generate(&[SMOLLM, GEMMA], Mode::Average, Schedule::Lazy, prompt);
        assert_eq!(selective.tokens, average.tokens, "{prompt:?}");
        ensembled += selective.stats.ensembled_steps;
        steps += selective.stats.steps;
    }
    assert!(0 < ensembled && ensembled < steps, "{ensembled} of {steps}");
}
