//! Decoders: the trait users call, the blockwise loop and the greedy reference.

mod batch;
mod blockwise;
mod greedy;
mod sampled;
mod tree;

pub use batch::{BatchBlockwise, BatchBuilder, ProposerFactory, RowId, RowUpdate, TreeConfig};
pub use blockwise::{Blockwise, BlockwiseBuilder};
pub use greedy::GreedyDecoder;
pub use tree::{DraftTree, TreeShape, MAX_TREE_NODES};

use serde::{Deserialize, Serialize};

use crate::config::{ContextPolicy, DecodeConfig};
use crate::error::{Error, Result};
use crate::stats::{DecodeStats, StopReason};

/// What a decode returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DecodeOutput {
    /// The generated tokens (the prompt excluded).
    pub tokens: Vec<i64>,
    /// What it cost.
    pub stats: DecodeStats,
    /// Why it stopped.
    pub stop: StopReason,
}

/// A decoder: prompt token ids in, generated token ids out.
///
/// [`Blockwise`] and [`GreedyDecoder`] implement it; the greedy decoder is the reference every
/// other decoder is checked against. Object safe: `Box<dyn BlockwiseDecoder>` works.
pub trait BlockwiseDecoder {
    /// Decodes a continuation of `prompt`.
    fn decode(&mut self, prompt: &[i64], config: &DecodeConfig) -> Result<DecodeOutput>;

    /// Decodes like [`BlockwiseDecoder::decode`], handing `on_tokens` each run of tokens as soon
    /// as it is accepted (a block at a time for [`Blockwise`], a token at a time for
    /// [`GreedyDecoder`]); the runs concatenate to the output's tokens. The default hands over
    /// the whole output at the end.
    fn decode_streaming(
        &mut self,
        prompt: &[i64],
        config: &DecodeConfig,
        on_tokens: &mut dyn FnMut(&[i64]),
    ) -> Result<DecodeOutput> {
        let out = self.decode(prompt, config)?;
        on_tokens(&out.tokens);
        Ok(out)
    }
}

impl<D: BlockwiseDecoder + ?Sized> BlockwiseDecoder for Box<D> {
    fn decode(&mut self, prompt: &[i64], config: &DecodeConfig) -> Result<DecodeOutput> {
        (**self).decode(prompt, config)
    }
    fn decode_streaming(
        &mut self,
        prompt: &[i64],
        config: &DecodeConfig,
        on_tokens: &mut dyn FnMut(&[i64]),
    ) -> Result<DecodeOutput> {
        (**self).decode_streaming(prompt, config, on_tokens)
    }
}

/// How many more tokens may be emitted, and why none may when the answer is 0.
pub(crate) struct Budget {
    max_new: usize,
    max_context: usize,
}

impl Budget {
    pub(crate) fn new(config: &DecodeConfig, max_context: usize) -> Self {
        Budget {
            max_new: config.max_new_tokens,
            max_context,
        }
    }

    /// Tokens that may still be emitted after `emitted` new tokens in a sequence of `len`.
    pub(crate) fn remaining(&self, emitted: usize, len: usize) -> usize {
        (self.max_new - emitted.min(self.max_new)).min(self.max_context - len.min(self.max_context))
    }

    /// The stop when [`Budget::remaining`] is 0, or the error the policy asks for.
    pub(crate) fn exhausted(&self, emitted: usize, policy: ContextPolicy) -> Result<StopReason> {
        if emitted >= self.max_new {
            return Ok(StopReason::MaxNewTokens);
        }
        match policy {
            ContextPolicy::Stop => Ok(StopReason::ContextFull),
            ContextPolicy::Error => Err(Error::ContextExhausted {
                max_context: self.max_context,
                generated: emitted,
            }),
        }
    }
}

pub(crate) fn seconds_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

pub(crate) fn empty_output(prompt_len: usize, stop: StopReason) -> DecodeOutput {
    let mut stats = DecodeStats::new(prompt_len, 1);
    stats.finish(0.0);
    DecodeOutput {
        tokens: Vec::new(),
        stats,
        stop,
    }
}
