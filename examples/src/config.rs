//! The `gac` tool's ensemble configuration, as written in a TOML file (and built from the
//! command line), with the checks of every value before a model is loaded; the weights and the
//! mode are checked by gac-core's one validation.
//!
//! ```toml
//! name = "my-ensemble"      # optional: the model name `gac serve` reports
//! weighting = "fixed"       # optional: or "confidence" (weights times each step's top probability)
//! mode = "average"          # optional: or "selective" (ensemble only where the members disagree);
//!                           # a [gate] table makes it gated
//! union_top_k = 10          # optional: combine only each member's 10 most probable tokens
//!
//! [[member]]
//! path = "models/a.gguf"
//! weight = 1.0      # optional, default 1
//! gpu = 0           # optional: pin to this GPU (all layers offloaded unless gpu_layers says)
//! gpu_layers = 99   # optional
//! threads = 1       # optional CPU threads (llama.cpp members only)
//! context = 4096    # optional context window in tokens
//! device_top_k = 64 # optional: hand back only the 64 most probable tokens (llama.cpp only)
//! runtime = "llamacpp"      # optional: or "mistralrs"
//!
//! [[member]]
//! path = "models/b.gguf"
//!
//! [[member]]                # a model that runs in a llama-server
//! runtime = "http"
//! url = "http://gpu-box:8080"
//! vocab = "models/c.gguf"   # the GGUF file the server runs (read without weights), or a tokenizer.json
//! n_probs = 20              # optional: most probable tokens asked for each step (default 20, at most 1000, more for a larger top-k union)
//! timeout = 60              # optional: seconds to wait for one answer (default 60)
//!
//! [gate]            # optional: gated mode
//! member = 0
//! threshold = 0.5
//! when_unsure = "average"   # or "member:1"
//! schedule = "lazy"         # or "eager" (default: eager when each member has its own GPU)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use gac_core::ensemble::{validate, validate_union_top_k};
use gac_core::{
    Error, GenerateOptions, Grammar, Mode, Result, Sampling, Schedule, Weighting, WhenUnsure,
};

/// The longest wait for one answer of a remote member a configuration may set: a day.
pub const MAX_TIMEOUT_SECS: f32 = 86_400.0;

/// A whole ensemble: its members and, optionally, a gate.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// The ensemble's name as a served model (default: `gac`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The members, in order (`[[member]]` tables).
    #[serde(rename = "member", default)]
    pub members: Vec<MemberConfig>,
    /// Gated mode, if present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateConfig>,
    /// `fixed` (default) or `confidence`: each member's weight times its top probability at
    /// each step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weighting: Option<String>,
    /// `average` (default) or `selective`; a `[gate]` table makes the mode gated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Combine only each member's K most probable tokens (the top-k union).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub union_top_k: Option<usize>,
    /// The output must be valid against the JSON schema in this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<PathBuf>,
    /// The output must be a JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_object: Option<bool>,
    /// The output must match the Lark grammar in this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grammar: Option<PathBuf>,
}

/// Which inference runtime hosts a member.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// llama.cpp through llama-cpp-2 (the default).
    #[default]
    LlamaCpp,
    /// mistral.rs through mistralrs-core.
    MistralRs,
    /// A llama-server reached over HTTP (`url`), through its own `/completion`.
    Http,
    /// Any OpenAI-compatible server (`url`, its `/v1` base), through `/v1/completions`:
    /// llama-server, vLLM, SGLang, mistralrs-server.
    OpenAi,
}

impl std::str::FromStr for RuntimeKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "llamacpp" => Ok(RuntimeKind::LlamaCpp),
            "mistralrs" => Ok(RuntimeKind::MistralRs),
            "http" => Ok(RuntimeKind::Http),
            "openai" => Ok(RuntimeKind::OpenAi),
            _ => Err(Error::config(
                "runtime",
                format!("'{s}' is not 'llamacpp', 'mistralrs', 'http' or 'openai'"),
            )),
        }
    }
}

impl RuntimeKind {
    /// The runtime's name in messages.
    pub fn label(self) -> &'static str {
        match self {
            RuntimeKind::LlamaCpp => "llama.cpp",
            RuntimeKind::MistralRs => "mistral.rs",
            RuntimeKind::Http => "llama-server",
            RuntimeKind::OpenAi => "OpenAI-compatible server",
        }
    }

    /// Whether the model runs in a server elsewhere: the kinds that take a `url` and a
    /// `vocab`, and leave placement to their server.
    pub fn is_remote(self) -> bool {
        match self {
            RuntimeKind::LlamaCpp | RuntimeKind::MistralRs => false,
            RuntimeKind::Http | RuntimeKind::OpenAi => true,
        }
    }
}

