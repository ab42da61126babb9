//! The model's own proposal heads on the combined scoring and proposal path.

use super::{Proposal, ProposalContext, Proposer};
use crate::error::{Error, Result};
use crate::sampling::Sampler;

/// Proposes the argmax of each of the model's proposal heads, computed by the verifier at the
/// last accepted position during the same model call that verified the previous block (Stern et
/// al. §4): one model invocation per iteration.
///
/// Under sampling (when the criterion asks for sampled proposals) each head's token is drawn
/// from that head's warped distribution, which lossless acceptance then weighs against the base
/// model's.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadsProposer;

impl Proposer for HeadsProposer {
    /// Holds no state: every row may have its own.
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        Some(Box::new(HeadsProposer))
    }

    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        let heads = ctx.heads.ok_or(Error::MissingCapability {
            component: "HeadsProposer",
            capability: "proposal-head outputs",
        })?;
        Ok(heads.iter().take(ctx.max_tokens).copied().collect())
    }

    fn propose_sampled(
        &mut self,
        ctx: &ProposalContext<'_>,
        sampler: &mut Sampler<'_>,
    ) -> Result<Proposal> {
        let logits = match ctx.head_logits {
            Some(l) if sampler.samples_proposals() => l,
            _ => return Ok(Proposal::points(self.propose(ctx)?)),
        };
        let n = ctx.max_tokens.min(logits.rows());
        let mut tokens = Vec::with_capacity(n);
        let mut probs = Vec::with_capacity(n);
        for h in 0..n {
            let row = logits.row(h).unwrap_or_default();
            let q = sampler.probabilities(row, h + 1)?;
            tokens.push(sampler.draw(&q));
            probs.push(q);
        }
        Ok(Proposal::sampled(tokens, probs))
    }

    fn needs_heads(&self) -> bool {
        true
    }
}
