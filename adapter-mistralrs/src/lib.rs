//! Implements `gac_core::Member` for mistral.rs models via `mistralrs-core`; no sampling, no
//! ensembling, no CLI.
//!
//! mistral.rs owns its decode loop, so a member is gac-core's [`BridgeMember`] over a
//! [`MistralRuntime`]: every gac generation is one mistral.rs request whose
//! `CustomLogitsProcessor` hands the step's logits to the ensemble and forces the token the
//! ensemble chose (all other logits become -inf and the request samples greedily). Other requests
//! on the same engine keep being served; a request whose ensemble is gone or silent past the
//! timeout is ended with the model's EOS token.
//!
//! Vocabulary and tokenization come from the tokenizer the engine itself uses (for GGUF files,
//! mistral.rs's conversion of the GGUF tokenizer metadata).

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use either::Either;
use gac_core::bridge::{BridgeMember, Hook, Runtime};
use gac_core::gguf::{model_name, GgufError};
use gac_core::tokenizer_json::{vocab_from_tokenizer, END_TOKENS};
use gac_core::{Encoder, Error, Message, Result, Vocab};
use indexmap::IndexMap;
use mistralrs_core::{
    AdapterPaths, DefaultSchedulerMethod, DeviceMapSetting, GGUFLoaderBuilder, GGUFSpecificConfig,
    LocalModelPaths, MistralRs, MistralRsBuilder, ModelDType, ModelPaths, NormalRequest, Request,
    RequestMessage, Response, SamplingParams, SchedulerConfig, TokenizationRequest,
};
use tokenizers::Tokenizer;

/// A gac member backed by a mistral.rs engine.
pub type MistralMember = BridgeMember<MistralRuntime>;

/// Where a member runs and how long either side may wait for the other.
#[derive(Debug, Clone)]
pub struct MistralOptions {
    /// CUDA device ordinal (needs the `cuda` feature); none = CPU.
    pub gpu: Option<usize>,
    /// Longest wait on the engine or on the ensemble before giving up (default 30 s).
    pub timeout: Duration,
    /// Context window in tokens (default, and at most: the model's own).
    pub context: Option<usize>,
    /// For engines gac builds: keep mistral.rs's prefix cache (mistral.rs's own default), so
    /// that a request started again after a gated skip evaluates only the new tokens (default:
    /// on). A reused prefix can round differently from a fresh evaluation, so with it an output
    /// can depend on earlier requests; off, every request evaluates its whole context.
    pub prefix_cache: bool,
}

impl Default for MistralOptions {
    fn default() -> Self {
        Self {
            gpu: None,
            timeout: Duration::from_secs(30),
            context: None,
            prefix_cache: true,
        }
    }
}

/// One mistral.rs engine (or one model of it) as seen by the bridge.
pub struct MistralRuntime {
    engine: Arc<MistralRs>,
    model_id: Option<String>,
    tokenizer: Arc<Tokenizer>,
    /// The same tokenizer, reading special-token markup in text as plain text.
    plain: Tokenizer,
    vocab: Vocab,
    context: Option<usize>,
}

fn member_error(name: &str, e: impl std::fmt::Display) -> Error {
    Error::member(name, e.to_string())
}

/// Picks the device for a member.
pub fn device(gpu: Option<usize>) -> Result<Device> {
    match gpu {
        None => Ok(Device::Cpu),
        Some(n) => Device::new_cuda(n).map_err(|e| {
            Error::config(
                "gpu",
                format!("CUDA device {n} is not available ({e}); mistral.rs members need the `cuda` feature for GPUs"),
            )
        }),
    }
}

/// A mistral.rs engine with the parts a gac member needs from it.
pub struct GgufEngine {
    /// The engine, serving one model.
    pub engine: Arc<MistralRs>,
    /// The tokenizer the engine uses (converted from the GGUF metadata).
    pub tokenizer: Arc<Tokenizer>,
    /// The model's end-of-sequence ids.
    pub eos: Vec<u32>,
}

