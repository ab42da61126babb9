//! Text in and out. A small trait so examples and tools work with any tokenizer; a byte-level
//! tokenizer for the embedded model, Hugging Face `tokenizer.json` files, and chat templates.

mod chat;
mod hf;
mod stream;
mod train;

pub use chat::{ChatTemplate, Message};
pub use hf::HfTokenizer;
pub use stream::TextStream;
pub use train::{train_bpe, END_OF_TEXT};

use crate::error::{Error, Result};

/// Turns text into token ids and back.
pub trait TextTokenizer {
    /// Token ids of `text`.
    fn encode(&self, text: &str) -> Result<Vec<i64>>;
    /// Token ids of `text` as the start of a prompt: with the special tokens the tokenizer adds
    /// to a whole input (Gemma's and Llama 2's beginning-of-sequence token), as transformers'
    /// tokenizers do by default. The default: [`TextTokenizer::encode`].
    fn encode_prompt(&self, text: &str) -> Result<Vec<i64>> {
        self.encode(text)
    }
    /// Text of `ids` (special tokens dropped).
    fn decode(&self, ids: &[i64]) -> Result<String>;
    /// Ids the tokenizer knows.
    fn vocab_size(&self) -> i64;
    /// Ids that end a sequence.
    fn eos_ids(&self) -> Vec<i64>;
}

/// One token per byte (ids 0..=255) plus an end-of-sequence id 256: no vocabulary file, any
/// UTF-8 text round-trips.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// The end-of-sequence id.
    pub const EOS: i64 = 256;
    /// Vocabulary size (256 bytes and EOS).
    pub const VOCAB_SIZE: i64 = 257;
}

impl TextTokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        Ok(text.bytes().map(i64::from).collect())
    }

    fn decode(&self, ids: &[i64]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            match u8::try_from(id) {
                Ok(b) => bytes.push(b),
                Err(_) if id == Self::EOS => {}
                Err(_) => {
                    return Err(Error::Tokenizer(format!(
                        "id {id} at position {i} is not a byte or EOS"
                    )))
                }
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn vocab_size(&self) -> i64 {
        Self::VOCAB_SIZE
    }

    fn eos_ids(&self) -> Vec<i64> {
        vec![Self::EOS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let t = ByteTokenizer;
        let ids = t.encode("héllo\n").unwrap();
        assert_eq!(ids.len(), 7);
        assert_eq!(t.decode(&ids).unwrap(), "héllo\n");
        let mut with_eos = ids.clone();
        with_eos.push(ByteTokenizer::EOS);
        assert_eq!(t.decode(&with_eos).unwrap(), "héllo\n");
        assert!(t.decode(&[300]).is_err());
    }
}
