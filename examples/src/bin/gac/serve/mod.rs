//! `gac serve`: the ensemble behind an OpenAI-compatible HTTP API (axum on tokio).
//!
//! The listener starts at once (`/health` answers 503 while the members load); requests take
//! one of `--parallel` slots or wait in a queue of `--queue`, beyond which they get 429. A
//! client that disconnects stops its generation within one step (a remote member waiting on
//! its server gives up at once). The first SIGINT or SIGTERM stops accepting, answers 503 to
//! new and queued requests, lets in-flight requests finish, and exits 0; a second one exits at
//! once.

mod api;
mod error;
mod metrics;
mod reply;
mod routes;
mod slots;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use clap::Args;
use gac_core::served::{self, ServedIds};
use gac_core::{Ensemble, Union};
use gac_examples::config::{Plan, RuntimeKind};
use gac_llamacpp::Batching;

use super::args::EnsembleArgs;
use crate::members::{load_slots, Loading};
use api::Limits;
use slots::Pool;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub ensemble: EnsembleArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests generated at once (each slot has its own contexts on the shared weights).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub parallel: usize,
    /// Answers that do not depend on the load: each slot's llama.cpp evaluations run on their
    /// own (not batched with the other slots'), so a greedy request gives the same text served
    /// alone or beside others. Costs throughput under load (see docs/serving.md); llama.cpp members
    /// only.
    #[arg(long)]
    deterministic: bool,
    /// Keep each slot's cache across requests: a prompt that starts like the slot's previous
    /// context evaluates only the rest. For clients that extend their context a token at a
    /// time, such as a gac ensemble with this server as a member; llama.cpp members only.
    #[arg(long)]
    prompt_cache: bool,
    /// Requests that may wait for a slot; more get 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 16)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, value_name = "KEY", env = "GAC_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// `max_tokens` of requests that give none.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_tokens: usize,
    /// Largest request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_body: usize,
    /// The served model's name (default: the config's `name`, else `gac`).
    #[arg(long)]
    name: Option<String>,
}

/// What every handler shares.
pub struct Server {
    /// Set once the members are loaded.
    ready: OnceLock<Ready>,
    api_key: Option<String>,
    max_body: usize,
    model: String,
    serial: std::sync::atomic::AtomicU64,
    /// Set by the first shutdown signal: new requests get 503.
    closing: std::sync::atomic::AtomicBool,
}

/// The loaded ensemble.
struct Ready {
    pool: Arc<Pool>,
    limits: Limits,
    union: Arc<Union>,
    /// The served vocabulary's fingerprint (see `gac_core::served`).
    fingerprint: String,
}

pub fn serve(args: ServeArgs, plan: Plan) -> Result<()> {
    if args.parallel == 0 {
        bail!("invalid --parallel: 0 slots serve nothing (use at least 1)");
    }
    if args.deterministic && args.parallel > 1 {
        if let Some((i, m)) = (plan.config.members.iter().enumerate())
            .find(|(_, m)| m.runtime != RuntimeKind::LlamaCpp)
        {
            bail!(
                "--deterministic: member {i} ({}, {}) batches the slots' requests in its own \
                 runtime, so its answers can depend on the load; only llama.cpp members can \
                 be made batch-invariant (serve it with --parallel 1, or leave out \
                 --deterministic)",
                m.place(),
                m.runtime.label()
            );
        }
    }
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid --host/--port: {}:{}", args.host, args.port))?;
    let model = args
        .name
        .clone()
        .or_else(|| plan.config.name.clone())
        .unwrap_or_else(|| "gac".to_string());
    let state = Arc::new(Server {
        ready: OnceLock::new(),
        api_key: args.api_key.clone(),
        max_body: args.max_body,
        model,
        serial: Default::default(),
        closing: Default::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "gac: listening on http://{} (loading members)",
            listener.local_addr()?
        );
        let loading = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || load(&state, &args, &plan))
        };
        let app = routes::router(state.clone());
        let server =
            axum::serve(listener, app).with_graceful_shutdown(shutdown_signal(state.clone()));
        let server = tokio::spawn(std::future::IntoFuture::into_future(server));
        loading.await.context("loading the members")??;
        eprintln!("gac: ready: serving model '{}'", state.model);
        server.await?.context("serving")
    })?;
    Ok(())
}

/// Loads the slots and publishes them to the handlers.
fn load(state: &Server, args: &ServeArgs, plan: &Plan) -> Result<()> {
    let batching = match args.deterministic {
        true => Batching::Invariant,
        false => Batching::Shared,
    };
    let loading = Loading {
        slots: args.parallel,
        batching,
        ..Loading::single(false, args.prompt_cache)
    };
    let sets = load_slots(&plan.config.members, loading)?;
    let combination = &plan.combination;
    let mut ensembles = Vec::with_capacity(sets.len());
    for members in sets {
        let weights = Some(combination.weights.clone());
        ensembles.push(Ensemble::new(members, weights, combination.mode)?);
    }
    // Every slot has the same union: it is prepared for grammars once.
    let grammars = ensembles[0].grammars()?.clone();
    if let Some(g) = &combination.grammar {
        grammars.compile(g)?;
    }
    for e in &mut ensembles[1..] {
        e.set_grammars(grammars.clone());
    }
    let context = ensembles[0]
        .members()
        .iter()
        .filter_map(|m| m.context_size())
        .min()
        .unwrap_or(usize::MAX);
    let limits = Limits {
        model: state.model.clone(),
        context,
        default_max_tokens: args.max_tokens.min(context.saturating_sub(1)).max(1),
        combination: combination.clone(),
        members: plan.config.members.len(),
        grammars,
        served: ServedIds::new(ensembles[0].union().len()),
    };
    let fingerprint = served::fingerprint(ensembles[0].union())?;
    let union = Arc::new(ensembles[0].union().clone());
    let pool = Arc::new(Pool::new(ensembles, args.queue));
    let _ = state.ready.set(Ready {
        pool,
        limits,
        union,
        fingerprint,
    });
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM, after closing the door: new and queued requests
/// get 503 from then on. A second signal exits at once.
async fn shutdown_signal(state: Arc<Server>) {
    // Listening from the start, so that a second signal right after the first is not missed.
    let mut signals = Signals::new();
    signals.next().await;
    eprintln!("gac: shutting down: finishing in-flight requests (a second signal exits now)");
    state
        .closing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(ready) = state.ready.get() {
        ready.pool.close();
    }
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("gac: second signal: exiting now");
        exit_now(130);
    });
}

/// Ends the process at once with `code`. Not `std::process::exit`: its exit handlers free
/// llama.cpp's global state while generations still run on other threads (seen as a SIGSEGV).
fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    // SAFETY: `_exit` ends the process; it touches no memory of this one.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// SIGINT and SIGTERM, each received once or more.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGINT or SIGTERM (Ctrl-C elsewhere).
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.interrupt) => {}
                _ = recv(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
