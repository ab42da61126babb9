//! What a decode did: model calls, iterations, accepted lengths and where the time went.

use serde::{Deserialize, Serialize};

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// An end-of-sequence token was emitted (it is the last token of the output).
    Eos,
    /// `max_new_tokens` were emitted.
    MaxNewTokens,
    /// The sequence filled the model's context window.
    ContextFull,
}

/// Statistics of one decode. Serialisable, so runs can be logged and compared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecodeStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Base-model invocations, the prompt pass included.
    pub model_calls: usize,
    /// Predict-verify-accept iterations (one verify call each).
    pub iterations: usize,
    /// Extra one-token calls made by the tie guard (0 without it).
    #[serde(default)]
    pub rescored: usize,
    /// Iterations that needed no model call (0 or 1): a decode that ends on a block which can
    /// hold only the token the previous call already chose (room for one more token, or that
    /// token is end-of-sequence) emits it without verifying it. On the combined heads path
    /// `model_calls + skipped_calls == iterations + 1 + rescored`.
    #[serde(default)]
    pub skipped_calls: usize,
    /// Tokens proposed over all blocks (the always-right first token of each block excluded);
    /// `(new_tokens - iterations) / proposed` is the rate at which proposals were accepted.
    #[serde(default)]
    pub proposed: usize,
    /// `accepted_hist[n]`: iterations that accepted exactly `n` tokens (index 0 stays 0).
    pub accepted_hist: Vec<usize>,
    /// Mean accepted block size: `new_tokens / iterations` (0 when nothing ran).
    pub mean_accepted: f64,
    /// Wall time of the whole decode, seconds.
    pub wall_s: f64,
    /// Time inside base-model calls (verifier work: forward passes and score transfers).
    pub model_s: f64,
    /// Time inside the proposer.
    pub proposer_s: f64,
    /// The rest: the decoder's own bookkeeping and acceptance.
    pub decoder_s: f64,
}

impl DecodeStats {
    pub(crate) fn new(prompt_tokens: usize, block_size: usize) -> Self {
        DecodeStats {
            prompt_tokens,
            accepted_hist: vec![0; block_size + 1],
            ..Default::default()
        }
    }

    pub(crate) fn record_iteration(&mut self, accepted: usize) {
        self.iterations += 1;
        self.new_tokens += accepted;
        if self.accepted_hist.len() <= accepted {
            self.accepted_hist.resize(accepted + 1, 0);
        }
        self.accepted_hist[accepted] += 1;
    }

    /// Records a last block of just the token the previous call chose, emitted without a call.
    pub(crate) fn record_free_iteration(&mut self) {
        self.record_iteration(1);
        self.skipped_calls += 1;
    }

    pub(crate) fn finish(&mut self, wall_s: f64) {
        self.wall_s = wall_s;
        self.decoder_s = (wall_s - self.model_s - self.proposer_s).max(0.0);
        self.mean_accepted = if self.iterations == 0 {
            0.0
        } else {
            self.new_tokens as f64 / self.iterations as f64
        };
    }
}
