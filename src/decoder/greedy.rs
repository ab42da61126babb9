//! The reference: one model call per token, always the argmax.

use std::time::Instant;

use super::{empty_output, seconds_since, BlockwiseDecoder, Budget, DecodeOutput};
use crate::config::DecodeConfig;
use crate::error::Result;
use crate::model::{check_output, prefill, token_tensor, CausalLm};
use crate::stats::{DecodeStats, StopReason};
use crate::verifier::rank_rows;

/// Greedy decoding, the reference every blockwise decoder must reproduce under exact acceptance.
///
/// Uses the model's KV cache when it has one and recomputes the sequence otherwise. Kept
/// deliberately independent of the blockwise loop so that comparing the two means something.
#[derive(Debug)]
pub struct GreedyDecoder<M> {
    model: M,
}

impl<M: CausalLm> GreedyDecoder<M> {
    /// Greedy decoding with `model` (which may be a `&mut` borrow).
    pub fn new(model: M) -> Self {
        GreedyDecoder { model }
    }

    /// The model back.
    pub fn into_model(self) -> M {
        self.model
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The argmax after `seq`, whose last token is new to the model.
    fn next_token(&mut self, seq: &[i64]) -> Result<i64> {
        let info = self.model.info().clone();
        let (input, start) = if info.has_cache {
            (&seq[seq.len() - 1..], seq.len() - 1)
        } else {
            (seq, 0)
        };
        let out = self
            .model
            .forward(&token_tensor(input, info.device), start)?;
        check_output(&out, input.len(), info.vocab_size)?;
        Ok(rank_rows(&out.logits, 1, 1)?.greedy(0))
    }
}

impl<M: CausalLm> BlockwiseDecoder for GreedyDecoder<M> {
    fn decode(&mut self, prompt: &[i64], config: &DecodeConfig) -> Result<DecodeOutput> {
        let _guard = tch::no_grad_guard();
        let t0 = Instant::now();
        let info = self.model.info().clone();
        config.check(prompt, &info)?;
        let budget = Budget::new(config, info.max_context);
        if budget.remaining(0, prompt.len()) == 0 {
            return Ok(empty_output(
                prompt.len(),
                budget.exhausted(0, config.on_context_full)?,
            ));
        }
        let mut stats = DecodeStats::new(prompt.len(), 1);
        let mut seq = prompt.to_vec();
        let mut out = Vec::new();
        let tm = Instant::now();
        let first = prefill(&mut self.model, &seq, config.prefill_chunk)?;
        let mut next = rank_rows(&first.logits, 1, 1)?.greedy(0);
        stats.model_s += seconds_since(tm);
        stats.model_calls += 1;
        let stop = loop {
            out.push(next);
            seq.push(next);
            stats.record_iteration(1);
            if config.is_eos(next) {
                break StopReason::Eos;
            }
            if budget.remaining(out.len(), seq.len()) == 0 {
                break budget.exhausted(out.len(), config.on_context_full)?;
            }
            let tm = Instant::now();
            next = self.next_token(&seq)?;
            stats.model_s += seconds_since(tm);
            stats.model_calls += 1;
        };
        stats.finish(seconds_since(t0));
        Ok(DecodeOutput {
            tokens: out,
            stats,
            stop,
        })
    }
}
