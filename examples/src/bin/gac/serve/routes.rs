//! The routes and their handlers: the OpenAI endpoints (whole or streamed as server-sent
//! events), models, health, metrics; API-key checks and the body limit.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State as Shared};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use gac_core::served;
use gac_core::{Finish, Generation, Interrupt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::api::{self, Job, Kind, Limits};
use super::error::ApiError;
use super::metrics::Outcome;
use super::reply::Reply;
use super::slots::{CancelOnDrop, Event, Lease};
use super::{Ready, Server};

/// Every route of the server.
pub fn router(state: Arc<Server>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/vocab", get(vocab))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body))
        .with_state(state)
}

async fn auth(Shared(state): Shared<Arc<Server>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            if let Some(ready) = state.ready.get() {
                ready.pool.metrics.finished(Outcome::Invalid);
            }
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme's case does not matter
/// (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares a given key with the server's in a time that does not depend on where they differ.
fn same_secret(given: &[u8], key: &[u8]) -> bool {
    let differ = given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    differ == 0 && given.len() == key.len()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(
        None,
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid(
            None,
            format!(
                "{} is not allowed on {}",
                request.method(),
                request.uri().path()
            ),
        )
    }
}

async fn health(Shared(state): Shared<Arc<Server>>) -> Response {
    match state.ready.get() {
        Some(_) => Json(json!({"status": "ok"})).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

async fn metrics(Shared(state): Shared<Arc<Server>>) -> Response {
    match state.ready.get() {
        Some(ready) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            ready.pool.metrics.render(ready.pool.slots()),
        )
            .into_response(),
        None => ApiError::unavailable("the members are loading").into_response(),
    }
}

/// The ensemble as one model; with the size of its served vocabulary and its context window
/// (the smallest member's), which a client that ensembles this server reads.
async fn models(Shared(state): Shared<Arc<Server>>) -> Response {
    let Some(ready) = state.ready.get() else {
        return ApiError::unavailable("the members are loading").into_response();
    };
    let meta = json!({
        "n_vocab": ready.limits.served.len(),
        "n_ctx": ready.limits.context,
        "vocab_fingerprint": ready.fingerprint,
    });
    Json(json!({
        "object": "list",
        "data": [{"id": state.model, "object": "model", "created": 0, "owned_by": "gac", "meta": meta}],
    }))
    .into_response()
}

/// The served vocabulary (see `gac_core::served`): what a client needs to send token ids and
/// read the ids this server lists, e.g. `--vocab` of a gac ensemble with this server as a
/// member.
async fn vocab(Shared(state): Shared<Arc<Server>>) -> Response {
    let Some(ready) = state.ready.get() else {
        return ApiError::unavailable("the members are loading").into_response();
    };
    let union = ready.union.clone();
    let model = state.model.clone();
    match tokio::task::spawn_blocking(move || served::vocabulary_json(&union, &model)).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => ApiError::internal(e.to_string()).into_response(),
        Err(e) => {
            ApiError::internal(format!("the vocabulary was not written: {e}")).into_response()
        }
    }
}

async fn completions(
    Shared(state): Shared<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, body, api::completion).await
}

async fn chat(Shared(state): Shared<Arc<Server>>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, body, api::chat).await
}

/// Validates, takes a slot, and answers whole or as a stream.
async fn handle(
    state: Arc<Server>,
    body: Result<Bytes, BytesRejection>,
    parse: impl FnOnce(&[u8], &Limits) -> Result<Job, ApiError> + Send + 'static,
) -> Response {
    let Some(ready) = state.ready.get() else {
        return ApiError::unavailable("the members are still loading; retry when /health is 200")
            .into_response();
    };
    if state.closing.load(Ordering::Relaxed) {
        return ApiError::unavailable("the server is shutting down").into_response();
    }
    let metrics = &ready.pool.metrics;
    let job = match body {
        // Off the async threads: a request's grammar is compiled here, which can take a while.
        Ok(body) => {
            let limits = ready.limits.clone();
            tokio::task::spawn_blocking(move || parse(&body, &limits))
                .await
                .unwrap_or_else(|e| Err(ApiError::internal(format!("checking the request: {e}"))))
        }
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::too_large(state.max_body))
        }
        Err(e) => Err(ApiError::invalid(None, e.body_text())),
    };
    let job = match job {
        Ok(job) => job,
        Err(e) => {
            metrics.finished(Outcome::Invalid);
            return e.into_response();
        }
    };
    let lease = match ready.pool.acquire().await {
        Ok(lease) => lease,
        Err(e) => {
            metrics.finished(Outcome::Rejected);
            return e.into_response();
        }
    };
    let serial = state.serial.fetch_add(1, Ordering::Relaxed);
    let reply = Reply::new(job.kind, serial, state.model.clone(), ready.union.clone());
    match job.stream {
        true => streamed(ready, job, lease, reply).await,
        false => whole(ready, job, lease, reply).await,
    }
}

