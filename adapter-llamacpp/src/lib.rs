//! Implements `gac_core::Member` for llama.cpp (GGUF) models via `llama-cpp-2`; no sampling, no
//! ensembling, no CLI.
//!
//! A [`LlamaMember`] owns one llama.cpp context. It keeps its KV cache for the whole generation
//! and evaluates everything pushed since its last evaluation in one batch, so a member that the
//! gate skipped catches up in one pass instead of recomputing its prefix. With
//! [`LlamaOptions::prompt_cache`] it keeps the cache across generations too: a prompt that starts
//! like the previous context (a system prompt, few-shot examples) only evaluates what differs,
//! like llama.cpp server's prompt cache.
//!
//! A [`RemoteMember`] is a model that runs in a llama-server, here or on another machine,
//! reached over HTTP; it hands back the server's most probable next tokens (`n_probs`).
//!
//! llama.cpp's own log lines are `tracing` events (see [`backend`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gac_core::gguf::{model_name, GgufError};
use gac_core::vocab::Vocab;
use gac_core::{Encoder, Evaluation, Member};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// `Encoder` for a member whose text side is its `text` field (an `Encoder`) and whose context
/// window is its `context_size` field (or the field path given second).
macro_rules! encoder_from_text {
    ($member:ty) => {
        encoder_from_text!($member, context_size);
    };
    ($member:ty, $($size:ident).+) => {
        impl gac_core::Encoder for $member {
            fn vocab(&self) -> &gac_core::Vocab {
                self.text.vocab()
            }

            fn encode(&self, text: &[u8]) -> gac_core::Result<Vec<u32>> {
                self.text.encode(text)
            }

            fn encode_prompt(&self, prompt: &str) -> gac_core::Result<Vec<u32>> {
                self.text.encode_prompt(prompt)
            }

            fn encode_messages(
                &self,
                messages: &[gac_core::Message],
            ) -> Option<gac_core::Result<Vec<u32>>> {
                self.text.encode_messages(messages)
            }

            fn context_size(&self) -> Option<usize> {
                Some(self.$($size).+)
            }
        }
    };
}

mod batched;
mod context;
mod device_top_k;
mod llama_vocab;
mod model_text;
mod remote;
mod runtime;

pub use batched::{BatchedMember, Batching, SharedContext, BATCH_WINDOW};
use device_top_k::DeviceTopK;
pub use llama_vocab::vocab_of;
use model_text::ModelText;
pub use remote::{
    OpenAiMember, OpenAiOptions, RemoteClock, RemoteMember, RemoteOptions, RemoteTotals,
    API_KEY_ENV, DEFAULT_N_PROBS, DEFAULT_TIMEOUT,
};
pub use runtime::{backend, gpus, llama_version, runtime_info, RuntimeInfo, LLAMA_CPP_VERSION};

/// Where and how a member runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlamaOptions {
    /// CPU threads (default: all available cores).
    pub threads: Option<i32>,
    /// GPU index to pin the model to (llama.cpp's main GPU, split mode none); none = CPU.
    pub gpu: Option<i32>,
    /// Layers offloaded to the GPU (default: all when `gpu` is set, none otherwise).
    pub gpu_layers: Option<u32>,
    /// Context window in tokens (default: the model's training context, at most 4096).
    pub context: Option<u32>,
    /// Keep the KV cache across generations, so that a prompt only evaluates what differs from
    /// the previous context (default: off). Much faster for prompts that share a long prefix,
    /// but llama.cpp's logits depend on how a prompt is split into batches, so an output can
    /// then depend on the one before it.
    pub prompt_cache: bool,
    /// Hand back only the K most probable tokens, chosen on the model's own device by a
    /// sampler inside llama.cpp's graph (backend sampling), instead of every logit; the full
    /// logits of a step are computed again when the ensemble needs them (default: off).
    pub device_top_k: Option<u32>,
}

