//! Will implement `gac_core::Member` for mistral.rs models (`mistralrs-core`), through gac-core's
//! bridge and mistral.rs's `CustomLogitsProcessor`.
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its final shape.
//! Until it lands, use GGUF models through `gac-llamacpp`.
