//! Members behind any OpenAI-compatible `/v1/completions` API: llama-server's `/v1`, vLLM,
//! SGLang, mistralrs-server, `gac serve`.
//!
//! Each evaluation sends the member's whole context as a list of token ids, asks for one token
//! with the `logprobs` most probable next tokens, greedy, and leaves the rest to the engine's
//! prefix cache. The tokens come back as ids where the engine gives them (llama-server's
//! `id`; vLLM's `token_id:N` strings with `return_tokens_as_token_ids`), else as bytes or text,
//! which are mapped to the member's vocabulary only where exactly one of its tokens spells
//! them; anything else is an error naming the token, never a guess.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gac_core::vocab::Token;
use gac_core::{Encoder, Evaluation, Member, Vocab};
use serde_json::{json, Value};

use super::context::Context;
use super::server::{Failure, Server};
use super::{plain_token, wait_until_ready, RemoteClock, DEFAULT_N_PROBS, DEFAULT_TIMEOUT};
use crate::LoadError;

/// The environment variable an OpenAI-compatible member's API key is read from by default.
pub const API_KEY_ENV: &str = "GAC_REMOTE_API_KEY";

/// Where an OpenAI-compatible server is and how it is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiOptions {
    /// The API's base, `http://HOST:PORT/v1`.
    pub url: String,
    /// The served model's name (default: the first the server lists).
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// How many most probable tokens each step asks for (`logprobs`); more when the
    /// generation's top-k union takes more.
    pub n_probs: usize,
    /// The member's context window in tokens (default: what the server lists, if it does).
    pub context: Option<usize>,
    /// The longest wait for one answer (and for a loading server to become ready).
    pub timeout: Duration,
    /// How many more times a failed step is tried before the member fails.
    pub retries: u32,
    /// Let a prompt start from what the server has cached from the previous context (default:
    /// off; each generation's prompt is evaluated whole; llama-server only).
    pub prompt_cache: bool,
}

impl OpenAiOptions {
    /// The API at `url`, 20 tokens a step, 60 s per answer, 2 retries.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: None,
            api_key: None,
            n_probs: DEFAULT_N_PROBS,
            context: None,
            timeout: DEFAULT_TIMEOUT,
            retries: 2,
            prompt_cache: false,
        }
    }
}

/// An ensemble member whose model runs behind an OpenAI-compatible completions API.
pub struct OpenAiMember {
    text: Box<dyn Encoder>,
    server: Server,
    model: String,
    n_probs: usize,
    /// A token of plain ASCII text, for a llama-server to sample (see
    /// [`OpenAiMember::request`]).
    plain: u32,
    /// Which engine the server is, where it says.
    engine: Engine,
    prompt_cache: bool,
    context: Context,
    /// The bytes of the vocabulary's text tokens → the one id that spells them, or `AMBIGUOUS`.
    by_bytes: HashMap<Box<[u8]>, u32>,
    clock: Arc<RemoteClock>,
}

const AMBIGUOUS: u32 = u32::MAX;

/// The engines a member asks differently: by the `owned_by` of their models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// llama-server ("llamacpp"): a logit bias and `cache_prompt` (see
    /// [`OpenAiMember::request`]).
    LlamaServer,
    /// `gac serve` ("gac"): an ensemble, whose served ids the member's vocabulary is.
    Gac,
    /// Any other: vLLM's `return_tokens_as_token_ids` (the others ignore it).
    Other,
}

impl std::fmt::Debug for OpenAiMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiMember")
            .field("name", &self.context.name())
            .field("url", &self.server.url)
            .field("model", &self.model)
            .field("tokens", &self.context.tokens.len())
            .finish()
    }
}

/// One next token as the server listed it.
struct Listed {
    id: Option<u32>,
    token: String,
    bytes: Option<Vec<u8>>,
    logprob: f32,
}

