//! A served ensemble's vocabulary: how `gac serve` reads a prompt given as token ids and names
//! the tokens it lists, so that an ensemble can be a member of another (a hierarchical
//! ensemble).
//!
//! The served ids are the union's ids (0 is End, then the union's text tokens), then 256 byte
//! ids, then two ids that open and close a text piece. A prompt in served ids is read as
//! pieces, and each member of the served ensemble gets its own ids for them:
//! - text (`open`, byte ids, `close`): the member encodes it whole with its own tokenizer, with
//!   its prompt prefix (BOS) when it starts the prompt;
//! - a union id, or a byte id outside a text piece: a token chosen, which the member reads as
//!   the ensemble feeds back its own choices (its own token for those bytes, else its encoding
//!   of them).
//!
//! A prompt that starts with a token starts with each member's prompt prefix alone. The
//! client's side is [`ServedText`]: its text is one text piece, and an ensemble of which the
//! served one is a member feeds it the union ids of the tokens it chooses, so every member of
//! the served ensemble gets the ids it would get as a member of the outer ensemble itself.

use serde_json::{json, Value};

use crate::member::{Encoder, Member};
use crate::union::{Union, UnionId};
use crate::vocab::{Token, Vocab};
use crate::{Error, Result};

/// The `format` of a served vocabulary file.
pub const FORMAT: &str = "gac-served-vocabulary";

/// The served ids beyond a union of `union_len` tokens: byte ids, then open and close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedIds {
    union_len: u32,
}

impl ServedIds {
    /// The served ids of a union of `union_len` tokens.
    pub fn new(union_len: usize) -> Self {
        Self {
            union_len: union_len as u32,
        }
    }

    /// How many served ids there are.
    pub fn len(&self) -> usize {
        self.union_len as usize + 258
    }

    /// Never: there is always End.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The id that spells byte `b`.
    pub fn byte(&self, b: u8) -> u32 {
        self.union_len + u32::from(b)
    }

    /// The id that opens a text piece.
    pub fn open(&self) -> u32 {
        self.union_len + 256
    }

    /// The id that closes a text piece.
    pub fn close(&self) -> u32 {
        self.union_len + 257
    }

    /// The served ids of `text` as one text piece (none for empty text).
    pub fn text(&self, text: &[u8]) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut ids = Vec::with_capacity(text.len() + 2);
        ids.push(self.open());
        ids.extend(text.iter().map(|&b| self.byte(b)));
        ids.push(self.close());
        ids
    }

    /// Reads a prompt of served ids as pieces; an id out of range, End, a text piece left open
    /// or a token inside one is an error naming the position (field `prompt`).
    pub fn pieces(&self, ids: &[u32]) -> Result<Vec<Piece>> {
        let fail = |at: usize, what: String| Error::config("prompt", format!("id {at}: {what}"));
        let mut pieces = Vec::new();
        let mut text: Option<Vec<u8>> = None;
        // Where the open text piece's bytes start, and where the prompt's first piece's do.
        let (mut opened, mut first) = (0, 0);
        for (at, &id) in ids.iter().enumerate() {
            match (id, &mut text) {
                (id, _) if id as usize >= self.len() => {
                    return Err(fail(
                        at,
                        format!("{id} is outside the served vocabulary of {}", self.len()),
                    ))
                }
                (id, None) if id == self.open() => {
                    text = Some(Vec::new());
                    opened = at + 1;
                }
                (id, Some(_)) if id == self.close() => {
                    let bytes = text.take().unwrap_or_default();
                    if !bytes.is_empty() {
                        if pieces.is_empty() {
                            first = opened;
                        }
                        pieces.push(Piece::Text(bytes));
                    }
                }
                (id, _) if id == self.open() || id == self.close() => {
                    return Err(fail(
                        at,
                        "a text piece opened inside another or closed unopened".into(),
                    ))
                }
                (id, Some(bytes)) if id >= self.union_len => {
                    bytes.push((id - self.union_len) as u8)
                }
                (_, Some(_)) => {
                    return Err(fail(at, format!("the token {id} inside a text piece")))
                }
                (0, None) => {
                    return Err(fail(at, "the end token cannot be part of a prompt".into()))
                }
                (id, None) if id >= self.union_len => {
                    pieces.push(Piece::Byte((id - self.union_len) as u8))
                }
                (id, None) => pieces.push(Piece::Token(UnionId(id))),
            }
        }
        if text.is_some() {
            return Err(fail(ids.len(), "a text piece is left open".into()));
        }
        // Each member encodes the text that starts the prompt as a prompt, which is text.
        if let Some(Piece::Text(bytes)) = pieces.first() {
            if let Err(e) = std::str::from_utf8(bytes) {
                let at = first + e.valid_up_to();
                return Err(fail(
                    at,
                    "the text that starts the prompt is not UTF-8".into(),
                ));
            }
        }
        if pieces.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        Ok(pieces)
    }
}

