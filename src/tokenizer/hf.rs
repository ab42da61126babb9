//! Hugging Face `tokenizer.json` files through the `tokenizers` crate.

use std::path::Path;

use super::TextTokenizer;
use crate::error::{Error, Result};

/// A tokenizer loaded from a `tokenizer.json` (byte-level BPE and the rest of what the
/// `tokenizers` crate reads). Encodes without adding special tokens: the prompt is exactly the
/// text's tokens, as an exported model's oracles expect.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    eos: Vec<i64>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos", &self.eos)
            .finish()
    }
}

impl HfTokenizer {
    /// Loads `path` (a `tokenizer.json`); `eos` are the ids that end a sequence.
    pub fn from_file(path: impl AsRef<Path>, eos: Vec<i64>) -> Result<Self> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("loading {}: {e}", path.display())))?;
        Ok(HfTokenizer { inner, eos })
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
}

impl HfTokenizer {
    fn encode_ids(&self, text: &str, special: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }
}

impl TextTokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        self.encode_ids(text, false)
    }

    fn encode_prompt(&self, text: &str) -> Result<Vec<i64>> {
        self.encode_ids(text, true)
    }

    fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                u32::try_from(id)
                    .map_err(|_| Error::Tokenizer(format!("id {id} at position {i} is negative")))
            })
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, true)
            .map_err(|e| Error::Tokenizer(format!("decoding: {e}")))
    }

    fn vocab_size(&self) -> i64 {
        self.inner.get_vocab_size(true) as i64
    }

    fn eos_ids(&self) -> Vec<i64> {
        self.eos.clone()
    }
}
