//! Unit tests of the step loop on scripted members.

use super::*;
use crate::constraint::Grammar;
use crate::member::Message;
use crate::select::Schedule;
use crate::select::{Draw, Sampling};
use crate::testutil::ScriptedMember;
use crate::union::UnionId;

const A: &[&str] = &[
    "<end>",
    "h",
    "e",
    "l",
    "o",
    " ",
    "w",
    "r",
    "d",
    "he",
    "llo",
    " world",
    "<special>",
];
const B: &[&str] = &[
    "<special>",
    "h",
    "e",
    "l",
    "o",
    " ",
    "w",
    "r",
    "d",
    "hel",
    "lo",
    " wor",
    "ld",
    "<end>",
];

/// Two members over different vocabularies with pseudo-random logits (near-ties common).
fn noisy_pair(seed: u64) -> Vec<Box<dyn Member>> {
    let mut a = ScriptedMember::new("a", A, "");
    a.noise = Some(seed);
    let mut b = ScriptedMember::new("b", B, "");
    b.noise = Some(seed + 100);
    vec![boxed(a), boxed(b)]
}

fn boxed(m: ScriptedMember) -> Box<dyn Member> {
    Box::new(m)
}

/// Both options pick the same tokens on `seeds` noisy member pairs.
fn assert_same_tokens_on_noisy_pairs(seeds: u64, a: &GenerateOptions, b: &GenerateOptions) {
    for seed in 0..seeds {
        let (g1, _) = run(noisy_pair(seed), Mode::Average, a).unwrap();
        let (g2, _) = run(noisy_pair(seed), Mode::Average, b).unwrap();
        assert_eq!(g1.tokens, g2.tokens, "seed {seed}");
    }
}

fn run(
    members: Vec<Box<dyn Member>>,
    mode: Mode,
    opts: &GenerateOptions,
) -> Result<(Generation, String)> {
    let mut e = Ensemble::new(members, None, mode)?;
    let mut streamed = String::new();
    let g = e.generate("hello", opts, &mut |s| streamed.push_str(s))?;
    Ok((g, streamed))
}

#[test]
fn two_vocabularies_spell_the_target_and_contexts_agree() {
    let a = ScriptedMember::new("a", A, "hello world");
    let b = ScriptedMember::new("b", B, "hello world");
    let (g, streamed) = run(
        vec![boxed(a), boxed(b)],
        Mode::Average,
        &GenerateOptions::default(),
    )
    .unwrap();
    assert_eq!(g.text, "hello world");
    assert_eq!(streamed, "hello world");
    assert_eq!(g.finish, Finish::End);
    assert_eq!(g.bytes, b"hello world");
    for (i, ids) in g.member_ids.iter().enumerate() {
        let vocab = if i == 0 { A } else { B };
        let spelled: String = ids.iter().map(|&id| vocab[id as usize]).collect();
        assert_eq!(spelled, "hello world", "member {i}");
    }
    assert_eq!(g.stats.steps, g.stats.tokens + 1);
    assert_eq!(g.stats.ensembled_steps, g.stats.steps);
}

#[test]
fn greedy_on_heads_equals_dense_argmax() {
    // Sampling with top-k 1 always takes the dense path and picks the same argmax.
    let greedy = GenerateOptions {
        max_tokens: 30,
        ..Default::default()
    };
    let dense = GenerateOptions {
        sampling: Sampling::Draw(Draw {
            top_k: 1,
            ..Draw::default()
        }),
        ..greedy.clone()
    };
    assert_same_tokens_on_noisy_pairs(20, &greedy, &dense);
}

#[test]
fn top_k_union_of_one_is_each_members_own_top_token_voted() {
    // With k = 1 only each member's favourite enters; two members who agree on the target
    // still write it, and k = 0 is rejected.
    let a = ScriptedMember::new("a", A, "hello world");
    let b = ScriptedMember::new("b", B, "hello world");
    let opts = GenerateOptions {
        union_top_k: Some(1),
        ..Default::default()
    };
    let (g, _) = run(vec![boxed(a), boxed(b)], Mode::Average, &opts).unwrap();
    assert_eq!(g.text, "hello world");
    let a = ScriptedMember::new("a", A, "hello world");
    let opts = GenerateOptions {
        union_top_k: Some(0),
        ..Default::default()
    };
    assert!(run(vec![boxed(a)], Mode::Average, &opts).is_err());
    // On noisy members, top-k with k >= the vocabulary equals the full union's argmax.
    let full = GenerateOptions {
        max_tokens: 20,
        ..Default::default()
    };
    let topk = GenerateOptions {
        union_top_k: Some(64),
        ..full.clone()
    };
    assert_same_tokens_on_noisy_pairs(10, &full, &topk);
}

