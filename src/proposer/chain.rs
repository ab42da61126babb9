//! A fallback chain of proposers.

use super::{Proposal, ProposalContext, Proposer};
use crate::error::Result;
use crate::sampling::Sampler;

/// Asks each proposer in turn and uses the first non-empty proposal (for example n-gram lookup
/// first, the model's heads when nothing matches). Every member sees `begin` and `observe`
/// (and, when it reads them, the hidden states of every committed token).
pub struct Chain {
    members: Vec<Box<dyn Proposer>>,
    /// The member whose proposal was used last.
    last: usize,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("members", &self.members.len())
            .finish()
    }
}

impl Chain {
    /// The members, first asked first.
    pub fn new(members: Vec<Box<dyn Proposer>>) -> Self {
        Chain { members, last: 0 }
    }
}

impl Proposer for Chain {
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        for (i, p) in self.members.iter_mut().enumerate() {
            let proposal = p.propose(ctx)?;
            if !proposal.is_empty() {
                self.last = i;
                return Ok(proposal);
            }
        }
        Ok(Vec::new())
    }

    fn propose_sampled(
        &mut self,
        ctx: &ProposalContext<'_>,
        sampler: &mut Sampler<'_>,
    ) -> Result<Proposal> {
        for (i, p) in self.members.iter_mut().enumerate() {
            let proposal = p.propose_sampled(ctx, sampler)?;
            if !proposal.is_empty() {
                self.last = i;
                return Ok(proposal);
            }
        }
        Ok(Proposal::default())
    }

    /// The member that proposed and its kind: `16 * member + kind` (kinds above 15 share 15).
    fn kind(&self) -> usize {
        16 * self.last + self.members[self.last].kind().min(15)
    }

    fn needs_heads(&self) -> bool {
        self.members.iter().any(|p| p.needs_heads())
    }

    fn begin(&mut self, prompt: &[i64]) -> Result<()> {
        self.members.iter_mut().try_for_each(|p| p.begin(prompt))
    }

    fn observe(&mut self, accepted: &[i64]) -> Result<()> {
        self.members
            .iter_mut()
            .try_for_each(|p| p.observe(accepted))
    }

    fn needs_hidden(&self) -> bool {
        self.members.iter().any(|p| p.needs_hidden())
    }

    /// The first member's tree that holds a node.
    fn propose_tree(
        &mut self,
        ctx: &ProposalContext<'_>,
        nodes: usize,
    ) -> Result<Option<crate::decoder::DraftTree>> {
        for (i, p) in self.members.iter_mut().enumerate() {
            if let Some(tree) = p.propose_tree(ctx, nodes)? {
                if !tree.is_empty() {
                    self.last = i;
                    return Ok(Some(tree));
                }
            }
        }
        Ok(None)
    }

    /// The member whose proposal was verified hears what the model said about it.
    fn observe_tree(&mut self, tree: &crate::decoder::DraftTree, greedy: &[i64]) -> Result<()> {
        self.members[self.last].observe_tree(tree, greedy)
    }

    /// A chain of the members' forks, when every member forks.
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        let members = self
            .members
            .iter()
            .map(|m| m.fork())
            .collect::<Option<Vec<_>>>()?;
        Some(Box::new(Chain { members, last: 0 }))
    }

    /// Every member that reads hidden states gets them, whichever member proposes.
    fn observe_hidden(&mut self, hidden: &tch::Tensor) -> Result<()> {
        self.members
            .iter_mut()
            .filter(|p| p.needs_hidden())
            .try_for_each(|p| p.observe_hidden(hidden))
    }
}
