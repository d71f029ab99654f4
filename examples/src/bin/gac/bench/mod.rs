//! `gac bench`: speed of members alone and of the ensembles, side by side in one run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use gac_core::{
    Encoder, Ensemble, GenerateOptions, Grammar, Member, Mode, Schedule, Stats, WhenUnsure,
};
use gac_examples::config::{EnsembleConfig, MemberConfig, RuntimeKind};
use gac_llamacpp::LlamaMember;
use mistralrs_core::{MistralRs, NormalRequest, Request, RequestMessage, Response, SamplingParams};

use crate::args::member_flag;
use crate::{members, progress};

mod remote;

/// Prompts used when none are given: a few languages, so that re-encoding is exercised.
const PROMPTS: &[&str] = &[
    "The history of the printing press begins",
    "Москва — столица России, и её история",
    "def quicksort(items):",
];

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// GGUF model files, `[RUNTIME:]PATH` as for `generate` (two or more for the ensemble rows).
    #[arg(long = "model", value_name = "[RUNTIME:]PATH", required = true)]
    models: Vec<PathBuf>,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Gate thresholds to measure (gate = member 0).
    #[arg(long = "threshold", value_name = "T", default_values_t = vec![gac_core::select::DEFAULT_THRESHOLD])]
    thresholds: Vec<f32>,
    /// CPU threads per llama.cpp member.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Prompts (repeatable); default: three built-in ones.
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// Also measure llama.cpp members handing back only their K most probable tokens (chosen
    /// inside llama.cpp's graph) against full logits, for each K given (repeatable).
    #[arg(long = "device-top-k", value_name = "K")]
    device_top_k: Vec<u32>,
    /// A llama-server serving the --model of the same position (repeatable, one per model):
    /// measures the top-k union all local, with member 0 remote, and all remote.
    #[arg(long = "remote", value_name = "URL")]
    remotes: Vec<String>,
    /// The top-k unions measured with --remote (repeatable).
    #[arg(long = "union-top-k", value_name = "K", default_values_t = vec![5, 20, 100], requires = "remotes")]
    union_top_k: Vec<usize>,
}

struct Row {
    name: String,
    stats: Vec<Stats>,
    texts: Vec<String>,
}

impl Row {
    fn ms_per_token(&self) -> f64 {
        mean(self.stats.iter().map(Stats::ms_per_token))
    }
    fn ensembled(&self) -> f64 {
        let steps: usize = self.stats.iter().map(|s| s.steps).sum();
        let ens: usize = self.stats.iter().map(|s| s.ensembled_steps).sum();
        ens as f64 / steps.max(1) as f64
    }
    /// Prefill ms per prompt token of the slowest-prefilling member (first evaluation).
    fn prefill_ms_per_token(&self) -> f64 {
        let n = self.stats[0].members.len();
        (0..n)
            .map(|i| {
                let time: Duration = self.stats.iter().map(|s| s.members[i].prompt_time).sum();
                let tokens: usize = self.stats.iter().map(|s| s.members[i].prompt_tokens).sum();
                ms(time) / tokens.max(1) as f64
            })
            .fold(0.0, f64::max)
    }

    /// ms per step spent computing the grammar's mask (beside the members' evaluations).
    fn grammar_ms(&self) -> f64 {
        let steps: usize = self.stats.iter().map(|s| s.steps).sum();
        let time: Duration = self.stats.iter().map(|s| s.constraint_time).sum();
        ms(time) / steps.max(1) as f64
    }

