//! `gac vocab`: each vocabulary's size, the union and the pairwise overlaps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use gac_core::Union;
use gac_examples::config::{EnsembleConfig, RuntimeKind};
use serde_json::json;

use super::{load_members, MemberArgs};

#[derive(Args, Debug)]
pub struct VocabArgs {
    #[command(flatten)]
    members: MemberArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn vocab(args: VocabArgs) -> Result<()> {
    let config = args.members.config()?;
    if config.members.is_empty() {
        bail!("give at least one --model (or --config)");
    }
    let paths: Vec<PathBuf> = config.members.iter().map(|m| m.path.clone()).collect();
    // Each vocabulary as its own runtime reads it: llama.cpp from the GGUF alone (no weights),
    // mistral.rs from the tokenizer it converts while loading the model.
    let vocabs = config
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| match m.runtime {
            RuntimeKind::LlamaCpp => gac_llamacpp::load_vocab(&m.path).map_err(anyhow::Error::from),
            RuntimeKind::MistralRs => {
                let one = EnsembleConfig {
                    name: None,
                    members: vec![m.clone()],
                    gate: None,
                };
                let member = load_members(&one, true, false)
                    .with_context(|| format!("member {i}"))?
                    .remove(0);
                Ok(member.vocab().clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let union = Union::build(&vocabs.iter().collect::<Vec<_>>())?;
    let n = vocabs.len();
    let name = |p: &Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        )
    };
    if args.json {
        let value = json!({
            "union_size": union.len(),
            "members": paths.iter().zip(&vocabs).enumerate().map(|(i, (p, v))| json!({
                "path": p,
                "vocab_size": v.len(),
                "text_tokens": union.member_text_tokens(i),
                "overlap": (0..n).map(|j| union.overlap(i, j)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{:<4} {:>10} {:>12}  model", "#", "vocab", "text tokens");
    for (i, (p, v)) in paths.iter().zip(&vocabs).enumerate() {
        println!(
            "{i:<4} {:>10} {:>12}  {}",
            v.len(),
            union.member_text_tokens(i),
            name(p)
        );
    }
    println!(
        "union: {} tokens (End class included; text tokens compared as bytes)",
        union.len()
    );
    if n > 1 {
        println!("shared text tokens:");
        for i in 0..n {
            for j in i + 1..n {
                println!("  {i} & {j}: {}", union.overlap(i, j));
            }
        }
    }
    Ok(())
}
