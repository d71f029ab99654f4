//! Ensembles that must reproduce a single model's greedy output exactly, token for token.

use gac_core::{Ensemble, GenerateOptions, Mode, WhenUnsure};
use gac_tests::{boxed, member, reference_greedy, GEMMA, PROMPTS, SMOLLM};

const TOKENS: usize = 24;

fn options() -> GenerateOptions {
    GenerateOptions {
        max_tokens: TOKENS,
        ..GenerateOptions::default()
    }
}

fn ensemble_ids(models: &[&str], mode: Mode, prompt: &str) -> (Vec<Vec<u32>>, Vec<u8>) {
    let members = boxed(models.iter().map(|m| member(m)).collect());
    let mut ensemble = Ensemble::new(members, None, mode).unwrap();
    let g = ensemble.generate(prompt, &options(), &mut |_| {}).unwrap();
    (g.member_ids, g.bytes)
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
