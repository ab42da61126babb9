//! Proposers for tests: random guesses, and an oracle that knows the greedy continuation but
//! lies at random positions, so every accepted length gets exercised.

use crate::error::Result;
use crate::proposer::{ProposalContext, Proposer};
use crate::rng::SeededRng;

/// Proposes uniformly random tokens.
#[derive(Debug, Clone)]
pub struct RandomProposer {
    vocab_size: i64,
    rng: SeededRng,
}

impl RandomProposer {
    /// Random tokens in `0..vocab_size`, seeded.
    pub fn new(vocab_size: i64, seed: u64) -> Self {
        RandomProposer {
            vocab_size: vocab_size.max(1),
            rng: SeededRng::new(seed),
        }
    }
}

impl Proposer for RandomProposer {
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        let n = self.rng.below(ctx.max_tokens as u64 + 1) as usize;
        Ok((0..n)
            .map(|_| self.rng.below(self.vocab_size as u64) as i64)
            .collect())
    }
}

/// Knows the true sequence (prompt plus greedy continuation) and proposes it, except that each
/// proposed token is replaced by a different random one with probability `corrupt`.
#[derive(Debug, Clone)]
pub struct OracleProposer {
    truth: Vec<i64>,
    vocab_size: i64,
    corrupt: f64,
    rng: SeededRng,
}

impl OracleProposer {
    /// `truth` is the prompt followed by the greedy continuation.
    pub fn new(truth: Vec<i64>, vocab_size: i64, corrupt: f64, seed: u64) -> Self {
        OracleProposer {
            truth,
            vocab_size: vocab_size.max(2),
            corrupt,
            rng: SeededRng::new(seed),
        }
    }
}

impl Proposer for OracleProposer {
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        // `next` sits at index tokens.len(); proposals continue after it.
        let from = ctx.tokens.len() + 1;
        let upto = (from + ctx.max_tokens).min(self.truth.len());
        let mut out = Vec::new();
        for i in from..upto {
            let t = self.truth[i];
            if self.rng.uniform() < self.corrupt {
                let shift = 1 + self.rng.below(self.vocab_size as u64 - 1) as i64;
                out.push((t + shift) % self.vocab_size);
            } else {
                out.push(t);
            }
        }
        Ok(out)
    }
}
