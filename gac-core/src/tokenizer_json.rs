//! Vocabularies from Hugging Face `tokenizer.json` files (feature `tokenizers`).
//!
//! The spelling convention comes from the file's decoder: `ByteLevel` means GPT-2 byte-level
//! BPE (every character of a piece stands for one byte through the GPT-2 table); a decoder with
//! `ByteFallback` means SentencePiece style (`▁` is a space, `<0xNN>` is one raw byte). Added
//! tokens marked special are End (for the usual end-of-generation names) or Special; other
//! added tokens stand for their own text.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::Tokenizer;

use crate::vocab::{
    bytes_from_gpt2, bytes_from_sentencepiece, gpt2_char_to_byte, sentencepiece_byte, Token, Vocab,
};
use crate::{Encoder, Error, Result};

/// Special tokens that end a generation in the common model families.
pub const END_TOKENS: &[&str] = &[
    "</s>",
    "<eos>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|return|>",
];

/// Loads a `tokenizer.json` and builds its vocabulary with the default [`END_TOKENS`].
pub fn vocab_from_file(path: &Path) -> Result<Vocab> {
    let name = path.display().to_string();
    let tokenizer = Tokenizer::from_file(path).map_err(|e| Error::vocab(&name, e.to_string()))?;
    vocab_from_tokenizer(&tokenizer, &name, END_TOKENS)
}

/// A `tokenizer.json` as an [`Encoder`]: its vocabulary and its tokenizer, which reads
/// special-token markup in text as plain text (no chat template: a tokenizer.json has none).
#[derive(Debug)]
pub struct TokenizerText {
    tokenizer: Tokenizer,
    vocab: Vocab,
}

impl TokenizerText {
    /// Loads a `tokenizer.json` (its vocabulary as [`vocab_from_file`] builds it).
    pub fn from_file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|e| Error::vocab(&name, e.to_string()))?;
        let vocab = vocab_from_tokenizer(&tokenizer, &name, END_TOKENS)?;
        tokenizer.set_encode_special_tokens(true);
        Ok(Self { tokenizer, vocab })
    }

    fn ids(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, special)
            .map_err(|e| Error::vocab(self.vocab.name(), e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

impl Encoder for TokenizerText {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        self.vocab.encode_checked(text, |s| self.ids(s, false).ok())
    }

    /// The prompt with what the tokenizer's post-processor adds (e.g. BOS).
    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.ids(prompt, true)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Spelling {
    ByteLevel,
    SentencePiece,
    Plain,
}

fn spelling(tokenizer: &Tokenizer) -> Spelling {
    let decoder = serde_json::to_string(&tokenizer.get_decoder()).unwrap_or_default();
    if decoder.contains("\"ByteLevel\"") {
        Spelling::ByteLevel
    } else if decoder.contains("\"ByteFallback\"")
        || decoder.contains("\"Metaspace\"")
        || decoder.contains('\u{2581}')
    {
        Spelling::SentencePiece
    } else {
        Spelling::Plain
    }
}

fn spell(piece: &str, style: Spelling, char_to_byte: &HashMap<char, u8>) -> Option<Token> {
    Some(match style {
        Spelling::ByteLevel => Token::Text(bytes_from_gpt2(piece, char_to_byte)?.into()),
        Spelling::SentencePiece => match sentencepiece_byte(piece) {
            Some(b) => Token::Byte(b),
            None => Token::Text(bytes_from_sentencepiece(piece).into()),
        },
        Spelling::Plain => Token::Text(piece.as_bytes().into()),
    })
}

fn not_in_alphabet(name: &str, id: u32, piece: &str) -> Error {
    Error::vocab(
        name,
        format!("token {id} {piece:?} is not in the byte-level alphabet"),
    )
}

/// Builds the vocabulary of a loaded tokenizer; special added tokens named in `end_tokens`
/// become End. Ids missing from the file (holes) become Special.
pub fn vocab_from_tokenizer(
    tokenizer: &Tokenizer,
    name: &str,
    end_tokens: &[&str],
) -> Result<Vocab> {
    let pieces = tokenizer.get_vocab(true);
    let added = tokenizer.get_added_tokens_decoder();
    let size = pieces
        .values()
        .chain(added.keys())
        .max()
        .map_or(0, |&m| m as usize + 1);
    let style = spelling(tokenizer);
    let char_to_byte = gpt2_char_to_byte();
    let mut tokens = vec![Token::Special; size];
    for (piece, &id) in &pieces {
        tokens[id as usize] = match added.get(&id) {
            Some(a) if a.special => match end_tokens.contains(&a.content.as_str()) {
                true => Token::End,
                false => Token::Special,
            },
            // Non-special added tokens go through the decoder like any other piece, but are
            // stored as plain text, which a byte-level decoder passes through unchanged.
            Some(_) => match style {
                Spelling::ByteLevel => Token::Text(
                    bytes_from_gpt2(piece, &char_to_byte)
                        .unwrap_or_else(|| piece.as_bytes().to_vec())
                        .into(),
                ),
                _ => spell(piece, style, &char_to_byte)
                    .ok_or_else(|| not_in_alphabet(name, id, piece))?,
            },
            None => spell(piece, style, &char_to_byte)
                .ok_or_else(|| not_in_alphabet(name, id, piece))?,
        };
    }
    for token in &mut tokens {
        if matches!(token, Token::Text(b) if b.is_empty()) {
            *token = Token::Special;
        }
    }
    Vocab::new(name, tokens)
}
