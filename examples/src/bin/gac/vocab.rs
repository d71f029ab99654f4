//! `gac vocab`: each vocabulary's size, the union and the pairwise overlaps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use gac_core::{Encoder, Union, Vocab};
use gac_examples::config::RuntimeKind;
use serde_json::json;

use crate::args::MemberArgs;
use crate::members::{mistralrs, vocab_encoder};

#[derive(Args, Debug)]
pub struct VocabArgs {
    #[command(flatten)]
    members: MemberArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also report, per pair of members, the share of words that both tokenizers split into
    /// the same pieces (each word as it appears in running text, after a space): the words of
    /// FILE (one per line), or a built-in list of common English words.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    words: Option<Option<PathBuf>>,
}

/// Words for `--words` without a file: common and rare English words, long compounds, names,
/// numbers and a few words of other scripts, so that tokenizers have room to differ.
const WORDS: &str = "the of and people because government information available understanding \
    unbelievable photosynthesis tokenization internationalization misunderstanding \
    antidisestablishmentarianism Constantinople Mississippi Shakespeare Wednesday \
    cryptocurrency hyperparameter backpropagation mitochondria electroencephalography \
    1234 2024 3.14159 e-mail don't naïve café München Zürich façade jalapeño \
    электричество Москва 東京 日本語 사람 العربية हिन्दी";

/// The words to probe: one per line of `file`, or the built-in list.
fn probe_words(file: Option<&Path>) -> Result<Vec<String>> {
    let Some(file) = file else {
        return Ok(WORDS.split_whitespace().map(str::to_string).collect());
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read word list {}", file.display()))?;
    let words: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    if words.is_empty() {
        bail!("word list {} has no words", file.display());
    }
    Ok(words)
}

/// Each member's pieces (the bytes of each token) for each word, after a space.
fn splits(encoders: &[Box<dyn Encoder>], words: &[String]) -> Result<Vec<Vec<Vec<Vec<u8>>>>> {
    encoders
        .iter()
        .map(|e| {
            words
                .iter()
                .map(|w| {
                    let ids = e.encode(format!(" {w}").as_bytes())?;
                    Ok(ids.iter().map(|&id| e.vocab().decode(&[id])).collect())
                })
                .collect()
        })
        .collect()
}

/// The share (0 to 1) of words that members i and j split the same way, per pair (i < j).
fn same_split(splits: &[Vec<Vec<Vec<u8>>>]) -> Vec<(usize, usize, f64)> {
    let n = splits.len();
    let mut out = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let same = splits[i]
                .iter()
                .zip(&splits[j])
                .filter(|(a, b)| a == b)
                .count();
            out.push((i, j, same as f64 / splits[i].len().max(1) as f64));
        }
    }
    out
}

pub fn vocab(args: VocabArgs) -> Result<()> {
    let config = args.members.config()?;
    if config.members.is_empty() {
        bail!("give at least one --model (or --config)");
    }
    if let Some(i) = config
        .members
        .iter()
        .position(|m| m.file().as_os_str().is_empty())
    {
        bail!("member {i} is served remotely: give the GGUF file (or tokenizer.json) of the model it runs as --model (or its vocab in --config)");
    }
    let paths: Vec<PathBuf> = config
        .members
        .iter()
        .map(|m| m.file().to_path_buf())
        .collect();
    // Each vocabulary as its own runtime reads it: llama.cpp from the GGUF alone (no weights),
    // mistral.rs from the tokenizer it converts while loading the model.
    let encoders = config
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| match m.runtime {
            RuntimeKind::LlamaCpp => {
                gac_llamacpp::load_encoder(&m.path).map_err(anyhow::Error::from)
            }
            RuntimeKind::Http | RuntimeKind::OpenAi => vocab_encoder(m.file()),
            RuntimeKind::MistralRs => {
                let member = mistralrs(m).with_context(|| format!("member {i}"))?;
                Ok(Box::new(member) as Box<dyn Encoder>)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let vocabs: Vec<&Vocab> = encoders.iter().map(|e| e.vocab()).collect();
    let probe = match &args.words {
        Some(file) => {
            let words = probe_words(file.as_deref())?;
            Some((words.len(), same_split(&splits(&encoders, &words)?)))
        }
        None => None,
    };
    let union = Union::build(&vocabs)?;
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
            "same_split": probe.as_ref().map(|(words, pairs)| json!({
                "words": words,
                "pairs": pairs.iter().map(|(i, j, share)| json!({"members": [i, j], "share": share})).collect::<Vec<_>>(),
            })),
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
    if let Some((words, pairs)) = &probe {
        println!("words split into the same pieces ({words} words, each after a space):");
        for (i, j, share) in pairs {
            println!("  {i} & {j}: {:.1}%", 100.0 * share);
        }
    }
    Ok(())
}
