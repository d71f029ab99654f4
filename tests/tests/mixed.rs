//! SmolLM2 (byte-level BPE) + Gemma-3 (SentencePiece): two different vocabularies together.

use std::sync::{Arc, Mutex};

use gac_core::{
    Draw, Ensemble, Finish, GenerateOptions, Generation, Member, Mode, Sampling, WhenUnsure,
};
use gac_tests::{member, Recording, GEMMA, PROMPTS, SMOLLM};

type Snapshots = Arc<Mutex<Vec<Vec<u8>>>>;

fn mixed(mode: Mode) -> (Ensemble, Vec<Snapshots>) {
    let members: Vec<Recording> = [SMOLLM, GEMMA]
        .iter()
        .map(|m| Recording::new(member(m)))
        .collect();
    let snapshots = members.iter().map(|m| m.snapshots.clone()).collect();
    let members = members
        .into_iter()
        .map(|m| Box::new(m) as Box<dyn Member>)
        .collect();
    (Ensemble::new(members, None, mode).unwrap(), snapshots)
}

fn gated() -> Mode {
    Mode::Gated {
        gate: 0,
        threshold: 0.5,
        when_unsure: WhenUnsure::Average,
    }
}

/// Every push left the member's context spelling, through llama.cpp's own detokenizer, exactly
/// the bytes of the tokens generated so far.
fn check_contexts(g: &Generation, ensemble: &Ensemble, snapshots: &[Snapshots]) {
    let union = ensemble.union();
    let mut boundaries = vec![0];
    for t in &g.tokens {
        boundaries.push(boundaries.last().unwrap() + union.bytes(*t).len());
    }
    for (i, snaps) in snapshots.iter().enumerate() {
        let snaps = snaps.lock().unwrap();
        assert!(!snaps.is_empty(), "member {i} received no tokens");
        for s in snaps.iter() {
            assert!(
                g.bytes.starts_with(s) && boundaries.contains(&s.len()),
                "member {i}'s context spells {:?}, not a token-aligned prefix of {:?}",
                String::from_utf8_lossy(s),
                String::from_utf8_lossy(&g.bytes)
            );
        }
        assert_eq!(
            snaps.last().unwrap(),
            &g.bytes,
            "member {i}'s final context"
        );
    }
}

#[test]
fn average_and_gated_run_and_contexts_spell_the_output() {
    for mode in [Mode::Average, gated()] {
        let (mut ensemble, snapshots) = mixed(mode);
        for prompt in PROMPTS {
            let options = GenerateOptions {
                max_tokens: 32,
                ..Default::default()
            };
            let mut streamed = String::new();
            let g = ensemble
                .generate(prompt, &options, &mut |s| streamed.push_str(s))
                .unwrap();
            assert!(
                matches!(g.finish, Finish::End | Finish::MaxTokens),
                "{:?}",
                g.finish
            );
            assert!(!g.tokens.is_empty(), "{prompt:?} generated nothing");
            assert_eq!(streamed, g.text);
            assert_eq!(g.text, String::from_utf8_lossy(&g.bytes));
            check_contexts(&g, &ensemble, &snapshots);
            if mode == Mode::Average {
                assert_eq!(g.stats.ensembled_steps, g.stats.steps);
            }
        }
    }
}

#[test]
fn a_chinese_continuation_crosses_vocabularies_byte_exactly() {
    // Chinese characters are multi-byte: SmolLM2 spells many of them as partial UTF-8 tokens,
    // which Gemma must receive as byte-fallback pieces or whole characters.
    let (mut ensemble, snapshots) = mixed(Mode::Average);
    let options = GenerateOptions {
        max_tokens: 48,
        ..Default::default()
    };
    let g = ensemble
        .generate("请用中文回答：天空是什么颜色？答：", &options, &mut |_| {})
        .unwrap();
    check_contexts(&g, &ensemble, &snapshots);
    assert!(
        g.bytes.iter().any(|&b| b >= 0x80),
        "expected non-ASCII output: {:?}",
        g.text
    );
}

#[test]
fn sampling_is_deterministic_for_a_seed() {
    let options = |seed| GenerateOptions {
        max_tokens: 24,
        sampling: Sampling::Draw(Draw {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            seed,
        }),
        ..Default::default()
    };
    let (mut ensemble, _) = mixed(Mode::Average);
    let a = ensemble
        .generate(PROMPTS[0], &options(7), &mut |_| {})
        .unwrap();
    let b = ensemble
        .generate(PROMPTS[0], &options(7), &mut |_| {})
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    let (mut fresh, _) = mixed(Mode::Average);
    let c = fresh
        .generate(PROMPTS[0], &options(7), &mut |_| {})
        .unwrap();
    assert_eq!(a.tokens, c.tokens);
}

#[test]
fn greedy_on_heads_equals_the_full_union_argmax() {
    // Sampling with top-k 1 combines the full distributions and takes their argmax.
    let dense = GenerateOptions {
        max_tokens: 32,
        sampling: Sampling::Draw(Draw {
            top_k: 1,
            ..Draw::default()
        }),
        ..Default::default()
    };
    let greedy = GenerateOptions {
        max_tokens: 32,
        ..Default::default()
    };
    let (mut ensemble, _) = mixed(Mode::Average);
    for prompt in PROMPTS {
        let a = ensemble.generate(prompt, &greedy, &mut |_| {}).unwrap();
        let b = ensemble.generate(prompt, &dense, &mut |_| {}).unwrap();
        assert_eq!(a.tokens, b.tokens, "{prompt:?}");
    }
}