/// Why a model could not be loaded into mistral.rs; each variant names the file.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// The file does not exist or cannot be read.
    Unreadable(PathBuf, std::io::Error),
    /// The file does not start with the GGUF magic.
    NotGguf(PathBuf),
    /// The device asked for cannot be used.
    Device(PathBuf, Error),
    /// mistral.rs refused the file (truncated, corrupt, or an architecture it cannot load).
    Rejected(PathBuf, String),
    /// The engine could not be started, or the loaded model cannot be a member.
    Engine(PathBuf, Error),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unreadable(p, _) => write!(f, "cannot read model file {}", p.display()),
            LoadError::NotGguf(p) => {
                write!(
                    f,
                    "{} is not a GGUF file (no GGUF magic at its start)",
                    p.display()
                )
            }
            LoadError::Device(p, e) => write!(f, "{}: {e}", p.display()),
            LoadError::Rejected(p, e) => {
                write!(f, "mistral.rs could not load {}: {e}", p.display())
            }
            LoadError::Engine(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Unreadable(_, e) => Some(e),
            LoadError::Device(_, e) | LoadError::Engine(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Loads a local GGUF file into a new mistral.rs engine (no hub access), on the CPU or on CUDA
/// device `gpu`, with or without mistral.rs's prefix cache (see [`MistralOptions::prefix_cache`]).
pub fn build_gguf_engine(
    path: &Path,
    gpu: Option<usize>,
    prefix_cache: bool,
) -> Result<GgufEngine, LoadError> {
    let file = || path.to_path_buf();
    gac_core::gguf::check(path).map_err(|e| match e {
        GgufError::Unreadable(e) => LoadError::Unreadable(file(), e),
        GgufError::NotGguf => LoadError::NotGguf(file()),
    })?;
    let dir = path
        .parent()
        .unwrap_or(Path::new("."))
        .display()
        .to_string();
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let loader = GGUFLoaderBuilder::new(
        None,
        None,
        dir,
        vec![name],
        GGUFSpecificConfig::default(),
        false,
        None,
    )
    .build();
    let paths: Box<dyn ModelPaths> = Box::new(LocalModelPaths {
        tokenizer_filename: PathBuf::new(),
        config_filename: PathBuf::new(),
        template_filename: None,
        filenames: vec![path.to_path_buf()],
        adapter_paths: AdapterPaths::None,
        gen_conf: None,
        preprocessor_config: None,
        processor_config: None,
        chat_template_json_filename: None,
    });
    let device = device(gpu).map_err(|e| LoadError::Device(file(), e))?;
    let pipeline = loader
        .load_model_from_path(
            &paths,
            &ModelDType::Auto,
            &device,
            true,
            DeviceMapSetting::dummy(),
            None,
            None,
        )
        .map_err(|e| LoadError::Rejected(file(), format!("{e:#}")))?;
    let (tokenizer, eos) = {
        let p = pipeline.blocking_lock();
        let tokenizer = p
            .tokenizer()
            .ok_or_else(|| LoadError::Rejected(file(), "it loaded no tokenizer".into()))?;
        (tokenizer, p.get_metadata().eos_tok.clone())
    };
    let method = DefaultSchedulerMethod::Fixed(NonZeroUsize::new(8).expect("8 > 0"));
    let builder = MistralRsBuilder::new(
        pipeline,
        SchedulerConfig::DefaultScheduler { method },
        false,
        None,
    )
    .with_no_prefix_cache(!prefix_cache);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            LoadError::Engine(
                file(),
                Error::member("mistral.rs", format!("cannot start a tokio runtime: {e}")),
            )
        })?;
    let engine = runtime.block_on(builder.build());
    Ok(GgufEngine {
        engine,
        tokenizer,
        eos,
    })
}

