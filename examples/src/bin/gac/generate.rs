//! `gac generate`: one generation, streamed, with its statistics; per-member flags bind to the
//! `--model` they follow.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context, Result};
use clap::Args;
use gac_core::{Ensemble, GenerateOptions, Generation, Union};
use gac_examples::config::{EnsembleConfig, Plan};
use serde_json::json;

use super::args::{EnsembleArgs, SamplingArgs};
use crate::members::load_members;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub ensemble: EnsembleArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop after this many tokens.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_tokens: usize,
    /// Stop when this text appears (repeatable); the output is cut before it.
    #[arg(long = "stop", value_name = "TEXT")]
    stops: Vec<String>,
    /// Wrap the prompt in each member's own chat template (from its GGUF, where it has one).
    #[arg(long)]
    chat: bool,
    /// Print one JSON object with the text and the statistics instead of streaming.
    #[arg(long)]
    json: bool,
    /// The prompt; `-` reads it from stdin.
    prompt: String,
}

fn read_prompt(prompt: &str) -> Result<String> {
    if prompt != "-" {
        return Ok(prompt.to_string());
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the prompt from stdin")?;
    Ok(text)
}

pub fn generate(args: GenerateArgs, plan: Plan) -> Result<()> {
    let prompt = read_prompt(&args.prompt)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let options = GenerateOptions {
        stop: args.stops.clone(),
        chat: args.chat,
        ..(plan.combination).options(args.max_tokens, args.sampling.sampling(0.0)?)
    };
    let members = load_members(&plan.config.members, args.json, false)?;
    if args.chat {
        for m in &members {
            if m.encode_chat("").is_none() {
                eprintln!(
                    "gac: warning: member {} has no usable chat template; it gets the raw prompt",
                    m.name()
                );
            }
        }
    }
    let mut ensemble = Ensemble::new(
        members,
        Some(plan.combination.weights),
        plan.combination.mode,
    )?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let mut on_text = |s: &str| {
        if !args.json && write_error.is_none() {
            if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
                write_error = Some(e);
            }
        }
    };
    let generation = ensemble.generate(&prompt, &options, &mut on_text)?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if args.json {
        let value = generation_json(&generation, ensemble.union(), &plan.config);
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        if std::io::stdout().is_terminal() || !generation.text.ends_with('\n') {
            writeln!(out)?;
        }
        if !crate::progress::quiet() {
            print_stats(&generation);
        }
    }
    Ok(())
}

/// The generation's statistics on stderr: totals, then one line per member.
pub(crate) fn print_stats(g: &Generation) {
    let s = &g.stats;
    eprintln!(
        "gac: {} tokens ({}), {:.1} ms/token, {:.1} tokens/s, {}/{} steps ensembled ({:.1}%), ensemble step {:.3} ms/step",
        s.tokens,
        g.finish.as_str(),
        s.ms_per_token(),
        s.tokens_per_sec(),
        s.ensembled_steps,
        s.steps,
        100.0 * s.ensembled_fraction(),
        combine_ms_per_step(g),
    );
    for m in &s.members {
        eprintln!(
            "gac:   {}: prompt {} tokens ({} from the cache) in {:.1} ms; {} decode evals, {:.2} ms each; softmax {:.3} ms/eval; re-encode {:.3} ms total",
            m.name,
            m.prompt_tokens,
            m.prompt_reused,
            m.prompt_time.as_secs_f64() * 1e3,
            m.decode_evals,
            m.ms_per_eval(),
            m.softmax_time.as_secs_f64() * 1e3 / (m.decode_evals + 1) as f64,
            m.push_time.as_secs_f64() * 1e3,
        );
        if m.head_evals > 0 {
            eprintln!(
                "gac:     heads: {} of {} evals gave only their most probable tokens; {} steps needed the full distribution again ({:.1} ms)",
                m.head_evals,
                m.decode_evals + 1,
                m.full_after_head,
                m.full_after_head_time.as_secs_f64() * 1e3,
            );
        }
    }
}

fn combine_ms_per_step(g: &Generation) -> f64 {
    g.stats.combine_time.as_secs_f64() * 1e3 / g.stats.steps.max(1) as f64
}

fn generation_json(g: &Generation, union: &Union, config: &EnsembleConfig) -> serde_json::Value {
    let s = &g.stats;
    json!({
        "text": g.text,
        "finish": g.finish.as_str(),
        "tokens": s.tokens,
        "union_size": union.len(),
        "stats": {
            "steps": s.steps,
            "ensembled_steps": s.ensembled_steps,
            "ensembled_fraction": s.ensembled_fraction(),
            "ms_per_token": s.ms_per_token(),
            "tokens_per_sec": s.tokens_per_sec(),
            "first_step_ms": s.first_step_time.as_secs_f64() * 1e3,
            "total_ms": s.total_time.as_secs_f64() * 1e3,
            "combine_ms_per_step": combine_ms_per_step(g),
        },
        "steps": s.per_step.iter().map(|st| json!({
            "token": String::from_utf8_lossy(union.bytes(st.token)),
            "ensembled": st.ensembled,
            "gate_confidence": st.gate_confidence,
            "ms": st.time.as_secs_f64() * 1e3,
        })).collect::<Vec<_>>(),
        "members": s.members.iter().zip(&config.members).map(|(m, c)| json!({
            "name": m.name,
            "path": c.place(),
            "weight": c.weight,
            "prompt_tokens": m.prompt_tokens,
            "prompt_ms": m.prompt_time.as_secs_f64() * 1e3,
            "decode_evals": m.decode_evals,
            "ms_per_eval": m.ms_per_eval(),
            "softmax_ms": m.softmax_time.as_secs_f64() * 1e3,
            "reencode_ms": m.push_time.as_secs_f64() * 1e3,
            "head_evals": m.head_evals,
            "full_after_head": m.full_after_head,
            "full_after_head_ms": m.full_after_head_time.as_secs_f64() * 1e3,
        })).collect::<Vec<_>>(),
    })
}
