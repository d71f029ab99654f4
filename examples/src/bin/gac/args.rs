//! The flags that describe an ensemble (members, per-member placement, gate), shared by the
//! subcommands that run one; per-member flags bind to the `--model` they follow.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use gac_core::select::{Sampling, DEFAULT_TOP_K, DEFAULT_TOP_P};
use gac_examples::config::{EnsembleConfig, GateConfig, MemberConfig, Plan, RuntimeKind};

/// Members, where they run and how they are combined.
#[derive(Args, Debug)]
pub struct EnsembleArgs {
    #[command(flatten)]
    pub members: MemberArgs,
    /// Weight of the member whose --model it follows, in the average (default: equal).
    #[arg(
        long = "weight",
        value_name = "W",
        conflicts_with = "config",
        allow_negative_numbers = true
    )]
    weights: Vec<f32>,
    /// `average` (every step averages the members) or `selective` (where the members' most
    /// probable tokens agree that token is taken; only where they differ are they averaged).
    /// Default: the --config's, else average; --gate makes it gated.
    #[arg(long, value_name = "MODE", conflicts_with = "gate")]
    mode: Option<String>,
    /// Gated mode: member N decides alone while its top probability is above --threshold.
    #[arg(long, value_name = "N")]
    gate: Option<usize>,
    /// Gate threshold t in [0, 1]: steps where the gate's top probability is <= t are ensembled.
    #[arg(
        long,
        value_name = "T",
        default_value_t = gac_core::select::DEFAULT_THRESHOLD,
        requires = "gate",
        allow_negative_numbers = true
    )]
    threshold: f32,
    /// What to do when the gate is unsure: `average` all members, or `member:K` alone.
    #[arg(long, value_name = "HOW", default_value = "average", requires = "gate")]
    when_unsure: String,
    /// When the other members are evaluated: `lazy` (only where the gate is unsure, catching up
    /// in one batch) or `eager` (every step, beside the gate). Default: eager when every member
    /// has a GPU of its own, else lazy.
    #[arg(long, value_name = "WHEN", requires = "gate")]
    schedule: Option<String>,
    /// `fixed` weights (default), or `confidence`: at each step, each member's weight times
    /// its top probability, so a member sure of its next token counts more.
    #[arg(long, value_name = "HOW")]
    weighting: Option<String>,
    /// Combine only each member's K most probable tokens (the top-k union) instead of the full
    /// distributions.
    #[arg(long, value_name = "K")]
    union_top_k: Option<usize>,
    /// The output must be valid against the JSON schema in FILE (structured outputs: only
    /// union tokens the schema allows are chosen, and the generation ends with the value).
    #[arg(long, value_name = "FILE", group = "structure")]
    json_schema: Option<PathBuf>,
    /// The output must be a JSON object.
    #[arg(long, group = "structure")]
    json_object: bool,
    /// The output must match the grammar in FILE, in llguidance's Lark syntax
    /// (`start: "yes" | "no"`; GBNF is not read).
    #[arg(long, value_name = "FILE", group = "structure")]
    grammar: Option<PathBuf>,
    /// CPU threads of the llama.cpp member whose --model it follows (default: the cores divided
    /// among the members; mistral.rs members share one pool, sized by RAYON_NUM_THREADS).
    #[arg(long = "threads", value_name = "N", conflicts_with = "config")]
    threads: Vec<i32>,
    /// Pin the member whose --model it follows to this GPU (needs a GPU build of llama.cpp).
    #[arg(long = "gpu", value_name = "INDEX", conflicts_with = "config")]
    gpus: Vec<i32>,
    /// Layers of the llama.cpp member whose --model it follows to offload to its GPU (default:
    /// all).
    #[arg(long = "gpu-layers", value_name = "N", conflicts_with = "config")]
    gpu_layers: Vec<u32>,
    /// Context window of the member whose --model it follows, in tokens (default: the model's,
    /// at most 4096).
    #[arg(long = "ctx", value_name = "TOKENS", conflicts_with = "config")]
    contexts: Vec<u32>,
    /// The llama.cpp member whose --model it follows hands back only its K most probable
    /// tokens, chosen inside llama.cpp's graph on its own device, instead of every logit
    /// (greedy steps its head cannot decide evaluate the full logits again).
    #[arg(long = "device-top-k", value_name = "K", conflicts_with = "config")]
    device_top_k: Vec<u32>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// The flags of remote members (`--model http://HOST:PORT`), each bound to the `--model` it