/// Loads a local GGUF file into its own mistral.rs engine and wraps it as a member.
pub fn load_gguf(path: &Path, options: &MistralOptions) -> Result<MistralMember, LoadError> {
    let e = build_gguf_engine(path, options.gpu, options.prefix_cache)?;
    let name = model_name(path);
    wrap_engine(&name, e.engine, None, e.tokenizer, &e.eos, options)
        .map_err(|e| LoadError::Engine(path.to_path_buf(), e))
}

/// Wraps an engine the caller already runs: `model_id` selects one of its models (none = the
/// default), `tokenizer` is that model's tokenizer and `eos` its end-of-sequence ids.
pub fn wrap_engine(
    name: &str,
    engine: Arc<MistralRs>,
    model_id: Option<String>,
    tokenizer: Arc<Tokenizer>,
    eos: &[u32],
    options: &MistralOptions,
) -> Result<MistralMember> {
    let mut end_names: Vec<String> = END_TOKENS.iter().map(|s| s.to_string()).collect();
    end_names.extend(eos.iter().filter_map(|&id| tokenizer.id_to_token(id)));
    let end_refs: Vec<&str> = end_names.iter().map(String::as_str).collect();
    let vocab = vocab_from_tokenizer(&tokenizer, name, &end_refs)?;
    let end_token = *eos
        .first()
        .ok_or_else(|| Error::vocab(name, "the engine reports no EOS token"))?;
    let model_context = engine
        .max_sequence_length(model_id.as_deref())
        .map_err(|e| member_error(name, e))?;
    let context = match (options.context, model_context) {
        (Some(asked), Some(model)) if asked > model => {
            return Err(Error::config(
                "context",
                format!("{asked} tokens is more than {name}'s context window of {model}"),
            ))
        }
        (Some(asked), _) => Some(asked),
        (None, model) => model,
    };
    let mut plain = (*tokenizer).clone();
    plain.set_encode_special_tokens(true);
    let runtime = MistralRuntime {
        engine,
        model_id,
        tokenizer,
        plain,
        vocab,
        context,
    };
    BridgeMember::new(name, runtime, end_token, options.timeout)
}

impl MistralRuntime {
    /// The engine.
    pub fn engine(&self) -> &Arc<MistralRs> {
        &self.engine
    }

    /// The tokenizer the engine uses.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    fn send(&self, request: Request) -> Result<()> {
        let sender = self
            .engine
            .get_sender(self.model_id.as_deref())
            .map_err(|e| member_error("mistral.rs", e))?;
        sender
            .blocking_send(request)
            .map_err(|_| Error::member("mistral.rs", "the engine is not running"))
    }
}

/// The step's logits go to the ensemble; every logit but the chosen token's becomes -inf.
fn force(hook: &Hook, logits: &Tensor) -> candle_core::Result<Tensor> {
    let values = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let n = values.len();
    let token = hook.step(values) as usize;
    let token = if token < n {
        token
    } else {
        hook.end_token() as usize
    };
    let mut forced = vec![f32::NEG_INFINITY; n];
    forced[token] = 0.0;
    Tensor::from_vec(forced, logits.shape(), logits.device())?.to_dtype(logits.dtype())
}

