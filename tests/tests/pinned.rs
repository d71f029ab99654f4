//! The chosen tokens of fixed greedy and seeded runs, pinned: a change to the selection code
//! (combine, top-k union, head bound, temperature, top-k, top-p, draw) must not change them.
//! Members have the real SmolLM2 and Gemma-3 vocabularies and pseudo-random logits (no model
//! runs, so the numbers do not depend on llama.cpp's kernels).

use gac_core::{Draw, Ensemble, GenerateOptions, Member, Mode, Sampling, Schedule, WhenUnsure};
use gac_tests::{asset, FixedMember, GEMMA, SMOLLM};

fn run(peaked: bool, mode: Mode, options: GenerateOptions) -> Vec<u32> {
    let members: Vec<Box<dyn Member>> = [SMOLLM, GEMMA]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let vocab = gac_llamacpp::load_vocab(&asset(m)).unwrap();
            Box::new(FixedMember::new(vocab, i as u64 + 7, peaked).varying()) as Box<dyn Member>
        })
        .collect();
    let mut e = Ensemble::new(members, Some(vec![1.0, 2.0]), mode).unwrap();
    let options = GenerateOptions {
        max_tokens: 12,
        ..options
    };
    let g = e.generate("Hello", &options, &mut |_| {}).unwrap();
    g.tokens.iter().map(|t| t.0).collect()
}

fn sampling(seed: u64, temperature: f32, top_k: usize, top_p: f32) -> GenerateOptions {
    GenerateOptions {
        sampling: Sampling::Draw(Draw {
            temperature,
            top_k,
            top_p,
            seed,
        }),
        ..GenerateOptions::default()
    }
}

#[test]
fn chosen_tokens_are_pinned() {
    let gated = Mode::Gated {
        gate: 1,
        threshold: 0.9,
        when_unsure: WhenUnsure::Average,
    };
    let top5 = GenerateOptions {
        union_top_k: Some(5),
        ..GenerateOptions::default()
    };
    let runs: Vec<(&str, Vec<u32>)> = vec![
        (
            "greedy, peaked",
            run(true, Mode::Average, GenerateOptions::default()),
        ),
        (
            "greedy, flat",
            run(false, Mode::Average, GenerateOptions::default()),
        ),
        (
            "greedy, gated",
            run(true, gated, GenerateOptions::default()),
        ),
        (
            "greedy, gated eager",
            run(
                true,
                gated,
                GenerateOptions {
                    schedule: Schedule::Eager,
                    ..GenerateOptions::default()
                },
            ),
        ),
        (
            "greedy, top-5 union",
            run(true, Mode::Average, top5.clone()),
        ),
        (
            "seed 1, t 0.8",
            run(true, Mode::Average, sampling(1, 0.8, 40, 0.95)),
        ),
        (
            "seed 2, t 1.5, flat",
            run(false, Mode::Average, sampling(2, 1.5, 0, 1.0)),
        ),
        (
            "seed 3, t 1, top-p 0.5",
            run(true, Mode::Average, sampling(3, 1.0, 0, 0.5)),
        ),
        (
            "seed 4, top-5 union",
            run(
                true,
                Mode::Average,
                GenerateOptions {
                    union_top_k: Some(5),
                    ..sampling(4, 0.7, 40, 0.9)
                },
            ),
        ),
    ];
    let pinned: &[(&str, &[u32])] = &[
        (
            "greedy, peaked",
            &[
                226936, 48784, 211386, 203643, 195901, 39101, 180545, 172927, 165321, 157776,
                150281, 142877,
            ],
        ),
        (
            "greedy, flat",
            &[
                12324, 46321, 28125, 2821, 33882, 21292, 13245, 46971, 25594, 2478, 13332, 29053,
            ],
        ),
        (
            "greedy, gated",
            &[
                226936, 48784, 211386, 203643, 195901, 39101, 180545, 172927, 165321, 157776,
                150281, 142877,
            ],
        ),
        (
            "greedy, gated eager",
            &[
                226936, 48784, 211386, 203643, 195901, 39101, 180545, 172927, 165321, 157776,
                150281, 142877,
            ],
        ),
        (
            "greedy, top-5 union",
            &[
                226936, 48784, 211386, 203643, 195901, 39101, 180545, 172927, 165321, 157776,
                150281, 142877,
            ],
        ),
        (
            "seed 1, t 0.8",
            &[
                10541, 226936, 226936, 203643, 195901, 195901, 15726, 49040, 121241, 121241,
                107397, 38116,
            ],
        ),
        (
            "seed 2, t 1.5, flat",
            &[
                11393, 229369, 168368, 124537, 150550, 237551, 112688, 32213, 213319, 246120,
                247646, 43221,
            ],
        ),
        (
            "seed 3, t 1, top-p 0.5",
            &[
                226936, 39212, 211386, 203643, 195901, 39101, 180545, 20640, 165321, 22278, 14359,
                6440,
            ],
        ),
        (
            "seed 4, top-5 union",
            &[
                226936, 226936, 48784, 203643, 195901, 6169, 6169, 172927, 165321, 157776, 157776,
                31835,
            ],
        ),
    ];
    assert_eq!(runs.len(), pinned.len());
    for ((name, got), (pinned_name, want)) in runs.iter().zip(pinned) {
        assert_eq!(name, pinned_name);
        assert_eq!(&got[..], *want, "{name}: now {got:?}");
    }
}
