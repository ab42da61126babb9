//! Proposers: where the block's guesses come from.
//!
//! A proposer sees the committed tokens and the base model's next greedy token (which the
//! decoder always places first in the block) and proposes up to `max_tokens` tokens that follow
//! it. A closure `FnMut(&ProposalContext) -> Vec<i64>` becomes a proposer through [`from_fn`].

mod chain;
mod config;
mod corpus;
mod draft;
mod heads;
mod lookahead;
mod ngram;

pub use chain::Chain;
pub use config::{ProposerConfig, RowProposers, SHIPPED_CORPUS_FILE};
pub use corpus::{CorpusIndex, CorpusLookup, MAX_CORPUS_NGRAM};
pub use draft::DraftModel;
pub use heads::HeadsProposer;
pub use lookahead::Lookahead;
pub use ngram::{NGram, MAX_NGRAM};

use crate::error::Result;
use crate::sampling::Sampler;
use crate::verifier::LogitRows;

/// What a proposer may read when proposing.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ProposalContext<'a> {
    /// Prompt plus every token accepted so far.
    pub tokens: &'a [i64],
    /// The base model's token after `tokens` (its argmax, or its draw under sampling): the
    /// block's first, always-right token. Proposals continue after it.
    pub next: i64,
    /// The argmax of each proposal head at the last committed position, when the proposer asked
    /// for head outputs ([`Proposer::needs_heads`]): `heads[h]` guesses the token `h + 1` places
    /// after `next`.
    pub heads: Option<&'a [i64]>,
    /// Under sampling, each proposal head's logits at the last committed position (one row per
    /// head), when the proposer asked for head outputs.
    pub head_logits: Option<&'a LogitRows>,
    /// The most tokens the block has room for after `next`. Extra tokens are ignored.
    pub max_tokens: usize,
}

impl<'a> ProposalContext<'a> {
    /// A context without head outputs.
    pub fn new(tokens: &'a [i64], next: i64, max_tokens: usize) -> Self {
        ProposalContext {
            tokens,
            next,
            heads: None,
            head_logits: None,
            max_tokens,
        }
    }

    /// The same context with head outputs.
    pub fn with_heads(mut self, heads: Option<&'a [i64]>) -> Self {
        self.heads = heads;
        self
    }

    /// The same context with the heads' logits (under sampling).
    pub fn with_head_logits(mut self, logits: Option<&'a LogitRows>) -> Self {
        self.head_logits = logits;
        self
    }
}

/// Proposed tokens, with the distributions they were drawn from when they were sampled.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Proposal {
    /// The proposed tokens.
    pub tokens: Vec<i64>,
    /// `probs[i]`: the distribution over the vocabulary that `tokens[i]` was drawn from. `None`:
    /// the tokens were chosen deterministically (each is a point mass), which lossless
    /// acceptance handles exactly too.
    pub probs: Option<Vec<Vec<f64>>>,
}

impl Proposal {
    /// Deterministic proposals (point masses).
    pub fn points(tokens: Vec<i64>) -> Self {
        Proposal {
            tokens,
            probs: None,
        }
    }

    /// Proposals drawn from `probs` (one distribution per token).
    pub fn sampled(tokens: Vec<i64>, probs: Vec<Vec<f64>>) -> Self {
        Proposal {
            tokens,
            probs: Some(probs),
        }
    }

    /// Keeps the first `n` proposals.
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
        if let Some(p) = &mut self.probs {
            p.truncate(n);
        }
    }

    /// Number of proposed tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing was proposed.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Proposes the tokens that follow the base model's next greedy token.
pub trait Proposer {
    /// Up to `ctx.max_tokens` guesses for the tokens after `ctx.next`.
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>>;

    /// Under sampling: up to `ctx.max_tokens` proposals, drawn with `sampler` from the
    /// proposer's own distributions when it has them and [`Sampler::samples_proposals`] asks
    /// for it. The default proposes [`Proposer::propose`]'s tokens as point masses, which
    /// lossless acceptance handles exactly.
    fn propose_sampled(
        &mut self,
        ctx: &ProposalContext<'_>,
        sampler: &mut Sampler<'_>,
    ) -> Result<Proposal> {
        let _ = sampler;
        Ok(Proposal::points(self.propose(ctx)?))
    }

    /// Whether the decoder should run the model's proposal heads and pass their argmax in
    /// [`ProposalContext::heads`] (the combined scoring and proposal path).
    fn needs_heads(&self) -> bool {
        false
    }

    /// What kind of proposal the last [`Proposer::propose`] returned (default 0): a small
    /// number that block policies use to keep acceptance statistics apart, for example the
    /// n-gram proposer's match length, since a long match is more often right than a short one.
    fn kind(&self) -> usize {
        0
    }

    /// Called once per decode with the prompt, before the first proposal.
    fn begin(&mut self, prompt: &[i64]) -> Result<()> {
        let _ = prompt;
        Ok(())
    }

    /// Called after each iteration with the tokens it accepted (the block's first token
    /// included).
    fn observe(&mut self, accepted: &[i64]) -> Result<()> {
        let _ = accepted;
        Ok(())
    }

