//! The model's own proposal heads on the combined scoring and proposal path.

use super::{ProposalContext, Proposer};
use crate::error::{Error, Result};

/// Proposes the argmax of each of the model's proposal heads, computed by the verifier at the
/// last accepted position during the same model call that verified the previous block (Stern et
/// al. §4): one model invocation per iteration.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadsProposer;

impl Proposer for HeadsProposer {
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        let heads = ctx.heads.ok_or(Error::MissingCapability {
            component: "HeadsProposer",
            capability: "proposal-head outputs",
        })?;
        Ok(heads.iter().take(ctx.max_tokens).copied().collect())
    }

    fn needs_heads(&self) -> bool {
        true
    }
}