impl MistralRuntime {
    /// The ids of `text` as plain text (BOS and the like added when `special`).
    fn plain_ids(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .plain
            .encode(text, special)
            .map_err(|e| Error::vocab(self.vocab.name(), e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The engine's own chat tokenization of `messages` with `contents` as their contents;
    /// `None` when the model has no chat template.
    fn chat_ids(&self, messages: &[Message], contents: &[String]) -> Option<Result<Vec<u32>>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let conversation = messages
            .iter()
            .zip(contents)
            .map(|(m, content)| {
                let mut message = IndexMap::new();
                message.insert("role".to_string(), Either::Left(m.role.clone()));
                message.insert("content".to_string(), Either::Left(content.clone()));
                message
            })
            .collect();
        let request = TokenizationRequest {
            text: Either::Left(conversation),
            tools: None,
            add_generation_prompt: true,
            add_special_tokens: true,
            enable_thinking: None,
            reasoning_effort: None,
            response: tx,
        };
        if let Err(e) = self.send(Request::Tokenize(request)) {
            return Some(Err(e));
        }
        match rx.blocking_recv() {
            Some(Ok(ids)) => Some(Ok(ids)),
            // mistral.rs answers with an error when the model has no chat template.
            Some(Err(_)) => None,
            None => Some(Err(Error::member(
                self.vocab.name(),
                "the engine stopped before it applied the chat template",
            ))),
        }
    }

    /// Replaces each marker's ids in `rendered` by its message's plain ids.
    fn splice_contents(
        &self,
        rendered: Vec<u32>,
        messages: &[Message],
        markers: &[String],
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(rendered.len());
        let mut rest = &rendered[..];
        for (i, (message, marker)) in messages.iter().zip(markers).enumerate() {
            let marker_ids = self.plain_ids(marker, false)?;
            let at = rest
                .windows(marker_ids.len().max(1))
                .position(|w| w == marker_ids.as_slice())
                .ok_or_else(|| {
                    Error::member(
                        self.vocab.name(),
                        format!(
                            "its chat template does not render message {i} ({}) as given",
                            message.role
                        ),
                    )
                })?;
            ids.extend_from_slice(&rest[..at]);
            ids.extend(self.plain_ids(&message.content, false)?);
            rest = &rest[at + marker_ids.len()..];
        }
        ids.extend_from_slice(rest);
        Ok(ids)
    }
}

impl Runtime for MistralRuntime {
    fn start(&mut self, prompt: &[u32], hook: Hook) -> Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let failures = hook.failure_reporter();
        let hook = Arc::new(hook);
        let processor = move |logits: &Tensor, _context: &[u32]| force(&hook, logits);
        let max_len = self.context.map(|c| c.saturating_sub(prompt.len()).max(1));
        let sampling = SamplingParams {
            max_len,
            ..SamplingParams::deterministic()
        };
        let messages = RequestMessage::CompletionTokens(prompt.to_vec());
        let id = self.engine.next_request_id();
        let mut request = NormalRequest::new_simple(messages, sampling, tx, id, None, None);
        request.logits_processors = Some(vec![Arc::new(processor)]);
        request.model_id = self.model_id.clone();
        self.send(Request::Normal(Box::new(request)))?;
        // Watch the request: an engine-side error ends the member's pending evaluation.
        std::thread::spawn(move || {
            while let Some(response) = rx.blocking_recv() {
                match response {
                    Response::InternalError(e) | Response::ValidationError(e) => {
                        failures.fail(e.to_string())
                    }
                    Response::ModelError(m, _) | Response::CompletionModelError(m, _) => {
                        failures.fail(m)
                    }
                    Response::Done(_) | Response::CompletionDone(_) => return,
                    _ => {}
                }
            }
        });
        Ok(())
    }
}

impl Encoder for MistralRuntime {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        self.vocab
            .encode_checked(text, |s| self.plain_ids(s, false).ok())
    }

    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.plain_ids(prompt, true)
    }

    fn encode_messages(&self, messages: &[Message]) -> Option<Result<Vec<u32>>> {
        // The engine renders markers in place of the contents; each marker's ids are then
        // replaced by the content's plain ids, so control tokens come from the template only.
        let markers: Vec<String> = (0..messages.len())
            .map(|i| format!("\u{E000}gac-message-{i}\u{E001}"))
            .collect();
        let rendered = match self.chat_ids(messages, &markers)? {
            Ok(ids) => ids,
            Err(e) => return Some(Err(e)),
        };
        Some(self.splice_contents(rendered, messages, &markers))
    }

    fn context_size(&self) -> Option<usize> {
        self.context
    }
}
