//! The OpenAI response objects: whole completions, stream chunks, usage, logprobs (from the
//! combined distribution) and gac's own step statistics.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gac_core::{Finish, Generation, TokenLogprob, Union, UnionId};
use serde_json::{json, Value};

use super::api::Kind;

/// What every object of one response shares.
pub struct Reply {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    union: Arc<Union>,
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::End | Finish::Stop => "stop",
        Finish::MaxTokens | Finish::ContextFull | Finish::Cancelled => "length",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Reply {
    /// A reply to a request of `kind`; `serial` makes its id unique.
    pub fn new(kind: Kind, serial: u64, model: String, union: Arc<Union>) -> Self {
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        Self {
            kind,
            id: format!("{prefix}-gac-{serial}"),
            created: unix_now(),
            model,
            union,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The whole response of a finished generation.
    pub fn complete(&self, g: &Generation, logprobs: bool) -> Value {
        let lp = logprobs.then(|| self.logprobs(&g.logprobs, 0));
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0,
                "text": g.text,
                "logprobs": lp,
                "finish_reason": finish_reason(g.finish),
            }),
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": lp,
                "finish_reason": finish_reason(g.finish),
            }),
        };
        let mut value = self.envelope(false, json!([choice]));
        value["usage"] = usage(g);
        value["gac"] = stats(g);
        value
    }

    /// The chat stream's first chunk: the assistant's role.
    pub fn role_chunk(&self) -> Value {
        self.envelope(
            true,
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        )
    }

    /// A chunk of streamed text; `offset` is the text's offset in the whole output.
    pub fn text_chunk(
        &self,
        text: &str,
        lps: &[TokenLogprob],
        logprobs: bool,
        offset: usize,
    ) -> Value {
        let lp = logprobs.then(|| self.logprobs(lps, offset));
        let choice = match self.kind {
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": null})
            }
            Kind::Chat => {
                json!({"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
            }
        };
        self.envelope(true, json!([choice]))
    }

    /// The stream's last chunk: why it ended, with gac's statistics.
    pub fn final_chunk(&self, g: &Generation) -> Value {
        let reason = finish_reason(g.finish);
        let choice = match self.kind {
            Kind::Completion => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason})
            }
            Kind::Chat => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason})
            }
        };
        let mut value = self.envelope(true, json!([choice]));
        value["gac"] = stats(g);
        value
    }

    /// The usage chunk of `stream_options.include_usage`: no choices.
    pub fn usage_chunk(&self, g: &Generation) -> Value {
        let mut value = self.envelope(true, json!([]));
        value["usage"] = usage(g);
        value
    }

    fn token(&self, u: UnionId) -> (String, Vec<u8>) {
        let bytes = self.union.bytes(u).to_vec();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// One listed token: its union id (the served vocabulary's), text, log-probability and
    /// bytes.
    fn entry(&self, u: UnionId, logprob: f32) -> Value {
        let (token, bytes) = self.token(u);
        json!({"id": u.0, "token": token, "logprob": logprob, "bytes": bytes})
    }

    /// Per token, its entry with its `top_logprobs`: chat's form, which completions give
    /// beside their own so a client reads ids (as llama-server's do).
    fn content(&self, lps: &[TokenLogprob]) -> Vec<Value> {
        lps.iter()
            .map(|lp| {
                let mut entry = self.entry(lp.token, lp.logprob);
                let top = lp.top.iter().map(|&(u, l)| self.entry(u, l)).collect();
                entry["top_logprobs"] = Value::Array(top);
                entry
            })
            .collect()
    }

    /// Logprobs in the endpoint's format; text offsets start at `offset`.
    fn logprobs(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        match self.kind {
            Kind::Chat => json!({"content": self.content(lps)}),
            Kind::Completion => {
                let mut tokens = Vec::new();
                let mut offsets = Vec::new();
                let mut at = offset;
                for lp in lps {
                    let (token, _) = self.token(lp.token);
                    offsets.push(at);
                    at += token.len();
                    tokens.push(token);
                }
                let top: Vec<Value> = lps
                    .iter()
                    .map(|lp| {
                        let map: serde_json::Map<String, Value> = lp
                            .top
                            .iter()
                            .map(|&(u, l)| (self.token(u).0, json!(l)))
                            .collect();
                        Value::Object(map)
                    })
                    .collect();
                json!({
                    "tokens": tokens,
                    "token_logprobs": lps.iter().map(|lp| lp.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                    "content": self.content(lps),
                })
            }
        }
    }
}

/// OpenAI's `usage`; prompt tokens are counted in member 0's tokens.
fn usage(g: &Generation) -> Value {
    let prompt = g.stats.members.first().map_or(0, |m| m.prompt_tokens);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": g.stats.tokens,
        "total_tokens": prompt + g.stats.tokens,
    })
}

/// gac's own statistics of a generation.
fn stats(g: &Generation) -> Value {
    let s = &g.stats;
    json!({
        "finish": g.finish.as_str(),
        "steps": s.steps,
        "ensembled_steps": s.ensembled_steps,
        "ensembled_fraction": s.ensembled_fraction(),
        "ms_per_token": s.ms_per_token(),
        "first_step_ms": s.first_step_time.as_secs_f64() * 1e3,
        "total_ms": s.total_time.as_secs_f64() * 1e3,
        "members": s.members.iter().map(|m| json!({
            "name": m.name,
            "prompt_tokens": m.prompt_tokens,
            "decode_evals": m.decode_evals,
            "ms_per_eval": m.ms_per_eval(),
        })).collect::<Vec<_>>(),
    })
}
