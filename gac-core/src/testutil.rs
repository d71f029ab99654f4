//! A synthetic member for tests: it "wants" to write a fixed text and gives the highest logit
//! to the longest token of its vocabulary that continues it. Knobs force the awkward paths: an
//! error or a panic at a given evaluation, a small context window, fixed logits, a member that
//! hands back only its head.

use crate::member::{Encoder, Evaluation, Member};
use crate::vocab::{Token, Vocab};
use crate::{Error, Result};

/// A vocabulary of `pieces` (`"<end>"` is End, `"<special>"` is Special, the rest text).
pub fn vocab(name: &str, pieces: &[&str]) -> Vocab {
    let tokens = pieces
        .iter()
        .map(|p| match *p {
            "<end>" => Token::End,
            "<special>" => Token::Special,
            p => Token::Text(p.as_bytes().into()),
        })
        .collect();
    Vocab::new(name, tokens).expect("a test vocabulary has an End token")
}

/// A member that writes `target` and then ends; see the module doc.
#[derive(Debug)]
pub struct ScriptedMember {
    name: String,
    vocab: Vocab,
    target: Vec<u8>,
    prompt_len: usize,
    context: Vec<u32>,
    logits: Vec<f32>,
    evals: usize,
    /// Fail with an error at this evaluation (0-based).
    pub fail_at: Option<usize>,
    /// Panic at this evaluation (0-based).
    pub panic_at: Option<usize>,
    /// Context window in tokens.
    pub context_size: Option<usize>,
    /// Be unsure (top probability below 0.5) at every n-th evaluation.
    pub unsure_every: Option<usize>,
    /// Replace the scripted logits by pseudo-random ones derived from this seed and the
    /// context length (close calls between tokens become common).
    pub noise: Option<u64>,
    /// Return exactly these logits at every evaluation instead (one per vocabulary entry).
    pub fixed_logits: Option<Vec<f32>>,
    /// Hand back only the k most probable tokens from `evaluate` (as a device-side top-k
    /// would); `logits` still gives them all.
    pub head: Option<usize>,
    head_buf: Vec<(u32, f32)>,
}

impl ScriptedMember {
    /// A member over `pieces` (`"<end>"` is End, `"<special>"` is Special) that writes `target`.
    pub fn new(name: &str, pieces: &[&str], target: &str) -> Self {
        let vocab = vocab(name, pieces);
        let logits = vec![0.0; vocab.len()];
        Self {
            name: name.to_string(),
            vocab,
            target: target.as_bytes().to_vec(),
            prompt_len: 0,
            context: Vec::new(),
            logits,
            evals: 0,
            fail_at: None,
            panic_at: None,
            context_size: None,
            noise: None,
            unsure_every: None,
            fixed_logits: None,
            head: None,
            head_buf: Vec::new(),
        }
    }
}

impl Encoder for ScriptedMember {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        // Greedy longest match, falling back to single bytes.
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let best = (0..self.vocab.len() as u32)
                .filter_map(|id| self.vocab.get(id)?.bytes().map(|b| (id, b.len())))
                .filter(|&(id, len)| {
                    rest.starts_with(self.vocab.get(id).unwrap().bytes().unwrap()) && len > 0
                })
                .max_by_key(|&(_, len)| len);
            match best {
                Some((id, len)) => {
                    out.push(id);
                    rest = &rest[len..];
                }
                None => return Err(Error::vocab(&self.name, format!("cannot spell {rest:?}"))),
            }
        }
        Ok(out)
    }

    fn context_size(&self) -> Option<usize> {
        self.context_size
    }
}

impl Member for ScriptedMember {
    fn name(&self) -> &str {
        &self.name
    }

    fn reset(&mut self) -> Result<()> {
        self.context.clear();
        self.prompt_len = usize::MAX;
        self.evals = 0;
        Ok(())
    }

    fn push(&mut self, ids: &[u32]) -> Result<()> {
        if let Some(context) = self.context_size {
            if self.context.len() + ids.len() > context {
                return Err(Error::ContextFull {
                    member: self.name.clone(),
                    context,
                });
            }
        }
        if self.prompt_len == usize::MAX {
            self.prompt_len = ids.len();
        }
        self.context.extend_from_slice(ids);
        Ok(())
    }

    fn logits(&mut self) -> Result<&[f32]> {
        let eval = self.evals;
        self.evals += 1;
        if self.fail_at == Some(eval) {
            return Err(Error::member(&self.name, "scripted failure"));
        }
        if self.panic_at == Some(eval) {
            panic!("scripted panic in {}", self.name);
        }
        let written = self.vocab.decode(&self.context[self.prompt_len..]);
        let rest = self.target.strip_prefix(written.as_slice()).unwrap_or(&[]);
        self.logits.fill(0.0);
        let mut best = (None, 0);
        for (id, token) in self.vocab.tokens().iter().enumerate() {
            match token.bytes() {
                Some(b) if !rest.is_empty() && rest.starts_with(b) && b.len() > best.1 => {
                    best = (Some(id), b.len())
                }
                None if rest.is_empty() && *token == Token::End => best = (Some(id), usize::MAX),
                _ => {}
            }
        }
        if let (Some(id), _) = best {
            let unsure = self.unsure_every.is_some_and(|n| eval % n == n - 1);
            self.logits[id] = if unsure { 1.0 } else { 10.0 };
        }
        if let Some(seed) = self.noise {
            let mut state = seed ^ (self.context.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for l in &mut self.logits {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                // Coarse steps make near-ties between members' sums frequent.
                *l = ((state >> 60) as f32) * 0.25;
            }
        }
        if let Some(fixed) = &self.fixed_logits {
            self.logits.copy_from_slice(fixed);
        }
        Ok(&self.logits)
    }

    fn evaluate(&mut self) -> Result<Evaluation<'_>> {
        let Some(k) = self.head else {
            return self.logits().map(Evaluation::Logits);
        };
        let logits = self.logits()?;
        let max = logits
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
        let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
        let mut all: Vec<(u32, f32)> = (0..logits.len() as u32)
            .map(|i| {
                (
                    i,
                    ((f64::from(logits[i as usize]) - max).exp() / sum) as f32,
                )
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        self.head_buf = all;
        Ok(Evaluation::Head(&self.head_buf))
    }
}
