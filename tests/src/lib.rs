//! Shared helpers for gac's end-to-end tests on real GGUF models.
//!
//! Models and tokenizer files come from `scripts/fetch-assets` (into `$GAC_CACHE`, default
//! `.cache/` in the repository). A missing file fails the test with the command that fetches it.

use std::path::{Path, PathBuf};

use gac_core::{Encoder, Member, Message, Vocab};
use gac_llamacpp::{LlamaMember, LlamaOptions};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

mod server;
pub use server::{LlamaServer, LLAMA_SERVER};

/// SmolLM2-135M-Instruct (Q4_1), byte-level BPE, 49,152 tokens.
pub const SMOLLM: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Gemma-3-270M (Q4_K_M), SentencePiece with byte fallback, 262,144 tokens.
pub const GEMMA: &str = "models/gemma-3-270m-q4_k_m.gguf";

/// Prompts in several languages and scripts.
pub const PROMPTS: &[&str] = &[
    "The capital of France is",
    "def fibonacci(n):",
    "Москва — столица",
    "中国的首都是",
    "Le café est très",
];

/// The asset cache folder.
pub fn cache() -> PathBuf {
    std::env::var_os("GAC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"))
}

/// The BIG-bench sample committed with the tests: a folder laid out as a checkout of the
/// BIG-bench repository (`bigbench/benchmark_tasks/TASK/task.json`); see its SOURCE.md.
pub fn bigbench_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bigbench")
}

/// The path of a cached asset; panics (fails the test) when it is missing.
pub fn asset(relative: &str) -> PathBuf {
    let path = cache().join(relative);
    assert!(
        path.is_file(),
        "missing test asset {}: run `scripts/fetch-assets` (or set GAC_CACHE to where it is)",
        path.display()
    );
    path
}

/// Writes `bytes` to a file named `name` in a folder of this test process, and returns its path.
pub fn scratch(name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gac-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    file
}

/// Loads a member on the CPU with one thread.
pub fn member(relative: &str) -> LlamaMember {
    let options = LlamaOptions {
        threads: Some(1),
        context: Some(2048),
        ..LlamaOptions::default()
    };
    LlamaMember::load(&asset(relative), &options).unwrap_or_else(|e| panic!("{e}"))
}

/// Boxes members for an ensemble.
pub fn boxed(members: Vec<LlamaMember>) -> Vec<Box<dyn Member>> {
    members
        .into_iter()
        .map(|m| Box::new(m) as Box<dyn Member>)
        .collect()
}

/// The index of the largest logit (the first one on ties: gac-core's one argmax).
pub fn argmax_logit(logits: &[f32]) -> u32 {
    gac_core::select::argmax(logits).expect("logits") as u32
}

/// The model's own greedy continuation through llama.cpp directly (not through gac): the
/// prompt in one batch, then one token at a time, argmax of the logits, until an
/// end-of-generation token or `max_tokens`. Returns the generated ids.
pub fn reference_greedy(relative: &str, prompt: &str, max_tokens: usize) -> Vec<u32> {
    let backend = gac_llamacpp::backend();
    let params = LlamaModelParams::default().with_n_gpu_layers(0);
    let model = LlamaModel::load_from_file(backend, asset(relative), &params).expect("model loads");
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(2048))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(1)
        .with_n_threads_batch(1);
    let mut ctx = model.new_context(backend, ctx_params).expect("context");
    let vocab = model.vocab();
    let prompt_ids = vocab.tokenize(prompt.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(512, 1);
    for (i, &t) in prompt_ids.iter().enumerate() {
        batch
            .add(t, i as i32, &[0], i + 1 == prompt_ids.len())
            .unwrap();
    }
    ctx.decode(&mut batch).expect("prompt decodes");
    let mut out = Vec::new();
    for pos in (prompt_ids.len() as i32..).take(max_tokens) {
        let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
        let next = argmax_logit(logits) as i32;
        if vocab.is_eog(LlamaToken(next)) {
            break;
        }
        out.push(next as u32);
        batch.clear();
        batch.add(LlamaToken(next), pos, &[0], true).unwrap();
        ctx.decode(&mut batch).expect("token decodes");
    }
    out
}

