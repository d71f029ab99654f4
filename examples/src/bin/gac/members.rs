//! Builds members from their configuration: the one place every subcommand (generate, chat,
//! serve, eval, vocab, bench) gets its members from.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gac_core::served::ServedText;
use gac_core::{Encoder, Member};
use gac_examples::config::{MemberConfig, RuntimeKind};
use gac_llamacpp::{
    Batching, LlamaMember, LlamaOptions, OpenAiMember, OpenAiOptions, RemoteMember, RemoteOptions,
    SharedContext, API_KEY_ENV,
};
use gac_mistralrs::{MistralMember, MistralOptions};

use crate::progress;

/// How the members of an ensemble are loaded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loading {
    /// No loading lines.
    pub quiet: bool,
    /// Let llama.cpp members (and llama-servers) reuse the previous context's cache.
    pub prompt_cache: bool,
    /// Sets of members made (a server's slots).
    pub slots: usize,
    /// How the slots of one llama.cpp model share its context.
    pub batching: Batching,
}

impl Loading {
    /// One set of members.
    pub(crate) fn single(quiet: bool, prompt_cache: bool) -> Self {
        Self {
            quiet,
            prompt_cache,
            slots: 1,
            batching: Batching::Shared,
        }
    }
}

/// A llama.cpp member's options from its configuration.
pub(crate) fn llama_options(m: &MemberConfig, prompt_cache: bool) -> LlamaOptions {
    LlamaOptions {
        threads: m.threads,
        gpu: m.gpu,
        gpu_layers: m.gpu_layers,
        context: m.context,
        prompt_cache,
        device_top_k: m.device_top_k,
    }
}

/// A llama.cpp member with a context of its own.
pub(crate) fn llama(m: &MemberConfig, prompt_cache: bool) -> Result<LlamaMember> {
    Ok(LlamaMember::load(&m.path, &llama_options(m, prompt_cache))?)
}

/// A mistral.rs member's options from its configuration.
fn mistralrs_options(m: &MemberConfig) -> MistralOptions {
    MistralOptions {
        gpu: m.gpu.map(|g| g as usize),
        context: m.context.map(|c| c as usize),
        ..MistralOptions::default()
    }
}

/// A mistral.rs member on an engine of its own.
pub(crate) fn mistralrs(m: &MemberConfig) -> Result<MistralMember> {
    Ok(gac_mistralrs::load_gguf(&m.path, &mistralrs_options(m))?)
}

/// A member served by a llama-server, in the server's slot `slot`.
pub(crate) fn remote(m: &MemberConfig, slot: u32, prompt_cache: bool) -> Result<RemoteMember> {
    let asked = Asked::of(m);
    let options = RemoteOptions {
        slot,
        prompt_cache,
        n_probs: asked.n_probs,
        timeout: asked.timeout,
        ..RemoteOptions::new(m.place())
    };
    let vocab = m.file();
    let name = gac_core::gguf::model_name(vocab);
    Ok(RemoteMember::connect(
        name,
        vocab_encoder(vocab)?,
        vocab,
        &options,
    )?)
}

/// A member behind an OpenAI-compatible server's `/v1/completions`; its API key from the
/// member's `api_key_env` variable (which must be set), else `GAC_REMOTE_API_KEY` (none when
/// unset).
pub(crate) fn openai(m: &MemberConfig, prompt_cache: bool) -> Result<OpenAiMember> {
    let asked = Asked::of(m);
    let api_key = match &m.api_key_env {
        Some(name) => match std::env::var(name) {
            Ok(key) if !key.is_empty() => Some(key),
            _ => anyhow::bail!(
                "member {} names api_key_env = \"{name}\", which is not set (or empty)",
                m.place()
            ),
        },
        None => std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()),
    };
    let options = OpenAiOptions {
        model: m.model.clone(),
        api_key,
        prompt_cache,
        context: m.context.map(|c| c as usize),
        n_probs: asked.n_probs,
        timeout: asked.timeout,
        ..OpenAiOptions::new(m.place())
    };
    let vocab = m.file();
    let name = gac_core::gguf::model_name(vocab);
    Ok(OpenAiMember::connect(
        name,
        vocab_encoder(vocab)?,
        vocab,
        &options,
    )?)
}

/// What every remote member asks of its server: tokens a step and the wait for an answer.
struct Asked {
    n_probs: usize,
    timeout: Duration,
}

impl Asked {
    /// The member's, else the defaults (20 tokens, 60 s).
    fn of(m: &MemberConfig) -> Self {
        Self {
            n_probs: m
                .n_probs
                .map_or(gac_llamacpp::DEFAULT_N_PROBS, |k| k as usize),
            timeout: m
                .timeout
                .map_or(gac_llamacpp::DEFAULT_TIMEOUT, Duration::from_secs_f32),
        }
    }
}

