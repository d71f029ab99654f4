//! Adding gac ensembling to a program that already runs a mistral.rs engine.
//!
//! usage: wrap-mistralrs SMOLLM.gguf OTHER.gguf ["prompt"]
//!
//! The engine is built the program's own way (here with `gac_mistralrs::build_gguf_engine`,
//! standing in for your loader code); keep its tokenizer and EOS ids when you build it. gac
//! wraps the running engine as one member, next to a llama.cpp member, and the engine keeps
//! serving the program's other requests.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use gac_core::{Ensemble, GenerateOptions, Member, Mode};
use gac_llamacpp::{LlamaMember, LlamaOptions};
use gac_mistralrs::{build_gguf_engine, wrap_engine, MistralOptions};
use mistralrs_core::{NormalRequest, Request, RequestMessage, Response, SamplingParams};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: wrap-mistralrs SMOLLM.gguf OTHER.gguf [prompt]";
    let mistral_model = PathBuf::from(args.next().context(usage)?);
    let llama_model = PathBuf::from(args.next().context(usage)?);
    let prompt = args
        .next()
        .unwrap_or_else(|| "The capital of France is".to_string());

    // Your program's engine.
    let engine = build_gguf_engine(&mistral_model, None, true)?;
    let served = Arc::clone(&engine.engine);

    // gac: the engine as a member, plus a llama.cpp member, averaged token by token.
    let options = MistralOptions::default();
    let mistral = wrap_engine(
        "mistral.rs",
        engine.engine,
        None,
        engine.tokenizer,
        &engine.eos,
        &options,
    )?;
    let llama = LlamaMember::load(
        &llama_model,
        &LlamaOptions {
            threads: Some(1),
            ..Default::default()
        },
    )?;
    let members: Vec<Box<dyn Member>> = vec![Box::new(mistral), Box::new(llama)];
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

    // The same engine still serves ordinary requests.
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let request = NormalRequest::new_simple(
        RequestMessage::Completion {
            text: prompt,
            echo_prompt: false,
            best_of: None,
        },
        SamplingParams {
            max_len: Some(12),
            ..SamplingParams::deterministic()
        },
        tx,
        served.next_request_id(),
        None,
        None,
    );
    served
        .get_sender(None)?
        .blocking_send(Request::Normal(Box::new(request)))?;
    while let Some(response) = rx.blocking_recv() {
        match response {
            Response::CompletionDone(done) => {
                println!("mistral.rs alone: {}", done.choices[0].text);
                break;
            }
            Response::InternalError(e) | Response::ValidationError(e) => {
                anyhow::bail!("mistral.rs: {e}")
            }
            Response::CompletionModelError(m, _) => anyhow::bail!("mistral.rs: {m}"),
            _ => {}
        }
    }
    Ok(())
}
