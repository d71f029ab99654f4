//! Support code for the `gac` binary that is worth testing on its own: few-shot generative
//! evaluation (`eval`).

pub mod eval;
