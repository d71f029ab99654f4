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
use gac_tests::{asset, FixedMember, GEMMA, SMOLLM};

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
