//! One server reached over HTTP (a llama-server, or any OpenAI-compatible one): JSON requests
//! with a bounded wait, retries for the requests that may be repeated, an optional API key,
//! and errors that name the server.

use std::io::Read;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use gac_core::Interrupt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// How long to wait for a connection before a try counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest answer read: a whole distribution of a 262,144-token vocabulary is about 30 MB.
const MAX_ANSWER_BYTES: u64 = 256 << 20;

/// How often a waiting request looks at the interrupt.
const POLL: Duration = Duration::from_millis(20);

/// A llama-server and how patiently it is asked.
pub(crate) struct Server {
    /// `http://host:port` (or a base such as `http://host:port/v1`), without a trailing slash.
    pub(crate) url: String,
    agent: ureq::Agent,
    retries: u32,
    interrupt: Interrupt,
    /// Sent as `Authorization: Bearer KEY`.
    api_key: Option<String>,
    /// What it is, in messages ("a llama-server").
    kind: &'static str,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// What went wrong, naming the server and the endpoint.
    Failed(String),
    /// The server refused a context longer than its window (OpenAI's error code
    /// `context_length_exceeded`), with its message.
    ContextFull(String),
    /// The interrupt was set while the request waited.
    Interrupted,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Failed(message) | Failure::ContextFull(message) => f.write_str(message),
            Failure::Interrupted => f.write_str("interrupted while waiting for the server"),
        }
    }
}

impl From<Failure> for String {
    fn from(failure: Failure) -> Self {
        failure.to_string()
    }
}

/// One step's answer: the most probable next tokens and how much the server took from its
/// cache.
#[derive(Debug, Deserialize)]
pub(crate) struct Completion {
    completion_probabilities: Vec<Position>,
    timings: Timings,
}

#[derive(Debug, Deserialize)]
struct Position {
    top_logprobs: Vec<Candidate>,
}

/// One listed token: its id and its log-probability over the whole vocabulary.
#[derive(Debug, Deserialize)]
pub(crate) struct Candidate {
    pub(crate) id: u32,
    pub(crate) logprob: f32,
}

#[derive(Debug, Deserialize)]
struct Timings {
    cache_n: usize,
    prompt_n: usize,
    prompt_ms: f64,
    predicted_ms: f64,
}

impl Completion {
    /// The listed next tokens, most probable first.
    pub(crate) fn candidates(&self) -> &[Candidate] {
        self.completion_probabilities
            .first()
            .map_or(&[], |p| &p.top_logprobs)
    }

    /// How many leading positions the server took from its cache.
    pub(crate) fn cached(&self) -> usize {
        self.timings.cache_n
    }

    /// How many positions the server evaluated.
    pub(crate) fn evaluated(&self) -> usize {
        self.timings.prompt_n
    }

    /// The time the server reports for the step itself (evaluation and sampling).
    pub(crate) fn server_time(&self) -> Duration {
        Duration::from_secs_f64((self.timings.prompt_ms + self.timings.predicted_ms).max(0.0) / 1e3)
    }
}

impl Server {
    /// A server at `url` (`http://host:port`), `kind` in messages ("a llama-server"); each try
    /// waits at most `timeout` for the answer, and a request that may be repeated is tried
    /// `retries` more times.
    pub(crate) fn new(url: &str, kind: &'static str, timeout: Duration, retries: u32) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .build();
        Self {
            url: url.trim_end_matches('/').to_string(),
            agent,
            retries,
            interrupt: Interrupt::default(),
            api_key: None,
            kind,
        }
    }

