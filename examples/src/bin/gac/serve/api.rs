//! The OpenAI request bodies `gac serve` reads, and their validation into a [`Job`]: every
//! value is checked before a slot is taken, and every error names the field at fault.

use gac_core::constraint::Grammars;
use gac_core::select::{Sampling, DEFAULT_TEMPERATURE, DEFAULT_THRESHOLD};
use gac_core::select::{DEFAULT_TOP_K, DEFAULT_TOP_P};
use gac_core::served::{Piece, ServedIds};
use gac_core::{GenerateOptions, Grammar, Message, Mode, Setting, WhenUnsure};
use gac_examples::config::Combination;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;

/// What the server is and what a request may ask of it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The served model's name.
    pub model: String,
    /// The smallest member context window, in tokens.
    pub context: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// The server's own combination (a request may override its weights, mode and K).
    pub combination: Combination,
    /// How many members the ensemble has.
    pub members: usize,
    /// The union prepared for grammars, to check a request's before it takes a slot.
    pub grammars: Grammars,
    /// The served ids a prompt of token ids is read in.
    pub served: ServedIds,
}

/// Either form OpenAI accepts for a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The fields both endpoints share (OpenAI's and gac's own), read from the same body as the
/// endpoint's own fields (two plain structs rather than one flattened: errors keep their path).
#[derive(Debug, Deserialize)]
pub struct Common {
    model: Option<String>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<OneOrMany>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u64>,
    best_of: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    response_format: Option<Value>,
    /// A Lark grammar the answer must match (llama-server's field name).
    grammar: Option<String>,
    // gac's own knobs.
    top_k: Option<usize>,
    mode: Option<String>,
    gate: Option<usize>,
    threshold: Option<f32>,
    when_unsure: Option<String>,
    weights: Option<Vec<f32>>,
    union_top_k: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    prompt: Value,
    logprobs: Option<u32>,
    echo: Option<bool>,
    suffix: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    messages: Vec<ChatMessage>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    tools: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Value>,
}

/// Which endpoint a job came from (it shapes the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

/// What a job generates from.
#[derive(Debug, Clone)]
pub enum RequestInput {
    Text(String),
    Chat(Vec<Message>),
    /// A prompt of served ids, read.
    Served(Vec<Piece>),
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Job {
    pub kind: Kind,
    pub input: RequestInput,
    /// How the members are combined for it: the server's, with the request's overrides.
    pub combination: Combination,
    /// Its generation options, built from the combination.
    pub options: GenerateOptions,
    pub stream: bool,
    pub include_usage: bool,
}

/// A 400 whose message starts with the field's name.
fn invalid(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(Some(param), format!("invalid {param}: {message}"))
}

/// Parses a body into `T`; a wrong type names its field.
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(None, format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid(None, format!("the body is not a valid request: {inner}"))
        } else {
            invalid(&path, inner)
        }
    })
}

/// The fields every request may give: each is honoured or, where its value asks for what gac
/// cannot do, refused; `user` (an id for the caller's own records) is read and has no effect.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "best_of",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
    "grammar",
    "user",
    "top_k",
    "mode",
    "gate",
    "threshold",
    "when_unsure",
    "weights",
    "union_top_k",
];

/// Reads a `POST /v1/completions` body into a job.
pub fn completion(body: &[u8], limits: &Limits) -> Result<Job, ApiError> {
    known_fields(body, &["prompt", "logprobs", "echo", "suffix"])?;
    parse::<CompletionRequest>(body)?.into_job(parse(body)?, limits)
}

/// Reads a `POST /v1/chat/completions` body into a job.
pub fn chat(body: &[u8], limits: &Limits) -> Result<Job, ApiError> {
    known_fields(body, &["messages", "logprobs", "top_logprobs", "tools"])?;
    parse::<ChatRequest>(body)?.into_job(parse(body)?, limits)
}