/// One piece of a prompt in served ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text, encoded whole by each member.
    Text(Vec<u8>),
    /// A union token chosen.
    Token(UnionId),
    /// A byte chosen that is no union token: each member encodes it.
    Byte(u8),
}

/// Member `i`'s own ids for these pieces (see the module doc); `union` is its ensemble's. A
/// piece the member cannot spell is an error naming the piece (field `prompt`).
pub fn member_ids(
    member: &dyn Member,
    i: usize,
    union: &Union,
    pieces: &[Piece],
) -> Result<Vec<u32>> {
    let spelled = |n: usize, ids: Result<Vec<u32>>| {
        ids.map_err(|e| {
            let what = format!("member '{}' cannot spell piece {n}: {e}", member.name());
            Error::config("prompt", what)
        })
    };
    let mut ids = match pieces.first() {
        Some(Piece::Text(text)) => {
            spelled(0, member.encode_prompt(&String::from_utf8_lossy(text)))?
        }
        _ => spelled(0, member.encode_prompt(""))?,
    };
    for (n, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Text(_) if n == 0 => {}
            Piece::Text(text) => ids.extend(spelled(n, member.encode(text))?),
            Piece::Token(u) => match union.member_token(i, *u) {
                Some(id) => ids.push(id),
                None => ids.extend(spelled(n, member.encode(union.bytes(*u)))?),
            },
            Piece::Byte(b) => ids.extend(spelled(n, member.encode(&[*b]))?),
        }
    }
    Ok(ids)
}

/// The served vocabulary of `union` as the JSON a client reads with [`ServedText`]: every
/// union token's bytes in hex, by union id (End's are empty), and the vocabulary's
/// [`fingerprint`].
pub fn vocabulary_json(union: &Union, model: &str) -> Result<Value> {
    let tokens: Vec<String> = (0..union.len() as u32)
        .map(|u| hex(union.bytes(UnionId(u))))
        .collect();
    Ok(json!({
        "format": FORMAT,
        "model": model,
        "fingerprint": fingerprint(union)?,
        "tokens": tokens,
    }))
}

/// The [`Vocab::fingerprint`] of `union`'s served vocabulary: what a client's [`ServedText`]
/// of it has, so a server can list it and a client check its file against it.
pub fn fingerprint(union: &Union) -> Result<String> {
    let texts = (0..union.len() as u32).map(|u| union.bytes(UnionId(u)).to_vec());
    Ok(served_vocab("the union", texts)?.fingerprint())
}

