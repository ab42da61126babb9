//! Speculative decoding with a draft model: a smaller model of the same vocabulary drafts the
//! block greedily, against its own KV cache.

use tch::Tensor;

use super::{Proposal, ProposalContext, Proposer};
use crate::error::{Error, Result};
use crate::model::{check_output, token_tensor, CausalLm};
use crate::sampling::Sampler;
use crate::verifier::{rank_rows, LogitRows};

/// Drafts up to `k - 1` tokens greedily with any [`CausalLm`] of the verifier's vocabulary.
/// Under sampling (when the criterion asks for sampled proposals) it draws each token from its
/// own warped distribution instead, and hands that distribution to lossless acceptance.
///
/// The draft keeps its own cache. Before each proposal it is rolled back to the longest prefix
/// it shares with the accepted sequence (an O(1) truncate) and fed only what it has not seen, so
/// rejected drafts cost nothing to undo.
pub struct DraftModel<M> {
    draft: M,
    /// The tokens whose keys and values the draft's cache holds, in order.
    seen: Vec<i64>,
}

impl<M> std::fmt::Debug for DraftModel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel")
            .field("cached", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl<M: CausalLm> DraftModel<M> {
    /// A draft proposer for a verifier whose vocabulary has `target_vocab` tokens. A draft with
    /// another vocabulary size is refused with [`Error::VocabularyMismatch`]; a draft without a
    /// cache with [`Error::MissingCapability`].
    pub fn new(draft: M, target_vocab: i64) -> Result<Self> {
        let info = draft.info();
        if info.vocab_size != target_vocab {
            return Err(Error::VocabularyMismatch {
                left: "draft model",
                left_size: info.vocab_size,
                right: "verified model",
                right_size: target_vocab,
            });
        }
        if !info.has_cache {
            return Err(Error::MissingCapability {
                component: "DraftModel",
                capability: "a draft model with a KV cache",
            });
        }
        Ok(DraftModel {
            draft,
            seen: Vec::new(),
        })
    }

    /// The draft model back.
    pub fn into_inner(self) -> M {
        self.draft
    }

    /// Feeds `tokens` at `start` and returns the draft's logits after the last one
    /// (`[1, T, V]`).
    fn step(&mut self, tokens: &[i64], start: usize) -> Result<Tensor> {
        let info = self.draft.info().clone();
        let out = self
            .draft
            .forward(&token_tensor(tokens, info.device), start)?;
        check_output(&out, tokens.len(), info.vocab_size)?;
        self.seen.truncate(start);
        self.seen.extend_from_slice(tokens);
        Ok(out.logits)
    }

    /// Drafts up to `ctx.max_tokens` tokens, choosing each from the draft's logits with `pick`
    /// (which returns the token and, when sampling, its distribution).
    fn draft_with(
        &mut self,
        ctx: &ProposalContext<'_>,
        mut pick: impl FnMut(&Tensor, usize) -> Result<(i64, Option<Vec<f64>>)>,
    ) -> Result<Proposal> {
        let max_context = self.draft.info().max_context;
        let len = ctx.tokens.len() + 1; // the context plus `next`
                                        // Room in the draft's context: it must see the context, `next` and all drafted tokens
                                        // but the last.
        let n = ctx.max_tokens.min((max_context + 1).saturating_sub(len));
        let mut proposal = Proposal::points(Vec::with_capacity(n));
        if n == 0 {
            return Ok(proposal);
        }
        let shared = self
            .seen
            .iter()
            .zip(ctx.tokens.iter().chain(std::iter::once(&ctx.next)))
            .take_while(|(a, b)| a == b)
            .count()
            .min(len - 1); // always feed at least `next`
        let mut fresh: Vec<i64> = ctx.tokens[shared.min(ctx.tokens.len())..].to_vec();
        fresh.push(ctx.next);
        let mut logits = self.step(&fresh, shared)?;
        loop {
            let i = proposal.tokens.len();
            let (token, q) = pick(&logits, i)?;
            proposal.tokens.push(token);
            if let Some(q) = q {
                proposal.probs.get_or_insert_with(Vec::new).push(q);
            }
            if proposal.tokens.len() == n {
                return Ok(proposal);
            }
            let pos = self.seen.len();
            logits = self.step(&[token], pos)?;
        }
    }
}

impl<M: CausalLm> Proposer for DraftModel<M> {
    fn begin(&mut self, _prompt: &[i64]) -> Result<()> {
        self.seen.clear();
        Ok(())
    }

    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        let proposal = self.draft_with(ctx, |logits, _| {
            Ok((rank_rows(logits, 1, 1)?.greedy(0), None))
        })?;
        Ok(proposal.tokens)
    }

    fn propose_sampled(
        &mut self,
        ctx: &ProposalContext<'_>,
        sampler: &mut Sampler<'_>,
    ) -> Result<Proposal> {
        if !sampler.samples_proposals() {
            return Ok(Proposal::points(self.propose(ctx)?));
        }
        self.draft_with(ctx, |logits, i| {
            let rows = LogitRows::from_tensor(logits, 1)?;
            let q = sampler.probabilities(rows.row(0).unwrap_or_default(), i + 1)?;
            Ok((sampler.draw(&q), Some(q)))
        })
    }
}
