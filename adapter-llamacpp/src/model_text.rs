//! The text side of a llama.cpp model, shared by its members: gac's view of its vocabulary,
//! llama.cpp's own tokenizer (user text always plain) and its chat template.

use std::path::Path;
use std::sync::Arc;

use gac_core::{Encoder, Message, Vocab};
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};

use crate::{vocab_of, LoadError};

/// A loaded model's name, weights and vocabulary.
pub(crate) struct ModelText {
    pub(crate) name: String,
    pub(crate) model: Arc<LlamaModel>,
    pub(crate) vocab: Vocab,
}

impl ModelText {
    pub(crate) fn new(
        name: String,
        model: Arc<LlamaModel>,
        path: &Path,
    ) -> Result<Self, LoadError> {
        let vocab = vocab_of(&model, &name).map_err(|e| LoadError::Vocab(path.to_path_buf(), e))?;
        Ok(Self { name, model, vocab })
    }

    /// llama.cpp's tokenization of `text`, with BOS when `add_bos` (and the model wants one)
    /// and with special-token markup parsed when `special`.
    pub(crate) fn tokenize(&self, text: &str, add_bos: bool, special: bool) -> Vec<u32> {
        let ids = self
            .model
            .vocab()
            .tokenize(text.as_bytes(), add_bos, special);
        ids.into_iter().map(|t| t.0 as u32).collect()
    }

    /// The GGUF's chat template, else llama.cpp's built-in one for the model's architecture
    /// where it has one (Gemma GGUFs often ship without a template).
    fn chat_template(&self) -> Option<LlamaChatTemplate> {
        if let Ok(template) = self.model.chat_template(None) {
            return Some(template);
        }
        let arch = self.model.meta_val_str("general.architecture").ok()?;
        let builtin = arch.starts_with("gemma").then_some("gemma")?;
        LlamaChatTemplate::new(builtin).ok()
    }

    /// A conversation through `template`, ready for the assistant's turn. The template renders
    /// markers in place of the contents, so that only its own text is tokenized with control
    /// tokens and every content is tokenized as plain text.
    fn render_chat(
        &self,
        template: &LlamaChatTemplate,
        messages: &[Message],
    ) -> gac_core::Result<Vec<u32>> {
        let markers: Vec<String> = (0..messages.len())
            .map(|i| format!("\u{E000}gac-message-{i}\u{E001}"))
            .collect();
        let chat = messages
            .iter()
            .zip(&markers)
            .map(|(m, marker)| LlamaChatMessage::new(m.role.clone(), marker.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(format!("chat message: {e}")))?;
        let rendered = self
            .model
            .apply_chat_template(template, &chat, true)
            .map_err(|e| self.fail(format!("chat template: {e}")))?;
        let mut ids = Vec::new();
        let mut rest = rendered.as_str();
        for (i, (message, marker)) in messages.iter().zip(&markers).enumerate() {
            let at = rest.find(marker.as_str()).ok_or_else(|| {
                self.fail(format!(
                    "its chat template does not render message {i} ({}) as given",
                    message.role
                ))
            })?;
            ids.extend(self.tokenize(&rest[..at], ids.is_empty(), true));
            ids.extend(self.tokenize(&message.content, ids.is_empty(), false));
            rest = &rest[at + marker.len()..];
        }
        ids.extend(self.tokenize(rest, ids.is_empty(), true));
        Ok(ids)
    }

    /// Appends `ids` to a member's `tokens`, checking that they fit into `context` tokens and
    /// into the vocabulary.
    pub(crate) fn append(
        &self,
        tokens: &mut Vec<u32>,
        ids: &[u32],
        context: usize,
    ) -> gac_core::Result<()> {
        if tokens.len() + ids.len() > context {
            return Err(gac_core::Error::ContextFull {
                member: self.name.clone(),
                context,
            });
        }
        let n_vocab = self.vocab.len() as u32;
        if let Some(&bad) = ids.iter().find(|&&id| id >= n_vocab) {
            return Err(self.fail(format!(
                "token id {bad} is outside its vocabulary of {n_vocab}"
            )));
        }
        tokens.extend_from_slice(ids);
        Ok(())
    }

    pub(crate) fn fail(&self, message: impl Into<String>) -> gac_core::Error {
        gac_core::Error::member(&self.name, message)
    }
}

impl Encoder for ModelText {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, text: &[u8]) -> gac_core::Result<Vec<u32>> {
        self.vocab.encode_checked(text, |s| {
            let ids = self.model.vocab().tokenize(s.as_bytes(), false, false);
            Some(ids.into_iter().map(|t| t.0 as u32).collect())
        })
    }

    fn encode_prompt(&self, prompt: &str) -> gac_core::Result<Vec<u32>> {
        Ok(self.tokenize(prompt, true, false))
    }

    fn encode_messages(&self, messages: &[Message]) -> Option<gac_core::Result<Vec<u32>>> {
        let template = self.chat_template()?;
        Some(self.render_chat(&template, messages))
    }
}