/// Refuses a field that no part of gac reads: silently ignoring it would answer a question the
/// client did not ask.
fn known_fields(body: &[u8], endpoint: &[&str]) -> Result<(), ApiError> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Ok(()); // not an object: `parse` names what is wrong
    };
    // A null is "not set", whatever the field.
    match fields.iter().map(|(k, _)| k).find(|k| {
        !fields[k.as_str()].is_null()
            && !COMMON_FIELDS.contains(&k.as_str())
            && !endpoint.contains(&k.as_str())
    }) {
        Some(field) => Err(invalid(field, "gac serve does not support this field")),
        None => Ok(()),
    }
}

/// What a request's `response_format` or `grammar` asks the answer to match: `Some(None)` for
/// free text, `None` where neither is given (the server's own then holds). The field at fault
/// is named.
fn requested_grammar(
    format: Option<&Value>,
    grammar: Option<String>,
) -> Result<Option<(Option<Grammar>, &'static str)>, ApiError> {
    let format = format.filter(|f| !f.is_null());
    let from_format = match format {
        None => None,
        Some(f) => Some(match f.get("type").and_then(Value::as_str) {
            Some("text") => None,
            // llama-server reads a schema given beside json_object.
            Some("json_object") => Some(match f.get("schema").filter(|s| !s.is_null()) {
                Some(schema) => Grammar::JsonSchema(schema.clone()),
                None => Grammar::JsonObject,
            }),
            Some("json_schema") => {
                let schema = f
                    .get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .filter(|s| !s.is_null())
                    .ok_or_else(|| {
                        invalid(
                            "response_format",
                            "type 'json_schema' needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                        )
                    })?;
                Some(Grammar::JsonSchema(schema.clone()))
            }
            Some(other) => {
                return Err(invalid(
                    "response_format",
                    format!("type '{other}' is not 'text', 'json_object' or 'json_schema'"),
                ))
            }
            None => return Err(invalid("response_format", "needs a string field 'type'")),
        }),
    };
    match (from_format, grammar) {
        (Some(Some(_)), Some(_)) => Err(invalid(
            "grammar",
            "give either a grammar or a JSON response_format, not both",
        )),
        (_, Some(g)) => Ok(Some((Some(Grammar::Lark(g)), "grammar"))),
        (Some(g), None) => Ok(Some((g, "response_format"))),
        (None, None) => Ok(None),
    }
}

impl CompletionRequest {
    /// Checks the request against the server's limits.
    pub fn into_job(self, common: Common, limits: &Limits) -> Result<Job, ApiError> {
        if self.echo == Some(true) {
            return Err(invalid("echo", "not supported"));
        }
        if self.suffix.is_some() {
            return Err(invalid("suffix", "not supported"));
        }
        let input = match self.prompt {
            Value::String(s) => RequestInput::Text(s),
            Value::Array(items) if items.len() == 1 && items[0].is_string() => {
                RequestInput::Text(items[0].as_str().unwrap_or_default().to_string())
            }
            Value::Array(items) if items.iter().all(Value::is_number) => {
                let ids = (items.iter().enumerate())
                    .map(|(at, id)| {
                        (id.as_u64().and_then(|id| u32::try_from(id).ok())).ok_or_else(|| {
                            invalid(
                                "prompt",
                                format!("id {at}: {id} is not a token id (a whole number >= 0)"),
                            )
                        })
                    })
                    .collect::<Result<Vec<u32>, _>>()?;
                let pieces = (limits.served.pieces(&ids))
                    .map_err(|e| invalid("prompt", core_message(&e)))?;
                RequestInput::Served(pieces)
            }
            Value::Array(_) => return Err(invalid(
                "prompt",
                "give one prompt as a string, or as token ids (lists of prompts are not supported)",
            )),
            _ => return Err(invalid("prompt", "must be a string or a list of token ids")),
        };
        if matches!(&input, RequestInput::Text(p) if p.is_empty()) {
            return Err(invalid("prompt", "it is empty"));
        }
        // A client that ensembles this server asks for its whole distribution at times, one
        // token at a time; more than 20 for each of many tokens would make answers of gigabytes.
        let most = limits.served.len();
        let top = match self.logprobs {
            Some(n) if n as usize > most => {
                return Err(invalid(
                    "logprobs",
                    format!("{n} is above {most} (the served vocabulary)"),
                ))
            }
            Some(n) if n > 20 && common.max_tokens() != Some(1) => {
                return Err(invalid(
                    "logprobs",
                    format!("{n} is above 20 (more only with max_tokens 1)"),
                ))
            }
            other => other.map(|n| n as usize),
        };
        common.into_job(Kind::Completion, input, top, limits)
    }
}

impl ChatRequest {
    /// Checks the request against the server's limits.
    pub fn into_job(self, common: Common, limits: &Limits) -> Result<Job, ApiError> {
        if self.tools.is_some() {
            return Err(invalid("tools", "not supported"));
        }
        if self.messages.is_empty() {
            return Err(invalid("messages", "it is empty"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let field = format!("messages[{i}]");
            // OpenAI's `developer` messages are what `system` messages were: the chat
            // templates know only the latter.
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" | "assistant" => m.role.as_str(),
                other => {
                    return Err(invalid(
                        &format!("{field}.role"),
                        format!("role '{other}' is not system, developer, user or assistant"),
                    ))
                }
            };
            let content = content_text(m.content, &field)?;
            messages.push(Message::new(role.to_string(), content));
        }
        let top = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(n)) if n > 20 => {
                return Err(invalid("top_logprobs", format!("{n} is above 20")))
            }
            (false, Some(_)) => return Err(invalid("top_logprobs", "needs logprobs: true")),
            (true, n) => Some(n.unwrap_or(0) as usize),
            (false, None) => None,
        };
        common.into_job(Kind::Chat, RequestInput::Chat(messages), top, limits)
    }
}

