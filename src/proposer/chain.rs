//! A fallback chain of proposers.

use super::{Proposal, ProposalContext, Proposer};
use crate::decoder::DraftTree;
use crate::error::Result;
use crate::sampling::Sampler;

/// Asks each proposer in turn and uses the first non-empty proposal (for example n-gram lookup
/// first, the model's heads when nothing matches). Every member sees `begin` and `observe`
/// (and, when it reads them, the hidden states of every committed token).
///
/// In a dynamic tree ([`Proposer::propose_tree`]) the members' guesses are verified together
/// instead, merged where they share a prefix: in member order, a member that builds trees
/// (a feature draft, lookahead, corpus lookup) fills the node budget left when it is the last
/// member and at most half of it otherwise, and one that builds none (n-gram lookup, heads, a
/// draft model) adds its chain, at most half the budget left. So `chain:ngram,eagle` verifies
/// lookup's continuation beside the feature draft's tree, and `chain:ngram,corpus,eagle` gives
/// corpus lookup's tree at most half of what lookup leaves and the draft the rest. With nothing
/// proposed there is no tree, and the decoder verifies [`Proposer::propose`]'s (empty) chain.
pub struct Chain {
    members: Vec<Box<dyn Proposer>>,
    /// The member whose proposal was used last.
    last: usize,
    /// The members whose guesses went into the last tree.
    in_tree: Vec<usize>,
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
        Chain {
            members,
            last: 0,
            in_tree: Vec::new(),
        }
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

    /// Every member's guesses in one tree (the type's docs): `nodes` at most.
    fn propose_tree(
        &mut self,
        ctx: &ProposalContext<'_>,
        nodes: usize,
    ) -> Result<Option<DraftTree>> {
        let mut tree = DraftTree::chain(&[]);
        self.in_tree.clear();
        let mut built = false;
        let members = self.members.len();
        for (i, p) in self.members.iter_mut().enumerate() {
            let left = nodes - tree.len();
            if left == 0 {
                break;
            }
            // A member that builds trees fills what is left when it is the last, else at most
            // half of it, so that the members after it have room.
            let share = if i + 1 == members {
                left
            } else {
                left.div_ceil(2)
            };
            let added = match p.propose_tree(ctx, share)? {
                Some(t) => {
                    built = true;
                    merge(&mut tree, &t, share)
                }
                None => {
                    let mut guess = p.propose(ctx)?;
                    guess.truncate(ctx.max_tokens);
                    merge(&mut tree, &DraftTree::chain(&guess), left.div_ceil(2))
                }
            };
            if added > 0 {
                if self.in_tree.is_empty() {
                    self.last = i;
                }
                self.in_tree.push(i);
            }
        }
        // Nothing proposed: the decoder verifies the fallback chain instead.
        Ok((built || !tree.is_empty()).then_some(tree))
    }

    /// Every member whose guesses were verified hears what the model said about the block.
    fn observe_tree(&mut self, tree: &DraftTree, greedy: &[i64]) -> Result<()> {
        let members = if self.in_tree.is_empty() {
            vec![self.last]
        } else {
            self.in_tree.clone()
        };
        members
            .into_iter()
            .try_for_each(|i| self.members[i].observe_tree(tree, greedy))
    }

    /// A chain of the members' forks, when every member forks.
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        let members = self
            .members
            .iter()
            .map(|m| m.fork())
            .collect::<Option<Vec<_>>>()?;
        Some(Box::new(Chain::new(members)))
    }

    /// Every member that reads hidden states gets them, whichever member proposes.
    fn observe_hidden(&mut self, hidden: &tch::Tensor) -> Result<()> {
        self.members
            .iter_mut()
            .filter(|p| p.needs_hidden())
            .try_for_each(|p| p.observe_hidden(hidden))
    }
}

