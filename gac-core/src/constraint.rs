//! Structured outputs: a grammar (a JSON schema, any JSON object, or a Lark grammar) that the
//! generated text must match, enforced on the union vocabulary by llguidance.
//!
//! The grammar constrains the union token chosen at each step, never a member on its own: the
//! members propose, the selection keeps only the union tokens the grammar allows next, and the
//! chosen token advances the grammar's parser. A grammar applied to each member apart would
//! let members disagree about what is allowed and break the byte-exact mapping.
//!
//! How union tokens enter llguidance's token trie:
//! - text tokens with their bytes;
//! - the End class (union id 0) as the trie's end-of-sequence token: allowed exactly when the
//!   grammar can end there;
//! - tokens whose bytes begin with 0xFF as no bytes at all, so never allowed (llguidance reads
//!   a leading 0xFF as its special-token marker; valid UTF-8 never holds the byte);
//! - members' special tokens have no union id and are never allowed.
//!
//! JSON is written with one space after `,` and `:` and no other whitespace, unless the schema
//! sets llguidance's own layout options (its `x-guidance` key).
//!
//! The generation ends when the parser stops (the grammar is complete and allows nothing
//! more), or when End is chosen where the grammar may end.

use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::union::{Union, UnionId, END};
use crate::{Error, Result, Setting};

/// What the generated text must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `json_object` response format).
    JsonObject,
    /// A JSON value valid against this JSON schema.
    JsonSchema(serde_json::Value),
    /// A grammar in llguidance's Lark syntax (`start: "yes" | "no"`).
    Lark(String),
}

impl Grammar {
    /// The setting errors name: `json_schema` for a schema, `grammar` otherwise.
    fn setting(&self) -> Setting {
        match self {
            Grammar::JsonSchema(_) => Setting::JsonSchema,
            Grammar::JsonObject | Grammar::Lark(_) => Setting::Grammar,
        }
    }

    /// An error about this grammar.
    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::setting(self.setting(), tidy(&message.to_string()))
    }

    /// llguidance's form of it.
    fn top_level(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Grammar::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"})))
            }
            Grammar::JsonSchema(schema) => {
                let schema = match schema {
                    serde_json::Value::Bool(true) => serde_json::json!({}),
                    serde_json::Value::Object(_) => schema.clone(),
                    other => {
                        return Err(self
                            .error(format!("a JSON schema is an object (or true), not {other}")))
                    }
                };
                TopLevelGrammar::from_json_schema(compact(schema))
            }
            Grammar::Lark(text) => {
                // Special-token syntax names token ids, which here are union ids: they change
                // with the members, and one of them is End.
                if text.contains("<[") || text.contains("<|") {
                    return Err(self.error(
                        "special-token syntax (<[id]>, <|name|>) is not supported: a grammar \
                         matches text, and the generation ends where the grammar does",
                    ));
                }
                TopLevelGrammar::from_lark(text.clone())
            }
        })
    }

    /// Why it did not compile, with a hint for GBNF.
    fn compile_error(&self, e: impl std::fmt::Display) -> Error {
        match self {
            Grammar::Lark(text) if text.contains("::=") => self.error(format!(
                "{e} (this looks like GBNF, which is not read: write it in Lark syntax, \
                 e.g. start: \"yes\" | \"no\")"
            )),
            _ => self.error(e),
        }
    }
}

/// A message without the backtrace llguidance appends to a caught panic.
fn tidy(message: &str) -> String {
    let cut = ["\nstack backtrace", "\nBacktrace", "\n   0:"]
        .iter()
        .filter_map(|m| message.find(m))
        .min()
        .unwrap_or(message.len());
    message[..cut].trim_end().to_string()
}

/// The JSON layout gac asks for unless the schema sets llguidance's own options (its
/// `x-guidance` key): one space after `,` and `:` and no other whitespace, so that a small
/// model cannot fill its answer with blank lines.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(fields) = schema.as_object_mut() {
        fields.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// A union vocabulary prepared for grammars: llguidance's token trie over the union tokens and
/// its precomputed slices, built once per union and shared by every generation.
#[derive(Clone)]
pub struct Grammars {
    factory: Arc<ParserFactory>,
    /// The last grammars compiled, oldest first, each at its start.
    compiled: Arc<Mutex<Vec<(Grammar, Constraint)>>>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field(
                "vocab_size",
                &self.factory.tok_env().tok_trie().vocab_size(),
            )
            .finish()
    }
}