/// The served vocabulary whose union tokens spell `texts` (End's, the first, empty).
fn served_vocab(source: &str, texts: impl Iterator<Item = Vec<u8>>) -> Result<Vocab> {
    let mut tokens = Vec::new();
    for (u, bytes) in texts.enumerate() {
        tokens.push(match (u, bytes.is_empty()) {
            (0, true) => Token::End,
            (0, false) => return Err(Error::vocab(source, "token 0 must be End (empty)")),
            (_, true) => return Err(Error::vocab(source, format!("token {u} is empty"))),
            (_, false) => Token::Text(bytes.into()),
        });
    }
    tokens.extend((0..=255).map(Token::Byte));
    tokens.extend([Token::Special, Token::Special]);
    Vocab::new(source, tokens)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The client's side of a served ensemble: its vocabulary (the union, the byte ids, open and
/// close) and an encoder whose text is one text piece, so the served ensemble's members encode
/// it themselves.
#[derive(Debug)]
pub struct ServedText {
    vocab: Vocab,
    ids: ServedIds,
}

impl ServedText {
    /// Whether this JSON is a served vocabulary (and not, say, a tokenizer.json).
    pub fn is_served(value: &Value) -> bool {
        value["format"] == FORMAT
    }

    /// Reads a served vocabulary from its JSON (`GET /v1/vocab` of `gac serve`); `source`
    /// names it in errors.
    pub fn from_json(value: &Value, source: &str) -> Result<Self> {
        if !Self::is_served(value) {
            return Err(Error::vocab(
                source,
                format!("its format is not \"{FORMAT}\""),
            ));
        }
        let listed = value["tokens"]
            .as_array()
            .ok_or_else(|| Error::vocab(source, "it has no \"tokens\" list"))?;
        let texts = (listed.iter().enumerate())
            .map(|(u, t)| {
                t.as_str().and_then(unhex).ok_or_else(|| {
                    Error::vocab(
                        source,
                        format!("token {u}: {t} is not a string of hex bytes"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vocab: served_vocab(source, texts.into_iter())?,
            ids: ServedIds::new(listed.len()),
        })
    }
}

impl Encoder for ServedText {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        Ok(self.ids.text(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ScriptedMember;

    fn pair() -> (ScriptedMember, ScriptedMember, Union) {
        let a = ScriptedMember::new("a", &["<end>", "he", "llo", "hello", " w", "w"], "");
        let b = ScriptedMember::new("b", &["<end>", "h", "e", "l", "o", "hel", " ", "w"], "");
        let union = Union::build(&[a.vocab(), b.vocab()]).unwrap();
        (a, b, union)
    }

    #[test]
    fn a_prompt_of_served_ids_reads_as_text_tokens_and_bytes() {
        let ids = ServedIds::new(10);
        assert_eq!(ids.len(), 268);
        let mut prompt = ids.text(b"hi");
        prompt.extend([3, ids.byte(b'!')]);
        prompt.extend(ids.text(b""));
        prompt.extend(ids.text(b"yo"));
        assert_eq!(
            ids.pieces(&prompt).unwrap(),
            vec![
                Piece::Text(b"hi".to_vec()),
                Piece::Token(UnionId(3)),
                Piece::Byte(b'!'),
                Piece::Text(b"yo".to_vec()),
            ]
        );
    }

    #[test]
    fn a_bad_prompt_of_served_ids_is_named() {
        let ids = ServedIds::new(10);
        let (open, close) = (ids.open(), ids.close());
        for (prompt, message) in [
            (
                vec![3, 268],
                "id 1: 268 is outside the served vocabulary of 268",
            ),
            (vec![3, 0], "id 1: the end token cannot be part of a prompt"),
            (
                vec![open, 3, close],
                "id 1: the token 3 inside a text piece",
            ),
            (vec![open, open], "id 1: a text piece opened inside another"),
            (
                vec![close],
                "id 0: a text piece opened inside another or closed unopened",
            ),
            (vec![open, ids.byte(1)], "id 2: a text piece is left open"),
            (
                vec![open, ids.byte(b'x'), ids.byte(0xff), close],
                "id 2: the text that starts the prompt is not UTF-8",
            ),
            (
                vec![open, close, open, ids.byte(0xff), close],
                "id 3: the text that starts the prompt is not UTF-8",
            ),
        ] {
            let e = ids.pieces(&prompt).unwrap_err().to_string();
            assert!(e.starts_with("invalid prompt: "), "{e}");
            assert!(e.contains(message), "{prompt:?}: {e}");
        }
        assert!(matches!(ids.pieces(&[]), Err(Error::EmptyPrompt)));
        assert!(matches!(
            ids.pieces(&[open, close]),
            Err(Error::EmptyPrompt)
        ));
    }

    #[test]
    fn each_member_gets_its_own_ids_as_if_it_were_the_outer_ensembles() {
        let (a, b, union) = pair();
        let ids = ServedIds::new(union.len());
        let hello = (0..union.len() as u32)
            .map(UnionId)
            .find(|&u| union.bytes(u) == b"hello")
            .unwrap();
        let mut prompt = ids.text(b"hello");
        prompt.push(hello.0);
        prompt.push(ids.byte(b'w'));
        prompt.extend(ids.text(b" w"));
        let pieces = ids.pieces(&prompt).unwrap();
        // Text is encoded whole; "hello" chosen is a's own token, b spells it; bytes are
        // encoded.
        let a_ids = member_ids(&a, 0, &union, &pieces).unwrap();
        assert_eq!(a.vocab().decode(&a_ids), b"hellohellow w");
        assert_eq!(a_ids, [3, 3, 5, 4]);
        let b_ids = member_ids(&b, 1, &union, &pieces).unwrap();
        assert_eq!(b_ids, [5, 3, 4, 5, 3, 4, 7, 6, 7]);
        // A prompt that starts with a token has only the members' prompt prefixes before it.
        let pieces = ids.pieces(&[hello.0]).unwrap();
        assert_eq!(member_ids(&a, 0, &union, &pieces).unwrap(), [3]);
        // A piece a member cannot spell is named.
        let pieces = ids.pieces(&[hello.0, ids.byte(b'x')]).unwrap();
        let e = member_ids(&b, 1, &union, &pieces).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid prompt: member 'b' cannot spell piece 1:"),
            "{e}"
        );
    }

    #[test]
    fn the_served_vocabulary_round_trips_through_its_json() {
        let (_, _, union) = pair();
        let json = vocabulary_json(&union, "inner").unwrap();
        let text = ServedText::from_json(&json, "v.json").unwrap();
        assert_eq!(text.vocab().len(), union.len() + 258);
        assert_eq!(json["fingerprint"], text.vocab().fingerprint());
        assert_eq!(fingerprint(&union).unwrap(), text.vocab().fingerprint());
        let other = Union::build(&[pair().1.vocab(), pair().0.vocab()]).unwrap();
        assert_ne!(fingerprint(&other).unwrap(), text.vocab().fingerprint());
        for u in 1..union.len() as u32 {
            assert_eq!(
                text.vocab().get(u).unwrap().bytes(),
                Some(union.bytes(UnionId(u)))
            );
        }
        assert_eq!(text.vocab().get(0), Some(&Token::End));
        // Text becomes one text piece, which reads back as itself (any bytes after a token).
        let encoded = text.encode(b"x\xff").unwrap();
        assert_eq!(text.vocab().decode(&encoded), b"x\xff");
        let mut prompt = vec![1];
        prompt.extend(&encoded);
        assert_eq!(
            ServedIds::new(union.len()).pieces(&prompt).unwrap(),
            [Piece::Token(UnionId(1)), Piece::Text(b"x\xff".to_vec())]
        );
        assert_eq!(text.encode(b"").unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn a_bad_served_vocabulary_is_named() {
        for (json, message) in [
            (json!({"tokens": []}), "its format is not"),
            (json!({"format": FORMAT}), "no \"tokens\" list"),
            (
                json!({"format": FORMAT, "tokens": ["", "6"]}),
                "token 1: \"6\" is not",
            ),
            (
                json!({"format": FORMAT, "tokens": ["", "zz"]}),
                "token 1: \"zz\" is not",
            ),
            (
                json!({"format": FORMAT, "tokens": ["61"]}),
                "token 0 must be End",
            ),
            (
                json!({"format": FORMAT, "tokens": ["", ""]}),
                "token 1 is empty",
            ),
        ] {
            let e = ServedText::from_json(&json, "v.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains("v.json") && e.contains(message), "{e}");
        }
    }
}