    /// The ensemble step per step, in ms: (softmax, projection and bookkeeping, pick,
    /// re-encode), the member-side parts taken from the slowest member; and that member's
    /// decode ms per evaluation.
    fn step_breakdown(&self) -> ([f64; 4], f64) {
        let steps: usize = self.stats.iter().map(|s| s.steps).sum::<usize>().max(1);
        let combine: Duration = self.stats.iter().map(|s| s.combine_time).sum();
        let pick: Duration = self.stats.iter().map(|s| s.pick_time).sum();
        let n = self.stats[0].members.len();
        let (mut softmax, mut eval, mut reencode) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            let evals: usize = self
                .stats
                .iter()
                .map(|s| s.members[i].decode_evals + 1)
                .sum();
            let sm: Duration = self.stats.iter().map(|s| s.members[i].softmax_time).sum();
            let ev = mean(self.stats.iter().map(|s| s.members[i].ms_per_eval()));
            let re: Duration = self.stats.iter().map(|s| s.members[i].push_time).sum();
            if ev > eval {
                eval = ev;
                softmax = ms(sm) / evals as f64;
                reencode = ms(re) / steps as f64;
            }
        }
        let per_step = |d: Duration| ms(d) / steps as f64;
        (
            [
                softmax,
                per_step(combine) - per_step(pick),
                per_step(pick),
                reencode,
            ],
            eval,
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn run(
    ensemble: &mut Ensemble,
    name: &str,
    prompts: &[String],
    tokens: usize,
    schedule: Schedule,
) -> Result<Row> {
    let options = GenerateOptions {
        max_tokens: tokens,
        schedule,
        ..GenerateOptions::default()
    };
    run_with(ensemble, name, prompts, &options)
}

/// Generates from every prompt with these options.
fn run_with(
    ensemble: &mut Ensemble,
    name: &str,
    prompts: &[String],
    options: &GenerateOptions,
) -> Result<Row> {
    let bar = progress::bar("bench", prompts.len(), name);
    let start = std::time::Instant::now();
    let (mut stats, mut texts) = (Vec::new(), Vec::new());
    for prompt in prompts {
        let g = ensemble.generate(prompt, options, &mut |_| {})?;
        stats.push(g.stats);
        texts.push(g.text);
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!(
        "gac bench: {name}: {} prompts in {:.1} s",
        prompts.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(Row {
        name: name.to_string(),
        stats,
        texts,
    })
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let prompts: Vec<String> = if args.prompts.is_empty() {
        PROMPTS.iter().map(|p| p.to_string()).collect()
    } else {
        args.prompts.clone()
    };
    let mut configs = Vec::new();
    for flag in &args.models {
        configs.push(MemberConfig {
            threads: Some(args.threads),
            ..member_flag(flag)?
        });
    }
    // Every value checked before anything loads, as for the other subcommands.
    let plan = EnsembleConfig {
        members: configs.clone(),
        ..EnsembleConfig::default()
    }
    .plan()?;
    for &threshold in &args.thresholds {
        let mode = Mode::Gated {
            gate: 0,
            threshold,
            when_unsure: WhenUnsure::Average,
        };
        gac_core::ensemble::validate(&plan.combination.weights, &mode, configs.len())?;
    }
    if !args.remotes.is_empty() {
        return remote::remote_members(&args, &configs, &prompts);
    }
    let mut members: Vec<Box<dyn Member>> = Vec::new();
    let mut plain = Vec::new();
    let mut llama_configs = Vec::new();
    for config in &configs {
        let what = || format!("loading {} in {}", config.place(), config.runtime.label());
        // No prompt cache (the default): prefill and recompute are measured cold.
        match config.runtime {
            RuntimeKind::LlamaCpp => {
                members.push(Box::new(members::llama(config, false).with_context(what)?));
                llama_configs.push(config.clone());
            }
            RuntimeKind::MistralRs => {
                let m = members::mistralrs(config).with_context(what)?;
                eprintln!("gac bench: {} in plain mistral.rs ...", m.name());
                let engine = m.runtime().engine().clone();
                let mut per_prompt = Vec::new();
                for prompt in &prompts {
                    per_prompt.push(plain_mistralrs_ms_per_token(
                        &engine,
                        &m.encode_prompt(prompt)?,
                        args.tokens,
                    )?);
                }
                plain.push((
                    format!("{} in plain mistral.rs (no gac)", m.name()),
                    mean(per_prompt.into_iter()),
                ));
                members.push(Box::new(m));
            }
            RuntimeKind::Http | RuntimeKind::OpenAi => {
                anyhow::bail!("gac bench measures models it loads; give a llama-server's model as --model and its address as --remote")
            }
        }
    }
    let names: Vec<String> = members.iter().map(|m| m.name().to_string()).collect();
    let mut rows = Vec::new();
    // Each member alone, then the ensembles, on the same members (same KV cache sizes).
    let mut alone = Vec::new();
    for (i, m) in members.into_iter().enumerate() {
        let mut e = Ensemble::new(vec![m], None, Mode::Average)?;
        rows.push(run(
            &mut e,
            &format!("{} alone", names[i]),
            &prompts,
            args.tokens,
            Schedule::Lazy,
        )?);
        alone.extend(e.into_members());
    }
    let mut ensemble = Ensemble::new(alone, None, Mode::Average)?;
    if names.len() > 1 {
        rows.push(run(
            &mut ensemble,
            "average ensemble",
            &prompts,
            args.tokens,
            Schedule::Lazy,
        )?);
        // Structured outputs: a grammar that allows any text (every step's mask is nearly
        // the whole union, the most work for the parser) and a JSON object; and the first
        // gated ensemble under the first, whose gate's confidence is then its share of the
        // allowed mass.
        let any_text = Grammar::Lark(r#"start: /(.|\n)*/"#.into());
        let gated = Mode::Gated {
            gate: 0,
            threshold: args.thresholds[0],
            when_unsure: WhenUnsure::Average,
        };
        for (label, grammar, mode) in [
            ("average ensemble", any_text.clone(), Mode::Average),
            ("average ensemble", Grammar::JsonObject, Mode::Average),
            ("gated ensemble (lazy)", any_text, gated),
        ] {
            let options = GenerateOptions {
                max_tokens: args.tokens,
                grammar: Some(grammar.clone()),
                ..GenerateOptions::default()
            };
            let what = match grammar {
                Grammar::JsonObject => "JSON object",
                _ => "any text",
            };
            ensemble.set_mode(mode)?;
            let name = format!("{label}, grammar: {what}");
            rows.push(run_with(&mut ensemble, &name, &prompts, &options)?);
        }
        ensemble.set_mode(Mode::Selective)?;
        rows.push(run(
            &mut ensemble,
            "selective ensemble",
            &prompts,
            args.tokens,
            Schedule::Lazy,
        )?);
        for &t in &args.thresholds {
            ensemble.set_mode(Mode::Gated {
                gate: 0,
                threshold: t,
                when_unsure: WhenUnsure::Average,
            })?;
            for (schedule, label) in [(Schedule::Lazy, "lazy"), (Schedule::Eager, "eager")] {
                rows.push(run(
                    &mut ensemble,
                    &format!("gated ensemble ({label}), gate {}, t = {t}", names[0]),
                    &prompts,
                    args.tokens,
                    schedule,
                )?);
            }
        }
    }
    let slowest_alone = rows[..names.len()]
        .iter()
        .map(Row::ms_per_token)
        .fold(0.0, f64::max);
    println!(
        "{} prompts x {} tokens, greedy, {} thread(s) per member\n",
        prompts.len(),
        args.tokens,
        args.threads
    );
    println!("| configuration | prefill ms/token | decode ms/token | vs slowest member alone | steps ensembled | softmax | projection | pick | re-encode | step / slowest decode | grammar mask |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let (parts, eval) = row.step_breakdown();
        println!(
            "| {} | {:.2} | {:.2} | {:.2}x | {:.1}% | {:.3} | {:.3} | {:.3} | {:.3} | {:.2}% | {:.3} |",
            row.name,
            row.prefill_ms_per_token(),
            row.ms_per_token(),
            row.ms_per_token() / slowest_alone,
            100.0 * row.ensembled(),
            parts[0],
            parts[1],
            parts[2],
            parts[3],
            100.0 * parts.iter().sum::<f64>() / eval,
            row.grammar_ms(),
        );
    }
    for (name, ms_per_token) in &plain {
        println!(
            "| {name} | | {ms_per_token:.2} | {:.2}x | | | | | | | |",
            ms_per_token / slowest_alone
        );
    }
    let mut members = ensemble.into_members();
    println!("\nCatch-up of a member that skipped k steps (llama.cpp keeps its KV cache and evaluates the k tokens in one batch; a skipped mistral.rs member's request ends, and a new one takes the prefix from mistral.rs's prefix cache) against recomputing its whole prefix (the paper's approach):\n");
    println!("| member | prefix tokens | k | catch-up ms | recompute ms | speed-up |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in &mut members {
        for k in [1, 4, 16] {
            let (prefix, catch_up, recompute) = catch_up_vs_recompute(m.as_mut(), &prompts[0], k)?;
            println!(
                "| {} | {prefix} | {k} | {:.1} | {:.1} | {:.1}x |",
                m.name(),
                ms(catch_up),
                ms(recompute),
                recompute.as_secs_f64() / catch_up.as_secs_f64()
            );
        }
    }
    if !args.device_top_k.is_empty() && !llama_configs.is_empty() {
        device_top_k(&llama_configs, &args, &prompts)?;
    }
    if !llama_configs.is_empty() {
        println!("\nPrompt cache of llama.cpp members: the first evaluation of a few-shot prompt right after another one with the same shots, cold (cache off) and reusing the shots' cache:\n");
        println!("| member | prompt tokens | shared | cold ms | cached ms | speed-up | max logit difference |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for config in &llama_configs {
            let gain = prompt_cache_gain(config)?;
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1}x | {:.3} |",
                gain.name,
                gain.tokens,
                gain.shared,
                ms(gain.cold),
                ms(gain.cached),
                gain.cold.as_secs_f64() / gain.cached.as_secs_f64(),
                gain.max_logit_difference
            );
        }
    }
    Ok(())
}

/// What the prompt cache saves on one few-shot prompt.
struct CacheGain {
    name: String,
    tokens: usize,
    shared: usize,
    cold: Duration,
    cached: Duration,
    /// Largest absolute difference between the cold and the cached logits (llama.cpp's
    /// numerics depend on how a prompt is split into batches).
    max_logit_difference: f32,
}

/// Times the first evaluation of a few-shot prompt that follows one with the same shots, in a
/// member without and one with the prompt cache.
fn prompt_cache_gain(config: &MemberConfig) -> Result<CacheGain> {
    let shots = "Question: Which planet is known as the red planet?\nAnswer: Mars\n\n\
                 Question: How many days are there in a week?\nAnswer: seven\n\n"
        .repeat(6);
    let first = format!("{shots}Question: What is the capital of France?\nAnswer:");
    let second = format!("{shots}Question: How many legs does a spider have?\nAnswer:");
    // The second prompt's first evaluation, after the first prompt.
    let second_prompt = |member: &mut LlamaMember| -> Result<(Duration, Vec<f32>)> {
        let (mut elapsed, mut logits) = (Duration::ZERO, Vec::new());
        for prompt in [&first, &second] {
            member.reset()?;
            member.push(&member.encode_prompt(prompt)?)?;
            let t = Instant::now();
            logits = member.logits()?.to_vec();
            elapsed = t.elapsed();
        }
        Ok((elapsed, logits))
    };
    // Two fresh contexts on one loaded model: without and with the cache.
    let mut cold_member =
        members::llama(config, false).with_context(|| format!("loading {}", config.place()))?;
    let mut member = LlamaMember::with_model(
        cold_member.name().to_string(),
        cold_member.model().clone(),
        &config.path,
        &members::llama_options(config, true),
    )?;
    let (cold, cold_logits) = second_prompt(&mut cold_member)?;
    let (cached, cached_logits) = second_prompt(&mut member)?;
    Ok(CacheGain {
        name: member.name().to_string(),
        tokens: member.tokens().len(),
        shared: member.reused(),
        cold,
        cached,
        max_logit_difference: cold_logits
            .iter()
            .zip(&cached_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max),
    })
}

/// Decode ms/token of a plain greedy mistral.rs request (no gac): the time of the whole request
/// minus that of a one-token request, over the tokens after the first.
fn plain_mistralrs_ms_per_token(engine: &MistralRs, prompt: &[u32], tokens: usize) -> Result<f64> {
    let time = |n: usize| -> Result<(Duration, usize)> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let request = NormalRequest::new_simple(
            RequestMessage::CompletionTokens(prompt.to_vec()),
            SamplingParams {
                max_len: Some(n),
                ..SamplingParams::deterministic()
            },
            tx,
            engine.next_request_id(),
            None,
            None,
        );
        let t = Instant::now();
        engine
            .get_sender(None)?
            .blocking_send(Request::Normal(Box::new(request)))?;
        loop {
            match rx.blocking_recv().context("mistral.rs stopped")? {
                Response::CompletionDone(done) => {
                    return Ok((t.elapsed(), done.usage.completion_tokens))
                }
                Response::InternalError(e) | Response::ValidationError(e) => {
                    anyhow::bail!("mistral.rs: {e}")
                }
                Response::CompletionModelError(m, _) => anyhow::bail!("mistral.rs: {m}"),
                _ => {}
            }
        }
    };
    let (one, _) = time(1)?;
    let (all, generated) = time(tokens)?;
    Ok(ms(all.saturating_sub(one)) / (generated.max(2) - 1) as f64)
}

/// Times evaluating `k` new tokens on top of a cached prefix against evaluating prefix and
/// tokens from scratch. The prefix is the prompt followed by 200 tokens of filler text.
fn catch_up_vs_recompute(
    member: &mut dyn Member,
    prompt: &str,
    k: usize,
) -> Result<(usize, Duration, Duration)> {
    let filler = " and so the story went on, chapter after chapter, page after page".repeat(20);
    let mut ids = member.encode_prompt(prompt)?;
    ids.extend(member.encode(filler.as_bytes())?);
    let extra = member.encode(
        " until the very end of the book, where everything was told once more".as_bytes(),
    )?;
    let extra: Vec<u32> = extra.iter().cycle().take(k).copied().collect();
    member.reset()?;
    member.push(&ids)?;
    member.logits()?;
    member.push(&extra)?;
    member.idle(); // what the gate's skip does
    let t = Instant::now();
    member.logits()?;
    let catch_up = t.elapsed();
    member.reset()?;
    member.push(&ids)?;
    member.push(&extra)?;
    let t = Instant::now();
    member.logits()?;
    let recompute = t.elapsed();
    Ok((ids.len(), catch_up, recompute))
}

/// Full logits against a device-side top-k of each K: each llama.cpp member alone (its decode
/// step, and the host's work on what the step hands back: softmax over the vocabulary, or
/// writing the head), then all of them averaged (how many member evaluations had to give
/// the full logits again, and whether the text is the same).
fn device_top_k(configs: &[MemberConfig], args: &BenchArgs, prompts: &[String]) -> Result<()> {
    let ks: Vec<Option<u32>> = std::iter::once(None)
        .chain(args.device_top_k.iter().copied().map(Some))
        .collect();
    let load = |config: &MemberConfig, k: Option<u32>| -> Result<Box<dyn Member>> {
        let config = MemberConfig {
            device_top_k: k,
            ..config.clone()
        };
        let m = members::llama(&config, false)
            .with_context(|| format!("loading {}", config.place()))?;
        Ok(Box::new(m))
    };
    let label = |k: Option<u32>| k.map_or("full logits".to_string(), |k| format!("top-{k}"));
    let mut lines = Vec::new();
    for config in configs {
        let mut full_step = 0.0;
        for &k in &ks {
            let mut e = Ensemble::new(vec![load(config, k)?], None, Mode::Average)?;
            let name = format!("{} {}", e.members()[0].name(), label(k));
            let row = run(&mut e, &name, prompts, args.tokens, Schedule::Lazy)?;
            let m = |f: fn(&gac_core::ensemble::MemberStats) -> f64| {
                mean(row.stats.iter().map(|s| f(&s.members[0])))
            };
            let decode = m(|s| s.ms_per_eval());
            let host = m(|s| ms(s.softmax_time) / (s.decode_evals + 1) as f64);
            let step = decode + host;
            if k.is_none() {
                full_step = step;
            }
            lines.push(format!(
                "| {name} | {decode:.2} | {host:.3} | {:.2}% | {step:.2} | {:.3}x | {} |",
                100.0 * host / decode,
                step / full_step,
                fallbacks(&row)
            ));
        }
    }
    let mut full_texts = Vec::new();
    for &k in &ks {
        let members = configs.iter().map(|c| load(c, k)).collect::<Result<_>>()?;
        let mut e = Ensemble::new(members, None, Mode::Average)?;
        let name = format!("average ensemble, {}", label(k));
        let row = run(&mut e, &name, prompts, args.tokens, Schedule::Lazy)?;
        if k.is_none() {
            full_texts = row.texts.clone();
        }
        let same = row.texts.iter().zip(&full_texts).filter(|(a, b)| a == b);
        lines.push(format!(
            "| {name} (decode ms/token) | {:.2} | | | | | {} (same text: {} of {}) |",
            row.ms_per_token(),
            fallbacks(&row),
            same.count(),
            row.texts.len()
        ));
    }
    println!("\nDevice-side top-k (llama.cpp backend sampling) against full logits, greedy; `host` is the work on what a step hands back (softmax over the vocabulary, or writing the head), per evaluation:\n");
    println!("| member | decode ms/eval | host ms/eval | host / decode | step ms | step vs full logits | evaluations that needed the full logits again |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// "n of m (p%)": member evaluations that had to give the full logits after their head.
fn fallbacks(row: &Row) -> String {
    let members = row.stats.iter().flat_map(|s| &s.members);
    let (heads, full) = members.fold((0, 0), |(h, f), m| {
        (h + m.head_evals, f + m.full_after_head)
    });
    match heads {
        0 => "-".to_string(),
        _ => format!(
            "{full} of {heads} ({:.1}%)",
            100.0 * full as f64 / heads as f64
        ),
    }
}