/// follows; shared by `generate`, `chat`, `serve` and `eval`.
#[derive(Args, Debug)]
pub struct RemoteArgs {
    /// The vocabulary of the remote member (`--model http://HOST:PORT`) it follows: the GGUF
    /// file its llama-server runs (read without weights) or a tokenizer.json.
    #[arg(long = "vocab", value_name = "FILE", conflicts_with = "config")]
    vocabs: Vec<PathBuf>,
    /// How many most probable tokens the remote member it follows asks for each step
    /// (default: 20; at least the --union-top-k).
    #[arg(long = "n-probs", value_name = "K", conflicts_with = "config")]
    n_probs: Vec<u32>,
    /// Seconds the remote member it follows waits for one answer before it retries (twice)
    /// and then fails (default 60).
    #[arg(long = "timeout", value_name = "SECS", conflicts_with = "config")]
    timeouts: Vec<f32>,
    /// The model the OpenAI-compatible member it follows asks its server for (default: the
    /// first the server lists).
    #[arg(long = "remote-model", value_name = "NAME", conflicts_with = "config")]
    remote_models: Vec<String>,
}

impl RemoteArgs {
    /// Sets these flags on the members they follow (`matches` are the subcommand's).
    pub fn bind(&self, config: &mut EnsembleConfig, matches: &clap::ArgMatches) -> Result<()> {
        let models = indices(matches, "models");
        let bind = |flag: &str, id: &str| owners(flag, &indices(matches, id), &models);
        for (m, v) in bind("--vocab", "vocabs")?.into_iter().zip(&self.vocabs) {
            config.members[m].vocab = Some(v.clone());
        }
        for (m, k) in bind("--n-probs", "n_probs")?.into_iter().zip(&self.n_probs) {
            config.members[m].n_probs = Some(*k);
        }
        for (m, t) in bind("--timeout", "timeouts")?
            .into_iter()
            .zip(&self.timeouts)
        {
            config.members[m].timeout = Some(*t);
        }
        for (m, name) in bind("--remote-model", "remote_models")?
            .into_iter()
            .zip(&self.remote_models)
        {
            config.members[m].model = Some(name.clone());
        }
        Ok(())
    }
}

/// Which member each occurrence of a per-member flag belongs to: the last `--model` before it.
/// `positions` are the command-line indices of the `--model` flags, in order.
fn owners(flag: &str, at: &[usize], positions: &[usize]) -> Result<Vec<usize>> {
    let mut owners: Vec<usize> = Vec::with_capacity(at.len());
    for &i in at {
        let Some(member) = positions.iter().rposition(|&m| m < i) else {
            bail!("invalid {flag}: it comes before the first --model (per-member flags follow the model they apply to)");
        };
        if owners.contains(&member) {
            bail!("invalid {flag}: given twice for member {member}");
        }
        owners.push(member);
    }
    Ok(owners)
}

/// The command-line positions of a flag's values (empty when it is not given).
fn indices(matches: &clap::ArgMatches, id: &str) -> Vec<usize> {
    matches
        .indices_of(id)
        .map_or_else(Vec::new, Iterator::collect)
}

impl EnsembleArgs {
    /// All validation of the ensemble flags happens here, before any model is loaded.
    /// `matches` are the subcommand's, for the positions of per-member flags.
    pub fn plan(&self, matches: &clap::ArgMatches) -> Result<Plan> {
        let mut config = self.members.config()?;
        let models = indices(matches, "models");
        let bind = |flag: &str, id: &str| owners(flag, &indices(matches, id), &models);
        for (m, w) in bind("--weight", "weights")?.into_iter().zip(&self.weights) {
            config.members[m].weight = *w;
        }
        for (m, g) in bind("--gpu", "gpus")?.into_iter().zip(&self.gpus) {
            config.members[m].gpu = Some(*g);
        }
        for (m, l) in bind("--gpu-layers", "gpu_layers")?
            .into_iter()
            .zip(&self.gpu_layers)
        {
            config.members[m].gpu_layers = Some(*l);
        }
        for (m, t) in bind("--threads", "threads")?.into_iter().zip(&self.threads) {
            config.members[m].threads = Some(*t);
        }
        for (m, c) in bind("--ctx", "contexts")?.into_iter().zip(&self.contexts) {
            config.members[m].context = Some(*c);
        }
        for (m, k) in bind("--device-top-k", "device_top_k")?
            .into_iter()
            .zip(&self.device_top_k)
        {
            config.members[m].device_top_k = Some(*k);
        }
        self.remote.bind(&mut config, matches)?;
        // The cores are divided among the members that run here.
        let n = config
            .members
            .iter()
            .filter(|m| !m.runtime.is_remote())
            .count();
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as i32;
        for m in &mut config.members {
            if m.runtime == RuntimeKind::LlamaCpp && m.threads.is_none() {
                m.threads = Some((cores / n.max(1) as i32).max(1));
            }
        }
        if self.weighting.is_some() {
            config.weighting = self.weighting.clone();
        }
        if self.union_top_k.is_some() {
            config.union_top_k = self.union_top_k;
        }
        // A structure on the command line replaces the file's.
        if self.json_schema.is_some() || self.json_object || self.grammar.is_some() {
            config.json_schema = self.json_schema.clone();
            config.json_object = self.json_object.then_some(true);
            config.grammar = self.grammar.clone();
        }
        // A mode on the command line replaces the file's, gated or not.
        if let Some(mode) = &self.mode {
            config.mode = Some(mode.clone());
            config.gate = None;
        }
        if let Some(member) = self.gate {
            config.mode = None;
            config.gate = Some(GateConfig {
                member,
                threshold: self.threshold,
                when_unsure: self.when_unsure.clone(),
                schedule: self.schedule.clone(),
            });
        }
        Ok(config.plan()?)
    }
}