/// Runs a job on a blocking thread, counts how it ended and hands the result to `done`.
fn spawn(
    ready: &Ready,
    job: Job,
    lease: Lease,
    events: Option<mpsc::UnboundedSender<Event>>,
    cancel: Interrupt,
    done: impl FnOnce(Result<Generation, ApiError>) + Send + 'static,
) {
    let pool = ready.pool.clone();
    tokio::task::spawn_blocking(move || {
        let result = lease.run(&job, events, cancel);
        let outcome = match &result {
            Ok(g) if g.finish == Finish::Cancelled => Outcome::Cancelled,
            Ok(_) => Outcome::Ok,
            Err(e) if e.status.is_client_error() => Outcome::Invalid,
            Err(_) => Outcome::Failed,
        };
        pool.metrics.finished(outcome);
        done(result);
    });
}

async fn whole(ready: &Ready, job: Job, lease: Lease, reply: Reply) -> Response {
    let cancel = Interrupt::default();
    // Dropped (client gone) before the generation ends: it stops within a step.
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let logprobs = job.options.logprobs.is_some();
    let (tx, rx) = oneshot::channel();
    spawn(ready, job, lease, None, cancel, move |result| {
        let _ = tx.send(result);
    });
    match rx.await {
        Ok(Ok(g)) => Json(reply.complete(&g, logprobs)).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::internal("the generation stopped without an answer").into_response(),
    }
}

/// Answers as server-sent events. The response starts only with the first piece of text (or
/// the end): what fails before any text (a prompt too long for a member, a chat template that
/// does not apply, an empty encoding) is an error status, as for a whole answer, not a 200
/// followed by an error event.
async fn streamed(ready: &Ready, job: Job, lease: Lease, reply: Reply) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let logprobs = job.options.logprobs.is_some();
    let usage = job.include_usage;
    let first = match job.kind {
        Kind::Chat => Some(reply.role_chunk()),
        Kind::Completion => None,
    };
    // The stream owns the receiver and the flag: when the client goes, the generation sees
    // both, and a member waiting on its server gives up at once.
    let cancel = Interrupt::default();
    let cancel_on_drop = CancelOnDrop(cancel.clone());
    let last = tx.clone();
    spawn(ready, job, lease, Some(tx), cancel, move |result| {
        let _ = last.send(Event::Done(Box::new(result)));
    });
    let opening = match rx.recv().await {
        Some(Event::Done(done)) => match *done {
            Err(e) => return e.into_response(),
            ok => Event::Done(Box::new(ok)),
        },
        Some(event) => event,
        None => {
            return ApiError::internal("the generation stopped without an answer").into_response()
        }
    };
    let mut offset = 0;
    let events = stream::iter([opening])
        .chain(UnboundedReceiverStream::new(rx))
        .flat_map(move |event| {
            let _owned = &cancel_on_drop;
            let chunks: Vec<String> = match event {
                Event::Text(text, lps) => {
                    let chunk = reply.text_chunk(&text, &lps, logprobs, offset);
                    offset += text.len();
                    vec![chunk.to_string()]
                }
                Event::Done(done) => match *done {
                    Ok(g) => {
                        let mut chunks = vec![reply.final_chunk(&g).to_string()];
                        if usage {
                            chunks.push(reply.usage_chunk(&g).to_string());
                        }
                        chunks.push("[DONE]".to_string());
                        chunks
                    }
                    Err(e) => vec![e.body().to_string(), "[DONE]".to_string()],
                },
            };
            stream::iter(chunks)
        });
    let all = stream::iter(first.map(|v| v.to_string()))
        .chain(events)
        .map(|data| Ok::<_, Infallible>(Sse::default().data(data)));
    axum::response::Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}