/// An ensemble configuration checked once ([`EnsembleConfig::plan`]), with its settings typed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What it was made from: the members and the name.
    pub config: EnsembleConfig,
    /// How the members are combined.
    pub combination: Combination,
}

/// How an ensemble's members are combined: the typed settings a plan checked, which a
/// `gac serve` request may override.
#[derive(Debug, Clone, PartialEq)]
pub struct Combination {
    /// The members' weights, in order.
    pub weights: Vec<f32>,
    /// Average, selective, or gated (gate, threshold, what to do when unsure).
    pub mode: Mode,
    /// When a gated ensemble evaluates the other members.
    pub schedule: Schedule,
    /// Fixed weights, or weights times each step's confidence.
    pub weighting: Weighting,
    /// Combine only each member's K most probable tokens.
    pub union_top_k: Option<usize>,
    /// What the output must match (structured outputs).
    pub grammar: Option<Grammar>,
}

impl Combination {
    /// Checks it for an ensemble of `members`: gac-core's checks of weights, mode and K.
    pub fn validate(&self, members: usize) -> Result<()> {
        validate(&self.weights, &self.mode, members)?;
        validate_union_top_k(self.union_top_k)
    }

    /// The options of one generation with this combination.
    pub fn options(&self, max_tokens: usize, sampling: Sampling) -> GenerateOptions {
        GenerateOptions {
            max_tokens,
            sampling,
            union_top_k: self.union_top_k,
            schedule: self.schedule,
            weighting: self.weighting,
            grammar: self.grammar.clone(),
            ..GenerateOptions::default()
        }
    }
}

/// One member: where its model is and where it runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Path to the model file (none for a remote member).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub path: PathBuf,
    /// The runtime that hosts it: `llamacpp` (default), `mistralrs`, `http` (a llama-server)
    /// or `openai` (any OpenAI-compatible server).
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// A remote member's server: `http://HOST:PORT` of a llama-server, the `/v1` base of an
    /// OpenAI-compatible one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The model an OpenAI-compatible server is asked for (default: the first it lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The environment variable an OpenAI-compatible member's API key is read from (default
    /// `GAC_REMOTE_API_KEY`; none set, none sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// A remote member's vocabulary: the GGUF file its server runs (read without weights) or a
    /// `tokenizer.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab: Option<PathBuf>,
    /// How many most probable tokens a remote member asks for each step (default 20; more when
    /// the generation's top-k union takes more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_probs: Option<u32>,
    /// Seconds a remote member waits for one answer (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f32>,
    /// Weight in the average (>= 0).
    #[serde(default = "one")]
    pub weight: f32,
    /// GPU index to pin the member to; none = CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<i32>,
    /// Layers to offload to the GPU (default: all when `gpu` is set, none otherwise;
    /// llama.cpp only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_layers: Option<u32>,
    /// CPU threads for this member (llama.cpp only: mistral.rs uses one pool per process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Context window in tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<u32>,
    /// Hand back only this many most probable tokens, chosen inside llama.cpp's graph on the
    /// member's own device, instead of every logit (llama.cpp only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_top_k: Option<u32>,
}

fn one() -> f32 {
    1.0
}