/// Why a model could not be loaded; each variant names the file.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// The file does not exist or cannot be read.
    Unreadable(PathBuf, std::io::Error),
    /// The file does not start with the GGUF magic.
    NotGguf(PathBuf),
    /// llama.cpp refused the file (truncated or unsupported).
    Rejected(PathBuf),
    /// The context could not be created (e.g. out of memory).
    Context(PathBuf, String),
    /// A GPU was asked for, but llama.cpp was built without GPU support.
    NoGpu(PathBuf, i32),
    /// The GPU asked for is not among the GPUs llama.cpp sees (listed).
    NoSuchGpu(PathBuf, i32, Vec<String>),
    /// The model's vocabulary cannot be used.
    Vocab(PathBuf, gac_core::Error),
    /// The llama.cpp library found at run time is another version than gac was built against.
    Version(String),
    /// A server (its address) cannot be used as a member.
    Remote(String, String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Unreadable(p, _) => write!(f, "cannot read model file {}", p.display()),
            LoadError::NotGguf(p) => write!(f, "{} is not a GGUF file (no GGUF magic at its start)", p.display()),
            LoadError::Rejected(p) => write!(
                f,
                "llama.cpp could not load {} (truncated, corrupt or unsupported GGUF; run gac with -v, or install a tracing subscriber, to see llama.cpp's log)",
                p.display()
            ),
            LoadError::Context(p, e) => write!(f, "cannot create a llama.cpp context for {}: {e}", p.display()),
            LoadError::NoGpu(p, gpu) if cfg!(feature = "dynamic-link") => write!(
                f,
                "{} is pinned to GPU {gpu}, but the llama.cpp libraries found at run time have no GPU backend \
                 (put a llama.cpp built with CUDA, ROCm, Vulkan or Metal first on LD_LIBRARY_PATH; `gac info` shows what is loaded)",
                p.display()
            ),
            LoadError::NoGpu(p, gpu) => write!(
                f,
                "{} is pinned to GPU {gpu}, but this build of llama.cpp has no GPU support (build with --features cuda)",
                p.display()
            ),
            LoadError::NoSuchGpu(p, gpu, gpus) => write!(
                f,
                "{} is pinned to GPU {gpu}, but llama.cpp sees {} GPU(s): {}",
                p.display(),
                gpus.len(),
                gpus.iter().enumerate().map(|(i, g)| format!("{i}: {g}")).collect::<Vec<_>>().join(", ")
            ),
            LoadError::Vocab(p, e) => write!(f, "{}: {e}", p.display()),
            LoadError::Version(v) => write!(
                f,
                "the llama.cpp library found at run time is version {v}, but gac was built against {LLAMA_CPP_VERSION} \
                 (llama-cpp-sys-2 0.1.161's vendored source): build that source as shared libraries and put them first on LD_LIBRARY_PATH"
            ),
            LoadError::Remote(url, e) => write!(f, "the server at {url}: {e}"),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Unreadable(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Loads a GGUF model with these placement options, after checking the file.
pub fn load_model(path: &Path, options: &LlamaOptions) -> Result<Arc<LlamaModel>, LoadError> {
    check_gguf(path)?;
    let backend = backend();
    let mut params = LlamaModelParams::default().with_n_gpu_layers(0);
    if let Some(gpu) = options.gpu {
        if !backend.supports_gpu_offload() {
            return Err(LoadError::NoGpu(path.to_path_buf(), gpu));
        }
        let gpus = runtime::gpus();
        if usize::try_from(gpu).map_or(true, |g| g >= gpus.len()) {
            return Err(LoadError::NoSuchGpu(path.to_path_buf(), gpu, gpus));
        }
        params = params
            .with_split_mode(LlamaSplitMode::None)
            .with_main_gpu(gpu)
            .with_n_gpu_layers(options.gpu_layers.unwrap_or(u32::MAX));
    }
    load_checked(path, &params).map(Arc::new)
}

/// Reads only a GGUF file's vocabulary (no weights), as gac sees it.
pub fn load_vocab(path: &Path) -> Result<Vocab, LoadError> {
    Ok(load_encoder(path)?.vocab().clone())
}

/// A GGUF file's vocabulary and llama.cpp's tokenizer for it, without the weights.
pub fn load_encoder(path: &Path) -> Result<Box<dyn Encoder>, LoadError> {
    check_gguf(path)?;
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(0)
        .with_vocab_only(true);
    let model = Arc::new(load_checked(path, &params)?);
    Ok(Box::new(ModelText::new(model_name(path), model, path)?))
}

fn load_checked(path: &Path, params: &LlamaModelParams) -> Result<LlamaModel, LoadError> {
    let version = llama_version();
    if !version.starts_with(LLAMA_CPP_VERSION) {
        return Err(LoadError::Version(version));
    }
    LlamaModel::load_from_file(backend(), path, params)
        .map_err(|_| LoadError::Rejected(path.to_path_buf()))
}

fn check_gguf(path: &Path) -> Result<(), LoadError> {
    gac_core::gguf::check(path).map_err(|e| match e {
        GgufError::Unreadable(e) => LoadError::Unreadable(path.to_path_buf(), e),
        GgufError::NotGguf => LoadError::NotGguf(path.to_path_buf()),
    })
}

/// An ensemble member backed by one llama.cpp context.
pub struct LlamaMember {
    // Declared before `text`, so it is dropped first: it borrows the model.
    ctx: LlamaContext<'static>,
    text: ModelText,
    batch: LlamaBatch<'static>,
    batch_size: usize,
    context_size: usize,
    /// Every id pushed since the last reset, prompt included.
    tokens: Vec<u32>,
    /// The ids whose keys and values are in the KV cache, at positions 0, 1, ...; after an
    /// evaluation these are `tokens`, after a reset they are the previous context.
    cached: Vec<u32>,
    /// How many positions the last evaluation took from the cache instead of computing them.
    reused: usize,
    /// Whether the cache outlives a reset (see [`LlamaOptions::prompt_cache`]).
    prompt_cache: bool,
    /// Index in the last batch of the row whose logits are current, if any.
    logits_row: Option<i32>,
    /// The device-side top-k, if asked for ([`LlamaOptions::device_top_k`]).
    top_k: Option<DeviceTopK>,
    /// Its last head, as (id, probability).
    head: Vec<(u32, f32)>,
    /// Whether llama.cpp copied the current row's full logits (not so after a decode whose
    /// output went through the device top-k).
    full_logits: bool,
}

impl fmt::Debug for LlamaMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlamaMember")
            .field("name", &self.text.name)
            .field("vocab", &self.text.vocab.len())
            .field("context_size", &self.context_size)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl LlamaMember {
    /// Loads a GGUF model and opens a context for it.
    pub fn load(path: &Path, options: &LlamaOptions) -> Result<Self, LoadError> {
        let model = load_model(path, options)?;
        Self::with_model(model_name(path), model, path, options)
    }

    /// Opens a new context on an already loaded model (several members may share one model).
    pub fn with_model(
        name: String,
        model: Arc<LlamaModel>,
        path: &Path,
        options: &LlamaOptions,
    ) -> Result<Self, LoadError> {
        let text = ModelText::new(name, model, path)?;
        let model = &text.model;
        let (params, shape) = context::params(model, options, 1);
        let (ctx, top_k) = match options.device_top_k {
            None => (model.new_context(backend(), params), None),
            Some(k) => {
                // Sequence 0 holds the context and has the top-k sampler; sequence 1 has none
                // and shares its cache, to compute a step's full logits again.
                let (top_k, sampler) = DeviceTopK::new(k);
                let params = params.with_n_seq_max(2).with_kv_unified(true);
                let ctx = model.new_context_with_samplers(backend(), params, [(0, sampler)]);
                (ctx, Some(top_k))
            }
        };
        let ctx = ctx.map_err(|e| LoadError::Context(path.to_path_buf(), e.to_string()))?;
        // SAFETY: the context borrows the model, which lives in an `Arc` that this struct keeps
        // alive for as long as the context; `ctx` is declared before `text` (which holds the
        // model), so it is dropped first. The `'static` lifetime never escapes this struct.
        let ctx = unsafe { std::mem::transmute::<LlamaContext<'_>, LlamaContext<'static>>(ctx) };
        Ok(Self {
            ctx,
            text,
            batch: LlamaBatch::new(shape.batch as usize, 1),
            batch_size: shape.batch as usize,
            context_size: shape.per_sequence as usize,
            tokens: Vec::new(),
            cached: Vec::new(),
            reused: 0,
            prompt_cache: options.prompt_cache,
            logits_row: None,
            top_k,
            head: Vec::new(),
            full_logits: false,
        })
    }

    /// The underlying llama.cpp model.
    pub fn model(&self) -> &Arc<LlamaModel> {
        &self.text.model
    }

    /// Every id in the context, prompt included.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The bytes llama.cpp itself renders for these ids (its own detokenizer, not gac's vocab).
    pub fn detokenize(&self, ids: &[u32]) -> Vec<u8> {
        let vocab = self.text.model.vocab();
        let mut out = Vec::new();
        for &id in ids {
            vocab.token_to_piece_into(LlamaToken(id as i32), &mut out, false, None);
        }
        out
    }

    fn fail(&self, message: impl Into<String>) -> gac_core::Error {
        self.text.fail(message)
    }

    /// Drops the cached positions past the longest prefix the cache shares with `tokens`; at
    /// least the last pushed id is left to evaluate, for its logits. Clears the whole cache where llama.cpp cannot keep that prefix intact (a
    /// sliding-window cache that already dropped early positions, a recurrent model).
    fn keep_common_prefix(&mut self) {
        let common = context::common_prefix(&self.cached, &self.tokens);
        if common == self.cached.len() {
            return;
        }
        if context::keep_prefix(&mut self.ctx, 0, common) {
            self.cached.truncate(common);
        } else {
            self.clear_cache();
        }
    }

    fn clear_cache(&mut self) {
        self.ctx.clear_kv_cache();
        self.cached.clear();
        self.logits_row = None;
    }
}

encoder_from_text!(LlamaMember);

impl Member for LlamaMember {
    fn name(&self) -> &str {
        &self.text.name
    }

    fn reset(&mut self) -> gac_core::Result<()> {
        self.tokens.clear();
        self.logits_row = None;
        if !self.prompt_cache {
            self.clear_cache();
        }
        Ok(())
    }

    fn push(&mut self, ids: &[u32]) -> gac_core::Result<()> {
        self.text.append(&mut self.tokens, ids, self.context_size)
    }

    fn reused(&self) -> usize {
        self.reused
    }

    fn logits(&mut self) -> gac_core::Result<&[f32]> {
        let mut row = self.decode_pending()?;
        if !self.full_logits {
            row = self.decode_last_again()?;
        }
        Ok(self.ctx.get_logits_ith(row))
    }

    fn evaluate(&mut self) -> gac_core::Result<Evaluation<'_>> {
        if self.top_k.is_none() {
            return self.logits().map(Evaluation::Logits);
        }
        let row = self.decode_pending()?;
        let top_k = self.top_k.as_mut().expect("checked above");
        match !self.full_logits && top_k.read(&self.ctx, row, &mut self.head) {
            true => Ok(Evaluation::Head(&self.head)),
            false => self.logits().map(Evaluation::Logits),
        }
    }
}

impl LlamaMember {
    /// Evaluates every pushed id that is not in the KV cache yet; returns the batch row of the
    /// last one's output.
    fn decode_pending(&mut self) -> gac_core::Result<i32> {
        if self.tokens.is_empty() {
            return Err(self.fail("asked for logits with nothing to evaluate"));
        }
        if self.cached != self.tokens || self.logits_row.is_none() {
            self.keep_common_prefix();
            self.reused = self.cached.len();
        }
        let total = self.tokens.len();
        while self.cached.len() < total {
            let start = self.cached.len();
            let end = (start + self.batch_size).min(total);
            self.batch.clear();
            for pos in start..end {
                let token = LlamaToken(self.tokens[pos] as i32);
                self.batch
                    .add(token, pos as i32, &[0], pos + 1 == total)
                    .map_err(|e| gac_core::Error::member(&self.text.name, format!("batch: {e}")))?;
            }
            if let Err(e) = self.ctx.decode(&mut self.batch) {
                self.clear_cache();
                return Err(self.fail(format!("llama.cpp decode failed: {e}")));
            }
            self.logits_row = Some(self.batch.n_tokens() - 1);
            self.full_logits = self.top_k.is_none();
            self.cached.extend_from_slice(&self.tokens[start..end]);
        }
        Ok(self
            .logits_row
            .expect("set by the decode above or an earlier one"))
    }

    /// The full logits of the last position, whose output went through the device top-k:
    /// sequence 1, which has no sampler, takes sequence 0's cache up to that position and
    /// evaluates the last id again; then it is cleared.
    fn decode_last_again(&mut self) -> gac_core::Result<i32> {
        let last = self.tokens.len() - 1;
        let copied = self
            .ctx
            .copy_kv_cache_seq(0, 1, None, Some(last as u32))
            .map_err(|e| self.fail(format!("copying the KV cache: {e}")));
        self.batch.clear();
        let added = self
            .batch
            .add(
                LlamaToken(self.tokens[last] as i32),
                last as i32,
                &[1],
                true,
            )
            .map_err(|e| self.fail(format!("batch: {e}")));
        let decoded = copied.and(added).and_then(|()| {
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| self.fail(format!("llama.cpp decode failed: {e}")))
        });
        let cleared = self.ctx.clear_kv_cache_seq(Some(1), None, None);
        decoded?;
        cleared.map_err(|e| self.fail(format!("clearing sequence 1: {e}")))?;
        self.logits_row = Some(0);
        self.full_logits = true;
        Ok(0)
    }
}
