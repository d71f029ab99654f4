//! What a member's own context ([`crate::LlamaMember`]) and a context shared by several members
//! ([`crate::SharedContext`]) have in common: their size, batch and threads from the options,
//! and keeping the part of a sequence's KV cache that a new context starts with.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;

use crate::LlamaOptions;

/// The largest batch a context decodes at once.
const MAX_BATCH: u32 = 512;

/// A context's size: tokens per sequence and tokens per decode.
pub(crate) struct Shape {
    pub per_sequence: u32,
    pub batch: u32,
}

/// Parameters of a context on `model` with `sequences` sequences of `options.context` tokens
/// (default: the model's training context, at most 4096), and its shape.
pub(crate) fn params(
    model: &LlamaModel,
    options: &LlamaOptions,
    sequences: u32,
) -> (LlamaContextParams, Shape) {
    let per_sequence = options
        .context
        .unwrap_or_else(|| model.n_ctx_train().min(4096))
        .max(8);
    let total = per_sequence * sequences.max(1);
    let batch = total.min(MAX_BATCH);
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total))
        .with_n_batch(batch)
        .with_n_ubatch(batch)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    (
        params,
        Shape {
            per_sequence,
            batch,
        },
    )
}

/// How many of the `cached` ids a context of `tokens` can keep: their common prefix, leaving
/// at least the last id to evaluate (for its logits).
pub(crate) fn common_prefix(cached: &[u32], tokens: &[u32]) -> usize {
    cached
        .iter()
        .zip(tokens)
        .take_while(|(a, b)| a == b)
        .count()
        .min(tokens.len().saturating_sub(1))
}

/// Drops sequence `seq`'s cached positions from `keep` on; false where llama.cpp cannot keep
/// the positions before intact (nothing to keep, a sliding-window cache that already dropped
/// early positions, a recurrent model): then the caller clears the sequence.
pub(crate) fn keep_prefix(ctx: &mut LlamaContext<'_>, seq: u32, keep: usize) -> bool {
    keep > 0
        && matches!(
            ctx.clear_kv_cache_seq(Some(seq), Some(keep as u32), None),
            Ok(true)
        )
        && ctx.kv_cache_seq_pos_min(seq as i32) == 0
}