fn is_empty(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

/// The gate of paper Eq. 5.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Index of the gate member.
    pub member: usize,
    /// Confidence threshold in [0, 1] (default 0.5).
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// `average` (default) or `member:K`.
    #[serde(default = "average")]
    pub when_unsure: String,
    /// `lazy` or `eager` (default: eager when every member has a GPU of its own, else lazy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

fn average() -> String {
    "average".to_string()
}

fn default_threshold() -> f32 {
    gac_core::select::DEFAULT_THRESHOLD
}

impl MemberConfig {
    /// A member at this path with default settings.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            runtime: RuntimeKind::LlamaCpp,
            weight: 1.0,
            gpu: None,
            gpu_layers: None,
            threads: None,
            context: None,
            device_top_k: None,
            url: None,
            model: None,
            api_key_env: None,
            vocab: None,
            n_probs: None,
            timeout: None,
        }
    }

    /// A member served at `url`: by a llama-server (`http://HOST:PORT`), or by an
    /// OpenAI-compatible server (`openai+http://HOST:PORT/v1`).
    pub fn remote(url: impl Into<String>) -> Self {
        let url: String = url.into();
        let (runtime, url) = match url.strip_prefix("openai+") {
            Some(base) => (RuntimeKind::OpenAi, base.to_string()),
            None => (RuntimeKind::Http, url),
        };
        Self {
            runtime,
            url: Some(url),
            ..Self::new("")
        }
    }

    /// The file that names the member: its model, or a remote member's vocabulary.
    pub fn file(&self) -> &Path {
        self.vocab.as_deref().unwrap_or(&self.path)
    }

    /// Where the member is, for messages: its model file, or its server's address.
    pub fn place(&self) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => self.path.display().to_string(),
        }
    }

    /// The device the member has to itself, if any: its server's address, or `GPU N`.
    pub fn device(&self) -> Option<String> {
        self.url.clone().or(self.gpu.map(|g| format!("GPU {g}")))
    }

    /// Checks the fields that only some runtimes take.
    fn validate_runtime(&self, i: usize) -> Result<()> {
        let field = |name: &str| format!("member[{i}].{name}");
        let remote_only = [
            ("url", self.url.is_some()),
            ("vocab", self.vocab.is_some()),
            ("n_probs", self.n_probs.is_some()),
            ("timeout", self.timeout.is_some()),
            ("model", self.model.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
        ];
        if !self.runtime.is_remote() {
            if self.path.as_os_str().is_empty() {
                return Err(Error::config(field("path"), "missing (the model file)"));
            }
            if let Some((name, _)) = remote_only.iter().find(|(_, given)| *given) {
                return Err(Error::config(
                    field(name),
                    "only a remote member (runtime = \"http\" or \"openai\") takes it",
                ));
            }
            return Ok(());
        }
        let local_only = [
            (
                "path",
                !self.path.as_os_str().is_empty(),
                "its model runs in the server; give the model's GGUF as `vocab`",
            ),
            (
                "gpu",
                self.gpu.is_some(),
                "the server places its model (its own -ngl / --device)",
            ),
            (
                "gpu_layers",
                self.gpu_layers.is_some(),
                "the server places its model (its own -ngl)",
            ),
            (
                "threads",
                self.threads.is_some(),
                "the server's own --threads sets them",
            ),
            (
                "context",
                self.context.is_some() && self.runtime == RuntimeKind::Http,
                "the server's own --ctx-size sets it",
            ),
            (
                "model",
                self.model.is_some() && self.runtime == RuntimeKind::Http,
                "a llama-server serves one model (runtime = \"openai\" asks for one by name)",
            ),
            (
                "api_key_env",
                self.api_key_env.is_some() && self.runtime == RuntimeKind::Http,
                "llama-server's own /completion is asked without a key (use runtime = \"openai\")",
            ),
            (
                "device_top_k",
                self.device_top_k.is_some(),
                "a remote member hands back its top `n_probs` tokens",
            ),
        ];
        if let Some((name, _, why)) = local_only.iter().find(|(_, given, _)| *given) {
            return Err(Error::config(
                field(name),
                format!("not for a remote member: {why}"),
            ));
        }
        let openai = self.runtime == RuntimeKind::OpenAi;
        for (name, value) in [("model", &self.model), ("api_key_env", &self.api_key_env)] {
            if value.as_deref() == Some("") {
                return Err(Error::config(field(name), "empty"));
            }
        }
        let scheme = ["http://", "https://"]
            .iter()
            .find(|s| self.url.as_ref().is_some_and(|u| u.starts_with(*s)));
        match (&self.url, scheme) {
            (None, _) => {
                return Err(Error::config(
                    field("url"),
                    match openai {
                        true => "missing (http://HOST:PORT/v1 of the OpenAI-compatible server)",
                        false => "missing (http://HOST:PORT of the llama-server)",
                    },
                ))
            }
            (Some(url), Some(s)) if url.len() > s.len() && (openai || *s == "http://") => {}
            (Some(url), _) => {
                return Err(Error::config(
                    field("url"),
                    match openai {
                        true => format!("'{url}' is not http://HOST:PORT/v1 (or https://)"),
                        false => format!("'{url}' is not http://HOST:PORT"),
                    },
                ))
            }
        }
        if self.vocab.is_none() {
            return Err(Error::config(
                field("vocab"),
                "missing (the GGUF file the server runs, or its tokenizer.json)",
            ));
        }
        match self.n_probs {
            Some(0) => {
                return Err(Error::config(
                    field("n_probs"),
                    "0 tokens would leave nothing to choose from",
                ))
            }
            Some(k) if k as usize > gac_core::ensemble::MAX_UNION_TOP_K => {
                return Err(Error::config(
                    field("n_probs"),
                    format!(
                        "{k} is above {} (the most tokens a step may ask for, as for the top-k union)",
                        gac_core::ensemble::MAX_UNION_TOP_K
                    ),
                ))
            }
            _ => {}
        }
        if let Some(t) = self.timeout {
            if !(t > 0.0 && t <= MAX_TIMEOUT_SECS) {
                return Err(Error::config(
                    field("timeout"),
                    format!("{t} is not a number of seconds in (0, {MAX_TIMEOUT_SECS}]"),
                ));
            }
        }
        Ok(())
    }
}

