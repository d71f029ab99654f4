//! What each token of one member stands for, as bytes.
//!
//! Every member spelling convention (GPT-2 byte-level BPE, SentencePiece `▁` and `<0xNN>` byte
//! fallback, llama.cpp pieces) is turned into bytes here, once, at load time. No later module
//! sees how a member spells its tokens.

use crate::{Error, Result};

/// One token of a member's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A normal token that stands for these bytes (possibly an incomplete UTF-8 sequence).
    Text(Box<[u8]>),
    /// A byte-fallback piece (`<0xNN>`): the single byte `NN`, used where no text token fits.
    Byte(u8),
    /// An end-of-generation token (EOS, end of turn, ...). All of them fold into one End class.
    End,
    /// A control or unused token: it never carries probability mass in the ensemble.
    Special,
}

impl Token {
    /// The bytes this token stands for, if it is text.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Token::Text(b) => Some(b),
            Token::Byte(b) => Some(std::slice::from_ref(b)),
            Token::End | Token::Special => None,
        }
    }
}

/// A member's vocabulary: token id → [`Token`], plus a table of single-byte tokens used to spell
/// any byte string when the member's own tokenizer cannot.
#[derive(Debug, Clone)]
pub struct Vocab {
    name: String,
    tokens: Vec<Token>,
    byte_ids: [Option<u32>; 256],
}

impl Vocab {
    /// Builds a vocabulary from its tokens in id order.
    ///
    /// Fails when the vocabulary is empty or has no End token (generation could never end).
    pub fn new(source: &str, tokens: Vec<Token>) -> Result<Self> {
        if tokens.is_empty() {
            return Err(Error::vocab(source, "it has no tokens"));
        }
        if !tokens.contains(&Token::End) {
            return Err(Error::vocab(source, "it has no end-of-generation token"));
        }
        let mut byte_ids = [None; 256];
        // A plain one-byte text token wins over a byte-fallback piece for the same byte.
        for (id, token) in tokens.iter().enumerate() {
            let id = id as u32;
            match token {
                Token::Text(b) if b.len() == 1 => {
                    let slot = &mut byte_ids[b[0] as usize];
                    if slot.is_none_or(|old: u32| matches!(tokens[old as usize], Token::Byte(_))) {
                        *slot = Some(id);
                    }
                }
                Token::Byte(b) => {
                    byte_ids[*b as usize].get_or_insert(id);
                }
                _ => {}
            }
        }
        Ok(Self {
            name: source.to_string(),
            tokens,
            byte_ids,
        })
    }

    /// Where this vocabulary came from (a file or member name), for error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of tokens (the length of the member's logits).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty (never true for a built vocabulary).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token with this id.
    pub fn get(&self, id: u32) -> Option<&Token> {
        self.tokens.get(id as usize)
    }

    /// All tokens in id order.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// A short fingerprint of the tokens (their kinds and bytes, in id order; 64-bit FNV-1a in
    /// hex): two vocabularies with the same fingerprint are, but for a rare collision, the same.
    pub fn fingerprint(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for token in &self.tokens {
            let (kind, bytes) = match token {
                Token::Text(b) => (0u8, &b[..]),
                Token::Byte(b) => (1, std::slice::from_ref(b)),
                Token::End => (2, &[][..]),
                Token::Special => (3, &[][..]),
            };
            eat(&[kind]);
            eat(&(bytes.len() as u32).to_le_bytes());
            eat(bytes);
        }
        format!("{hash:016x}")
    }

    /// The id of a token that stands for exactly this one byte, if the vocabulary has one.
    pub fn byte_token(&self, byte: u8) -> Option<u32> {
        self.byte_ids[byte as usize]
    }

    /// The ids `tokenize` gives for `text` when they spell exactly those bytes, else byte tokens
    /// (which every byte-level and byte-fallback vocabulary has): what a member's
    /// [`encode`](crate::Encoder::encode) must return. `tokenize` is only asked for valid UTF-8;
    /// `None` from it means it could not tokenize.
    pub fn encode_checked(
        &self,
        text: &[u8],
        tokenize: impl FnOnce(&str) -> Option<Vec<u32>>,
    ) -> Result<Vec<u32>> {
        if let Some(ids) = std::str::from_utf8(text).ok().and_then(tokenize) {
            if self.spells(&ids, text) {
                return Ok(ids);
            }
        }
        let mut ids = Vec::with_capacity(text.len());
        self.encode_bytes(text, &mut ids)?;
        Ok(ids)
    }

