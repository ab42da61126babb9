//! Acceptance criteria: how many proposed tokens to keep, decided from the base model's scores.
//!
//! The decision is pure: plain slices in, a count out, so every criterion is unit-testable
//! without libtorch. The decoder moves the scores to the host once per iteration.

mod criteria;
mod distance;
mod sampled;

pub use criteria::{Exact, MinBlock, TopK};
pub(crate) use sampled::LazyTargets;
pub use sampled::{lossless, Draw, Lossless, SampledView, Typical, Verdict};

pub use distance::{Distance, DistanceMetric, EmbeddingDistance, EmbeddingNorm};

/// The base model's verdict on one block, as plain host data.
///
/// A block is `[next, p_0, p_1, ..., p_{m-1}]`: `next` is the base model's own greedy token
/// (always right) followed by `m` proposed tokens. `candidates(i)` lists the base model's best
/// tokens, best first, for the position of `p_i` (that is, after block position `i`), and
/// `greedy(i)` is its argmax.
#[derive(Debug, Clone, Copy)]
pub struct BlockView<'a> {
    proposed: &'a [i64],
    ranked: &'a [i64],
    width: usize,
}

impl<'a> BlockView<'a> {
    /// A view over `proposed` (`m` tokens) and `ranked`, which holds at least `m` rows of
    /// `width` candidates each, row-major. Returns `None` when the sizes do not fit.
    pub fn new(proposed: &'a [i64], ranked: &'a [i64], width: usize) -> Option<Self> {
        if width == 0 || ranked.len() < proposed.len() * width {
            return None;
        }
        Some(BlockView {
            proposed,
            ranked,
            width,
        })
    }

    /// The proposed tokens (the block without its first, always-right token).
    pub fn proposed(&self) -> &'a [i64] {
        self.proposed
    }

    /// Number of proposed tokens.
    pub fn len(&self) -> usize {
        self.proposed.len()
    }

    /// Whether nothing was proposed.
    pub fn is_empty(&self) -> bool {
        self.proposed.is_empty()
    }

    /// The base model's ranked candidates (best first) for the position of proposal `i`.
    pub fn candidates(&self, i: usize) -> &'a [i64] {
        &self.ranked[i * self.width..(i + 1) * self.width]
    }

    /// The base model's greedy token for the position of proposal `i`.
    pub fn greedy(&self, i: usize) -> i64 {
        self.ranked[i * self.width]
    }
}

/// Decides how many leading proposed tokens to accept.
///
/// Return a count `c <= view.len()`: the decoder keeps the always-right first token plus the
/// first `c` proposals. Criteria must accept a prefix: proposal `i` may only be kept if every
/// proposal before it is.
///
/// A closure becomes a criterion through [`from_fn`].
///
/// Under sampling the decoder calls [`AcceptanceCriterion::accept_sampled`] instead, and only
/// for criteria whose [`AcceptanceCriterion::supports_sampling`] is true ([`Exact`], which is
/// [`Lossless`] there, and [`Typical`]); the others are refused before decoding starts.
pub trait AcceptanceCriterion {
    /// How many ranked candidates per position the criterion reads (1: the argmax only).
    fn candidates_needed(&self) -> usize {
        1
    }

    /// The number of leading proposals to accept.
    fn accept(&self, view: &BlockView<'_>) -> usize;

    /// Whether the criterion is defined under sampling (default `false`).
    fn supports_sampling(&self) -> bool {
        false
    }

    /// Under sampling: whether proposers should draw their proposals from their own
    /// distributions (`true`, the default: what lossless acceptance gains from) or propose their
    /// most likely tokens.
    fn samples_proposals(&self) -> bool {
        true
    }

    /// Under sampling: how many leading proposals to accept and where the next token is drawn
    /// from. The default accepts nothing and draws from the base model, which is plain sampling.
    fn accept_sampled(&self, view: &SampledView<'_>) -> Verdict {
        let _ = view;
        Verdict {
            accepted: 0,
            next: Draw::Target,
        }
    }
}

/// A criterion made from a closure (see [`from_fn`]).
#[derive(Clone, Copy)]
pub struct FnCriterion<F>(F);

impl<F> std::fmt::Debug for FnCriterion<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCriterion(..)")
    }
}

/// Turns `Fn(&BlockView) -> usize` into a criterion.
///
/// ```
/// use blockwise::acceptance::{from_fn, AcceptanceCriterion, BlockView};
/// // Accept every proposal whose id is within 3 of the argmax.
/// let near = from_fn(|v: &BlockView<'_>| {
///     (0..v.len()).take_while(|&i| (v.proposed()[i] - v.greedy(i)).abs() <= 3).count()
/// });
/// let view = BlockView::new(&[10, 20], &[12, 30], 1).unwrap();
/// assert_eq!(near.accept(&view), 1);
/// ```
pub fn from_fn<F: Fn(&BlockView<'_>) -> usize>(f: F) -> FnCriterion<F> {
    FnCriterion(f)
}

impl<F: Fn(&BlockView<'_>) -> usize> AcceptanceCriterion for FnCriterion<F> {
    fn accept(&self, view: &BlockView<'_>) -> usize {
        (self.0)(view)
    }
}

impl<C: AcceptanceCriterion + ?Sized> AcceptanceCriterion for Box<C> {
    fn candidates_needed(&self) -> usize {
        (**self).candidates_needed()
    }
    fn accept(&self, view: &BlockView<'_>) -> usize {
        (**self).accept(view)
    }
    fn supports_sampling(&self) -> bool {
        (**self).supports_sampling()
    }
    fn samples_proposals(&self) -> bool {
        (**self).samples_proposals()
    }
    fn accept_sampled(&self, view: &SampledView<'_>) -> Verdict {
        (**self).accept_sampled(view)
    }
}

/// Length of the longest prefix of proposals for which `ok(i)` holds.
pub fn longest_prefix(len: usize, mut ok: impl FnMut(usize) -> bool) -> usize {
    (0..len).take_while(|&i| ok(i)).count()
}