/// Wraps a member and records, after every push, what its context after the prompt decodes to
/// through the runtime's own detokenizer; used to check the byte invariant at every step.
pub struct Recording {
    /// The wrapped member.
    pub inner: LlamaMember,
    /// Length of the prompt in the member's tokens (set by the first push).
    pub prompt_len: Option<usize>,
    /// The decoded context (after the prompt) after each push.
    pub snapshots: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Recording {
    /// Wraps `inner`.
    pub fn new(inner: LlamaMember) -> Self {
        Self {
            inner,
            prompt_len: None,
            snapshots: Default::default(),
        }
    }
}

impl Encoder for Recording {
    fn vocab(&self) -> &Vocab {
        self.inner.vocab()
    }
    fn encode(&self, text: &[u8]) -> gac_core::Result<Vec<u32>> {
        self.inner.encode(text)
    }
    fn encode_prompt(&self, prompt: &str) -> gac_core::Result<Vec<u32>> {
        self.inner.encode_prompt(prompt)
    }
    fn encode_messages(&self, messages: &[Message]) -> Option<gac_core::Result<Vec<u32>>> {
        self.inner.encode_messages(messages)
    }
    fn context_size(&self) -> Option<usize> {
        self.inner.context_size()
    }
}

impl Member for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn reset(&mut self) -> gac_core::Result<()> {
        self.prompt_len = None;
        self.snapshots.lock().unwrap().clear();
        self.inner.reset()
    }
    fn push(&mut self, ids: &[u32]) -> gac_core::Result<()> {
        self.inner.push(ids)?;
        match self.prompt_len {
            None => self.prompt_len = Some(ids.len()),
            Some(p) => {
                let decoded = self.inner.detokenize(&self.inner.tokens()[p..]);
                self.snapshots.lock().unwrap().push(decoded);
            }
        }
        Ok(())
    }
    fn logits(&mut self) -> gac_core::Result<&[f32]> {
        self.inner.logits()
    }
}

