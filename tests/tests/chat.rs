//! `--chat`: every member gets the user's message in its own chat template, tokenized exactly as
//! its runtime does it for a chat request (one BOS, the template's control tokens).

use gac_core::{Encoder, Ensemble, GenerateOptions, Member, Mode};
use gac_tests::{asset, member, mistral_member, mistral_reference_chat, reference_greedy};
use gac_tests::{GEMMA, SMOLLM};
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};

const USER: &str = "Name three colours of the rainbow.";
const TOKENS: usize = 16;

fn chat() -> GenerateOptions {
    GenerateOptions {
        max_tokens: TOKENS,
        chat: true,
        ..GenerateOptions::default()
    }
}

/// The chat prompt llama.cpp itself makes from the GGUF's template (`None` without one), and
/// the model's BOS id when it wants one.
fn llama_chat_prompt(relative: &str) -> (Option<String>, Option<u32>) {
    let params = LlamaModelParams::default().with_n_gpu_layers(0);
    let model = LlamaModel::load_from_file(gac_llamacpp::backend(), asset(relative), &params)
        .expect("model loads");
    let message = LlamaChatMessage::new("user".into(), USER.into()).unwrap();
    let text = model.chat_template(None).ok().map(|template| {
        model
            .apply_chat_template(&template, &[message], true)
            .unwrap()
    });
    let vocab = model.vocab();
    let bos = vocab.should_add_bos().then(|| vocab.bos().0 as u32);
    (text, bos)
}

#[test]
fn llama_cpp_members_answer_a_chat_as_llama_cpp_does() {
    // SmolLM2's GGUF has a chat template; this Gemma-3 GGUF has none, so it gets the raw prompt.
    for model in [SMOLLM, GEMMA] {
        let (text, bos) = llama_chat_prompt(model);
        assert_eq!(text.is_some(), model == SMOLLM, "{model}");
        let Some(text) = text else {
            let m = member(model);
            assert!(m.encode_chat(USER).is_none());
            let mut e = Ensemble::new(vec![Box::new(m)], None, Mode::Average).unwrap();
            let g = e.generate(USER, &chat(), &mut |_| {}).unwrap();
            let want = reference_greedy(model, USER, TOKENS);
            assert_eq!(&g.member_ids[0][..want.len()], &want[..], "{model}");
            continue;
        };
        let want = reference_greedy(model, &text, TOKENS);
        assert!(!want.is_empty(), "{model}: llama.cpp answered nothing");
        let m = member(model);
        let ids = m.encode_chat(USER).expect("a chat template").unwrap();
        if let Some(bos) = bos {
            assert_eq!(ids[0], bos, "{model}");
            assert_eq!(
                ids.iter().filter(|&&i| i == bos).count(),
                1,
                "{model}: one BOS"
            );
        }
        let mut e = Ensemble::new(vec![Box::new(m)], None, Mode::Average).unwrap();
        let g = e.generate(USER, &chat(), &mut |_| {}).unwrap();
        assert_eq!(
            &g.member_ids[0][..want.len()],
            &want[..],
            "{model}: {:?}",
            g.text
        );
    }
}

#[test]
fn mistralrs_members_answer_a_chat_as_mistralrs_does() {
    // mistral.rs's own chat request: its template, its tokenization, its greedy answer.
    let m = mistral_member(SMOLLM);
    let (want_prompt, want) = mistral_reference_chat(&m, USER, TOKENS);
    assert!(!want.is_empty(), "mistral.rs answered nothing");
    let ids = m.encode_chat(USER).expect("a chat template").unwrap();
    assert_eq!(
        ids, want_prompt,
        "the same prompt ids as mistral.rs's chat request"
    );
    let mut e = Ensemble::new(vec![Box::new(m)], None, Mode::Average).unwrap();
    let g = e.generate(USER, &chat(), &mut |_| {}).unwrap();
    assert_eq!(&g.member_ids[0][..want.len()], &want[..], "{:?}", g.text);
}

#[test]
fn chat_in_both_runtimes_at_once() {
    let members: Vec<Box<dyn Member>> =
        vec![Box::new(mistral_member(SMOLLM)), Box::new(member(GEMMA))];
    let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
    let g = e.generate(USER, &chat(), &mut |_| {}).unwrap();
    assert!(!g.tokens.is_empty());
    for (i, ids) in g.member_ids.iter().enumerate() {
        assert_eq!(e.members()[i].vocab().decode(ids), g.bytes, "member {i}");
    }
}
