//! criterion micro-benchmarks of gac-core on real vocabularies: building the union, the softmax
//! of a 262k vocabulary, and whole ensemble steps with members whose "model" costs nothing (fixed
//! logits), so that only gac's own work is timed: threads, softmax, projection, pick, re-encode.
//!
//! `cargo bench -p gac-tests --bench step` (needs `scripts/fetch-assets`).
// criterion's macros generate public functions without doc comments.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use gac_core::combine::softmax;
use gac_core::tokenizer_json::vocab_from_file;
use gac_core::{Ensemble, GenerateOptions, Member, Mode, Union, Vocab};
use gac_tests::{asset, GEMMA, SMOLLM};

/// A member with a real vocabulary whose logits are fixed pseudo-random numbers.
struct FixedMember {
    vocab: Vocab,
    logits: Vec<f32>,
}

impl FixedMember {
    /// Uniform logits in [-10, 10]; `peaked` adds a head of 8 tokens well above the rest, the
    /// shape of a language model's next-token distribution (a flat one is the worst case: no
    /// head, so every step combines the full distributions).
    fn new(vocab: Vocab, seed: u64, peaked: bool) -> Self {
        let mut state = seed;
        let mut logits: Vec<f32> = (0..vocab.len())
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
            })
            .collect();
        if peaked {
            let n = logits.len();
            for k in 0..8 {
                logits[(k * 7919 + 1000) % n] = 22.0 - k as f32;
            }
        }
        Self { vocab, logits }
    }
}

impl Member for FixedMember {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }
    fn encode(&self, text: &[u8]) -> gac_core::Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.vocab.encode_bytes(text, &mut ids)?;
        Ok(ids)
    }
    fn reset(&mut self) -> gac_core::Result<()> {
        Ok(())
    }
    fn push(&mut self, _ids: &[u32]) -> gac_core::Result<()> {
        Ok(())
    }
    fn logits(&mut self) -> gac_core::Result<&[f32]> {
        Ok(&self.logits)
    }
}

fn vocabs() -> Vec<Vocab> {
    vec![
        gac_llamacpp::load_vocab(&asset(SMOLLM)).unwrap(),
        gac_llamacpp::load_vocab(&asset(GEMMA)).unwrap(),
        vocab_from_file(&asset("tokenizers/qwen3.json")).unwrap(),
    ]
}

fn benches(c: &mut Criterion) {
    let vocabs = vocabs();
    c.bench_function("union build: SmolLM2 49k + Gemma-3 262k", |b| {
        b.iter(|| Union::build(&[&vocabs[0], &vocabs[1]]).unwrap())
    });
    c.bench_function(
        "union build: SmolLM2 49k + Gemma-3 262k + Qwen3 151k",
        |b| b.iter(|| Union::build(&[&vocabs[0], &vocabs[1], &vocabs[2]]).unwrap()),
    );
    let logits = FixedMember::new(vocabs[1].clone(), 1, true).logits;
    let mut probs = vec![0.0; logits.len()];
    let mut head = Vec::new();
    c.bench_function("softmax + head: 262k logits", |b| {
        b.iter(|| softmax(&logits, &mut probs, 1e-4, &mut head))
    });
    let options = GenerateOptions {
        max_tokens: 16,
        ..GenerateOptions::default()
    };
    for (n, peaked) in [(2, true), (3, true), (2, false)] {
        let members: Vec<Box<dyn Member>> = vocabs[..n]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Box::new(FixedMember::new(v.clone(), i as u64 + 7, peaked)) as Box<dyn Member>
            })
            .collect();
        let mut ensemble = Ensemble::new(members, None, Mode::Average).unwrap();
        let sizes = ["49k + 262k", "49k + 262k + 151k"][n - 2];
        let shape = if peaked {
            "peaked"
        } else {
            "flat (worst case)"
        };
        let name = format!("16 ensemble steps, {n} members ({sizes}), {shape} logits");
        c.bench_function(&name, |b| {
            b.iter_batched(
                || (),
                |()| ensemble.generate("Hello", &options, &mut |_| {}).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group! {
    name = step;
    config = Criterion::default().sample_size(10);
    targets = benches
}
criterion_main!(step);