#[test]
fn stop_string_and_max_tokens() {
    let a = ScriptedMember::new("a", A, "hello world");
    let opts = GenerateOptions {
        stop: vec![" wo".into()],
        ..Default::default()
    };
    let (g, streamed) = run(vec![boxed(a)], Mode::Average, &opts).unwrap();
    assert_eq!(
        (g.text.as_str(), streamed.as_str(), g.finish),
        ("hello", "hello", Finish::Stop)
    );
    let a = ScriptedMember::new("a", A, "hello world");
    let opts = GenerateOptions {
        max_tokens: 2,
        ..Default::default()
    };
    let (g, _) = run(vec![boxed(a)], Mode::Average, &opts).unwrap();
    assert_eq!((g.text.as_str(), g.finish), ("hello", Finish::MaxTokens));
}

#[test]
fn gate_threshold_zero_never_ensembles_and_one_always_does() {
    for threshold in [0.0, 1.0] {
        let a = ScriptedMember::new("a", A, "hello world");
        let b = ScriptedMember::new("b", B, "hello world");
        let mode = Mode::Gated {
            gate: 0,
            threshold,
            when_unsure: WhenUnsure::Average,
        };
        let (g, _) = run(vec![boxed(a), boxed(b)], mode, &GenerateOptions::default()).unwrap();
        assert_eq!(g.text, "hello world");
        let want = if threshold == 0.0 { 0 } else { g.stats.steps };
        assert_eq!(g.stats.ensembled_steps, want);
        // Member b was skipped (or not) but its context still spells everything.
        let spelled: String = g.member_ids[1].iter().map(|&id| B[id as usize]).collect();
        assert_eq!(spelled, "hello world");
    }
}

#[test]
fn eager_gated_evaluates_every_member_each_step_and_uses_them_when_unsure() {
    for threshold in [0.0, 0.5, 1.0] {
        let mode = Mode::Gated {
            gate: 0,
            threshold,
            when_unsure: WhenUnsure::Average,
        };
        let [lazy, eager] = [Schedule::Lazy, Schedule::Eager].map(|schedule| {
            let mut a = ScriptedMember::new("a", A, "hello world");
            a.unsure_every = Some(2);
            let b = ScriptedMember::new("b", B, "hello world");
            let opts = GenerateOptions {
                schedule,
                ..Default::default()
            };
            run(vec![boxed(a), boxed(b)], mode, &opts).unwrap().0
        });
        assert_eq!(eager.text, "hello world");
        assert_eq!(eager.tokens, lazy.tokens, "t = {threshold}");
        assert_eq!(eager.stats.ensembled_steps, lazy.stats.ensembled_steps);
        // Eager: member b is evaluated at every step, lazily only where the gate is unsure.
        assert_eq!(eager.stats.members[1].decode_evals + 1, eager.stats.steps);
        assert!(
            lazy.stats.members[1].decode_evals < eager.stats.members[1].decode_evals
                || threshold == 1.0
        );
    }
}

#[test]
fn failing_or_panicking_member_ends_with_its_error() {
    for panic in [false, true] {
        let a = ScriptedMember::new("a", A, "hello world");
        let mut b = ScriptedMember::new("b", B, "hello world");
        if panic {
            b.panic_at = Some(1);
        } else {
            b.fail_at = Some(1);
        }
        let err = run(
            vec![boxed(a), boxed(b)],
            Mode::Average,
            &GenerateOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Member { member, .. } if member == "b"),
            "{err}"
        );
    }
}