/// How tokens are picked from the combined distribution.
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 picks the most probable token (greedy). Default: 0 for
    /// `generate`, 0.8 for `chat`.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// With sampling: keep only the K most probable union tokens (0 = all).
    #[arg(long, value_name = "K", default_value_t = DEFAULT_TOP_K)]
    top_k: usize,
    /// With sampling: keep the most probable tokens up to this total probability.
    #[arg(long, value_name = "P", default_value_t = DEFAULT_TOP_P)]
    top_p: f32,
    /// Seed of the sampler (the same seed gives the same output).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    /// The sampling, with this temperature when none is given (checked).
    pub fn sampling(&self, default_temperature: f32) -> Result<Sampling> {
        let temperature = self.temperature.unwrap_or(default_temperature);
        Ok(Sampling::at(
            temperature,
            self.top_k,
            self.top_p,
            self.seed,
        )?)
    }
}

#[derive(Args, Debug)]
pub(crate) struct MemberArgs {
    /// A GGUF model file; repeat for each member (order matters: member 0, 1, ...). Prefix it
    /// with `mistralrs:` to run it in mistral.rs instead of llama.cpp (`llamacpp:` is the
    /// default). `http://HOST:PORT` is a model served by a llama-server, and
    /// `openai+http://HOST:PORT/v1` one served by any OpenAI-compatible server (llama-server's
    /// /v1, vLLM, SGLang; its API key from GAC_REMOTE_API_KEY): give its --vocab.
    #[arg(
        long = "model",
        value_name = "[RUNTIME:]PATH",
        conflicts_with = "config"
    )]
    models: Vec<PathBuf>,
    /// A TOML file listing members (path, weight, gpu, gpu_layers, threads, context,
    /// device_top_k; runtime = "http" or "openai" with url, vocab, n_probs, timeout, and for
    /// "openai" model, api_key_env, context), the mode,
    /// weighting, union_top_k and an optional [gate]; see the README.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl MemberArgs {
    /// The members as a configuration: from the TOML file, or from the --model flags.
    pub(crate) fn config(&self) -> Result<EnsembleConfig> {
        match &self.config {
            Some(path) => Ok(EnsembleConfig::from_file(path)?),
            None => Ok(EnsembleConfig {
                members: self
                    .models
                    .iter()
                    .map(|m| member_flag(m))
                    .collect::<Result<_>>()?,
                ..EnsembleConfig::default()
            }),
        }
    }
}

/// `--model [RUNTIME:]PATH` or `--model http://HOST:PORT`.
pub(crate) fn member_flag(flag: &Path) -> Result<MemberConfig> {
    let text = flag.to_string_lossy();
    let remote = ["http://", "https://", "openai+http://", "openai+https://"];
    if remote.iter().any(|r| text.starts_with(r)) {
        return Ok(MemberConfig::remote(text));
    }
    if let Some((runtime, path)) = text.split_once(':') {
        if let Ok(runtime) = runtime.parse::<RuntimeKind>() {
            return Ok(MemberConfig {
                runtime,
                ..MemberConfig::new(path)
            });
        }
    }
    Ok(MemberConfig::new(flag))
}
