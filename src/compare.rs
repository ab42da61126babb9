//! Side-by-side runs of a decoder and greedy decoding on the same model, in the same process.

use serde::{Deserialize, Serialize};

use crate::config::DecodeConfig;
use crate::decoder::{BlockwiseDecoder, DecodeOutput, GreedyDecoder};
use crate::error::Result;
use crate::model::CausalLm;

/// A decoder's output next to greedy decoding's on the same prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The decoder under test.
    pub candidate: DecodeOutput,
    /// Greedy decoding.
    pub greedy: DecodeOutput,
    /// Whether both emitted the same tokens.
    pub identical: bool,
    /// Greedy wall time over the candidate's: above 1 means the candidate is faster.
    pub speedup: f64,
}

/// Runs greedy decoding on `model`, then `make_decoder(model)` on the same prompt, and compares.
///
/// Greedy runs first so that both see a warm model; each decode resets the cache itself.
pub fn compare_with_greedy<M, F>(
    model: &mut M,
    make_decoder: F,
    prompt: &[i64],
    config: &DecodeConfig,
) -> Result<Comparison>
where
    M: CausalLm,
    F: for<'a> FnOnce(&'a mut M) -> Result<Box<dyn BlockwiseDecoder + 'a>>,
{
    let greedy = GreedyDecoder::new(&mut *model).decode(prompt, config)?;
    let candidate = make_decoder(model)?.decode(prompt, config)?;
    Ok(Comparison::new(candidate, greedy))
}

impl Comparison {
    /// Compares two outputs of the same prompt and settings.
    pub fn new(candidate: DecodeOutput, greedy: DecodeOutput) -> Self {
        let identical = greedy.tokens == candidate.tokens;
        let speedup = if candidate.stats.wall_s > 0.0 {
            greedy.stats.wall_s / candidate.stats.wall_s
        } else {
            0.0
        };
        Comparison {
            candidate,
            greedy,
            identical,
            speedup,
        }
    }
}