impl OpenAiMember {
    /// Connects to the API at `options.url`, whose model's vocabulary `text` is (read from
    /// `vocab_file`, named in errors): waits until `/models` answers, picks the model, and
    /// checks the vocabulary's size where the server gives it.
    pub fn connect(
        name: impl Into<String>,
        text: Box<dyn Encoder>,
        vocab_file: &Path,
        options: &OpenAiOptions,
    ) -> Result<Self, LoadError> {
        let url = options.url.trim_end_matches('/').to_string();
        let fail = |message: String| LoadError::Remote(url.clone(), message);
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(fail(
                "the address must start with http:// or https://".into(),
            ));
        }
        let plain = plain_token(text.vocab()).ok_or_else(|| {
            fail(format!(
                "{} has no token of plain ASCII text (needed to keep the server's answers whole)",
                vocab_file.display()
            ))
        })?;
        let server = Server::new(
            &url,
            "an OpenAI-compatible server",
            options.timeout,
            options.retries,
        )
        .with_api_key(options.api_key.clone());
        // Another status than 200 (a 401, say) is named by the request that follows, with the
        // server's message.
        wait_until_ready(&server, "/models", options.timeout).map_err(fail)?;
        let models: Value = server.get("/models").map_err(|e| fail(e.into()))?;
        let listed: Vec<&Value> = models["data"].as_array().into_iter().flatten().collect();
        let names: Vec<&str> = listed.iter().filter_map(|m| m["id"].as_str()).collect();
        let model = match &options.model {
            Some(m) if names.contains(&m.as_str()) => m.clone(),
            Some(m) => {
                return Err(fail(format!(
                    "it serves no model '{m}' (it lists: {})",
                    names.join(", ")
                )))
            }
            None => names
                .first()
                .ok_or_else(|| fail("/models lists no model".into()))?
                .to_string(),
        };
        let info = listed.iter().find(|m| m["id"] == model.as_str());
        let engine = match info.map(|m| &m["owned_by"]) {
            Some(owner) if owner == "llamacpp" => Engine::LlamaServer,
            Some(owner) if owner == "gac" => Engine::Gac,
            _ => Engine::Other,
        };
        let n_vocab = info.and_then(|m| m["meta"]["n_vocab"].as_u64());
        if let Some(n) = n_vocab.filter(|&n| n as usize != text.vocab().len()) {
            return Err(fail(format!(
                "'{model}' has {n} tokens, the vocabulary of {} {}",
                vocab_file.display(),
                text.vocab().len()
            )));
        }
        // gac serve lists its served vocabulary's fingerprint.
        if let Some(listed) = info.and_then(|m| m["meta"]["vocab_fingerprint"].as_str()) {
            let ours = text.vocab().fingerprint();
            if listed != ours {
                return Err(fail(format!(
                    "'{model}' has another vocabulary (fingerprint {listed}) than {} ({ours}): \
                     get it again from the server's /v1/vocab",
                    vocab_file.display()
                )));
            }
        }
        // The server's window (llama-server's n_ctx, vLLM's max_model_len), not the model's
        // training length.
        let listed_context =
            info.and_then(|m| (m["meta"]["n_ctx"].as_u64()).or(m["max_model_len"].as_u64()));
        let context_size = options
            .context
            .or(listed_context.map(|c| c as usize))
            .ok_or_else(|| {
                fail(format!(
                    "'{model}' does not list its context window: give it (--ctx, or context in \
                     the TOML)"
                ))
            })?;
        // The engine keeps room for the token it predicts.
        let size = context_size.saturating_sub(1);
        Ok(Self {
            context: Context::new(name, size, text.vocab().len()),
            by_bytes: by_bytes(text.vocab()),
            text,
            server,
            model,
            n_probs: options.n_probs.max(1),
            plain,
            engine,
            prompt_cache: options.prompt_cache,
            clock: Arc::default(),
        })
    }

    /// The member's request times, shared: read it while the member works in an ensemble.
    pub fn clock(&self) -> Arc<RemoteClock> {
        self.clock.clone()
    }

    fn fail(&self, message: impl std::fmt::Display) -> gac_core::Error {
        gac_core::Error::member(
            self.context.name(),
            format!("{} {message}", self.server.url),
        )
    }

    /// Asks for the `n` most probable next tokens after the context, as (id, log-probability),
    /// most probable first; `return_tokens_as_token_ids` asks vLLM for ids (other engines
    /// ignore it).
    ///
    /// To a llama-server only: a logit bias makes the token it samples `plain`, a token of plain
    /// ASCII text, since it leaves the log-probabilities out for a sampled token that ends in an
    /// incomplete UTF-8 sequence (they are those before sampling, so the bias does not touch
    /// them); and the first request of a generation evaluates the whole prompt
    /// (`cache_prompt`), as a local member does, unless the prompt cache is on. Other engines
    /// may report biased log-probabilities, so they get no bias; a `gac serve` gets no field
    /// of another engine, and keeps its cache as its `--prompt-cache` says.
    fn request(&mut self, n: usize) -> gac_core::Result<Vec<(u32, f32)>> {
        if self.context.tokens.is_empty() {
            return Err(self.fail("was asked for logits with nothing to evaluate"));
        }
        let mut body = json!({
            "model": self.model,
            "prompt": self.context.tokens,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": n,
            "stream": false,
        });
        match self.engine {
            Engine::Other => body["return_tokens_as_token_ids"] = json!(true),
            // Its ids are listed, and it takes no field of other engines.
            Engine::Gac => {}
            Engine::LlamaServer => {
                body["logit_bias"] = json!({ self.plain.to_string(): 100 });
                body["cache_prompt"] = json!(self.prompt_cache || !self.context.fresh);
            }
        }
        let started = Instant::now();
        let answer: Value = self
            .server
            .post("/completions", &body)
            .map_err(|e| match e {
                Failure::Interrupted => gac_core::Error::Interrupted {
                    member: self.context.name().to_string(),
                },
                // The context does not fit the server's window: the generation ends there.
                Failure::ContextFull(_) => gac_core::Error::ContextFull {
                    member: self.context.name().to_string(),
                    context: self.context.size,
                },
                e => gac_core::Error::member(self.context.name(), e.to_string()),
            })?;
        self.context.fresh = false;
        // llama-server adds its own timings (what it evaluated; other engines say nothing of
        // their cache).
        let timings = &answer["timings"];
        let evaluated = timings["prompt_n"].as_u64().unwrap_or(0);
        let server_ms = timings["prompt_ms"].as_f64().unwrap_or(0.0)
            + timings["predicted_ms"].as_f64().unwrap_or(0.0);
        let server = Duration::from_secs_f64(server_ms.max(0.0) / 1e3);
        self.clock
            .record(evaluated as usize, started.elapsed(), server);
        let (listed, as_text) = listed(&answer).map_err(|e| self.fail(e))?;
        let n_vocab = self.text.vocab().len();
        let want = n.min(n_vocab);
        // Asked for the whole vocabulary, gac serve leaves out what has no probability (and
        // its byte and text-piece ids, which have none): the listed mass says all is there.
        let whole = self.engine == Engine::Gac
            && n >= n_vocab
            && listed.iter().map(|l| l.logprob.exp()).sum::<f32>() > 0.999;
        if listed.len() < want && !whole {
            let why = match (self.engine, as_text) {
                (Engine::Gac, _) => {
                    "it lists only tokens with mass, and a server-wide --union-top-k or \
                     grammar narrows them: serve the ensemble without them"
                }
                (_, true) => {
                    "the engine caps logprobs, or lists them by text, where tokens of the \
                     same text collapse into one and end tokens have none: it must give \
                     token ids"
                }
                (_, false) => {
                    "the engine caps logprobs: raise its limit, e.g. vLLM's \
                     --max-logprobs, or ask for fewer with --n-probs"
                }
            };
            return Err(self.fail(format!(
                "listed {} next tokens where {want} were asked for ({why})",
                listed.len()
            )));
        }
        let mut out = Vec::with_capacity(listed.len());
        let mut seen = vec![false; n_vocab];
        for l in &listed {
            let id = self.id_of(l).map_err(|e| self.fail(e))?;
            if std::mem::replace(&mut seen[id as usize], true) {
                return Err(self.fail(format!("listed token {id} ({:?}) twice", l.token)));
            }
            out.push((id, l.logprob));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    }

    /// The member's id for a listed token: its id where the engine gives one, else the one
    /// token of the vocabulary that spells its bytes (or its text).
    fn id_of(&self, l: &Listed) -> Result<u32, String> {
        let n_vocab = self.text.vocab().len();
        let given =
            l.id.or_else(|| (l.token.strip_prefix("token_id:")).and_then(|n| n.parse().ok()));
        if let Some(id) = given {
            return match (id as usize) < n_vocab {
                true => Ok(id),
                false => Err(format!(
                    "listed token id {id}, outside the vocabulary of {n_vocab}"
                )),
            };
        }
        let bytes = l.bytes.as_deref().unwrap_or(l.token.as_bytes());
        match self.by_bytes.get(bytes) {
            Some(&AMBIGUOUS) => Err(format!(
                "listed {:?}, which several tokens of the vocabulary spell: the engine must give \
                 token ids (vLLM: return_tokens_as_token_ids, which gac asks for)",
                l.token
            )),
            Some(&id) => Ok(id),
            None => Err(format!(
                "listed {:?}, which no token of the vocabulary spells (is --vocab the served \
                 model's?)",
                l.token
            )),
        }
    }
}

