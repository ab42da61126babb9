//! `metadata.json`, written by `scripts/export_hf.py` next to the exported modules.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The metadata format this crate reads.
pub const FORMAT: &str = "blockwise-torchscript/1";

/// The module files exported for one dtype.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DtypeFiles {
    /// The cached calling convention.
    #[serde(default)]
    pub cached: Option<String>,
    /// The uncached calling convention.
    #[serde(default)]
    pub uncached: Option<String>,
    /// The masked calling convention (batched rows, trees): explicit positions and a
    /// `[B, T, S + T]` attention mask over a slot cache.
    #[serde(default)]
    pub masked: Option<String>,
    /// Whether the modules have a `prepack()` method to call once after loading.
    #[serde(default)]
    pub prepack: bool,
    /// Whether the modules also have `prepack_onednn()`: `prepack()` with f32 weights packed for
    /// oneDNN instead of kept for libtorch's BLAS ([`LoadOptions::f32_matmul`]).
    ///
    /// [`LoadOptions::f32_matmul`]: crate::torchscript::LoadOptions::f32_matmul
    #[serde(default)]
    pub onednn: bool,
    /// The dtype a weight form computes in, when it differs from its name (`int8`: `bf16`).
    #[serde(default)]
    pub compute: Option<String>,
}

/// A fixed prompt and transformers' own greedy continuation of it: a test oracle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Oracle {
    /// The prompt text (before any chat template).
    pub prompt: String,
    /// Whether the prompt was wrapped in the chat template.
    pub chat: bool,
    /// The prompt's token ids as the model saw them.
    pub input_ids: Vec<i64>,
    /// transformers' `generate(do_sample=False)` continuation.
    pub greedy_ids: Vec<i64>,
}

/// What an export says about its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportMetadata {
    /// Must be [`FORMAT`].
    pub format: String,
    /// Where the weights came from (for example `{"gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}`).
    #[serde(default)]
    pub source: BTreeMap<String, serde_json::Value>,
    /// The architecture (`llama`, ...).
    pub architecture: String,
    /// Transformer layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (the cache's head count).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Model width (the hidden states' last dimension).
    pub hidden_size: usize,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// The model's trained context length.
    pub max_position_embeddings: usize,
    /// The sliding window of the model's local-attention layers, when it has any (their queries
    /// attend only the last `sliding_window` positions; the exported modules apply it).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Ids that end a sequence.
    pub eos_token_ids: Vec<i64>,
    /// Beginning-of-sequence id, if the model has one.
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    /// The Jinja chat template, if the tokenizer has one.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Special token strings the chat template may use (`bos_token`, `eos_token`).
    #[serde(default)]
    pub special_tokens: BTreeMap<String, Option<String>>,
    /// Exported files per dtype (`f32`, `bf16`, `f16`).
    pub dtypes: BTreeMap<String, DtypeFiles>,
    /// Test oracles per dtype.
    #[serde(default)]
    pub oracles: BTreeMap<String, Vec<Oracle>>,
    /// What the native CPU decoder needs beyond the f32 module's weights, for plain
    /// Llama-shaped models ([`NativeLm`](crate::native::NativeLm)); absent for other shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<crate::native::NativeDescription>,
}

impl ExportMetadata {
    /// The context to allocate caches for: `requested`, or the model's trained context capped
    /// at 2048; refused when 0 or beyond the trained context.
    pub fn context(&self, requested: Option<usize>) -> Result<usize> {
        let max_context = requested.unwrap_or(self.max_position_embeddings.min(2048));
        if max_context == 0 || max_context > self.max_position_embeddings {
            return Err(Error::config(
                "max_context",
                format!(
                    "is {max_context}; the model was trained for 1..={}",
                    self.max_position_embeddings
                ),
            ));
        }
        Ok(max_context)
    }

    /// Reads and checks `dir/metadata.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("metadata.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        let meta: ExportMetadata = serde_json::from_str(&text).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })?;
        if meta.format != FORMAT {
            return Err(Error::config(
                "format",
                format!(
                    "{} says `{}`, this crate reads `{FORMAT}`",
                    path.display(),
                    meta.format
                ),
            ));
        }
        Ok(meta)
    }
}