#[test]
fn bad_input_is_rejected() {
    let mk = || boxed(ScriptedMember::new("a", A, "hi"));
    assert_eq!(
        Ensemble::new(vec![], None, Mode::Average).err(),
        Some(Error::NoMembers)
    );
    let e = Ensemble::new(vec![mk()], Some(vec![-1.0]), Mode::Average)
        .err()
        .unwrap();
    assert!(e.to_string().contains("member[0].weight"), "{e}");
    let gated = |gate, threshold| Mode::Gated {
        gate,
        threshold,
        when_unsure: WhenUnsure::Average,
    };
    assert!(Ensemble::new(vec![mk()], None, gated(1, 0.5)).is_err());
    assert!(Ensemble::new(vec![mk()], None, gated(0, 1.5)).is_err());
    let mut e = Ensemble::new(vec![mk()], None, Mode::Average).unwrap();
    assert_eq!(
        e.generate("", &GenerateOptions::default(), &mut |_| {})
            .err(),
        Some(Error::EmptyPrompt)
    );
    let mut small = ScriptedMember::new("s", A, "hi");
    small.context_size = Some(3);
    let mut e = Ensemble::new(vec![boxed(small)], None, Mode::Average).unwrap();
    let err = e
        .generate("hello world", &GenerateOptions::default(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::PromptTooLong { .. }), "{err}");
}

#[test]
fn a_context_too_full_for_the_last_token_keeps_the_generation() {
    // The prompt "he" and "llo" fill the context of 2; the last token, " world", is picked
    // but only pushed at the final flush, which no longer fits.
    let mut a = ScriptedMember::new("a", A, "hello world");
    a.context_size = Some(2);
    let mut e = Ensemble::new(vec![boxed(a)], None, Mode::Average).unwrap();
    let opts = GenerateOptions {
        max_tokens: 2,
        ..Default::default()
    };
    let mut streamed = String::new();
    let g = e
        .generate("he", &opts, &mut |s| streamed.push_str(s))
        .unwrap();
    assert_eq!((g.text.as_str(), g.finish), ("hello", Finish::MaxTokens));
    assert_eq!(streamed, "hello");
    assert!(g.member_ids[0].is_empty());
}

/// A member over `pieces` that always returns these logits.
fn fixed(name: &str, pieces: &[&str], logits: Vec<f32>) -> Box<dyn Member> {
    let mut m = ScriptedMember::new(name, pieces, "");
    m.fixed_logits = Some(logits);
    boxed(m)
}

fn three_tokens() -> GenerateOptions {
    GenerateOptions {
        max_tokens: 3,
        ..Default::default()
    }
}

#[test]
fn top_k_union_skips_special_tokens_in_a_members_head() {
    // Both members put most mass on their special token; "h" is next.
    let mut a = vec![0.0; A.len()];
    (a[12], a[1]) = (12.0, 10.0);
    let mut b = vec![0.0; B.len()];
    (b[0], b[1]) = (12.0, 10.0);
    for k in [1, 2] {
        let members = vec![fixed("a", A, a.clone()), fixed("b", B, b.clone())];
        let opts = GenerateOptions {
            union_top_k: Some(k),
            ..three_tokens()
        };
        let (g, _) = run(members, Mode::Average, &opts).unwrap();
        assert_eq!(g.text, "hhh", "k = {k}");
    }
    // Only special tokens in the head: the full distributions decide.
    let mut a = vec![0.0; A.len()];
    (a[12], a[1]) = (30.0, 10.0);
    let opts = GenerateOptions {
        union_top_k: Some(1),
        ..three_tokens()
    };
    let (g, _) = run(vec![fixed("a", A, a)], Mode::Average, &opts).unwrap();
    assert_eq!(g.text, "hhh");
}

#[test]
fn huge_weights_do_not_overflow_to_nothing() {
    let a = ScriptedMember::new("a", A, "hello world");
    let b = ScriptedMember::new("b", B, "hello world");
    let mut e = Ensemble::new(
        vec![boxed(a), boxed(b)],
        Some(vec![3e38, 3e38]),
        Mode::Average,
    )
    .unwrap();
    let g = e
        .generate("hello", &GenerateOptions::default(), &mut |_| {})
        .unwrap();
    assert_eq!(g.text, "hello world");
}

