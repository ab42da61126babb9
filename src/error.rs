//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `blockwise`, with the values that explain it.
///
/// Every input a caller can get wrong maps to one of these variants; library code does not panic on
/// caller input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The prompt holds no tokens: there is nothing to condition on.
    #[error("the prompt is empty: at least one token id is needed")]
    EmptyPrompt,

    /// A token id lies outside `0..vocab_size`.
    #[error("token id {token} at position {position} of the {what} is outside the vocabulary (0..{vocab_size})")]
    TokenOutOfVocabulary {
        /// Where the token was found ("prompt", "proposal", "EOS set", ...).
        what: &'static str,
        /// Index of the bad token in that sequence.
        position: usize,
        /// The offending id.
        token: i64,
        /// The model's vocabulary size.
        vocab_size: i64,
    },

    /// The prompt alone does not fit the model's context window.
    #[error(
        "the prompt has {prompt_len} tokens but the model's context holds at most {max_context}"
    )]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_len: usize,
        /// The model's context limit.
        max_context: usize,
    },

    /// Decoding reached the model's context limit and the configuration asked for an error.
    #[error("the sequence reached the model's context limit of {max_context} tokens after {generated} new tokens")]
    ContextExhausted {
        /// The model's context limit.
        max_context: usize,
        /// New tokens generated before the limit was hit.
        generated: usize,
    },

    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: `{field}` {problem}")]
    InvalidConfig {
        /// The offending field, as spelled in the serde config.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// A model's output does not have the shape the calling convention promises.
    #[error("model output `{output}` has shape {actual:?}, expected {expected}")]
    BadOutputShape {
        /// Which output ("logits", "hidden", "head_logits").
        output: &'static str,
        /// What the convention requires, in words.
        expected: String,
        /// What the model returned.
        actual: Vec<i64>,
    },

    /// The model produced NaN or infinite logits.
    #[error(
        "the model produced non-finite logits (NaN or infinity) at block position {position}{}",
        match sequence_position {
            Some(p) => format!(" (the logits after the token at sequence position {p}, prompt included)"),
            None => String::new(),
        }
    )]
    NonFiniteLogits {
        /// Block position of the first non-finite row.
        position: usize,
        /// The position in the whole sequence (prompt included) of the token that row follows,
        /// when the decoder knows where the block stands.
        sequence_position: Option<usize>,
    },

    /// A block was placed at a position the model's cache cannot serve.
    #[error("a block starting at position {start} was given to a model whose cache holds {cached} tokens")]
    CacheGap {
        /// The requested start position.
        start: usize,
        /// Tokens the cache currently holds.
        cached: usize,
    },

    /// A block does not fit into the model's context window.
    #[error("a block of {block_len} tokens at position {start} exceeds the model's context of {max_context}")]
    BlockBeyondContext {
        /// Start position of the block.
        start: usize,
        /// Tokens in the block.
        block_len: usize,
        /// The model's context limit.
        max_context: usize,
    },

    /// Two parts disagree about the vocabulary (a draft model and a verifier, an embedding metric
    /// and a model, ...).
    #[error("vocabulary mismatch: {left} has {left_size} tokens, {right} has {right_size}")]
    VocabularyMismatch {
        /// The first part.
        left: &'static str,
        /// Its vocabulary size.
        left_size: i64,
        /// The second part.
        right: &'static str,
        /// Its vocabulary size.
        right_size: i64,
    },

    /// The proposer asked for something the model cannot give (head proposals from a model
    /// without heads, ...).
    #[error("{component} needs {capability}, which this model does not provide")]
    MissingCapability {
        /// The part that needs it.
        component: &'static str,
        /// What it needs.
        capability: &'static str,
    },

    /// A proposer or criterion returned something that breaks its contract.
    #[error("{component} broke its contract: {problem}")]
    Contract {
        /// The offending part.
        component: &'static str,
        /// What it did.
        problem: String,
    },

    /// A TorchScript module does not follow the calling convention.
    #[error("TorchScript module `{path}`: {problem}")]
    BadModule {
        /// The module file (or a description when it was built in memory).
        path: String,
        /// What does not fit (with libtorch's message summarised to one line).
        problem: String,
        /// libtorch's whole error, C++ stack trace included, when libtorch reported one.
        #[source]
        source: Option<tch::TchError>,
    },

    /// A file could not be read or written.
    #[error("{action} `{path}` failed: {source}")]
    Io {
        /// What was being done ("reading", "writing").
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON document could not be parsed or does not match the expected structure.
    #[error("{what} is not valid: {source}")]
    Json {
        /// What was being parsed.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// Text could not be encoded or decoded by a tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An error reported by libtorch. The message is one line ([`torch_summary`]); the whole
    /// text, C++ stack trace included, is the error's [`source`](std::error::Error::source).
    #[error("libtorch: {}", torch_summary(.0))]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// `NonFiniteLogits` from a block whose first row follows the token at sequence position
    /// `first`, with the sequence position filled in; other errors unchanged.
    pub(crate) fn in_sequence_at(self, first: usize) -> Self {
        match self {
            Error::NonFiniteLogits {
                position,
                sequence_position: None,
            } => Error::NonFiniteLogits {
                position,
                sequence_position: Some(first + position),
            },
            other => other,
        }
    }
}

/// One line of a libtorch error: the exception the TorchScript interpreter re-raised (its last
/// `...Error: ...` line) when there is one, otherwise the first line, without the C++ stack
/// trace (`Exception raised from ...`, `frame #N: ...`) that follows it.
pub fn torch_summary(e: &tch::TchError) -> String {
    let text = match e {
        tch::TchError::Torch(msg) => msg.clone(),
        other => other.to_string(),
    };
    summarise_torch_text(&text)
}

fn summarise_torch_text(text: &str) -> String {
    let is_trace = |l: &str| {
        let l = l.trim_start();
        l.starts_with("Exception raised from") || l.starts_with("frame #")
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !is_trace(l))
        .filter(|l| !l.is_empty())
        .collect();
    let raised = lines.iter().rev().find(|l| {
        l.split_once(": ").is_some_and(|(name, _)| {
            name.ends_with("Error") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        })
    });
    raised
        .or(lines.first())
        .map(|l| l.to_string())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Shorthand for `std::result::Result<T, blockwise::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidConfig`] for `field`.
    pub fn config(field: &'static str, problem: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field,
            problem: problem.into(),
        }
    }

    /// For `map_err`: wraps an I/O error with what was being done, and to which path.
    pub fn io(
        action: &'static str,
        path: impl AsRef<std::path::Path>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    /// Reads a JSON file into `T`, naming the path in the error.
    pub fn read_json<T: serde::de::DeserializeOwned>(
        path: impl AsRef<std::path::Path>,
    ) -> Result<T> {
        let path = path.as_ref();
        serde_json::from_str(&Self::read_text(path)?).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })
    }

    /// Reads a whole text file, naming the path in the error.
    pub fn read_text(path: impl AsRef<std::path::Path>) -> Result<String> {
        let path = path.as_ref();
        std::fs::read_to_string(path).map_err(Error::io("reading", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_errors_are_summarised_to_one_line() {
        let load = "PytorchStreamReader failed reading zip archive: failed finding central directory\n\
                    Exception raised from valid at ../caffe2/serialize/inline_container.cc:232 (most recent call first):\n\
                    frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x9c (0x7f in libc10.so)\n\
                    frame #1: <unknown function> + 0x5c2 (0x7f in libtorch_cpu.so)";
        assert_eq!(
            summarise_torch_text(load),
            "PytorchStreamReader failed reading zip archive: failed finding central directory"
        );
        let script = "The following operation failed in the TorchScript interpreter.\n\
                      Traceback of TorchScript, serialized code (most recent call last):\n\
                      File \"code/__torch__.py\", line 8, in forward\n\
                      _0 = torch.matmul(x, self.w)\n\
                      ~~~~~~~~~~~~ <--- HERE\n\
                      RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)\n";
        assert_eq!(
            summarise_torch_text(script),
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"
        );
        assert_eq!(summarise_torch_text(""), "(no message)");
        let e = Error::from(tch::TchError::Torch(load.to_string()));
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.contains("frame #1"), "{source}");
    }
}
