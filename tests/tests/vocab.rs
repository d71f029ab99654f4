//! Vocabularies and their union, built from real tokenizer.json files and GGUF models.

use std::path::Path;

use gac_core::tokenizer_json::{vocab_from_file, TokenizerText};
use gac_core::{Encoder, Token, Union, Vocab};
use gac_tests::{asset, GEMMA, SMOLLM};
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokenizers::Tokenizer;

const TOKENIZERS: &[&str] = &[
    "tokenizers/llama3.json",
    "tokenizers/qwen3.json",
    "tokenizers/gemma3.json",
];

/// Every normal token's bytes, as text, equal what the tokenizer itself decodes the token to.
#[test]
fn tokenizer_json_tokens_are_the_bytes_the_tokenizer_decodes() {
    for file in TOKENIZERS {
        let path = asset(file);
        let vocab = vocab_from_file(&path).unwrap();
        let tokenizer = Tokenizer::from_file(&path).unwrap();
        let mut checked = 0;
        for (id, token) in vocab.tokens().iter().enumerate() {
            let Some(bytes) = token.bytes() else { continue };
            let decoded = tokenizer.decode(&[id as u32], false).unwrap();
            assert_eq!(
                String::from_utf8_lossy(bytes),
                decoded,
                "{file}: token {id}"
            );
            checked += 1;
        }
        assert!(checked > 100_000, "{file}: only {checked} text tokens");
        let ends = vocab.tokens().iter().filter(|t| **t == Token::End).count();
        assert!(ends >= 1, "{file}: no End token");
    }
}

/// The GGUF vocabularies as gac reads them (llama.cpp's pieces) agree with decoding the raw
/// token strings stored in the GGUF by the family's own convention.
#[test]
fn gguf_pieces_agree_with_their_raw_token_strings() {
    let gpt2 = gac_core::vocab::gpt2_char_to_byte();
    for (file, byte_level) in [(SMOLLM, true), (GEMMA, false)] {
        let vocab = gac_llamacpp::load_vocab(&asset(file)).unwrap();
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model =
            LlamaModel::load_from_file(gac_llamacpp::backend(), asset(file), &params).unwrap();
        let raw = model.vocab();
        let mut checked = 0;
        for (id, token) in vocab.tokens().iter().enumerate() {
            let Token::Text(bytes) = token else { continue };
            let text = raw.text(LlamaToken(id as i32)).unwrap().to_str().unwrap();
            let want = if byte_level {
                match gac_core::vocab::bytes_from_gpt2(text, &gpt2) {
                    Some(b) => b,
                    None => continue, // user-defined tokens are stored as plain text
                }
            } else {
                gac_core::vocab::bytes_from_sentencepiece(text)
            };
            assert_eq!(&bytes[..], &want[..], "{file}: token {id} {text:?}");
            checked += 1;
        }
        assert!(checked > 40_000, "{file}: only {checked} tokens checked");
    }
}

fn text_bytes(v: &Vocab) -> std::collections::HashSet<&[u8]> {
    v.tokens().iter().filter_map(Token::bytes).collect()
}

#[test]
fn union_of_five_real_vocabularies_maps_every_token_to_its_bytes() {
    let mut vocabs: Vec<Vocab> = TOKENIZERS
        .iter()
        .map(|f| vocab_from_file(&asset(f)).unwrap())
        .collect();
    for f in [SMOLLM, GEMMA] {
        vocabs.push(gac_llamacpp::load_vocab(Path::new(&asset(f))).unwrap());
    }
    let refs: Vec<&Vocab> = vocabs.iter().collect();
    let union = Union::build(&refs).unwrap();
    let mut all = std::collections::HashSet::new();
    for (i, v) in vocabs.iter().enumerate() {
        let projection = union.projection(i);
        assert_eq!(projection.len(), v.len());
        for (id, token) in v.tokens().iter().enumerate() {
            let u = projection[id] as usize;
            match token.bytes() {
                Some(b) => {
                    assert_eq!(
                        union.bytes(gac_core::UnionId(u as u32)),
                        b,
                        "member {i} token {id}"
                    );
                    let back = union.member_token(i, gac_core::UnionId(u as u32)).unwrap();
                    assert_eq!(v.get(back).unwrap().bytes(), Some(b));
                }
                None if *token == Token::End => assert_eq!(u, 0),
                None => assert_eq!(u, union.sink()),
            }
        }
        all.extend(text_bytes(v));
    }
    assert_eq!(
        union.len(),
        all.len() + 1,
        "union = distinct byte strings + End"
    );
    // Same members, same order: same ids.
    let again = Union::build(&refs).unwrap();
    for i in 0..vocabs.len() {
        assert_eq!(union.projection(i), again.projection(i));
    }
    // Byte strings shared by SmolLM2 and Gemma-3 are shared union tokens.
    let shared = text_bytes(&vocabs[3])
        .intersection(&text_bytes(&vocabs[4]))
        .count();
    assert_eq!(union.overlap(3, 4), shared);
}

/// A tokenizer.json as a member's encoder (a remote member's `vocab`): ids that spell the text
/// exactly, markup kept as text, the post-processor's BOS on a prompt.
#[test]
fn tokenizer_json_encodes_like_a_member() {
    let path = asset("tokenizers/gemma3.json");
    let text = TokenizerText::from_file(&path).unwrap();
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    for s in ["Le café est très bon", "中国的首都是", "a <end_of_turn> b"] {
        let ids = text.encode(s.as_bytes()).unwrap();
        assert_eq!(text.vocab().decode(&ids), s.as_bytes(), "{s:?}");
        assert!(
            ids.iter()
                .all(|&id| text.vocab().tokens()[id as usize] != Token::Special),
            "{s:?}: markup became a control token: {ids:?}"
        );
    }
    let bos = tokenizer.token_to_id("<bos>").unwrap();
    let prompt = text.encode_prompt("Hello").unwrap();
    assert_eq!(prompt[0], bos);
    assert_eq!(&prompt[1..], text.encode(b"Hello").unwrap());
    // Bytes that are not whole UTF-8 are spelled with byte tokens.
    let half = &"é".as_bytes()[..1];
    assert_eq!(text.vocab().decode(&text.encode(half).unwrap()), half);
}