/// Loads a GGUF model into its own mistral.rs engine on the CPU.
pub fn mistral_member(relative: &str) -> gac_mistralrs::MistralMember {
    gac_mistralrs::load_gguf(&asset(relative), &gac_mistralrs::MistralOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// mistral.rs's own greedy continuation (deterministic sampling, no gac involved) of `prompt`
/// on the member's engine: the generated ids, up to `max_tokens`, end token excluded.
pub fn mistral_reference_greedy(
    member: &gac_mistralrs::MistralMember,
    prompt: &str,
    max_tokens: usize,
) -> Vec<u32> {
    let prompt_ids = member.encode_prompt(prompt).unwrap();
    let messages = mistralrs_core::RequestMessage::CompletionTokens(prompt_ids);
    mistral_greedy(member, messages, max_tokens).1
}

/// mistral.rs's own greedy answer to one user message in a chat request (its chat template, no
/// gac involved): the prompt ids mistral.rs made, and the generated ids (end token excluded).
pub fn mistral_reference_chat(
    member: &gac_mistralrs::MistralMember,
    user: &str,
    max_tokens: usize,
) -> (Vec<u32>, Vec<u32>) {
    use either::Either;
    let mut message = indexmap::IndexMap::new();
    message.insert("role".to_string(), Either::Left("user".to_string()));
    message.insert("content".to_string(), Either::Left(user.to_string()));
    let messages = mistralrs_core::RequestMessage::Chat {
        messages: vec![message],
        enable_thinking: None,
        reasoning_effort: None,
    };
    mistral_greedy(member, messages, max_tokens)
}

fn mistral_greedy(
    member: &gac_mistralrs::MistralMember,
    messages: mistralrs_core::RequestMessage,
    max_tokens: usize,
) -> (Vec<u32>, Vec<u32>) {
    use mistralrs_core::{NormalRequest, Request, Response, SamplingParams};
    use std::sync::{Arc, Mutex};
    // (the context at the first step = the prompt, the context at the last step)
    type Seen = (Option<Vec<u32>>, Vec<u32>);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    let processor = move |logits: &candle_core::Tensor, context: &[u32]| {
        let mut seen = record.lock().unwrap();
        seen.0.get_or_insert_with(|| context.to_vec());
        seen.1 = context.to_vec();
        Ok(logits.clone())
    };
    let engine = member.runtime().engine();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let sampling = SamplingParams {
        max_len: Some(max_tokens + 1),
        ..SamplingParams::deterministic()
    };
    let mut request =
        NormalRequest::new_simple(messages, sampling, tx, engine.next_request_id(), None, None);
    request.logits_processors = Some(vec![Arc::new(processor)]);
    engine
        .get_sender(None)
        .unwrap()
        .blocking_send(Request::Normal(Box::new(request)))
        .ok()
        .unwrap();
    loop {
        match rx.blocking_recv().expect("a response") {
            Response::CompletionDone(_) | Response::Done(_) => break,
            Response::InternalError(e) | Response::ValidationError(e) => panic!("mistral.rs: {e}"),
            Response::CompletionModelError(m, _) | Response::ModelError(m, _) => {
                panic!("mistral.rs: {m}")
            }
            _ => {}
        }
    }
    let (prompt, context) = seen.lock().unwrap().clone();
    let prompt = prompt.expect("mistral.rs called the processor");
    let generated = context[prompt.len()..]
        .iter()
        .copied()
        .take(max_tokens)
        .collect();
    (prompt, generated)
}

/// A member with a real vocabulary whose "model" costs nothing: its logits are pseudo-random
/// numbers fixed by a seed (and, with `vary`, by the context length, so that every step differs).
/// Used by the step benchmark and the pinned-selection test.
pub struct FixedMember {
    vocab: Vocab,
    /// The logits at the start (uniform in [-10, 10], with a head of 8 tokens if peaked).
    pub logits: Vec<f32>,
    /// The rotated logits, when they vary (empty otherwise).
    varied: Vec<f32>,
    context: usize,
}

impl FixedMember {
    /// Uniform logits in [-10, 10]; `peaked` adds a head of 8 tokens well above the rest, the
    /// shape of a language model's next-token distribution (a flat one is the worst case: no
    /// head, so every step combines the full distributions).
    pub fn new(vocab: Vocab, seed: u64, peaked: bool) -> Self {
        let mut state = seed;
        let mut logits: Vec<f32> = (0..vocab.len())
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
            })
            .collect();
        if peaked {
            let n = logits.len();
            for k in 0..8 {
                logits[(k * 7919 + 1000) % n] = 22.0 - k as f32;
            }
        }
        Self {
            vocab,
            logits,
            varied: Vec::new(),
            context: 0,
        }
    }

    /// Rotates the logits by the context length at every evaluation.
    pub fn varying(mut self) -> Self {
        self.varied = self.logits.clone();
        self
    }
}

impl Encoder for FixedMember {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }
    fn encode(&self, text: &[u8]) -> gac_core::Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.vocab.encode_bytes(text, &mut ids)?;
        Ok(ids)
    }
}

impl Member for FixedMember {
    fn reset(&mut self) -> gac_core::Result<()> {
        self.context = 0;
        Ok(())
    }
    fn push(&mut self, ids: &[u32]) -> gac_core::Result<()> {
        self.context += ids.len();
        Ok(())
    }
    fn logits(&mut self) -> gac_core::Result<&[f32]> {
        if self.varied.is_empty() {
            return Ok(&self.logits);
        }
        let n = self.logits.len();
        let shift = (self.context * 7_919) % n;
        self.varied[..n - shift].copy_from_slice(&self.logits[shift..]);
        self.varied[n - shift..].copy_from_slice(&self.logits[..shift]);
        Ok(&self.varied)
    }
}
