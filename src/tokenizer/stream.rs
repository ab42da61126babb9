//! Turning tokens into text as they arrive.

use super::TextTokenizer;
use crate::error::Result;

/// Streams text from tokens that arrive a few at a time (for example from
/// [`BlockwiseDecoder::decode_streaming`](crate::BlockwiseDecoder::decode_streaming)).
///
/// Decoding token by token would split multi-byte characters and lose the spacing that some
/// tokenizers add between tokens, so the stream decodes everything it has seen and hands back
/// only what is new; text that ends in an incomplete character (U+FFFD) is held back until the
/// rest of it arrives.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    tokens: Vec<i64>,
    emitted: String,
}

impl TextStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `tokens` and returns the text they complete (possibly empty).
    pub fn push(&mut self, tokenizer: &dyn TextTokenizer, tokens: &[i64]) -> Result<String> {
        self.tokens.extend_from_slice(tokens);
        let text = tokenizer.decode(&self.tokens)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = match text.strip_prefix(self.emitted.as_str()) {
            Some(rest) => rest.to_string(),
            // The tokenizer changed its mind about earlier text: hand over what differs.
            None => {
                let common = self
                    .emitted
                    .char_indices()
                    .zip(text.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(self.emitted.len().min(text.len()), |((i, _), _)| i);
                text.get(common..).unwrap_or_default().to_string()
            }
        };
        self.emitted = text;
        Ok(new)
    }

    /// Everything emitted so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::ByteTokenizer;

    #[test]
    fn multibyte_characters_wait_for_their_last_byte() {
        let bytes: Vec<i64> = "héllo".bytes().map(i64::from).collect(); // é is two bytes
        let mut s = TextStream::new();
        let mut pieces = Vec::new();
        for b in &bytes {
            pieces.push(s.push(&ByteTokenizer, &[*b]).unwrap());
        }
        assert_eq!(pieces, vec!["h", "", "é", "l", "l", "o"]);
        assert_eq!(s.text(), "héllo");
    }
}