    /// A tree of guesses under `ctx.next` of at most `nodes` nodes and `ctx.max_tokens`
    /// levels, for decoders that verify trees ([`BatchBlockwise`](crate::BatchBlockwise) with
    /// a dynamic tree). `Ok(None)` (the default): this proposer builds no trees, and the
    /// decoder verifies its [`Proposer::propose`] chain instead.
    fn propose_tree(
        &mut self,
        ctx: &ProposalContext<'_>,
        nodes: usize,
    ) -> Result<Option<crate::decoder::DraftTree>> {
        let _ = (ctx, nodes);
        Ok(None)
    }

    /// Whether the decoder should hand over the base model's final hidden states of every
    /// committed token ([`Proposer::observe_hidden`]): what feature-level drafts read.
    fn needs_hidden(&self) -> bool {
        false
    }

    /// When [`Proposer::needs_hidden`]: the base model's final hidden states `[n, D]` of the `n`
    /// tokens just committed — the prompt's after the prompt pass, then each iteration's
    /// accepted tokens — in order, so that over a decode every committed position is handed
    /// over exactly once (except a last token emitted without a model call,
    /// [`DecodeStats::skipped_calls`](crate::DecodeStats): nothing follows it). Row `i` is the state after the `i`-th of those tokens (the one the
    /// vocabulary projection reads to score the token after it). Called before
    /// [`Proposer::observe`] and before the next proposal.
    fn observe_hidden(&mut self, hidden: &tch::Tensor) -> Result<()> {
        let _ = hidden;
        Ok(())
    }

    /// After each verify call, before [`Proposer::observe`]: the block the decoder just
    /// verified under its first token, as a tree (`tree`; a chain is a tree whose node `i` hangs
    /// under node `i - 1`), and the base model's greedy token after the first token
    /// (`greedy[0]`) and after each node (`greedy[i + 1]`). What the model said about guesses
    /// that were rejected: lookahead decoding builds its n-gram pool from it. The default
    /// ignores it.
    fn observe_tree(&mut self, tree: &crate::decoder::DraftTree, greedy: &[i64]) -> Result<()> {
        let _ = (tree, greedy);
        Ok(())
    }

    /// A proposer for another sequence that shares this one's read-only parts (a draft's
    /// weights) and none of its per-sequence state, when it can make one cheaply; `None` (the
    /// default): build another from its configuration. Batches and servers ask it for every
    /// admitted row ([`ProposerConfig::row_proposers`](crate::config::ProposerConfig::row_proposers)),
    /// so a proposer that loads or packs weights should fork.
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        None
    }
}

/// A proposer made from a closure (see [`from_fn`]).
pub struct FnProposer<F>(F);

impl<F> std::fmt::Debug for FnProposer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnProposer(..)")
    }
}

/// Turns `FnMut(&ProposalContext) -> Vec<i64>` into a proposer.
///
/// ```
/// use blockwise::proposer::{from_fn, ProposalContext, Proposer};
/// // Guess that the next token repeats.
/// let mut repeat = from_fn(|ctx: &ProposalContext<'_>| vec![ctx.next; ctx.max_tokens]);
/// let guess = repeat.propose(&ProposalContext::new(&[1, 2], 7, 3)).unwrap();
/// assert_eq!(guess, vec![7, 7, 7]);
/// ```
pub fn from_fn<F: FnMut(&ProposalContext<'_>) -> Vec<i64>>(f: F) -> FnProposer<F> {
    FnProposer(f)
}

impl<F: FnMut(&ProposalContext<'_>) -> Vec<i64>> Proposer for FnProposer<F> {
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        Ok((self.0)(ctx))
    }
}

impl<P: Proposer + ?Sized> Proposer for Box<P> {
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        (**self).propose(ctx)
    }
    fn propose_sampled(
        &mut self,
        ctx: &ProposalContext<'_>,
        sampler: &mut Sampler<'_>,
    ) -> Result<Proposal> {
        (**self).propose_sampled(ctx, sampler)
    }
    fn needs_heads(&self) -> bool {
        (**self).needs_heads()
    }
    fn kind(&self) -> usize {
        (**self).kind()
    }
    fn begin(&mut self, prompt: &[i64]) -> Result<()> {
        (**self).begin(prompt)
    }
    fn observe(&mut self, accepted: &[i64]) -> Result<()> {
        (**self).observe(accepted)
    }
    fn needs_hidden(&self) -> bool {
        (**self).needs_hidden()
    }
    fn propose_tree(
        &mut self,
        ctx: &ProposalContext<'_>,
        nodes: usize,
    ) -> Result<Option<crate::decoder::DraftTree>> {
        (**self).propose_tree(ctx, nodes)
    }
    fn observe_hidden(&mut self, hidden: &tch::Tensor) -> Result<()> {
        (**self).observe_hidden(hidden)
    }
    fn observe_tree(&mut self, tree: &crate::decoder::DraftTree, greedy: &[i64]) -> Result<()> {
        (**self).observe_tree(tree, greedy)
    }
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        (**self).fork()
    }
}

/// Proposes nothing: every block is the one greedy token (plain greedy decoding through the
/// blockwise loop).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProposer;

impl Proposer for NoProposer {
    fn propose(&mut self, _ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        Ok(Vec::new())
    }

    fn fork(&self) -> Option<Box<dyn Proposer>> {
        Some(Box::new(NoProposer))
    }
}