impl Grammars {
    /// Prepares `union` for grammars (about a second, with the first compile, for the
    /// 258,775-token union of the default pair on a 2-core CPU).
    pub fn new(union: &Union) -> Result<Self> {
        let words: Vec<Vec<u8>> = (0..union.len() as u32)
            .map(|u| match union.bytes(UnionId(u)) {
                bytes if bytes.first() == Some(&TokTrie::SPECIAL_TOKEN_MARKER) => Vec::new(),
                bytes => bytes.to_vec(),
            })
            .collect();
        let info = TokRxInfo::new(words.len() as u32, END.0);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::vocab("union", format!("llguidance: {e}")))?;
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
            compiled: Arc::default(),
        })
    }

    /// Compiles `grammar` for one generation; a grammar or schema llguidance cannot read is a
    /// [`Setting::Grammar`] (or [`Setting::JsonSchema`]) error that says where. The last few
    /// grammars compiled are kept, so a grammar checked before a generation (as `gac serve`
    /// does) is compiled once.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = compiled.iter().find(|(g, _)| g == grammar) {
            return Ok(c.copy());
        }
        let parser = self
            .factory
            .create_parser(grammar.top_level()?)
            .map_err(|e| grammar.compile_error(e))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(grammar.compile_error(e));
        }
        // A grammar that allows nothing at all is caught here, before any member runs.
        let allowed = matcher
            .compute_mask()
            .map_err(|e| grammar.compile_error(e))?;
        let constraint = Constraint {
            matcher,
            allowed: Some(allowed),
        };
        if compiled.len() == KEPT {
            compiled.remove(0);
        }
        compiled.push((grammar.clone(), constraint.copy()));
        Ok(constraint)
    }
}

/// How many compiled grammars a [`Grammars`] keeps.
const KEPT: usize = 16;

/// One generation's grammar state: which union tokens may come next.
pub struct Constraint {
    matcher: Matcher,
    /// The union ids allowed at the current position, once computed.
    allowed: Option<SimpleVob>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("computed", &self.allowed.is_some())
            .finish()
    }
}

impl Constraint {
    /// An independent copy, in the same state.
    fn copy(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            allowed: self.allowed.clone(),
        }
    }

    /// The union ids allowed at the current position, as a bitset (bit `u % 32` of word
    /// `u / 32`), computed on first call there (the costly part: the loop calls it while the
    /// members evaluate).
    pub fn allowed(&mut self, step: usize) -> Result<&[u32]> {
        if self.allowed.is_none() {
            let mask = self.matcher.compute_mask().map_err(|e| Error::Constraint {
                step,
                message: e.to_string(),
            })?;
            self.allowed = Some(mask);
        }
        Ok(self.allowed.as_ref().expect("just computed").as_slice())
    }

    /// Advances past the chosen token.
    pub fn advance(&mut self, token: UnionId, step: usize) -> Result<()> {
        self.allowed = None;
        self.matcher
            .consume_token(token.0)
            .map_err(|e| Error::Constraint {
                step,
                message: e.to_string(),
            })
    }

    /// Whether the grammar is complete and allows no more text.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Whether union id `u` is set in `bits` (see [`Constraint::allowed`]).
