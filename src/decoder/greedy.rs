//! The reference: one model call per token, the argmax (or, under sampling, a draw).

use std::time::Instant;

use tch::Tensor;

use super::{empty_output, seconds_since, BlockwiseDecoder, Budget, DecodeOutput};
use crate::config::DecodeConfig;
use crate::error::Result;
use crate::model::{check_output, prefill, token_tensor, CausalLm};
use crate::rng::SeededRng;
use crate::sampling::{draw, probabilities, SamplingConfig};
use crate::stats::{DecodeStats, StopReason};
use crate::verifier::{rank_rows, LogitRows};

/// Greedy decoding, the reference every blockwise decoder must reproduce under exact acceptance.
///
/// Uses the model's KV cache when it has one and recomputes the sequence otherwise. Kept
/// deliberately independent of the blockwise loop so that comparing the two means something.
///
/// Under sampling ([`DecodeConfig::sampling`]) it draws every token from the base model's warped
/// distribution with its own generator, one uniform per token: plain sampling, the reference
/// that lossless blockwise sampling must match in distribution.
#[derive(Debug)]
pub struct GreedyDecoder<M> {
    model: M,
    rng: SeededRng,
}

impl<M: CausalLm> GreedyDecoder<M> {
    /// Greedy decoding with `model` (which may be a `&mut` borrow); its generator starts from
    /// seed 0.
    pub fn new(model: M) -> Self {
        GreedyDecoder {
            model,
            rng: SeededRng::new(0),
        }
    }

    /// The same decoder with its generator seeded by `seed` (a per-call
    /// [`SamplingConfig::seed`] reseeds it again).
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = SeededRng::new(seed);
        self
    }

    /// The model back.
    pub fn into_model(self) -> M {
        self.model
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The next token after `seq`, whose last token is new to the model.
    fn next_token(&mut self, seq: &[i64], sampling: Option<&SamplingConfig>) -> Result<i64> {
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
        self.pick(&out.logits, sampling)
            .map_err(|e| e.in_sequence_at(seq.len() - 1))
    }

    /// The argmax of the last row of `logits`, or a draw from its warped distribution.
    fn pick(&mut self, logits: &Tensor, sampling: Option<&SamplingConfig>) -> Result<i64> {
        match sampling {
            None => Ok(rank_rows(logits, 1, 1)?.greedy(0)),
            Some(s) => {
                let rows = LogitRows::from_tensor(logits, 1)?;
                let p = probabilities(rows.row(0).unwrap_or_default(), s, 0)?;
                Ok(draw(&p, self.rng.uniform()))
            }
        }
    }
}

impl<M: CausalLm> BlockwiseDecoder for GreedyDecoder<M> {
    fn decode(&mut self, prompt: &[i64], config: &DecodeConfig) -> Result<DecodeOutput> {
        self.decode_streaming(prompt, config, &mut |_| {})
    }

    fn decode_streaming(
        &mut self,
        prompt: &[i64],
        config: &DecodeConfig,
        on_tokens: &mut dyn FnMut(&[i64]),
    ) -> Result<DecodeOutput> {
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
        let sampling = config.sampling.as_ref();
        if let Some(seed) = sampling.and_then(|s| s.seed) {
            self.rng = SeededRng::new(seed);
        }
        let mut stats = DecodeStats::new(prompt.len(), 1);
        let mut seq = prompt.to_vec();
        let mut out = Vec::new();
        let tm = Instant::now();
        let first = prefill(&mut self.model, &seq, config.prefill_chunk)?;
        let mut next = self
            .pick(&first.logits, sampling)
            .map_err(|e| e.in_sequence_at(prompt.len() - 1))?;
        stats.model_s += seconds_since(tm);
        stats.model_calls += 1;
        let stop = loop {
            out.push(next);
            seq.push(next);
            on_tokens(&[next]);
            stats.record_iteration(1);
            if config.is_eos(next) {
                break StopReason::Eos;
            }
            if budget.remaining(out.len(), seq.len()) == 0 {
                break budget.exhausted(out.len(), config.on_context_full)?;
            }
            let tm = Instant::now();
            next = self.next_token(&seq, sampling)?;
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
