//! gac's byte-level view of a llama.cpp vocabulary.

use gac_core::vocab::{Token, Vocab};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token_type::LlamaTokenAttr;

/// Builds gac's byte-level view of a llama.cpp vocabulary from token attributes and pieces.
pub fn vocab_of(model: &LlamaModel, name: &str) -> gac_core::Result<Vocab> {
    let vocab = model.vocab();
    let mut tokens = Vec::with_capacity(vocab.n_tokens().max(0) as usize);
    let mut piece = Vec::new();
    for token in vocab.tokens() {
        let attr = vocab.attr(token);
        let entry = if vocab.is_eog(token) {
            Token::End
        } else if attr
            .intersects(LlamaTokenAttr::Control | LlamaTokenAttr::Unused | LlamaTokenAttr::Unknown)
            || attr.is_empty()
        {
            Token::Special
        } else {
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, true, None);
            match piece.as_slice() {
                [] => Token::Special,
                [b] if attr.contains(LlamaTokenAttr::Byte) => Token::Byte(*b),
                bytes => Token::Text(bytes.into()),
            }
        };
        tokens.push(entry);
    }
    Vocab::new(name, tokens)
}
