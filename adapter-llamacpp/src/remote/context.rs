//! What every remote member keeps between requests, whatever its server speaks: its context as
//! token ids, and its last answer as a head or a whole distribution.

use gac_core::Evaluation;

/// A remote member's context and last answer.
pub(super) struct Context {
    /// The member's name, in errors.
    name: String,
    /// Every id pushed since the last reset, prompt included.
    pub(super) tokens: Vec<u32>,
    /// Whether the next request is the first of a generation.
    pub(super) fresh: bool,
    /// The most ids the server holds for the member (it keeps room for the token it predicts).
    pub(super) size: usize,
    /// The member's vocabulary size.
    n_vocab: usize,
    /// The top-k union of the generation under way: each step asks for at least that many.
    union_top_k: usize,
    /// The last head, as (id, probability).
    head: Vec<(u32, f32)>,
    /// The last whole distribution, as log-probabilities.
    logits: Vec<f32>,
}

impl Context {
    /// An empty context of `size` ids over a vocabulary of `n_vocab`.
    pub(super) fn new(name: impl Into<String>, size: usize, n_vocab: usize) -> Self {
        Self {
            name: name.into(),
            tokens: Vec::new(),
            fresh: true,
            size,
            n_vocab,
            union_top_k: 0,
            head: Vec::new(),
            logits: Vec::new(),
        }
    }

    /// The member's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Forgets the context; the next request starts a generation.
    pub(super) fn reset(&mut self) {
        self.tokens.clear();
        self.fresh = true;
    }

    /// Appends ids, which must fit the context and the vocabulary.
    pub(super) fn push(&mut self, ids: &[u32]) -> gac_core::Result<()> {
        if self.tokens.len() + ids.len() > self.size {
            return Err(gac_core::Error::ContextFull {
                member: self.name.clone(),
                context: self.size,
            });
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.n_vocab) {
            return Err(gac_core::Error::member(
                &self.name,
                format!(
                    "token id {bad} is outside its vocabulary of {}",
                    self.n_vocab
                ),
            ));
        }
        self.tokens.extend_from_slice(ids);
        Ok(())
    }

    /// Sets the generation's top-k union.
    pub(super) fn set_union_top_k(&mut self, k: Option<usize>) {
        self.union_top_k = k.unwrap_or(0);
    }

    /// How many tokens a step asks for: `n_probs`, or the top-k union's K if more.
    pub(super) fn asked(&self, n_probs: usize) -> usize {
        n_probs.max(self.union_top_k)
    }

    /// The head of these (id, log-probability) pairs.
    pub(super) fn head(&mut self, listed: impl IntoIterator<Item = (u32, f32)>) -> Evaluation<'_> {
        self.head.clear();
        self.head
            .extend(listed.into_iter().map(|(id, lp)| (id, lp.exp())));
        Evaluation::Head(&self.head)
    }

    /// The whole distribution these (id, log-probability) pairs list, as log-probabilities
    /// (−∞ for an id not listed).
    pub(super) fn logits(&mut self, listed: impl IntoIterator<Item = (u32, f32)>) -> &[f32] {
        self.logits.clear();
        self.logits.resize(self.n_vocab, f32::NEG_INFINITY);
        for (id, lp) in listed {
            self.logits[id as usize] = lp;
        }
        &self.logits
    }
}
