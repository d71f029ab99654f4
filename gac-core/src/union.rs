//! The union vocabulary of all members and one projection per member (the paper's M^i).
//!
//! A projection is stored as an index array, member token id → union id, never as a dense
//! matrix. Union ids are deterministic: id 0 is the End class, then text tokens in order of first
//! appearance, member by member, token id by token id. Tokens are compared by the bytes they
//! stand for, so `Ġhello` (byte-level BPE) and `▁hello` (SentencePiece) are one union token.

use std::collections::HashMap;

use crate::vocab::{Token, Vocab};
use crate::{Error, Result};

/// A union token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnionId(pub u32);

/// The End class: every member's end-of-generation tokens map here.
pub const END: UnionId = UnionId(0);

const NONE: u32 = u32::MAX;

/// The union vocabulary and the projections between it and each member.
#[derive(Debug, Clone)]
pub struct Union {
    texts: Vec<Box<[u8]>>,
    /// Per member: member token id → union id; Special tokens map to `sink()`.
    projections: Vec<Box<[u32]>>,
    /// Per member: union id → the member's preferred token id for it, or `NONE`.
    reverse: Vec<Box<[u32]>>,
    /// Per member: the most member ids that share one union id (End folds all End tokens; a
    /// byte piece and a text token can spell the same bytes).
    max_fold: Vec<usize>,
    /// Per member and union id: how many of the member's ids map to it (saturating).
    folds: Vec<Box<[u16]>>,
}

impl Union {
    /// Builds the union of these vocabularies, in member order.
    pub fn build(vocabs: &[&Vocab]) -> Result<Self> {
        if vocabs.is_empty() {
            return Err(Error::NoMembers);
        }
        let mut index: HashMap<&[u8], u32> = HashMap::new();
        let mut texts: Vec<Box<[u8]>> = vec![Box::from(&[][..])];
        let mut raw_projections = Vec::with_capacity(vocabs.len());
        for vocab in vocabs {
            let mut projection = Vec::with_capacity(vocab.len());
            for token in vocab.tokens() {
                let id = match token {
                    Token::End => END.0,
                    Token::Special => NONE,
                    Token::Text(_) | Token::Byte(_) => {
                        let bytes = token.bytes().expect("text tokens have bytes");
                        if bytes.is_empty() {
                            NONE
                        } else {
                            *index.entry(bytes).or_insert_with(|| {
                                texts.push(bytes.into());
                                (texts.len() - 1) as u32
                            })
                        }
                    }
                };
                projection.push(id);
            }
            raw_projections.push(projection);
        }
        let sink = texts.len() as u32;
        let mut projections = Vec::with_capacity(vocabs.len());
        let mut reverse = Vec::with_capacity(vocabs.len());
        let mut max_fold = Vec::with_capacity(vocabs.len());
        let mut member_folds = Vec::with_capacity(vocabs.len());
        for (vocab, mut projection) in vocabs.iter().zip(raw_projections) {
            let mut back = vec![NONE; texts.len()].into_boxed_slice();
            let mut folds = vec![0usize; texts.len()];
            for (id, u) in projection.iter_mut().enumerate() {
                if *u == NONE {
                    *u = sink;
                    continue;
                }
                folds[*u as usize] += 1;
                let slot = &mut back[*u as usize];
                // Prefer a real text token over a byte-fallback piece for the same bytes.
                let replace = *slot == NONE
                    || (matches!(vocab.get(*slot), Some(Token::Byte(_)))
                        && !matches!(vocab.get(id as u32), Some(Token::Byte(_))));
                if replace {
                    *slot = id as u32;
                }
            }
            projections.push(projection.into_boxed_slice());
            reverse.push(back);
            max_fold.push(folds.iter().copied().max().unwrap_or(0).max(1));
            member_folds.push(
                folds
                    .iter()
                    .map(|&f| f.min(u16::MAX.into()) as u16)
                    .collect(),
            );
        }
        Ok(Self {
            texts,
            projections,
            reverse,
            max_fold,
            folds: member_folds,
        })
    }

