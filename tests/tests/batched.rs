//! Several members on one llama.cpp context (a server's slots): one at a time, each sequence
//! gives exactly what a member with a context of its own gives; at once, their evaluations
//! share decodes, and every member's context still spells the output.

use gac_core::{Encoder, Ensemble, GenerateOptions, Generation, Member, Mode};
use gac_llamacpp::{Batching, LlamaOptions, SharedContext};
use gac_tests::{asset, member, GEMMA, PROMPTS, SMOLLM};

const TOKENS: usize = 16;

fn shared(model: &str, sequences: usize, batching: Batching) -> SharedContext {
    let options = LlamaOptions {
        threads: Some(1),
        context: Some(2048),
        ..LlamaOptions::default()
    };
    let path = asset(model);
    let weights = gac_llamacpp::load_model(&path, &options).unwrap();
    SharedContext::new(model.into(), weights, &path, &options, sequences, batching).unwrap()
}

fn generate(e: &mut Ensemble, prompt: &str) -> Generation {
    let options = GenerateOptions {
        max_tokens: TOKENS,
        ..GenerateOptions::default()
    };
    e.generate(prompt, &options, &mut |_| {}).unwrap()
}

#[test]
fn one_sequence_at_a_time_equals_a_member_with_its_own_context() {
    for model in [SMOLLM, GEMMA] {
        let context = shared(model, 3, Batching::Shared);
        for (i, m) in context.members().into_iter().enumerate() {
            let prompt = PROMPTS[i];
            let mut e = Ensemble::new(vec![Box::new(m)], None, Mode::Average).unwrap();
            let got = generate(&mut e, prompt);
            let mut alone =
                Ensemble::new(vec![Box::new(member(model))], None, Mode::Average).unwrap();
            let want = generate(&mut alone, prompt);
            assert_eq!(
                got.member_ids, want.member_ids,
                "{model} sequence {i}: {prompt:?}"
            );
            // Again on the same sequence: the cache of the last generation is not reused.
            assert_eq!(
                generate(&mut e, prompt).member_ids,
                want.member_ids,
                "{model} again"
            );
        }
    }
}

/// One averaging ensemble per sequence of the two contexts.
fn average_slots(smollm: &SharedContext, gemma: &SharedContext) -> Vec<Ensemble> {
    smollm
        .members()
        .into_iter()
        .zip(gemma.members())
        .map(|(a, b)| {
            let members: Vec<Box<dyn Member>> = vec![Box::new(a), Box::new(b)];
            Ensemble::new(members, None, Mode::Average).unwrap()
        })
        .collect()
}

#[test]
fn concurrent_slots_share_decodes_and_each_context_spells_its_output() {
    let (smollm, gemma) = (
        shared(SMOLLM, 3, Batching::Shared),
        shared(GEMMA, 3, Batching::Shared),
    );
    let mut slots = average_slots(&smollm, &gemma);
    let alone: Vec<Generation> = slots
        .iter_mut()
        .zip(PROMPTS)
        .map(|(e, p)| generate(e, p))
        .collect();
    let before = (smollm.batching(), gemma.batching());
    let together: Vec<Generation> = std::thread::scope(|s| {
        let runs: Vec<_> = slots
            .iter_mut()
            .zip(PROMPTS)
            .map(|(e, p)| s.spawn(move || generate(e, p)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (name, context, (decodes0, evals0, _)) in [
        ("SmolLM2", &smollm, before.0),
        ("Gemma-3", &gemma, before.1),
    ] {
        let (decodes, evals, _) = context.batching();
        let (decodes, evals) = (decodes - decodes0, evals - evals0);
        eprintln!("{name}: {evals} evaluations in {decodes} decodes");
        assert!(
            evals > decodes + evals / 4,
            "{name}: {evals} evaluations in {decodes} decodes"
        );
    }
    for (i, (g, a)) in together.iter().zip(&alone).enumerate() {
        for (m, ids) in slots[i].members().iter().zip(&g.member_ids) {
            assert_eq!(m.vocab().decode(ids), g.bytes, "slot {i}, {}", m.name());
        }
        let same = g
            .tokens
            .iter()
            .zip(&a.tokens)
            .take_while(|(x, y)| x == y)
            .count();
        eprintln!(
            "slot {i}: {same} of {} tokens as when run alone",
            a.tokens.len()
        );
    }
}

/// A step's picked token, its log-probability and its top tokens, as bits.
type Step = (u32, u32, Vec<(u32, u32)>);

/// Every step of `g`.
fn numerics(g: &Generation) -> Vec<Step> {
    g.logprobs
        .iter()
        .map(|l| {
            let top = l.top.iter().map(|(t, p)| (t.0, p.to_bits())).collect();
            (l.token.0, l.logprob.to_bits(), top)
        })
        .collect()
}

/// Three slots of SmolLM2 + Gemma-3 under `batching`: each prompt one at a time, then all
/// three at once on other sequences. Per prompt, the steps whose numbers differ.
fn steps_that_differ_under_load(batching: Batching) -> Vec<usize> {
    let (smollm, gemma) = (shared(SMOLLM, 3, batching), shared(GEMMA, 3, batching));
    let mut slots = average_slots(&smollm, &gemma);
    let options = GenerateOptions {
        max_tokens: TOKENS,
        logprobs: Some(5),
        ..GenerateOptions::default()
    };
    let run = |e: &mut Ensemble, prompt: &str| e.generate(prompt, &options, &mut |_| {}).unwrap();
    let alone: Vec<Generation> = slots
        .iter_mut()
        .zip(PROMPTS)
        .map(|(e, p)| run(e, p))
        .collect();
    let together: Vec<Generation> = std::thread::scope(|s| {
        let runs: Vec<_> = slots
            .iter_mut()
            .enumerate()
            .map(|(i, e)| s.spawn(move || run(e, PROMPTS[(i + 1) % 3])))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    (0..3)
        .map(|i| {
            let (a, t) = (numerics(&alone[i]), numerics(&together[(i + 2) % 3]));
            assert_eq!(a.len(), TOKENS, "prompt {i}");
            a.iter().zip(&t).filter(|(x, y)| x != y).count() + a.len().abs_diff(t.len())
        })
        .collect()
}

#[test]
fn batch_invariant_slots_give_bit_for_bit_the_numbers_of_one_request_alone() {
    let shared = steps_that_differ_under_load(Batching::Shared);
    eprintln!("batched decodes: steps whose numbers differ from alone, per prompt: {shared:?}");
    let invariant = steps_that_differ_under_load(Batching::Invariant);
    assert_eq!(invariant, vec![0; 3], "batch-invariant slots under load");
}
