//! Proposers: where the block's guesses come from.
//!
//! A proposer sees the committed tokens and the base model's next greedy token (which the
//! decoder always places first in the block) and proposes up to `max_tokens` tokens that follow
//! it. A closure `FnMut(&ProposalContext) -> Vec<i64>` becomes a proposer through [`from_fn`].

mod chain;
mod draft;
mod heads;
mod ngram;

pub use chain::Chain;
pub use draft::DraftModel;
pub use heads::HeadsProposer;
pub use ngram::NGram;

use crate::error::Result;

/// What a proposer may read when proposing.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ProposalContext<'a> {
    /// Prompt plus every token accepted so far.
    pub tokens: &'a [i64],
    /// The base model's greedy token after `tokens`: the block's first, always-right token.
    /// Proposals continue after it.
    pub next: i64,
    /// The argmax of each proposal head at the last committed position, when the proposer asked
    /// for head outputs ([`Proposer::needs_heads`]): `heads[h]` guesses the token `h + 1` places
    /// after `next`.
    pub heads: Option<&'a [i64]>,
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
            max_tokens,
        }
    }

    /// The same context with head outputs.
    pub fn with_heads(mut self, heads: Option<&'a [i64]>) -> Self {
        self.heads = heads;
        self
    }
}

/// Proposes the tokens that follow the base model's next greedy token.
pub trait Proposer {
    /// Up to `ctx.max_tokens` guesses for the tokens after `ctx.next`.
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>>;

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
}

/// Proposes nothing: every block is the one greedy token (plain greedy decoding through the
/// blockwise loop).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProposer;

impl Proposer for NoProposer {
    fn propose(&mut self, _ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        Ok(Vec::new())
    }
}
