//! The `Member` trait: one model session, driven step by step by the ensemble loop, and the
//! `Encoder` it builds on: the member's vocabulary and its own ids for text.
//!
//! Members never pull: the loop owns time. It pushes token ids (cheap, nothing is evaluated) and
//! asks for logits when it needs them; a member evaluates everything pushed since its last
//! evaluation in one batch, so a member the gate skipped catches up in one pass and keeps its
//! KV cache.

use crate::vocab::Vocab;
use crate::Result;

/// The text side of a member: what its token ids stand for and its own ids for a text.
/// Required: [`vocab`](Encoder::vocab) and [`encode`](Encoder::encode).
pub trait Encoder: Send {
    /// What each of this member's token ids stands for.
    fn vocab(&self) -> &Vocab;

    /// The member's own ids for a piece of text, no special tokens added. Decoding the ids must
    /// give back exactly `text` (see [`Vocab::encode_checked`]); `text` may be an incomplete
    /// UTF-8 sequence.
    fn encode(&self, text: &[u8]) -> Result<Vec<u32>>;

    /// The ids of a prompt, with whatever the model expects around it (e.g. BOS). The prompt is
    /// plain text: special-token markup in it (`<|im_end|>`) stays text and never becomes a
    /// control token. Defaults to [`encode`](Encoder::encode).
    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode(prompt.as_bytes())
    }

    /// The ids of a conversation in this member's own chat template, ready to generate the
    /// next assistant turn (BOS and the assistant's header included, as the runtime itself
    /// would make them), or `None` when it has no chat template. Control tokens come from the
    /// template only: the messages' contents are plain text.
    fn encode_messages(&self, _messages: &[Message]) -> Option<Result<Vec<u32>>> {
        None
    }

    /// [`encode_messages`](Encoder::encode_messages) of one user message.
    fn encode_chat(&self, user: &str) -> Option<Result<Vec<u32>>> {
        self.encode_messages(&[Message::new("user", user)])
    }

    /// The context window in tokens, if bounded.
    fn context_size(&self) -> Option<usize> {
        None
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who speaks: `system`, `user` or `assistant`.
    pub role: String,
    /// What they say (plain text).
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What one evaluation of a member hands back.
#[derive(Debug, Clone, Copy)]
pub enum Evaluation<'a> {
    /// Next-token logits, one per vocabulary entry.
    Logits(&'a [f32]),
    /// Only the most probable ids, as (id, probability over the whole vocabulary): no id left
    /// out is more probable than the least probable one listed. Any order.
    Head(&'a [(u32, f32)]),
}

/// One model session in an ensemble. Required beyond its [`Encoder`]:
/// [`push`](Member::push), [`logits`](Member::logits) and [`reset`](Member::reset).
pub trait Member: Encoder {
    /// A short name for messages and statistics.
    fn name(&self) -> &str {
        "member"
    }

    /// Forgets the whole context (a new generation starts). A member may keep what it computed
    /// for a prefix that the next context shares, as long as its logits stay the same.
    fn reset(&mut self) -> Result<()>;

    /// Appends ids to the context without evaluating them. Fails with
    /// [`Error::ContextFull`](crate::Error::ContextFull) when they do not fit.
    fn push(&mut self, ids: &[u32]) -> Result<()>;

    /// Evaluates everything pushed since the last call, in one batch, and returns the next-token
    /// logits (one per vocabulary entry).
    fn logits(&mut self) -> Result<&[f32]>;

    /// Evaluates like [`logits`](Member::logits), but may hand back only the member's most
    /// probable tokens ([`Evaluation::Head`], e.g. chosen on the member's own device). After a
    /// head, a [`logits`](Member::logits) call with nothing pushed between must give the full
    /// logits of the same position: the ensemble asks for them at a greedy step that the heads
    /// cannot decide. Defaults to the full logits.
    fn evaluate(&mut self) -> Result<Evaluation<'_>> {
        self.logits().map(Evaluation::Logits)
    }

    /// The flag that interrupts this member's generations from another thread (see
    /// [`Interrupt`]), given when the member joins an ensemble. A member that may wait long
    /// (on a server) checks it while it waits and, once set, gives up with
    /// [`Error::Interrupted`](crate::Error::Interrupted). The default ignores it.
    fn watch(&mut self, _interrupt: Interrupt) {}

    /// The top-k union the next generation combines (`None`: whole distributions), told before
    /// it starts. A member that hands back only its head should list at least `k` ids: the
    /// ensemble asks for the whole distribution at every step where a head is shorter. The
    /// default does nothing.
    fn set_union_top_k(&mut self, _k: Option<usize>) {}

    /// How many leading positions the last evaluation took from the member's cache instead of
    /// computing them (a prompt that starts like the previous context; see e.g. the llama.cpp
    /// adapter's prompt cache). Defaults to 0.
    fn reused(&self) -> usize {
        0
    }

    /// The gate skipped this member at this step: its logits are not needed until a later
    /// [`logits`](Member::logits) call. Members whose runtime is held while they wait (see
    /// [`crate::bridge`]) let it go here; the default does nothing.
    fn idle(&mut self) {}

    /// The generation is over (the context stays as it is until the next reset). Members that
    /// hold runtime resources for a generation release them here.
    fn finish(&mut self) {}
}

impl<E: Encoder + ?Sized> Encoder for Box<E> {
    fn vocab(&self) -> &Vocab {
        (**self).vocab()
    }
    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        (**self).encode(text)
    }
    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        (**self).encode_prompt(prompt)
    }
    fn encode_messages(&self, messages: &[Message]) -> Option<Result<Vec<u32>>> {
        (**self).encode_messages(messages)
    }
    fn context_size(&self) -> Option<usize> {
        (**self).context_size()
    }
}

impl<M: Member + ?Sized> Member for Box<M> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn reset(&mut self) -> Result<()> {
        (**self).reset()
    }
    fn push(&mut self, ids: &[u32]) -> Result<()> {
        (**self).push(ids)
    }
    fn logits(&mut self) -> Result<&[f32]> {
        (**self).logits()
    }
    fn evaluate(&mut self) -> Result<Evaluation<'_>> {
        (**self).evaluate()
    }
    fn set_union_top_k(&mut self, k: Option<usize>) {
        (**self).set_union_top_k(k)
    }
    fn watch(&mut self, interrupt: Interrupt) {
        (**self).watch(interrupt)
    }
    fn reused(&self) -> usize {
        (**self).reused()
    }
    fn idle(&mut self) {
        (**self).idle()
    }
    fn finish(&mut self) {
        (**self).finish()
    }
}

/// A flag that stops an ensemble's generation from another thread: the generation ends
/// [`Finish::Cancelled`](crate::Finish::Cancelled) at its next step, and a member that is
/// waiting on a server gives up at once. Cloned handles share the flag.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Interrupt {
    /// Asks the generation to stop.
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the generation was asked to stop.
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
