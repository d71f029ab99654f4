//! Token-level ensembling of heterogeneous LLMs, treating each generation step as a
//! classification (GaC: Yu et al., 2024).
//!
//! One step, in order:
//! 1. members step: each member evaluates its pending tokens and gives next-token logits
//!    ([`member::Member`]);
//! 2. project into union space: softmax, then scatter-add through each member's projection
//!    ([`union`], [`combine`]);
//! 3. combine and gate: the weighted average, or the gate member alone while it is confident
//!    ([`select::Mode`]);
//! 4. pick one union token: a chain of stages over one candidates buffer ([`select`]);
//! 5. feed it back to every member in its own ids, re-encoding its bytes where the member has
//!    no such token ([`ensemble`]).
//!
//! `Member` is step-driven: the loop owns time, members never pull. This crate holds no runtime
//! and no backend; adapters (llama.cpp, mistral.rs) implement [`member::Member`].

pub mod bridge;
pub mod combine;
pub mod constraint;
pub mod ensemble;
mod error;
pub mod gguf;
pub mod member;
pub mod select;
pub mod served;
#[cfg(test)]
mod testutil;
pub mod text;
#[cfg(feature = "tokenizers")]
pub mod tokenizer_json;
pub mod union;
pub mod vocab;

pub use constraint::Grammar;
pub use ensemble::{
    Ensemble, Finish, GenerateOptions, Generation, Observer, Prompt, Stats, StepStats, TokenLogprob,
};
pub use error::{Error, Result, Setting};
pub use member::{Encoder, Evaluation, Interrupt, Member, Message};
pub use select::{Draw, Sampling};
pub use select::{Mode, Schedule, Weighting, WhenUnsure};
pub use union::{Union, UnionId};
pub use vocab::{Token, Vocab};