/// A vocabulary file as an encoder: a served vocabulary (`gac serve`'s `/v1/vocab`) or a
/// tokenizer.json, else a GGUF file (read without weights).
pub(crate) fn vocab_encoder(path: &Path) -> Result<Box<dyn Encoder>> {
    if path.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // Parsed as JSON here only where it names the served format: a tokenizer.json (often
        // megabytes) is parsed once, by its own reader.
        if text.contains(gac_core::served::FORMAT) {
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            if ServedText::is_served(&value) {
                let name = path.display().to_string();
                return Ok(Box::new(ServedText::from_json(&value, &name)?));
            }
        }
        return Ok(Box::new(
            gac_core::tokenizer_json::TokenizerText::from_file(path)?,
        ));
    }
    Ok(gac_llamacpp::load_encoder(path)?)
}

/// Loads every member once, as one set.
pub(crate) fn load_members(
    members: &[MemberConfig],
    quiet: bool,
    prompt_cache: bool,
) -> Result<Vec<Box<dyn Member>>> {
    Ok(load_slots(members, Loading::single(quiet, prompt_cache))?.remove(0))
}

/// Loads every member once and makes `loading.slots` sets of them: with more than one slot,
/// each llama.cpp model has one context whose sequences are the sets' members (batched as
/// `loading.batching` says), each mistral.rs engine serves every set's requests, and each
/// remote member uses its server's slot of the same number.
pub(crate) fn load_slots(
    members: &[MemberConfig],
    loading: Loading,
) -> Result<Vec<Vec<Box<dyn Member>>>> {
    let slots = loading.slots.max(1);
    let mut sets: Vec<Vec<Box<dyn Member>>> = (0..slots).map(|_| Vec::new()).collect();
    let show = !loading.quiet && !progress::quiet();
    for (i, m) in members.iter().enumerate() {
        let t = Instant::now();
        let what = || format!("member {i} ({}, {})", m.place(), m.runtime.label());
        let spinner = show.then(|| progress::spinner(format!("loading {}", what())));
        load_member(m, &mut sets, loading).with_context(what)?;
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
            let member = &sets[0][i];
            let place = m.device().unwrap_or_else(|| "CPU".to_string());
            eprintln!(
                "gac: loaded member {i} {} ({}, {} tokens, {place}) in {:.1} s",
                member.name(),
                m.runtime.label(),
                member.vocab().len(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(sets)
}

/// Adds member `m` to every set.
fn load_member(
    m: &MemberConfig,
    sets: &mut [Vec<Box<dyn Member>>],
    loading: Loading,
) -> Result<()> {
    if sets.len() == 1 {
        let member: Box<dyn Member> = match m.runtime {
            RuntimeKind::LlamaCpp => Box::new(llama(m, loading.prompt_cache)?),
            RuntimeKind::MistralRs => Box::new(mistralrs(m)?),
            RuntimeKind::Http => Box::new(remote(m, 0, loading.prompt_cache)?),
            RuntimeKind::OpenAi => Box::new(openai(m, loading.prompt_cache)?),
        };
        sets[0].push(member);
        return Ok(());
    }
    match m.runtime {
        RuntimeKind::LlamaCpp => {
            let options = llama_options(m, loading.prompt_cache);
            let model = gac_llamacpp::load_model(&m.path, &options)?;
            let name = gac_core::gguf::model_name(&m.path);
            let shared =
                SharedContext::new(name, model, &m.path, &options, sets.len(), loading.batching)?;
            for (set, member) in sets.iter_mut().zip(shared.members()) {
                set.push(Box::new(member));
            }
        }
        RuntimeKind::MistralRs => {
            let options = mistralrs_options(m);
            let e = gac_mistralrs::build_gguf_engine(&m.path, options.gpu, options.prefix_cache)?;
            let name = gac_core::gguf::model_name(&m.path);
            for set in sets.iter_mut() {
                let member = gac_mistralrs::wrap_engine(
                    &name,
                    e.engine.clone(),
                    None,
                    e.tokenizer.clone(),
                    &e.eos,
                    &options,
                )?;
                set.push(Box::new(member));
            }
        }
        RuntimeKind::Http => {
            for (slot, set) in sets.iter_mut().enumerate() {
                set.push(Box::new(remote(m, slot as u32, loading.prompt_cache)?));
            }
        }
        // The server schedules the slots' requests itself.
        RuntimeKind::OpenAi => {
            for set in sets.iter_mut() {
                set.push(Box::new(openai(m, loading.prompt_cache)?));
            }
        }
    }
    Ok(())
}