pub fn is_allowed(bits: &[u32], u: u32) -> bool {
    bits.get(u as usize / 32)
        .is_some_and(|w| w & (1 << (u % 32)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Token, Vocab};

    fn union(pieces: &[&str]) -> Union {
        Union::build(&[&crate::testutil::vocab("v", pieces)]).unwrap()
    }

    fn allowed(c: &mut Constraint, u: &Union) -> Vec<String> {
        let bits = c.allowed(0).unwrap().to_vec();
        (0..u.len() as u32)
            .filter(|&i| is_allowed(&bits, i))
            .map(|i| match i {
                0 => "<end>".to_string(),
                i => String::from_utf8_lossy(u.bytes(UnionId(i))).into_owned(),
            })
            .collect()
    }

    fn id(u: &Union, text: &str) -> UnionId {
        (1..u.len() as u32)
            .map(UnionId)
            .find(|&i| u.bytes(i) == text.as_bytes())
            .unwrap()
    }

    #[test]
    fn a_lark_grammar_allows_only_its_words_then_ends() {
        let u = union(&["<end>", "y", "yes", "no", "n", "o", "maybe", "<special>"]);
        let grammars = Grammars::new(&u).unwrap();
        let mut c = grammars
            .compile(&Grammar::Lark(r#"start: "yes" | "no""#.into()))
            .unwrap();
        assert_eq!(allowed(&mut c, &u), ["y", "yes", "no", "n"]);
        c.advance(id(&u, "n"), 0).unwrap();
        assert_eq!(allowed(&mut c, &u), ["o"]);
        assert!(!c.is_complete());
        c.advance(id(&u, "o"), 1).unwrap();
        assert!(c.is_complete());
    }

    #[test]
    fn json_object_starts_with_a_brace_and_ends_where_the_object_does() {
        let u = union(&["<end>", "{", "}", " ", "\"", "a", ":", "1", "[", "x"]);
        let grammars = Grammars::new(&u).unwrap();
        let mut c = grammars.compile(&Grammar::JsonObject).unwrap();
        let first = allowed(&mut c, &u);
        assert!(first.contains(&"{".to_string()), "{first:?}");
        assert!(!first.contains(&"[".to_string()) && !first.contains(&"x".to_string()));
        assert!(!first.contains(&"<end>".to_string()));
        c.advance(id(&u, "{"), 0).unwrap();
        assert!(!c.is_complete());
        c.advance(id(&u, "}"), 1).unwrap();
        assert!(c.is_complete(), "nothing may follow a whole object");
    }

    #[test]
    fn bad_grammars_and_schemas_are_named_before_any_step() {
        let u = union(&["<end>", "a"]);
        let grammars = Grammars::new(&u).unwrap();
        for bad in [
            Grammar::Lark("start: nowhere".into()),
            Grammar::Lark("root ::= \"yes\"".into()),
            Grammar::JsonSchema(serde_json::json!({"type": "objekt"})),
            Grammar::JsonSchema(serde_json::json!(42)),
        ] {
            match grammars.compile(&bad) {
                Err(Error::Setting { setting, message }) => {
                    let want = match bad {
                        Grammar::JsonSchema(_) => Setting::JsonSchema,
                        _ => Setting::Grammar,
                    };
                    assert_eq!(setting, want, "{message}");
                    assert!(!message.is_empty() && !message.contains("backtrace"));
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let gbnf = grammars.compile(&Grammar::Lark("root ::= \"yes\"".into()));
        assert!(format!("{gbnf:?}").contains("GBNF"), "{gbnf:?}");
        // Special-token syntax would name union ids (End among them).
        let special = grammars.compile(&Grammar::Lark(r#"start: "a" <[0]>"#.into()));
        assert!(
            format!("{special:?}").contains("special-token"),
            "{special:?}"
        );
        // '::=' inside a string is Lark all the same.
        let quoted = Grammar::Lark(r#"start: "a ::= b" | "a""#.into());
        assert!(grammars.compile(&quoted).is_ok());
    }

    #[test]
    fn a_grammar_compiled_again_starts_afresh() {
        let u = union(&["<end>", "y", "yes", "no", "n", "o"]);
        let grammars = Grammars::new(&u).unwrap();
        let yes_no = Grammar::Lark(r#"start: "yes" | "no""#.into());
        let mut first = grammars.compile(&yes_no).unwrap();
        first.advance(id(&u, "n"), 0).unwrap();
        let mut again = grammars.compile(&yes_no).unwrap();
        assert_eq!(allowed(&mut again, &u), ["y", "yes", "no", "n"]);
        assert_eq!(allowed(&mut first, &u), ["o"]);
        // The schema `true` is any JSON value, laid out compactly.
        let any = grammars.compile(&Grammar::JsonSchema(serde_json::json!(true)));
        assert!(any.is_ok(), "{any:?}");
    }

    #[test]
    fn a_leading_0xff_byte_is_never_allowed() {
        let tokens = vec![
            Token::End,
            Token::Byte(0xFF),
            Token::Text(b"a".to_vec().into()),
        ];
        let u = Union::build(&[&Vocab::new("v", tokens).unwrap()]).unwrap();
        let grammars = Grammars::new(&u).unwrap();
        let mut c = grammars
            .compile(&Grammar::Lark(r#"start: /.*/"#.into()))
            .unwrap();
        let bits = c.allowed(0).unwrap();
        assert!(!is_allowed(bits, 1) && is_allowed(bits, 2));
    }
}
