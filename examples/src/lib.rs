//! Support code for the `gac` binary that is worth testing on its own: its configuration
//! (`config`) and few-shot generative evaluation (`eval`).

pub mod config;
pub mod eval;