#[test]
fn a_negative_infinite_logit_is_no_member_error() {
    let mut a = vec![0.0; A.len()];
    (a[1], a[2]) = (5.0, f32::NEG_INFINITY);
    let (g, _) = run(vec![fixed("a", A, a)], Mode::Average, &three_tokens()).unwrap();
    assert_eq!(g.text, "hhh");
}

#[test]
fn greedy_on_heads_counts_every_end_token_outside_the_head() {
    // 5,000 End tokens just under the head floor hold 0.495 together; "x" (0.3) and "y"
    // (0.205) are the only head tokens. The End class is the true argmax.
    let mut pieces = vec!["<end>"; 5000];
    pieces.extend(["x", "y", "hello"]);
    let mut logits = vec![0.99e-4f32.ln(); 5000];
    logits.extend([0.3f32.ln(), 0.205f32.ln(), f32::NEG_INFINITY]);
    let (g, _) = run(
        vec![fixed("a", &pieces, logits)],
        Mode::Average,
        &three_tokens(),
    )
    .unwrap();
    assert_eq!((g.text.as_str(), g.finish), ("", Finish::End));
}

#[test]
fn full_context_finishes_cleanly() {
    let mut a = ScriptedMember::new("a", A, "hello world");
    a.context_size = Some(2);
    let mut e = Ensemble::new(vec![boxed(a)], None, Mode::Average).unwrap();
    let g = e
        .generate("he", &GenerateOptions::default(), &mut |_| {})
        .unwrap();
    assert_eq!(g.finish, Finish::ContextFull);
}