    /// Sends `key` with every request, as `Authorization: Bearer KEY`.
    pub(crate) fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// What it is, in messages ("a llama-server").
    pub(crate) fn kind(&self) -> &'static str {
        self.kind
    }

    /// The flag that makes a waiting request give up ([`Failure::Interrupted`]).
    pub(crate) fn watch(&mut self, interrupt: Interrupt) {
        self.interrupt = interrupt;
    }

    /// Asks for the next token's `n_probs` most probable ids after `prompt` (token ids), in
    /// slot `slot`; with `cached`, the server evaluates only what the slot's cache lacks,
    /// else the whole prompt. Asking again gives the same answer, so failures are retried.
    ///
    /// The server also samples a token, and leaves the probabilities out when that token ends
    /// in an incomplete UTF-8 sequence; a logit bias makes it sample `plain`, a token of
    /// plain ASCII text, instead, through the cheapest sampler chain (top-1). The
    /// probabilities are those before sampling, so neither touches them.
    pub(crate) fn complete(
        &self,
        prompt: &[u32],
        n_probs: usize,
        slot: Option<u32>,
        plain: u32,
        cached: bool,
    ) -> Result<Completion, Failure> {
        let mut body = json!({
            "prompt": prompt,
            "n_predict": 1,
            "n_probs": n_probs,
            "cache_prompt": cached,
            "temperature": 0.0,
            "logit_bias": [[plain, 1e9]],
            "samplers": ["top_k"],
            "top_k": 1,
            "post_sampling_probs": false,
            "stream": false,
            "response_fields": ["completion_probabilities", "timings"],
        });
        if let Some(slot) = slot {
            body["id_slot"] = json!(slot);
        }
        self.post("/completion", &body)
    }

    /// POSTs `body` as JSON and reads the answer, with retries.
    pub(crate) fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, Failure> {
        self.with_retries(path, Some(body))
    }

    /// GETs a JSON document, with retries.
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.with_retries(path, None)
    }

    /// GETs `path` once and returns its status code (none when nothing answered).
    pub(crate) fn status(&self, path: &str) -> Option<u16> {
        match self.agent.get(&self.endpoint(path)).call() {
            Ok(r) => Some(r.status()),
            Err(ureq::Error::Status(code, _)) => Some(code),
            Err(ureq::Error::Transport(_)) => None,
        }
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sends the request (a POST of `body`, else a GET) until it gets an answer, at most
    /// `1 + retries` times, waiting a little longer before each retry. What failed on the way
    /// (no connection, no answer in time, an answer cut off, a 5xx) is retried; a 4xx, an
    /// answer over [`MAX_ANSWER_BYTES`] or one that is not the expected JSON is not.
    fn with_retries<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, Failure> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                self.pause(Duration::from_millis(250 << (attempt - 1).min(4)))?;
            }
            match self.attempt(path, body)? {
                Exchange::Answer(code, answer) if code < 400 => return self.parse(path, &answer),
                Exchange::Answer(code, answer) if code < 500 => {
                    let (detail, error_code) = error_message(&answer);
                    let message = format!("{}{path} answered {code}: {detail}", self.url);
                    return Err(match error_code.as_deref() {
                        Some("context_length_exceeded") => Failure::ContextFull(message),
                        _ => Failure::Failed(message),
                    });
                }
                Exchange::Answer(code, answer) => {
                    last = format!("answered {code}: {}", error_message(&answer).0)
                }
                Exchange::TooLarge => {
                    return Err(Failure::Failed(format!(
                        "{}{path} answered more than {MAX_ANSWER_BYTES} bytes",
                        self.url
                    )))
                }
                Exchange::Broken(message) => last = message,
            }
        }
        Err(Failure::Failed(format!(
            "{}{path} {last} (tried {} times)",
            self.url,
            self.retries + 1
        )))
    }

    /// One try, on a thread of its own, so that waiting for it can end when the interrupt is
    /// set; the abandoned try ends by itself within the timeout.
    fn attempt(&self, path: &str, body: Option<&Value>) -> Result<Exchange, Failure> {
        let (tx, rx) = mpsc::channel();
        let (agent, endpoint, body) = (self.agent.clone(), self.endpoint(path), body.cloned());
        let auth = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        std::thread::spawn(move || {
            let _ = tx.send(exchange(&agent, &endpoint, body, auth.as_deref()));
        });
        loop {
            match rx.recv_timeout(POLL) {
                Ok(exchange) => return Ok(exchange),
                Err(RecvTimeoutError::Timeout) if self.interrupt.is_set() => {
                    return Err(Failure::Interrupted)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(Exchange::Broken("stopped answering".into()))
                }
            }
        }
    }

    /// Sleeps for `wait`, or less when the interrupt is set.
    fn pause(&self, wait: Duration) -> Result<(), Failure> {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.interrupt.is_set() {
                return Err(Failure::Interrupted);
            }
            sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    fn parse<T: DeserializeOwned>(&self, path: &str, answer: &[u8]) -> Result<T, Failure> {
        serde_json::from_slice(answer).map_err(|e| {
            let start = String::from_utf8_lossy(&answer[..answer.len().min(120)]).into_owned();
            Failure::Failed(format!(
                "{}{path} did not answer what {} answers ({e}); it began: {start:?}",
                self.url, self.kind
            ))
        })
    }
}

/// What one try brought back.
enum Exchange {
    /// A status and the whole answer.
    Answer(u16, Vec<u8>),
    /// An answer longer than [`MAX_ANSWER_BYTES`].
    TooLarge,
    /// No answer, or one cut off, and why.
    Broken(String),
}

/// Sends one request (with this `Authorization` header, if any) and reads its whole answer (at
/// most [`MAX_ANSWER_BYTES`]).
fn exchange(
    agent: &ureq::Agent,
    endpoint: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> Exchange {
    let request = match body {
        Some(_) => agent.post(endpoint),
        None => agent.get(endpoint),
    };
    let request = match auth {
        Some(auth) => request.set("Authorization", auth),
        None => request,
    };
    let sent = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    let response = match sent {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(t)) => return Exchange::Broken(transport_message(&t)),
    };
    let code = response.status();
    let mut answer = Vec::new();
    let read = response
        .into_reader()
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut answer);
    match read {
        Err(e)
            if e.kind() == std::io::ErrorKind::TimedOut || e.to_string().contains("timed out") =>
        {
            Exchange::Broken("did not answer in time".into())
        }
        Err(e) => Exchange::Broken(format!("broke off while answering: {e}")),
        Ok(_) if answer.len() as u64 > MAX_ANSWER_BYTES => Exchange::TooLarge,
        Ok(_) => Exchange::Answer(code, answer),
    }
}

/// The message of an error answer: llama-server's `error.message`, else the body's start.
/// An error answer's message (OpenAI's and llama-server's `error.message`, else the start of
/// the answer) and its `error.code`, if a string.
fn error_message(answer: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(answer);
    let value = serde_json::from_str::<Value>(&text).ok();
    let error = value.as_ref().map(|v| &v["error"]);
    let message = (error
        .and_then(|e| e["message"].as_str())
        .map(str::to_string))
    .unwrap_or_else(|| text.chars().take(200).collect());
    let code = error.and_then(|e| e["code"].as_str()).map(str::to_string);
    (message, code)
}

fn transport_message(t: &ureq::Transport) -> String {
    match t.kind() {
        ureq::ErrorKind::ConnectionFailed => {
            "refused the connection (is the server running?)".into()
        }
        ureq::ErrorKind::Dns => "is not a known host".into(),
        ureq::ErrorKind::Io => match t.to_string() {
            s if s.contains("timed out") => "did not answer in time".into(),
            s => format!("broke off: {s}"),
        },
        _ => format!("failed: {t}"),
    }
}
