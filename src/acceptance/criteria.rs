//! The token-identity criteria: exact, top-k and a minimum block size.

use super::{longest_prefix, lossless, AcceptanceCriterion, BlockView, Draw, SampledView, Verdict};
use crate::error::{Error, Result};

/// Accept a proposal only when it is the base model's argmax: lossless, the output equals greedy
/// decoding. Under sampling it is the lossless rule of speculative sampling ([`lossless`]): the
/// output has the base model's distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exact;

impl AcceptanceCriterion for Exact {
    fn accept(&self, view: &BlockView<'_>) -> usize {
        longest_prefix(view.len(), |i| view.proposed()[i] == view.greedy(i))
    }

    fn supports_sampling(&self) -> bool {
        true
    }

    fn accept_sampled(&self, view: &SampledView<'_>) -> Verdict {
        lossless(view)
    }
}

/// Accept a proposal when it is among the base model's `n` best tokens (Stern et al. §5).
/// `TopK(1)` is [`Exact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK {
    n: usize,
}

impl TopK {
    /// Top-`n` acceptance; `n` must be at least 1.
    pub fn new(n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::config(
                "top_k",
                "must be at least 1 (1 is exact acceptance)",
            ));
        }
        Ok(TopK { n })
    }

    /// The `n` of top-`n`.
    pub fn n(&self) -> usize {
        self.n
    }
}

impl AcceptanceCriterion for TopK {
    fn candidates_needed(&self) -> usize {
        self.n
    }

    fn accept(&self, view: &BlockView<'_>) -> usize {
        longest_prefix(view.len(), |i| {
            let cands = view.candidates(i);
            cands[..self.n.min(cands.len())].contains(&view.proposed()[i])
        })
    }
}

/// Always accept at least `l` tokens per block (counting the always-right first token), and
/// more when the inner criterion accepts more (Stern et al. §5). `MinBlock(1)` changes nothing.
#[derive(Debug, Clone)]
pub struct MinBlock<C> {
    min: usize,
    inner: C,
}

impl<C: AcceptanceCriterion> MinBlock<C> {
    /// Wraps `inner`; `min` must be at least 1.
    pub fn new(min: usize, inner: C) -> Result<Self> {
        if min == 0 {
            return Err(Error::config(
                "min_block",
                "must be at least 1 (every block keeps its first token)",
            ));
        }
        Ok(MinBlock { min, inner })
    }
}

impl<C: AcceptanceCriterion> AcceptanceCriterion for MinBlock<C> {
    fn candidates_needed(&self) -> usize {
        self.inner.candidates_needed()
    }

    fn accept(&self, view: &BlockView<'_>) -> usize {
        let forced = (self.min - 1).min(view.len());
        self.inner.accept(view).max(forced)
    }

    fn supports_sampling(&self) -> bool {
        self.inner.supports_sampling()
    }

    fn samples_proposals(&self) -> bool {
        self.inner.samples_proposals()
    }

    /// The inner verdict, or at least `min - 1` proposals with the next token drawn from the
    /// base model.
    fn accept_sampled(&self, view: &SampledView<'_>) -> Verdict {
        let forced = (self.min - 1).min(view.len());
        let inner = self.inner.accept_sampled(view);
        if inner.accepted >= forced {
            inner
        } else {
            Verdict {
                accepted: forced,
                next: Draw::Target,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(proposed: &'a [i64], ranked: &'a [i64], width: usize) -> BlockView<'a> {
        BlockView::new(proposed, ranked, width).unwrap()
    }

    #[test]
    fn exact_keeps_the_matching_prefix() {
        let v = view(&[5, 6, 7], &[5, 6, 9], 1);
        assert_eq!(Exact.accept(&v), 2);
        let v = view(&[1, 6, 7], &[5, 6, 7], 1);
        assert_eq!(Exact.accept(&v), 0);
        let v = view(&[], &[], 1);
        assert_eq!(Exact.accept(&v), 0);
    }

    #[test]
    fn top_k_accepts_runners_up() {
        // rows: [best, second]
        let ranked = [5, 1, 2, 6, 9, 3];
        let v = view(&[1, 6, 7], &ranked, 2);
        assert_eq!(TopK::new(2).unwrap().accept(&v), 2);
        assert_eq!(TopK::new(1).unwrap().accept(&v), 0);
        assert!(TopK::new(0).is_err());
    }

    #[test]
    fn min_block_forces_a_floor() {
        let v = view(&[1, 2, 3], &[9, 9, 9], 1);
        assert_eq!(MinBlock::new(3, Exact).unwrap().accept(&v), 2);
        assert_eq!(MinBlock::new(10, Exact).unwrap().accept(&v), 3);
        assert_eq!(MinBlock::new(1, Exact).unwrap().accept(&v), 0);
        assert!(MinBlock::new(0, Exact).is_err());
    }

    #[test]
    fn closures_are_criteria() {
        let all = super::super::from_fn(|v: &BlockView<'_>| v.len());
        let v = view(&[1, 2], &[0, 0], 1);
        assert_eq!(all.accept(&v), 2);
    }
}