/// Adds the nodes of `from` that `into` lacks (the same token under the same parent is one
/// node), at most `limit` of them, parents before children; a node left out leaves out what
/// hangs under it. Returns how many were added.
fn merge(into: &mut DraftTree, from: &DraftTree, limit: usize) -> usize {
    let mut added = 0;
    // Where each node of `from` is in `into` (index + 1; 0 for the root), None when left out.
    let mut at: Vec<Option<usize>> = vec![Some(0)];
    for (&token, &parent) in from.tokens.iter().zip(&from.parents) {
        let placed = at.get(parent).copied().flatten().and_then(|p| {
            let same = (0..into.len()).find(|&j| into.parents[j] == p && into.tokens[j] == token);
            same.map(|j| j + 1).or_else(|| {
                (added < limit).then(|| {
                    into.tokens.push(token);
                    into.parents.push(p);
                    added += 1;
                    into.len()
                })
            })
        });
        at.push(placed);
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposer::{from_fn, NGram};

    /// A member that builds trees: under the next token, `a` then `b` beside `c`.
    struct Fixed(DraftTree);

    impl Proposer for Fixed {
        fn propose(&mut self, _ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
            Ok(self.0.tokens[..1].to_vec())
        }

        fn propose_tree(
            &mut self,
            _ctx: &ProposalContext<'_>,
            nodes: usize,
        ) -> Result<Option<DraftTree>> {
            let n = nodes.min(self.0.len());
            Ok(Some(DraftTree {
                tokens: self.0.tokens[..n].to_vec(),
                parents: self.0.parents[..n].to_vec(),
            }))
        }
    }

    fn tree(tokens: &[i64], parents: &[usize]) -> DraftTree {
        DraftTree {
            tokens: tokens.to_vec(),
            parents: parents.to_vec(),
        }
    }

    #[test]
    fn merging_shares_prefixes_and_keeps_to_the_limit() {
        let mut t = tree(&[5, 6, 7], &[0, 1, 1]);
        // 5 -> 6 is there; 5 -> 8 and 8 -> 9 are new.
        assert_eq!(merge(&mut t, &DraftTree::chain(&[5, 8, 9]), 4), 2);
        assert_eq!(t, tree(&[5, 6, 7, 8, 9], &[0, 1, 1, 1, 4]));
        // At most one new node: 4 is added, what hangs under it is not.
        let mut t = tree(&[5], &[0]);
        assert_eq!(merge(&mut t, &DraftTree::chain(&[4, 3, 2]), 1), 1);
        assert_eq!(t, tree(&[5, 4], &[0, 0]));
        // Nothing new.
        assert_eq!(merge(&mut t, &DraftTree::chain(&[5]), 3), 0);
    }

    #[test]
    fn a_tree_holds_every_members_guesses_within_the_budget() {
        // Lookup finds "1 2" after "1 2" once before: it proposes what followed, 3 4 ...
        let context = [1i64, 2, 3, 4, 9, 1];
        let ctx = ProposalContext::new(&context, 2, 4);
        let members: Vec<Box<dyn Proposer>> = vec![
            Box::new(NGram::new(1, 3).unwrap()),
            Box::new(Fixed(tree(&[3, 7, 8, 6], &[0, 1, 1, 0]))),
        ];
        let mut chain = Chain::new(members);
        chain.begin(&context).unwrap();
        let t = chain.propose_tree(&ctx, 6).unwrap().unwrap();
        // Lookup's chain 3 4 9 takes at most 3 of 6 nodes; the tree member builds a tree of
        // the 3 left, 3 7 8, whose 3 is lookup's: it adds 7 and 8.
        assert_eq!(t, tree(&[3, 4, 9, 7, 8], &[0, 1, 2, 1, 1]));
        assert_eq!(chain.in_tree, vec![0, 1]);
        // A small budget: lookup gets half (rounded up), the tree member the rest: its one
        // node is lookup's first.
        let t = chain.propose_tree(&ctx, 3).unwrap().unwrap();
        assert_eq!(t, tree(&[3, 4], &[0, 1]));
        let t = chain.propose_tree(&ctx, 4).unwrap().unwrap();
        assert_eq!(t, tree(&[3, 4, 7], &[0, 1, 1]));
        // Members without trees of their own: their chains, each at most half the budget left.
        let mut plain = Chain::new(vec![
            Box::new(NGram::new(1, 3).unwrap()) as Box<dyn Proposer>,
            Box::new(from_fn(|_: &ProposalContext<'_>| vec![5, 6])),
        ]);
        plain.begin(&context).unwrap();
        let t = plain.propose_tree(&ctx, 8).unwrap().unwrap();
        // (Lookup's continuation, 3 4 9 1, fits in half of 8.)
        assert_eq!(t, tree(&[3, 4, 9, 1, 5, 6], &[0, 1, 2, 3, 0, 5]));
        // Nothing proposed: no tree (the decoder verifies the fallback chain, empty too).
        let mut none = Chain::new(vec![
            Box::new(from_fn(|_: &ProposalContext<'_>| vec![])) as Box<dyn Proposer>
        ]);
        assert_eq!(none.propose_tree(&ctx, 8).unwrap(), None);
    }

    #[test]
    fn a_tree_member_before_another_takes_at_most_half() {
        let context = [1i64];
        let ctx = ProposalContext::new(&context, 2, 4);
        let members: Vec<Box<dyn Proposer>> = vec![
            Box::new(Fixed(tree(&[3, 4, 5, 6], &[0, 1, 2, 3]))),
            Box::new(Fixed(tree(&[7, 8, 9], &[0, 0, 0]))),
        ];
        let mut chain = Chain::new(members);
        // 5 nodes: the first member 3 of them (half, rounded up), the last the 2 left.
        let t = chain.propose_tree(&ctx, 5).unwrap().unwrap();
        assert_eq!(t, tree(&[3, 4, 5, 7, 8], &[0, 1, 2, 0, 0]));
        assert_eq!(chain.in_tree, vec![0, 1]);
        // Alone, a tree member fills the budget.
        let mut alone = Chain::new(vec![
            Box::new(Fixed(tree(&[3, 4, 5, 6], &[0, 1, 2, 3]))) as Box<dyn Proposer>
        ]);
        assert_eq!(alone.propose_tree(&ctx, 4).unwrap().unwrap().len(), 4);
    }
}
