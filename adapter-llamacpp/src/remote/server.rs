//! One llama-server reached over HTTP: JSON requests with a bounded wait, retries for the
//! requests that may be repeated, and errors that name the server.

use std::io::Read;
use std::thread::sleep;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// How long to wait for a connection before a try counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A llama-server and how patiently it is asked.
pub(crate) struct Server {
    /// `http://host:port`, without a trailing slash.
    pub(crate) url: String,
    agent: ureq::Agent,
    retries: u32,
}

/// Why a request failed, naming the server and the endpoint.
pub(crate) type Failure = String;

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
    /// A server at `url` (`http://host:port`); each try waits at most `timeout` for the answer,
    /// and a request that may be repeated is tried `retries` more times.
    pub(crate) fn new(url: &str, timeout: Duration, retries: u32) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .build();
        Self {
            url: url.trim_end_matches('/').to_string(),
            agent,
            retries,
        }
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
        self.with_retries(path, || {
            self.agent
                .post(&self.endpoint(path))
                .send_json(body)
                .map_err(Box::new)
        })
    }

    /// GETs a JSON document, with retries.
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.with_retries(path, || {
            self.agent
                .get(&self.endpoint(path))
                .call()
                .map_err(Box::new)
        })
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

    /// Runs `send` until it gets an answer, at most `1 + retries` times, waiting a little longer
    /// before each retry; a 4xx answer or one that is not the expected JSON is not retried.
    fn with_retries<T: DeserializeOwned>(
        &self,
        path: &str,
        send: impl Fn() -> Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<T, Failure> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                sleep(Duration::from_millis(250 << (attempt - 1).min(4)));
            }
            match send().map_err(|e| *e) {
                Ok(response) => return self.read(path, response),
                Err(ureq::Error::Status(code, response)) if code < 500 => {
                    let detail = error_message(response);
                    return Err(format!("{}{path} answered {code}: {detail}", self.url));
                }
                Err(ureq::Error::Status(code, response)) => {
                    last = format!("answered {code}: {}", error_message(response));
                }
                Err(ureq::Error::Transport(t)) => last = transport_message(&t),
            }
        }
        Err(format!(
            "{}{path} {last} (tried {} times)",
            self.url,
            self.retries + 1
        ))
    }

    fn read<T: DeserializeOwned>(
        &self,
        path: &str,
        response: ureq::Response,
    ) -> Result<T, Failure> {
        let mut body = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut body)
            .map_err(|e| format!("{}{path}: reading the answer: {e}", self.url))?;
        serde_json::from_slice(&body).map_err(|e| {
            let start = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
            format!(
                "{}{path} did not answer what a llama-server answers ({e}); it began: {start:?}",
                self.url
            )
        })
    }
}

/// The message of an error answer: llama-server's `error.message`, else the body's start.
fn error_message(response: ureq::Response) -> String {
    let text = response.into_string().unwrap_or_default();
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(200).collect())
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
