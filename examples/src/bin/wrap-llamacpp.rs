//! Adding gac ensembling to a program that already loaded a llama.cpp model.
//!
//! usage: wrap-llamacpp SMOLLM.gguf OTHER.gguf ["prompt"]
//!
//! The program loads its model its own way (here straight through llama-cpp-2) and keeps using
//! it; gac opens a context of its own on the same weights (`LlamaMember::with_model`: nothing
//! is loaded twice) and ensembles it with a second model. This is also how `gac serve` gives
//! each of its slots a context on one copy of the weights.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use gac_core::{Ensemble, GenerateOptions, Member, Mode};
use gac_llamacpp::{backend, LlamaMember, LlamaOptions};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: wrap-llamacpp SMOLLM.gguf OTHER.gguf [prompt]";
    let own_path = PathBuf::from(args.next().context(usage)?);
    let other_path = PathBuf::from(args.next().context(usage)?);
    let prompt = args
        .next()
        .unwrap_or_else(|| "The capital of France is".to_string());

    // Your program's model (gac's `backend()` is the process's one llama.cpp backend).
    let params = LlamaModelParams::default().with_n_gpu_layers(0);
    let model = Arc::new(
        LlamaModel::load_from_file(backend(), &own_path, &params)
            .with_context(|| format!("loading {}", own_path.display()))?,
    );

    // gac: a member on the same weights, plus a second model, averaged token by token.
    let options = LlamaOptions {
        threads: Some(1),
        ..Default::default()
    };
    let own = LlamaMember::with_model("yours".into(), Arc::clone(&model), &own_path, &options)?;
    let other = LlamaMember::load(&other_path, &options)?;
    let members: Vec<Box<dyn Member>> = vec![Box::new(own), Box::new(other)];
    let mut ensemble = Ensemble::new(members, None, Mode::Average)?;
    let opts = GenerateOptions {
        max_tokens: 24,
        ..Default::default()
    };
    print!("ensemble: ");
    let out = ensemble.generate(&prompt, &opts, &mut |text| print!("{text}"))?;
    println!(
        "\n({} tokens, {:.1} ms/token)",
        out.stats.tokens,
        out.stats.ms_per_token()
    );

    // The program keeps using its model: here its own context, one greedy token.
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_threads(1)
        .with_n_threads_batch(1);
    let mut ctx = model.new_context(backend(), ctx_params)?;
    let ids = model.vocab().tokenize(prompt.as_bytes(), true, false);
    let mut batch = LlamaBatch::new(512, 1);
    batch.add_sequence(&ids, 0, false)?;
    ctx.decode(&mut batch)?;
    let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
    let next = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    println!(
        "your model alone, next token: {:?} (weights shared with the member: {} references)",
        String::from_utf8_lossy(&gac_llamacpp::vocab_of(&model, "yours")?.decode(&[next as u32])),
        Arc::strong_count(&model)
    );
    Ok(())
}