    /// Number of union tokens, End included.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether the union is empty (never: End is always there).
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.projections.len()
    }

    /// The index one past the last union id: projections send Special tokens there, so a
    /// scatter-add needs no branch. Buffers indexed by projection need `len() + 1` slots.
    pub fn sink(&self) -> usize {
        self.texts.len()
    }

    /// The bytes a union token stands for (empty for End).
    pub fn bytes(&self, id: UnionId) -> &[u8] {
        &self.texts[id.0 as usize]
    }

    /// Member token id → union id (or [`Union::sink`]) for one member.
    pub fn projection(&self, member: usize) -> &[u32] {
        &self.projections[member]
    }

    /// The most ids of this member that map to one union token (at least 1).
    pub fn max_fold(&self, member: usize) -> usize {
        self.max_fold[member]
    }

    /// How many of this member's ids map to each union token (saturating at `u16::MAX`).
    pub fn folds(&self, member: usize) -> &[u16] {
        &self.folds[member]
    }

    /// The member's own token for a union token, if it has one.
    pub fn member_token(&self, member: usize, id: UnionId) -> Option<u32> {
        let t = self.reverse[member][id.0 as usize];
        (t != NONE).then_some(t)
    }

    /// Number of text union tokens that both members have (End not counted).
    pub fn overlap(&self, a: usize, b: usize) -> usize {
        let (ra, rb) = (&self.reverse[a], &self.reverse[b]);
        (1..self.len())
            .filter(|&u| ra[u] != NONE && rb[u] != NONE)
            .count()
    }

    /// Number of text union tokens that this member has (End not counted).
    pub fn member_text_tokens(&self, member: usize) -> usize {
        self.reverse[member][1..]
            .iter()
            .filter(|&&t| t != NONE)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(name: &str, pieces: &[&str]) -> Vocab {
        let tokens = pieces
            .iter()
            .map(|p| match *p {
                "<end>" => Token::End,
                "<special>" => Token::Special,
                p if p.starts_with("<0x") => {
                    Token::Byte(crate::vocab::sentencepiece_byte(p).unwrap())
                }
                p => Token::Text(p.as_bytes().into()),
            })
            .collect();
        Vocab::new(name, tokens).unwrap()
    }

    #[test]
    fn shared_bytes_share_a_union_id_and_ends_fold() {
        let a = vocab("a", &["<end>", " the", "cat", "<special>"]);
        let b = vocab("b", &["<special>", "<end>", "cat", " dog", "<end>"]);
        let u = Union::build(&[&a, &b]).unwrap();
        assert_eq!(u.len(), 4); // End, " the", "cat", " dog"
        assert_eq!(u.projection(0), &[0, 1, 2, 4]);
        assert_eq!(u.projection(1), &[4, 0, 2, 3, 0]);
        assert_eq!(u.sink(), 4);
        assert_eq!(u.member_token(1, UnionId(2)), Some(2));
        assert_eq!(u.member_token(1, UnionId(1)), None);
        assert_eq!(u.member_token(1, END), Some(1));
        assert_eq!(u.bytes(UnionId(3)), b" dog");
        assert_eq!(u.overlap(0, 1), 1);
        assert_eq!(u.member_text_tokens(1), 2);
        assert_eq!(
            (u.max_fold(0), u.max_fold(1)),
            (1, 2),
            "b's two End tokens fold"
        );
    }

    #[test]
    fn ids_are_deterministic() {
        let a = vocab("a", &["<end>", "x", "y"]);
        let b = vocab("b", &["y", "z", "<end>"]);
        let u1 = Union::build(&[&a, &b]).unwrap();
        let u2 = Union::build(&[&a, &b]).unwrap();
        assert_eq!(u1.projection(1), u2.projection(1));
        assert_eq!(u1.bytes(UnionId(3)), b"z");
    }

    #[test]
    fn text_token_preferred_over_byte_piece() {
        let a = vocab("a", &["<end>", "<0x41>", "A"]);
        let u = Union::build(&[&a]).unwrap();
        assert_eq!(u.projection(0), &[0, 1, 1]);
        assert_eq!(u.member_token(0, UnionId(1)), Some(2));
        assert_eq!(
            u.max_fold(0),
            2,
            "the byte piece and the text token share one union id"
        );
    }

    #[test]
    fn no_members_is_an_error() {
        assert_eq!(Union::build(&[]).unwrap_err(), Error::NoMembers);
    }
}