impl EnsembleConfig {
    /// Reads and validates a TOML file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let field = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(&field, format!("cannot read it: {e}")))?;
        let config: Self =
            toml::from_str(&text).map_err(|e| Error::config(&field, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut config = config;
        for m in &mut config.members {
            if m.path.is_relative() && !m.path.as_os_str().is_empty() {
                m.path = base.join(&m.path);
            }
            if let Some(vocab) = m.vocab.as_mut().filter(|v| v.is_relative()) {
                *vocab = base.join(&*vocab);
            }
        }
        for file in [&mut config.json_schema, &mut config.grammar] {
            if let Some(f) = file.as_mut().filter(|f| f.is_relative()) {
                *f = base.join(&*f);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// This configuration as a TOML file that [`EnsembleConfig::from_file`] reads back the
    /// same (relative paths are then read from the file's folder).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::config("configuration", e.to_string()))
    }

    /// Checks every value once and types the settings: what every subcommand runs.
    pub fn plan(self) -> Result<Plan> {
        self.validate_members()?;
        Ok(Plan {
            combination: self.combination()?,
            config: self,
        })
    }

    /// The combination this configuration describes, checked.
    fn combination(&self) -> Result<Combination> {
        let combination = Combination {
            weights: self.weights(),
            mode: self.mode()?,
            schedule: self.schedule()?,
            weighting: self.weighting()?,
            union_top_k: self.union_top_k,
            grammar: self.grammar()?,
        };
        combination.validate(self.members.len())?;
        Ok(combination)
    }

    /// The grammar the output must match, read from its file: at most one of `json_schema`,
    /// `json_object` and `grammar`.
    fn grammar(&self) -> Result<Option<Grammar>> {
        let json_object = self.json_object == Some(true);
        let given = [
            self.json_schema.is_some(),
            json_object,
            self.grammar.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(Error::config(
                "json_schema",
                "give one of json_schema, json_object and grammar",
            ));
        }
        let read = |key: &str, path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| Error::config(key, format!("cannot read {}: {e}", path.display())))
        };
        if let Some(path) = &self.json_schema {
            let schema = serde_json::from_str(&read("json_schema", path)?).map_err(|e| {
                Error::config(
                    "json_schema",
                    format!("{} is not JSON: {e}", path.display()),
                )
            })?;
            return Ok(Some(Grammar::JsonSchema(schema)));
        }
        if let Some(path) = &self.grammar {
            return Ok(Some(Grammar::Lark(read("grammar", path)?)));
        }
        Ok(json_object.then_some(Grammar::JsonObject))
    }

    /// Checks every value before any model is loaded.
    pub fn validate(&self) -> Result<()> {
        self.validate_members()?;
        self.combination().map(|_| ())
    }

    /// Checks the members' values.
    fn validate_members(&self) -> Result<()> {
        if self.members.is_empty() {
            return Err(Error::NoMembers);
        }
        for (i, m) in self.members.iter().enumerate() {
            m.validate_runtime(i)?;
            if let Some(t) = m.threads {
                if t < 1 {
                    return Err(Error::config(
                        format!("member[{i}].threads"),
                        format!("{t} is not >= 1"),
                    ));
                }
            }
            if let Some(g) = m.gpu {
                if g < 0 {
                    return Err(Error::config(
                        format!("member[{i}].gpu"),
                        format!("{g} is not >= 0"),
                    ));
                }
            }
            if m.context == Some(0) {
                return Err(Error::config(
                    format!("member[{i}].context"),
                    "0 holds no token",
                ));
            }
            if m.device_top_k == Some(0) {
                return Err(Error::config(
                    format!("member[{i}].device_top_k"),
                    "0 tokens would leave nothing to choose from",
                ));
            }
            if m.runtime == RuntimeKind::MistralRs {
                if m.threads.is_some() {
                    return Err(Error::config(
                        format!("member[{i}].threads"),
                        "mistral.rs members share the process's one CPU thread pool; \
                         set RAYON_NUM_THREADS instead",
                    ));
                }
                if m.gpu_layers.is_some() {
                    return Err(Error::config(
                        format!("member[{i}].gpu_layers"),
                        "a mistral.rs member runs wholly on its device (`gpu`, or the CPU); \
                         partial offloading is llama.cpp's",
                    ));
                }
                if m.device_top_k.is_some() {
                    return Err(Error::config(
                        format!("member[{i}].device_top_k"),
                        "the device-side top-k is llama.cpp's backend sampling; \
                         a mistral.rs member hands back every logit",
                    ));
                }
            }
        }
        Ok(())
    }

    /// How the weights are set at each step: `weighting`, fixed by default.
    fn weighting(&self) -> Result<Weighting> {
        match self.weighting.as_deref() {
            None | Some("fixed") => Ok(Weighting::Fixed),
            Some("confidence") => Ok(Weighting::Confidence),
            Some(other) => Err(Error::config(
                "weighting",
                format!("'{other}' is neither 'fixed' nor 'confidence'"),
            )),
        }
    }

    /// When gated mode evaluates the non-gate members: the `[gate]`'s `schedule`, or by default
    /// eager when every member has a device of its own (pinned to a GPU of its own, or served
    /// by a llama-server of its own: they decode in parallel), lazy otherwise (members that
    /// share a device would only slow the gate down).
    fn schedule(&self) -> Result<Schedule> {
        match self.gate.as_ref().and_then(|g| g.schedule.as_deref()) {
            Some("lazy") => Ok(Schedule::Lazy),
            Some("eager") => Ok(Schedule::Eager),
            Some(other) => Err(Error::config(
                "schedule",
                format!("'{other}' is neither 'lazy' nor 'eager'"),
            )),
            None => {
                let mut devices: Vec<String> = self
                    .members
                    .iter()
                    .filter_map(MemberConfig::device)
                    .collect();
                devices.sort_unstable();
                devices.dedup();
                Ok(match devices.len() == self.members.len() {
                    true => Schedule::Eager,
                    false => Schedule::Lazy,
                })
            }
        }
    }

    /// The member weights, in order.
    fn weights(&self) -> Vec<f32> {
        self.members.iter().map(|m| m.weight).collect()
    }

    /// The combination mode this configuration describes (its ranges are checked by
    /// [`EnsembleConfig::validate`]).
    fn mode(&self) -> Result<Mode> {
        match (&self.gate, self.mode.as_deref()) {
            (Some(gate), None) => Ok(Mode::Gated {
                gate: gate.member,
                threshold: gate.threshold,
                when_unsure: WhenUnsure::parse(&gate.when_unsure)?,
            }),
            (Some(_), Some(mode)) => Err(Error::config(
                "mode",
                format!("'{mode}' and a [gate] table: a [gate] makes the mode gated; keep one"),
            )),
            (None, None) => Ok(Mode::Average),
            (None, Some(mode)) => Mode::named(mode),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EnsembleConfig> {
        let c: EnsembleConfig =
            toml::from_str(s).map_err(|e| Error::config("toml", e.to_string()))?;
        c.validate().map(|_| c)
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"
            [[member]]
            path = "a.gguf"
            gpu = 0
            threads = 2
            [[member]]
            path = "b.gguf"
            runtime = "mistralrs"
            weight = 0.5
            [gate]
            member = 1
            threshold = 0.4
            when_unsure = "member:0"
            "#,
        )
        .unwrap();
        assert_eq!(c.weights(), [1.0, 0.5]);
        assert_eq!(c.schedule().unwrap(), Schedule::Lazy, "member 1 has no GPU");
        let mut c2 = c.clone();
        c2.members[1].gpu = Some(1);
        assert_eq!(c2.schedule().unwrap(), Schedule::Eager, "a GPU each");
        c2.members[1].gpu = Some(0);
        assert_eq!(c2.schedule().unwrap(), Schedule::Lazy, "one shared GPU");
        c2.gate.as_mut().unwrap().schedule = Some("eager".into());
        assert_eq!(c2.schedule().unwrap(), Schedule::Eager);
        assert_eq!(c.members[0].runtime, RuntimeKind::LlamaCpp);
        assert_eq!(c.members[1].runtime, RuntimeKind::MistralRs);
        assert_eq!(
            c.mode().unwrap(),
            Mode::Gated {
                gate: 1,
                threshold: 0.4,
                when_unsure: WhenUnsure::Defer(0)
            }
        );
    }

    #[test]
    fn mode_and_top_k_union_make_the_plans_combination() {
        let plan = |toml: &str| parse(toml).unwrap().plan().unwrap().combination;
        let two = "[[member]]\npath='a'\n[[member]]\npath='b'\n";
        let c = plan(&format!("mode='selective'\nunion_top_k=10\n{two}"));
        assert_eq!((c.mode, c.union_top_k), (Mode::Selective, Some(10)));
        let options = c.options(7, Sampling::Greedy);
        assert_eq!((options.max_tokens, options.union_top_k), (7, Some(10)));
        assert_eq!(plan(two).mode, Mode::Average);
        let gated = plan(&format!("{two}[gate]\nmember=1\nthreshold=0.2"));
        assert!(matches!(gated.mode, Mode::Gated { gate: 1, .. }));
        // Written and read back, the same.
        let config = parse(&format!("mode='selective'\nunion_top_k=10\n{two}")).unwrap();
        assert_eq!(parse(&config.to_toml().unwrap()).unwrap(), config);
    }

    #[test]
    fn remote_members_parse() {
        let mut c = parse(
            r#"
            [[member]]
            runtime = "http"
            url = "http://a:8080"
            vocab = "a.gguf"
            [[member]]
            runtime = "http"
            url = "http://b:8080"
            vocab = "b.json"
            n_probs = 5
            timeout = 2.5
            [gate]
            member = 0
            threshold = 0.5
            "#,
        )
        .unwrap();
        assert_eq!(c.members[0].runtime, RuntimeKind::Http);
        assert_eq!(c.members[0].file(), Path::new("a.gguf"));
        assert_eq!(c.members[1].place(), "http://b:8080");
        assert_eq!(c.schedule().unwrap(), Schedule::Eager, "a server each");
        assert_eq!(c.members[0].n_probs, None);
        assert_eq!(c.members[1].n_probs, Some(5));
        c.members[1].url = Some("http://a:8080".into());
        assert_eq!(c.schedule().unwrap(), Schedule::Lazy, "one shared server");

        // An OpenAI-compatible member: a model by name, a key's variable, a context window.
        let c = parse(
            r#"
            [[member]]
            runtime = "openai"
            url = "https://api.example/v1"
            vocab = "big.json"
            model = "big"
            api_key_env = "MY_KEY"
            context = 8192
            "#,
        )
        .unwrap();
        let m = &c.members[0];
        assert_eq!(
            (m.runtime, m.model.as_deref()),
            (RuntimeKind::OpenAi, Some("big"))
        );
        assert!(m.runtime.is_remote() && !RuntimeKind::LlamaCpp.is_remote());
        assert_eq!(parse(&c.to_toml().unwrap()).unwrap(), c);
        let flag = MemberConfig::remote("openai+http://h:8000/v1");
        assert_eq!(
            (flag.runtime, flag.place()),
            (RuntimeKind::OpenAi, "http://h:8000/v1".into())
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("", "at least one member"),
            ("[[member]]\npath='a'\nweight=-1", "member[0].weight"),
            (
                "[[member]]\npath='a'\n[gate]\nmember=3\nthreshold=0.5",
                "gate",
            ),
            (
                "[[member]]\npath='a'\n[gate]\nmember=0\nthreshold=1.5",
                "threshold",
            ),
            (
                "[[member]]\npath='a'\n[gate]\nmember=0\nthreshold=0.5\nwhen_unsure='x'",
                "when_unsure",
            ),
            (
                "[[member]]\npath='a'\n[gate]\nmember=0\nthreshold=0.5\nschedule='soon'",
                "schedule: 'soon'",
            ),
            (
                "weighting='loud'\n[[member]]\npath='a'",
                "weighting: 'loud' is neither",
            ),
            ("[[member]]\npath='a'\nweigth=1", "weigth"),
            (
                "mode='loud'\n[[member]]\npath='a'",
                "mode: 'loud' is neither",
            ),
            (
                "mode='selective'\n[[member]]\npath='a'\n[gate]\nmember=0\nthreshold=0.5",
                "mode: 'selective' and a [gate] table",
            ),
            (
                "mode='gated'\n[[member]]\npath='a'",
                "mode: 'gated' is neither",
            ),
            (
                "union_top_k=0\n[[member]]\npath='a'",
                "union_top_k: 0 keeps no token",
            ),
            ("[[member]]\npath='a'\nruntime='vllm'", "vllm"),
            ("[[member]]\npath='a'\ncontext=0", "member[0].context"),
            (
                "[[member]]\npath='a'\nruntime='mistralrs'\nthreads=2",
                "member[0].threads: mistral.rs members share",
            ),
            (
                "[[member]]\npath='a'\nruntime='mistralrs'\ngpu_layers=8",
                "member[0].gpu_layers: a mistral.rs member runs wholly",
            ),
            (
                "[[member]]\npath='a'\ndevice_top_k=0",
                "member[0].device_top_k",
            ),
            (
                "[[member]]\npath='a'\nruntime='mistralrs'\ndevice_top_k=8",
                "member[0].device_top_k: the device-side top-k is llama.cpp's",
            ),
            ("[[member]]\nweight=1", "member[0].path: missing"),
            (
                "[[member]]\npath='a'\nurl='http://h:1'",
                "member[0].url: only a remote member",
            ),
            (
                "[[member]]\nruntime='http'\nvocab='v.gguf'",
                "member[0].url: missing",
            ),
            (
                "[[member]]\nruntime='http'\nurl='h:1'\nvocab='v.gguf'",
                "member[0].url: 'h:1' is not http://HOST:PORT",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'",
                "member[0].vocab: missing",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'\nvocab='v'\ngpu=0",
                "member[0].gpu: not for a remote member",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'\nvocab='v'\npath='a.gguf'",
                "member[0].path: not for a remote member",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'\nvocab='v'\nn_probs=0",
                "member[0].n_probs",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'\nvocab='v'\nn_probs=1001",
                "member[0].n_probs: 1001 is above 1000",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'\nvocab='v'\nmodel='m'",
                "member[0].model: not for a remote member: a llama-server serves one model",
            ),
            (
                "[[member]]\nruntime='openai'\nurl='h:1/v1'\nvocab='v'",
                "member[0].url: 'h:1/v1' is not http://HOST:PORT/v1",
            ),
            (
                "[[member]]\npath='a'\napi_key_env='K'",
                "member[0].api_key_env: only a remote member",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'\nvocab='v'\ntimeout=-1",
                "member[0].timeout: -1 is not a number of seconds in (0, 86400]",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'\nvocab='v'\ntimeout=1e30",
                "is not a number of seconds in (0, 86400]",
            ),
            (
                "[[member]]\nruntime='http'\nurl='http://h:1'\nvocab='v'\ntimeout=nan",
                "member[0].timeout: NaN is not a number of seconds in (0, 86400]",
            ),
        ];
        for (toml, needle) in cases {
            let err = parse(toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml:?}: {err}");
        }
    }

    #[test]
    fn a_configuration_written_as_toml_reads_back_the_same() {
        let dir = std::env::temp_dir().join(format!("gac-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = EnsembleConfig {
            name: Some("tuned".into()),
            members: vec![
                MemberConfig {
                    weight: 0.75,
                    threads: Some(1),
                    ..MemberConfig::new(dir.join("a.gguf"))
                },
                MemberConfig {
                    vocab: Some(dir.join("b.gguf")),
                    n_probs: Some(30),
                    ..MemberConfig::remote("http://127.0.0.1:8080")
                },
            ],
            gate: Some(GateConfig {
                member: 1,
                threshold: 0.3,
                when_unsure: "member:0".into(),
                schedule: None,
            }),
            weighting: Some("confidence".into()),
            union_top_k: Some(10),
            ..EnsembleConfig::default()
        };
        let path = dir.join("tuned.toml");
        std::fs::write(&path, config.to_toml().unwrap()).unwrap();
        assert_eq!(EnsembleConfig::from_file(&path).unwrap(), config);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
