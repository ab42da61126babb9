//! Training a byte-level BPE tokenizer on a text corpus with the `tokenizers` crate (the same
//! kind of `tokenizer.json` as GPT-2's or SmolLM2's), for models trained from scratch.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use super::HfTokenizer;
use crate::error::{Error, Result};

/// The end-of-text special token of tokenizers trained here; it gets id 0.
pub const END_OF_TEXT: &str = "<|endoftext|>";

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

/// Trains a byte-level BPE tokenizer of `vocab_size` ids (at least 257: the 256 byte symbols
/// and [`END_OF_TEXT`]) on `texts`, writes it to `path` as a `tokenizer.json`, and returns it
/// loaded, with [`END_OF_TEXT`] as its end-of-sequence id. Any UTF-8 text encodes (unknown
/// characters fall back to bytes) and decodes back unchanged.
pub fn train_bpe<I, S>(texts: I, vocab_size: usize, path: impl AsRef<Path>) -> Result<HfTokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    if vocab_size < 257 {
        return Err(Error::config(
            "vocab_size",
            format!("must be at least 257 (256 bytes and end-of-text), got {vocab_size}"),
        ));
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(|e| tok_err("building a BPE tokenizer", e))?;
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| tok_err("training the BPE tokenizer", e))?;
    let tokenizer: Tokenizer = tokenizer.into();
    let path = path.as_ref();
    tokenizer
        .save(path, false)
        .map_err(|e| tok_err(&format!("writing {}", path.display()), e))?;
    let eos = tokenizer
        .token_to_id(END_OF_TEXT)
        .ok_or_else(|| tok_err("training", "the end-of-text token is missing"))?;
    HfTokenizer::from_file(path, vec![i64::from(eos)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::TextTokenizer;

    #[test]
    fn trained_bpe_round_trips_and_merges() {
        let dir = std::env::temp_dir().join(format!("bw-bpe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = "and the earth was without form, and void; and darkness was upon the deep.";
        let lines = vec![text; 50];
        let tok = train_bpe(lines.into_iter(), 300, dir.join("tokenizer.json")).unwrap();
        assert_eq!(tok.eos_ids(), vec![0]);
        assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 257);
        let ids = tok.encode(text).unwrap();
        assert!(
            ids.len() < text.len() / 2,
            "{} ids for {} bytes",
            ids.len(),
            text.len()
        );
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let unseen = "Ünïcödé 42 ☃";
        assert_eq!(tok.decode(&tok.encode(unseen).unwrap()).unwrap(), unseen);
        assert!(train_bpe(vec!["a"].into_iter(), 10, dir.join("t2.json")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