/// The vocabulary's text tokens by the bytes they spell (a byte sequence that several spell
/// maps to `AMBIGUOUS`).
fn by_bytes(vocab: &Vocab) -> HashMap<Box<[u8]>, u32> {
    let mut map = HashMap::new();
    for (id, t) in vocab.tokens().iter().enumerate() {
        if let Token::Text(b) = t {
            map.entry(b.clone())
                .and_modify(|seen| *seen = AMBIGUOUS)
                .or_insert(id as u32);
        }
    }
    map
}

/// The next tokens an answer lists, and whether they are listed by text only: llama-server's
/// form (`logprobs.content[0].top_logprobs`, with ids and bytes) or OpenAI's
/// (`logprobs.top_logprobs[0]`, text → log-probability).
fn listed(answer: &Value) -> Result<(Vec<Listed>, bool), String> {
    let Some(choice) = answer["choices"].as_array().and_then(|c| c.first()) else {
        return Err(
            "answered no choices: is the url the API's base (it usually ends in /v1)?".into(),
        );
    };
    let logprobs = &choice["logprobs"];
    if let Some(content) = logprobs["content"].as_array() {
        let top = content
            .first()
            .and_then(|c| c["top_logprobs"].as_array())
            .ok_or("answered no top_logprobs")?;
        let listed = top.iter().map(listed_with_id).collect::<Result<_, _>>()?;
        return Ok((listed, false));
    }
    let top = logprobs["top_logprobs"]
        .as_array()
        .and_then(|t| t.first())
        .and_then(Value::as_object)
        .ok_or("answered no logprobs (does it give logprobs on /v1/completions?)")?;
    let listed = top
        .iter()
        .map(|(token, lp)| {
            Ok(Listed {
                id: None,
                token: token.clone(),
                bytes: None,
                logprob: logprob(lp, token)?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((listed, true))
}

/// One entry of llama-server's form: its id and bytes are read strictly.
fn listed_with_id(t: &Value) -> Result<Listed, String> {
    let token = t["token"].as_str().unwrap_or_default().to_string();
    let id = match &t["id"] {
        Value::Null => None,
        id => Some(
            id.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("answered the id {id} for {token:?}"))?,
        ),
    };
    let bytes = match &t["bytes"] {
        Value::Null => None,
        b => Some(
            (b.as_array().into_iter().flatten())
                .map(|x| x.as_u64().and_then(|x| u8::try_from(x).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| format!("answered the bytes {b} for {token:?}"))?,
        ),
    };
    Ok(Listed {
        logprob: logprob(&t["logprob"], &token)?,
        id,
        token,
        bytes,
    })
}

/// A listed log-probability: a number.
fn logprob(value: &Value, token: &str) -> Result<f32, String> {
    value
        .as_f64()
        .map(|lp| lp as f32)
        .ok_or_else(|| format!("answered {token:?} without a logprob"))
}

encoder_from_text!(OpenAiMember, context.size);

impl Member for OpenAiMember {
    remote_member_basics!();

    fn evaluate(&mut self) -> gac_core::Result<Evaluation<'_>> {
        let listed = self.request(self.context.asked(self.n_probs))?;
        Ok(self.context.head(listed))
    }

    fn logits(&mut self) -> gac_core::Result<&[f32]> {
        let listed = self.request(self.text.vocab().len())?;
        Ok(self.context.logits(listed))
    }
}