#[test]
fn logprobs_describe_the_combined_distribution_and_change_no_pick() {
    let with = GenerateOptions {
        logprobs: Some(3),
        ..Default::default()
    };
    for seed in 0..5 {
        let (plain, _) = run(noisy_pair(seed), Mode::Average, &Default::default()).unwrap();
        let (g, _) = run(noisy_pair(seed), Mode::Average, &with).unwrap();
        assert_eq!(g.tokens, plain.tokens, "seed {seed}");
        assert!(plain.logprobs.is_empty());
        // End's is the last where the generation ended with it.
        let mut picked = g.tokens.clone();
        if g.finish == Finish::End {
            picked.push(crate::union::END);
        }
        assert_eq!(g.logprobs.len(), picked.len());
        for (lp, &x) in g.logprobs.iter().zip(&picked) {
            assert_eq!(lp.token, x);
            assert!(lp.logprob <= 0.0 && lp.logprob.is_finite(), "{lp:?}");
            // Greedy: the pick is the most probable token.
            assert_eq!(lp.top[0], (x, lp.logprob));
            assert!(lp.top.len() == 3 && lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
            let mass: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
            assert!(mass <= 1.0 + 1e-5, "{mass}");
        }
    }
}

#[test]
fn logprobs_with_heads_change_no_pick_and_describe_the_whole_distribution() {
    // Members that hand back heads of 2: asking for logprobs fetches their whole distributions,
    // so the picks are those without logprobs and the reported distribution is the whole one
    // (the same as with members that give all their logits).
    let with = GenerateOptions {
        logprobs: Some(3),
        ..Default::default()
    };
    for seed in 0..8 {
        let (plain, _) = run(noisy_heads(seed, 2), Mode::Average, &Default::default()).unwrap();
        let (g, _) = run(noisy_heads(seed, 2), Mode::Average, &with).unwrap();
        assert_eq!(g.tokens, plain.tokens, "seed {seed}");
        let (whole, _) = run(noisy_pair(seed), Mode::Average, &with).unwrap();
        assert_eq!(g.tokens, whole.tokens, "seed {seed}");
        for (a, b) in g.logprobs.iter().zip(&whole.logprobs) {
            assert_eq!(a.top.len(), b.top.len(), "seed {seed}");
            for (x, y) in a.top.iter().zip(&b.top) {
                assert_eq!(x.0, y.0, "seed {seed}");
                assert!((x.1 - y.1).abs() < 1e-4, "seed {seed}: {x:?} {y:?}");
            }
        }
    }
}

/// Cancels after `after` tokens.
struct CancelAfter {
    after: usize,
    seen: usize,
}

impl Observer for CancelAfter {
    fn text(&mut self, _: &str) {}
    fn token(&mut self, _: UnionId, _: Option<&TokenLogprob>) {
        self.seen += 1;
    }
    fn cancelled(&self) -> bool {
        self.seen >= self.after
    }
}

#[test]
fn an_observer_cancels_between_steps_and_the_members_stay_usable() {
    let a = ScriptedMember::new("a", A, "hello world");
    let mut e = Ensemble::new(vec![boxed(a)], None, Mode::Average).unwrap();
    let mut cancel = CancelAfter { after: 2, seen: 0 };
    let g = e
        .generate_with(Prompt::Text("hello"), &Default::default(), &mut cancel)
        .unwrap();
    assert_eq!((g.tokens.len(), g.finish), (2, Finish::Cancelled));
    let g = e
        .generate("hello", &GenerateOptions::default(), &mut |_| {})
        .unwrap();
    assert_eq!((g.text.as_str(), g.finish), ("hello world", Finish::End));
}

#[test]
fn a_conversation_needs_every_member_to_have_a_chat_template() {
    let a = ScriptedMember::new("a", A, "hello world");
    let mut e = Ensemble::new(vec![boxed(a)], None, Mode::Average).unwrap();
    let messages = [Message::new("user", "hi")];
    let err = e
        .generate_with(
            Prompt::Chat(&messages),
            &Default::default(),
            &mut OnText(&mut |_| {}),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
    let err = e
        .generate_with(
            Prompt::Chat(&[]),
            &Default::default(),
            &mut OnText(&mut |_| {}),
        )
        .unwrap_err();
    assert_eq!(err, Error::EmptyPrompt);
}

/// A noisy pair whose members hand back only their `k` most probable tokens.
fn noisy_heads(seed: u64, k: usize) -> Vec<Box<dyn Member>> {
    let mut a = ScriptedMember::new("a", A, "");
    a.noise = Some(seed);
    a.head = Some(k);
    let mut b = ScriptedMember::new("b", B, "");
    b.noise = Some(seed + 100);
    b.head = Some(k);
    vec![boxed(a), boxed(b)]
}

#[test]
fn members_that_give_only_heads_pick_what_whole_distributions_pick() {
    let opts = GenerateOptions {
        max_tokens: 20,
        ..Default::default()
    };
    let (mut heads, mut fallbacks) = (0, 0);
    for seed in 0..40 {
        let (full, _) = run(noisy_pair(seed), Mode::Average, &opts).unwrap();
        let (g, _) = run(noisy_heads(seed, 3), Mode::Average, &opts).unwrap();
        assert_eq!(g.tokens, full.tokens, "seed {seed}");
        for m in &g.stats.members {
            heads += m.head_evals;
            fallbacks += m.full_after_head;
            assert!(m.full_after_head <= m.head_evals, "{m:?}");
        }
    }
    // These members' distributions are flat: their heads of 3 rarely decide.
    assert!(
        fallbacks > 0 && fallbacks <= heads,
        "{fallbacks} of {heads}"
    );

    // Confident members that agree: their heads decide every step, nothing else is evaluated.
    let mut a = ScriptedMember::new("a", A, "hello world");
    a.head = Some(2);
    let mut b = ScriptedMember::new("b", A, "hello world");
    b.head = Some(2);
    let (g, _) = run(vec![boxed(a), boxed(b)], Mode::Average, &opts).unwrap();
    assert_eq!(g.text, "hello world");
    for m in &g.stats.members {
        assert_eq!(
            (m.head_evals, m.full_after_head),
            (g.stats.steps, 0),
            "{m:?}"
        );
    }
}

#[test]
fn a_head_shorter_than_the_top_k_union_gives_way_to_the_whole_distribution() {
    let opts = GenerateOptions {
        max_tokens: 20,
        union_top_k: Some(4),
        ..Default::default()
    };
    for seed in 0..20 {
        let (full, _) = run(noisy_pair(seed), Mode::Average, &opts).unwrap();
        // Heads of 3: the 4 most probable are not known, so every step asks for everything.
        let (short, _) = run(noisy_heads(seed, 3), Mode::Average, &opts).unwrap();
        assert_eq!(short.tokens, full.tokens, "seed {seed}");
        for m in &short.stats.members {
            assert_eq!(m.full_after_head, m.head_evals, "{m:?}");
        }
        // One of each: only the short head is refetched.
        let mut mixed = noisy_heads(seed, 3);
        mixed[1] = noisy_heads(seed, 5).pop().unwrap();
        let (g, _) = run(mixed, Mode::Average, &opts).unwrap();
        assert_eq!(g.tokens, full.tokens, "seed {seed}");
        let refetched: Vec<usize> = g.stats.members.iter().map(|m| m.full_after_head).collect();
        assert_eq!(refetched, [g.stats.members[0].head_evals, 0], "seed {seed}");
        // Heads of 5 (4 writable tokens even past the one special token): heads suffice.
        let (long, _) = run(noisy_heads(seed, 5), Mode::Average, &opts).unwrap();
        assert_eq!(long.tokens, full.tokens, "seed {seed}");
        for m in &long.stats.members {
            assert_eq!(
                (m.head_evals, m.full_after_head),
                (long.stats.steps, 0),
                "{m:?}"
            );
        }
    }
}

#[test]
fn sampling_over_a_head_draws_only_from_the_head() {
    // A member that gives only its most probable token: every draw is the greedy pick.
    let member = |head| {
        let mut m = ScriptedMember::new("a", A, "");
        m.noise = Some(9);
        m.head = head;
        vec![boxed(m)]
    };
    let sampling = GenerateOptions {
        max_tokens: 20,
        sampling: Sampling::Draw(Draw {
            temperature: 1.5,
            seed: 5,
            ..Draw::default()
        }),
        ..Default::default()
    };
    let greedy = GenerateOptions {
        max_tokens: 20,
        ..Default::default()
    };
    let (drawn, _) = run(member(Some(1)), Mode::Average, &sampling).unwrap();
    let (best, _) = run(member(None), Mode::Average, &greedy).unwrap();
    let (free, _) = run(member(None), Mode::Average, &sampling).unwrap();
    assert_eq!(drawn.tokens, best.tokens);
    assert_ne!(free.tokens, best.tokens, "the draw itself is not greedy");
    assert_eq!(drawn.stats.members[0].full_after_head, 0);
}

#[test]
fn confidence_weighting_lets_the_surer_member_count_more() {
    // Member a: "h" 0.8, "e" 0.2 (sure). Member b: "e" 0.65, "l" 0.35 (less sure).
    // Fixed weights: "e" (0.425) beats "h" (0.4); by confidence (0.8 vs 0.65), "h" wins.
    let probs = |pairs: &[(usize, f32)]| {
        let mut logits = vec![f32::NEG_INFINITY; A.len()];
        for &(i, p) in pairs {
            logits[i] = p.ln();
        }
        logits
    };
    let members = || {
        vec![
            fixed("a", A, probs(&[(1, 0.8), (2, 0.2)])),
            fixed("b", A, probs(&[(2, 0.65), (3, 0.35)])),
        ]
    };
    let one = GenerateOptions {
        max_tokens: 1,
        ..Default::default()
    };
    let (fixed_weights, _) = run(members(), Mode::Average, &one).unwrap();
    let confident = GenerateOptions {
        weighting: crate::Weighting::Confidence,
        ..one
    };
    let (by_confidence, _) = run(members(), Mode::Average, &confident).unwrap();
    assert_eq!(
        (fixed_weights.text.as_str(), by_confidence.text.as_str()),
        ("e", "h")
    );
}

#[test]
fn selective_ensembles_only_the_steps_where_the_members_disagree() {
    // Both members' most probable token is "h": never ensembled, "h" is taken.
    let mut a = vec![0.0; A.len()];
    (a[1], a[2]) = (10.0, 9.9);
    let mut b = vec![0.0; B.len()];
    (b[1], b[2]) = (10.0, 5.0);
    let (g, _) = run(
        vec![fixed("a", A, a.clone()), fixed("b", B, b)],
        Mode::Selective,
        &three_tokens(),
    )
    .unwrap();
    assert_eq!((g.text.as_str(), g.stats.ensembled_steps), ("hhh", 0));
    // Member b now prefers "e" by far: every step is ensembled, and the average picks "e"
    // where member a alone would have said "h".
    let mut b = vec![0.0; B.len()];
    (b[1], b[2]) = (5.0, 10.0);
    let members = || vec![fixed("a", A, a.clone()), fixed("b", B, b.clone())];
    let (g, _) = run(members(), Mode::Selective, &three_tokens()).unwrap();
    assert_eq!((g.text.as_str(), g.stats.ensembled_steps), ("eee", 3));
    let (average, _) = run(members(), Mode::Average, &three_tokens()).unwrap();
    assert_eq!(average.tokens, g.tokens);
}

#[test]
fn selective_takes_the_agreed_token_where_a_draw_would_vary() {
    // Both members find "h" most probable, member a only just (e is close behind).
    let mut a = vec![0.0; A.len()];
    (a[1], a[2]) = (10.0, 9.9);
    let mut b = vec![0.0; B.len()];
    (b[1], b[2]) = (10.0, 5.0);
    let mut drawn = Vec::new();
    for seed in 0..16 {
        let opts = GenerateOptions {
            sampling: Sampling::Draw(Draw {
                temperature: 1.0,
                seed,
                ..Draw::default()
            }),
            logprobs: Some(2),
            ..three_tokens()
        };
        let members = || vec![fixed("a", A, a.clone()), fixed("b", B, b.clone())];
        let (g, _) = run(members(), Mode::Selective, &opts).unwrap();
        assert_eq!((g.text.as_str(), g.stats.ensembled_steps), ("hhh", 0));
        // Its probability is reported under the average, as a drawn token's would be.
        let p = g.logprobs[0].logprob.exp();
        assert!((0.6..0.8).contains(&p), "{p}");
        drawn.push(run(members(), Mode::Average, &opts).unwrap().0.text);
    }
    assert!(drawn.iter().any(|t| t != "hhh"), "{drawn:?}");
}

#[test]
fn selective_greedy_is_the_average_with_or_without_a_top_k_union() {
    for union_top_k in [None, Some(2)] {
        let opts = GenerateOptions {
            max_tokens: 30,
            union_top_k,
            ..Default::default()
        };
        let (mut ensembled, mut steps) = (0, 0);
        for seed in 0..10 {
            let (selective, _) = run(noisy_pair(seed), Mode::Selective, &opts).unwrap();
            let (average, _) = run(noisy_pair(seed), Mode::Average, &opts).unwrap();
            assert_eq!(
                selective.tokens, average.tokens,
                "seed {seed}, {union_top_k:?}"
            );
            ensembled += selective.stats.ensembled_steps;
            steps += selective.stats.steps;
        }
        assert!(0 < ensembled && ensembled < steps, "{ensembled} of {steps}");
    }
}

#[test]
fn a_member_without_weight_has_no_say_in_selective_agreement() {
    let opts = GenerateOptions {
        max_tokens: 30,
        ..Default::default()
    };
    let mut pair = Ensemble::new(noisy_pair(3), Some(vec![1.0, 0.0]), Mode::Selective).unwrap();
    let g = pair.generate("hello", &opts, &mut |_| {}).unwrap();
    assert_eq!(g.stats.ensembled_steps, 0);
    let first = noisy_pair(3).into_iter().take(1).collect();
    let (alone, _) = run(first, Mode::Average, &opts).unwrap();
    assert_eq!(g.text, alone.text);
}

/// Whether `text` is (he|lo| )+ then d, whole, or (`whole` false) the start of such a text.
fn spells_he_lo_d(text: &str, whole: bool) -> bool {
    let mut rest = text;
    loop {
        if rest.is_empty() {
            return !whole;
        }
        if rest == "d" {
            return text.len() > 1;
        }
        match ["he", "lo", " "].iter().find(|p| rest.starts_with(*p)) {
            Some(p) => rest = &rest[p.len()..],
            None => return !whole && ["h", "l"].contains(&rest),
        }
    }
}

#[test]
fn a_grammar_holds_in_every_mode_sampling_and_union() {
    let grammar = Grammar::Lark(r#"start: ("he" | "lo" | " ")+ "d""#.into());
    let draw = Sampling::Draw(Draw {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 5,
    });
    let gated = |when_unsure| Mode::Gated {
        gate: 1,
        threshold: 0.5,
        when_unsure,
    };
    let modes = [
        Mode::Average,
        Mode::Selective,
        gated(WhenUnsure::Average),
        gated(WhenUnsure::Defer(0)),
    ];
    let mut ended = 0;
    for seed in 0..6 {
        for mode in modes {
            for sampling in [Sampling::Greedy, draw] {
                for union_top_k in [None, Some(3)] {
                    let opts = GenerateOptions {
                        max_tokens: 12,
                        sampling,
                        union_top_k,
                        grammar: Some(grammar.clone()),
                        ..Default::default()
                    };
                    let (g, streamed) = run(noisy_heads(seed, 4), mode, &opts).unwrap();
                    let whole = g.finish == Finish::End;
                    assert!(
                        spells_he_lo_d(&g.text, whole) && streamed == g.text,
                        "{mode:?} {sampling:?} {union_top_k:?} seed {seed}: {:?} {:?}",
                        g.text,
                        g.finish
                    );
                    ended += usize::from(whole);
                }
            }
        }
    }
    assert!(ended > 0, "some generations complete the grammar");
}

#[test]
fn constrained_greedy_on_heads_picks_what_whole_distributions_pick() {
    let opts = GenerateOptions {
        max_tokens: 12,
        grammar: Some(Grammar::Lark(r#"start: ("he" | "lo" | " ")+ "d""#.into())),
        ..Default::default()
    };
    for seed in 0..30 {
        let (full, _) = run(noisy_pair(seed), Mode::Average, &opts).unwrap();
        let (heads, _) = run(noisy_heads(seed, 2), Mode::Average, &opts).unwrap();
        assert_eq!(heads.tokens, full.tokens, "seed {seed}");
    }
}

#[test]
fn a_gate_sure_of_a_token_the_grammar_forbids_is_unsure_of_the_allowed_ones() {
    // The gate puts 0.9 on "o" (forbidden) and splits the rest between "h" and "e"; as a
    // whole distribution, or as a head of 2 (its share among the allowed tokens is then
    // between 0.05 / 0.15 and 0.05 / 0.05: the whole distribution decides).
    let pieces = &["<end>", "h", "e", "o", "l"];
    for head in [None, Some(2)] {
        let gate = || {
            let mut m = ScriptedMember::new("gate", pieces, "");
            m.fixed_logits = Some(vec![-20.0, 0.0, 0.0, 2.0_f32.ln() + 2.89, -20.0]);
            m.head = head;
            boxed(m)
        };
        let other = || fixed("other", pieces, vec![-20.0, 0.0, 3.0, 0.0, -20.0]);
        let mode = Mode::Gated {
            gate: 0,
            threshold: 0.6,
            when_unsure: WhenUnsure::Average,
        };
        let free = GenerateOptions {
            max_tokens: 1,
            ..Default::default()
        };
        let (g, _) = run(vec![gate(), other()], mode, &free).unwrap();
        assert_eq!((g.text.as_str(), g.stats.ensembled_steps), ("o", 0));
        let constrained = GenerateOptions {
            grammar: Some(Grammar::Lark(r#"start: "h" | "e""#.into())),
            ..free
        };
        let (g, _) = run(vec![gate(), other()], mode, &constrained).unwrap();
        assert_eq!((g.text.as_str(), g.stats.ensembled_steps), ("e", 1));
        assert_eq!(g.finish, Finish::End, "the grammar is complete");
    }
}

#[test]
fn a_bad_grammar_is_named_before_any_member_runs() {
    let opts = GenerateOptions {
        grammar: Some(Grammar::Lark("start: undefined_rule".into())),
        ..Default::default()
    };
    let mut a = ScriptedMember::new("a", A, "hello");
    a.fail_at = Some(0);
    match run(vec![boxed(a)], Mode::Average, &opts) {
        Err(Error::Setting {
            setting: Setting::Grammar,
            message,
        }) => assert!(message.contains("undefined_rule"), "{message}"),
        other => panic!("{other:?}"),
    }
}
