//! `gac bench --remote`: the top-k union with members served by llama-servers against the same
//! models loaded here, side by side in one run.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use gac_core::{Ensemble, GenerateOptions, Member, Mode};
use gac_examples::config::{MemberConfig, RuntimeKind};
use gac_llamacpp::{RemoteClock, RemoteTotals};

use super::{ms, run_with, BenchArgs, Row};
use crate::members;

/// The all-local top-k union, then member 0 remote, then all remote, for each K: ms/token, the
/// HTTP overhead of a remote step (its wall time here minus the time the server reports for
/// it) against the slower member's step, and whether the text is the all-local one.
pub(super) fn remote_members(
    args: &BenchArgs,
    configs: &[MemberConfig],
    prompts: &[String],
) -> Result<()> {
    if configs.iter().any(|c| c.runtime != RuntimeKind::LlamaCpp) {
        bail!("with --remote every --model is the llama.cpp model its server runs");
    }
    if args.remotes.len() != configs.len() {
        bail!(
            "give one --remote for each --model, in the same order ({} models, {} servers)",
            configs.len(),
            args.remotes.len()
        );
    }
    for &k in &args.union_top_k {
        gac_core::ensemble::validate_union_top_k(Some(k)).context("invalid --union-top-k")?;
    }
    let n = configs.len();
    let mut setups = vec![("all local".to_string(), vec![Place::Local; n])];
    if n > 1 {
        for (label, place) in [
            ("member 0 remote", Place::LlamaServer),
            ("member 0 remote through /v1", Place::OpenAi),
        ] {
            let mut first = vec![Place::Local; n];
            first[0] = place;
            setups.push((label.to_string(), first));
        }
    }
    setups.push(("all remote".to_string(), vec![Place::LlamaServer; n]));
    setups.push(("all remote through /v1".to_string(), vec![Place::OpenAi; n]));
    let mut lines = Vec::new();
    for &k in &args.union_top_k {
        let mut baseline: Option<Row> = None;
        for (label, places) in &setups {
            let (members, clocks) = load(configs, places, &args.remotes, k)?;
            let mut ensemble = Ensemble::new(members, None, Mode::Average)?;
            let options = GenerateOptions {
                max_tokens: args.tokens,
                union_top_k: Some(k),
                ..GenerateOptions::default()
            };
            let name = format!("{label}, top-{k} union");
            let row = run_with(&mut ensemble, &name, prompts, &options)?;
            let Some(base) = &baseline else {
                lines.push(format!(
                    "| {name} | {:.2} | 1.00x | | | |",
                    row.ms_per_token()
                ));
                baseline = Some(row);
                continue;
            };
            let t = totals(&clocks);
            let per_request = ms(t.wall.saturating_sub(t.server)) / t.requests.max(1) as f64;
            let same = row.texts.iter().zip(&base.texts).filter(|(a, b)| a == b);
            lines.push(format!(
                "| {name} | {:.2} | {:.2}x | {per_request:.2} | {:.1}% | {} of {} |",
                row.ms_per_token(),
                row.ms_per_token() / base.ms_per_token(),
                100.0 * per_request / base.step_breakdown().1,
                same.count(),
                row.texts.len()
            ));
        }
    }
    println!(
        "{} prompts x {} tokens, greedy top-k union, {} thread(s) per local member; remote members ask for K tokens a step\n",
        prompts.len(),
        args.tokens,
        args.threads
    );
    println!("| configuration | decode ms/token | vs all local | HTTP overhead ms/request | overhead / slower member's step | same text as all local |");
    println!("|---|---:|---:|---:|---:|---|");
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// The counts of these remote members together.
fn totals(clocks: &[Arc<RemoteClock>]) -> RemoteTotals {
    clocks
        .iter()
        .map(|c| c.totals())
        .fold(RemoteTotals::default(), |a, b| RemoteTotals {
            requests: a.requests + b.requests,
            positions: a.positions + b.positions,
            wall: a.wall + b.wall,
            server: a.server + b.server,
        })
}

/// One setup's members, and the clocks of its remote ones.
type Setup = (Vec<Box<dyn Member>>, Vec<Arc<RemoteClock>>);

/// Where a member of a setup runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Loaded here.
    Local,
    /// In its server, through llama-server's own `/completion`.
    LlamaServer,
    /// In its server, through the OpenAI-compatible `/v1/completions`.
    OpenAi,
}

/// The members of one setup, each where `places` says (a remote one in its `remotes` server,
/// asking for `n_probs` tokens a step); with the remote members' clocks.
fn load(
    configs: &[MemberConfig],
    places: &[Place],
    remotes: &[String],
    n_probs: usize,
) -> Result<Setup> {
    let mut members: Vec<Box<dyn Member>> = Vec::new();
    let mut clocks = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let what = || format!("member {i} ({})", config.place());
        let url = match places[i] {
            Place::Local => {
                members.push(Box::new(members::llama(config, false).with_context(what)?));
                continue;
            }
            Place::LlamaServer => remotes[i].clone(),
            Place::OpenAi => format!("openai+{}/v1", remotes[i].trim_end_matches('/')),
        };
        let served = MemberConfig {
            vocab: Some(config.path.clone()),
            n_probs: Some(n_probs as u32),
            ..MemberConfig::remote(url)
        };
        if places[i] == Place::OpenAi {
            let member = members::openai(&served, false).with_context(what)?;
            clocks.push(member.clock());
            members.push(Box::new(member));
        } else {
            let member = members::remote(&served, 0, false).with_context(what)?;
            clocks.push(member.clock());
            members.push(Box::new(member));
        }
    }
    Ok((members, clocks))
}