/// A message's content: a string, or a list of text parts.
fn content_text(content: Option<Value>, field: &str) -> Result<String, ApiError> {
    let param = format!("{field}.content");
    match content {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => {
                        return Err(invalid(
                            &format!("{param}[{j}]"),
                            "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        ))
                    }
                }
            }
            Ok(text)
        }
        None | Some(Value::Null) => Err(invalid(&param, "it is missing")),
        Some(_) => Err(invalid(
            &param,
            "content must be a string or a list of text parts",
        )),
    }
}

impl Common {
    /// The tokens asked for (`max_completion_tokens`, else `max_tokens`).
    fn max_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    fn into_job(
        self,
        kind: Kind,
        input: RequestInput,
        logprobs: Option<usize>,
        limits: &Limits,
    ) -> Result<Job, ApiError> {
        let asked = self.max_tokens();
        if let Some(model) = &self.model {
            if *model != limits.model {
                return Err(ApiError::not_found(
                    Some("model"),
                    format!(
                        "model '{model}' does not exist; this server serves '{}'",
                        limits.model
                    ),
                ));
            }
        }
        let mode = self.mode(limits)?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only 1 is supported"));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(invalid("best_of", "only 1 is supported"));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(invalid(name, "only 0 is supported"));
            }
        }
        if self.logit_bias.is_some_and(|b| !b.is_empty()) {
            return Err(invalid("logit_bias", "not supported"));
        }
        let requested = requested_grammar(self.response_format.as_ref(), self.grammar)?;
        let field = match self.max_completion_tokens {
            Some(_) => "max_completion_tokens",
            None => "max_tokens",
        };
        let max_tokens = asked.unwrap_or(limits.default_max_tokens as u64);
        if max_tokens == 0 || max_tokens >= limits.context as u64 {
            return Err(invalid(
                field,
                format!(
                    "{max_tokens} is outside 1..{} (the smallest member context is {} tokens)",
                    limits.context - 1,
                    limits.context
                ),
            ));
        }
        let stop = self.stop.map(OneOrMany::into_vec).unwrap_or_default();
        if stop.len() > 4 {
            return Err(invalid("stop", "at most 4 stop strings"));
        }
        if stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "a stop string is empty"));
        }
        let sampling = Sampling::at(
            self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            self.top_k.unwrap_or(DEFAULT_TOP_K),
            self.top_p.unwrap_or(DEFAULT_TOP_P),
            self.seed.unwrap_or_else(random_seed),
        )
        .map_err(|e| core_field(&e))?;
        let server = &limits.combination;
        let grammar = match requested {
            Some((grammar, field)) => {
                if let Some(g) = &grammar {
                    // Compiled here, so a bad schema or grammar is a 400 before any slot.
                    limits
                        .grammars
                        .compile(g)
                        .map_err(|e| invalid(field, core_message(&e)))?;
                }
                grammar
            }
            None => server.grammar.clone(),
        };
        let combination = Combination {
            weights: self.weights.unwrap_or_else(|| server.weights.clone()),
            mode,
            union_top_k: self.union_top_k.or(server.union_top_k),
            grammar,
            ..server.clone()
        };
        combination
            .validate(limits.members)
            .map_err(|e| core_field(&e))?;
        Ok(Job {
            kind,
            input,
            options: GenerateOptions {
                stop,
                logprobs,
                ..combination.options(max_tokens as usize, sampling)
            },
            combination,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .is_some_and(|o| o.include_usage.unwrap_or(false)),
        })
    }

    /// The server's mode with this request's `mode` or gate fields applied.
    fn mode(&self, limits: &Limits) -> Result<Mode, ApiError> {
        let server = limits.combination.mode;
        let (gate, threshold, when_unsure) = match server {
            Mode::Gated {
                gate,
                threshold,
                when_unsure,
            } => (Some(gate), threshold, when_unsure),
            Mode::Average | Mode::Selective => (None, DEFAULT_THRESHOLD, WhenUnsure::Average),
        };
        if let Some(mode) = &self.mode {
            if self.gate.is_some() {
                return Err(invalid(
                    "mode",
                    "give either mode or gate (a gate makes it gated)",
                ));
            }
            let mode = Mode::named(mode).map_err(|e| core_field(&e))?;
            return match (self.threshold, &self.when_unsure) {
                (Some(_), _) => Err(invalid("threshold", "needs a gate (the gate field)")),
                (_, Some(_)) => Err(invalid("when_unsure", "needs a gate (the gate field)")),
                _ => Ok(mode),
            };
        }
        let Some(gate) = self.gate.or(gate) else {
            for (name, given) in [
                ("threshold", self.threshold.is_some()),
                ("when_unsure", self.when_unsure.is_some()),
            ] {
                if given {
                    return Err(invalid(name, "needs a gate (the gate field)"));
                }
            }
            return Ok(server);
        };
        let when_unsure = match &self.when_unsure {
            Some(s) => WhenUnsure::parse(s).map_err(|e| core_field(&e))?,
            None => when_unsure,
        };
        Ok(Mode::Gated {
            gate,
            threshold: self.threshold.unwrap_or(threshold),
            when_unsure,
        })
    }
}

/// A gac-core validation error as a 400 naming the request field of its setting.
pub(super) fn core_field(e: &gac_core::Error) -> ApiError {
    let param = match e {
        gac_core::Error::Setting { setting, .. } => Some(match setting {
            Setting::Temperature => "temperature",
            Setting::TopP => "top_p",
            Setting::UnionTopK => "union_top_k",
            Setting::Weights | Setting::Weight(_) => "weights",
            Setting::Gate => "gate",
            Setting::Threshold => "threshold",
            Setting::WhenUnsure => "when_unsure",
            Setting::Mode => "mode",
            Setting::Grammar => "grammar",
            Setting::JsonSchema => "response_format",
        }),
        _ => None,
    };
    ApiError::invalid(param, e.to_string())
}

/// A gac-core error's own message, without the setting's name in front.
fn core_message(e: &gac_core::Error) -> String {
    match e {
        gac_core::Error::Setting { message, .. } | gac_core::Error::Config { message, .. } => {
            message.clone()
        }
        other => other.to_string(),
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
