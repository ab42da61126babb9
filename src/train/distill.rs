//! Sequence-level distillation data (Kim & Rush 2016, as Stern et al. use it): the base
//! model's own greedy continuations of prompts, which proposal heads then learn to predict.

use crate::config::DecodeConfig;
use crate::decoder::BlockwiseDecoder;
use crate::error::Result;

/// Decodes every prompt with `decoder` (any decoder that reproduces greedy decoding: greedy
/// itself, or blockwise with exact acceptance, which is faster) and returns each prompt
/// followed by its continuation. `progress` is called with the number of prompts done.
pub fn distill(
    decoder: &mut dyn BlockwiseDecoder,
    prompts: &[Vec<i64>],
    config: &DecodeConfig,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<i64>>> {
    let mut out = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let decoded = decoder.decode(prompt, config)?;
        let mut seq = prompt.clone();
        seq.extend_from_slice(&decoded.tokens);
        out.push(seq);
        progress(i + 1);
    }
    Ok(out)
}
