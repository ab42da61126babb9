//! The sampling state a decoder lends to its proposer and criterion for one decode.

use super::{draw, probabilities, SamplingConfig};
use crate::error::Result;
use crate::rng::SeededRng;

/// The sampling settings with the decoder's generator: what a proposer needs to draw its own
/// proposals (see [`Proposer::propose_sampled`](crate::Proposer::propose_sampled)).
#[derive(Debug)]
pub struct Sampler<'a> {
    config: &'a SamplingConfig,
    rng: &'a mut SeededRng,
    sample_proposals: bool,
}

impl<'a> Sampler<'a> {
    /// Sampling with `config`, drawing from `rng`. `sample_proposals` tells proposers whether
    /// to draw their proposals from their own distributions (lossless acceptance gains from it)
    /// or to propose their most likely tokens (as typical acceptance expects).
    pub fn new(config: &'a SamplingConfig, rng: &'a mut SeededRng, sample_proposals: bool) -> Self {
        Sampler {
            config,
            rng,
            sample_proposals,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SamplingConfig {
        self.config
    }

    /// Whether proposers should draw proposals from their distributions (`true`) or propose
    /// their most likely tokens as point masses (`false`).
    pub fn samples_proposals(&self) -> bool {
        self.sample_proposals
    }

    /// The warped distribution after one row of logits (see [`probabilities`]).
    pub fn probabilities(&self, logits: &[f32], position: usize) -> Result<Vec<f64>> {
        probabilities(logits, self.config, position)
    }

    /// A token drawn from `probs`; consumes one uniform.
    pub fn draw(&mut self, probs: &[f64]) -> i64 {
        draw(probs, self.rng.uniform())
    }

    /// A uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.rng.uniform()
    }
}