    /// Spells `bytes` with one single-byte token per byte (the fallback every byte-level and
    /// byte-fallback vocabulary supports).
    pub fn encode_bytes(&self, bytes: &[u8], out: &mut Vec<u32>) -> Result<()> {
        for &b in bytes {
            let id = self.byte_token(b).ok_or_else(|| {
                Error::vocab(&self.name, format!("no token spells the byte 0x{b:02X}"))
            })?;
            out.push(id);
        }
        Ok(())
    }

    /// The bytes that a sequence of ids stands for (End and Special tokens spell nothing).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if let Some(b) = self.get(id).and_then(Token::bytes) {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// Whether `ids` decode to exactly `bytes`.
    pub fn spells(&self, ids: &[u32], bytes: &[u8]) -> bool {
        let mut rest = bytes;
        for &id in ids {
            match self.get(id).and_then(Token::bytes) {
                Some(b) if rest.starts_with(b) => rest = &rest[b.len()..],
                _ => return false,
            }
        }
        rest.is_empty()
    }
}

/// The GPT-2 byte-to-unicode table used by byte-level BPE vocabularies: printable bytes stand for
/// themselves, the others are shifted to code points 256 and up, in byte order.
/// See openai/gpt-2 `encoder.py`, `bytes_to_unicode`.
pub fn gpt2_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("code points 256..=323 are valid")
        };
    }
    table
}

/// The inverse of [`gpt2_byte_to_char`]: GPT-2 table character → the byte it stands for.
pub fn gpt2_char_to_byte() -> std::collections::HashMap<char, u8> {
    gpt2_byte_to_char()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// Turns a byte-level BPE token string (`Ġhello`) into its bytes; `None` if a character is not
/// in the GPT-2 table (then the token is not a byte-level token at all).
pub fn bytes_from_gpt2(
    piece: &str,
    char_to_byte: &std::collections::HashMap<char, u8>,
) -> Option<Vec<u8>> {
    piece
        .chars()
        .map(|c| char_to_byte.get(&c).copied())
        .collect()
}

/// Reads a SentencePiece byte-fallback piece `<0xNN>`.
pub fn sentencepiece_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Turns a SentencePiece piece into bytes: `▁` (U+2581) stands for a space.
pub fn bytes_from_sentencepiece(piece: &str) -> Vec<u8> {
    piece.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Token {
        Token::Text(s.as_bytes().into())
    }

    #[test]
    fn gpt2_table_is_a_bijection_with_known_points() {
        let t = gpt2_byte_to_char();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0], 'Ā');
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
    }

    #[test]
    fn gpt2_pieces_decode_to_utf8_bytes() {
        let inv = gpt2_char_to_byte();
        // "Ġé" in byte-level BPE is " é": 0x20 0xC3 0xA9, spelled Ġ Ã ©.
        assert_eq!(bytes_from_gpt2("ĠÃ©", &inv).unwrap(), " é".as_bytes());
        assert_eq!(bytes_from_gpt2("▁", &inv), None);
    }

    #[test]
    fn sentencepiece_pieces() {
        assert_eq!(sentencepiece_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(sentencepiece_byte("<0xE4>"), Some(0xE4));
        assert_eq!(sentencepiece_byte("<0xZZ>"), None);
        assert_eq!(sentencepiece_byte("<unk>"), None);
        assert_eq!(bytes_from_sentencepiece("▁hello▁you"), b" hello you");
    }

    #[test]
    fn plain_byte_token_is_preferred_over_byte_fallback() {
        let v = Vocab::new(
            "t",
            vec![Token::Byte(b'a'), text("a"), Token::End, Token::Byte(0xE4)],
        )
        .unwrap();
        assert_eq!(v.byte_token(b'a'), Some(1));
        assert_eq!(v.byte_token(0xE4), Some(3));
        assert_eq!(v.byte_token(b'b'), None);
        let mut ids = vec![];
        v.encode_bytes(&[b'a', 0xE4], &mut ids).unwrap();
        assert_eq!(ids, [1, 3]);
        assert!(v.encode_bytes(b"b", &mut ids).is_err());
    }

    #[test]
    fn decode_and_spells() {
        let v = Vocab::new(
            "t",
            vec![text("he"), text("llo"), Token::End, Token::Special],
        )
        .unwrap();
        assert_eq!(v.decode(&[0, 1, 2, 3]), b"hello");
        assert!(v.spells(&[0, 1], b"hello"));
        assert!(!v.spells(&[0], b"hello"));
        assert!(!v.spells(&[1, 0], b"hello"));
    }

    #[test]
    fn vocab_without_end_is_rejected() {
        let err = Vocab::new("x.gguf", vec![text("a")]).unwrap_err();
        assert!(err.to_string().contains("x.gguf"), "{err}");
        assert!(Vocab::new("x", vec![]).is_err());
    }
}
