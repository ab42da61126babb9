//! Acceptance under sampling: lossless speculative sampling and Medusa's typical acceptance.

use std::cell::OnceCell;

use super::{longest_prefix, AcceptanceCriterion, BlockView};
use crate::error::{Error, Result};
use crate::sampling::warp::finite_max;
use crate::sampling::{entropy, probabilities, SamplingConfig};
use crate::verifier::LogitRows;

/// The base model's warped distributions at a block's positions, each computed the first time
/// a criterion reads it: a criterion that stops at a rejection leaves the rows after it
/// unread, and each row is a float64 pass over the vocabulary (49,152 tokens for SmolLM2).
/// The same values, and so the same draws, as warping every row first.
#[derive(Debug)]
pub(crate) struct LazyTargets<'a> {
    logits: &'a LogitRows,
    sampling: &'a SamplingConfig,
    rows: Vec<OnceCell<Vec<f64>>>,
}

impl<'a> LazyTargets<'a> {
    /// The first `n` rows of `logits` (which holds at least `n`), warped with `sampling` when
    /// read. Logits the warp refuses are [`Error::NonFiniteLogits`] here, for every row, so
    /// that reading one cannot fail.
    pub(crate) fn new(
        logits: &'a LogitRows,
        sampling: &'a SamplingConfig,
        n: usize,
    ) -> Result<Self> {
        for i in 0..n {
            finite_max(logits.row(i).unwrap_or_default(), i)?;
        }
        Ok(LazyTargets {
            logits,
            sampling,
            rows: (0..n).map(|_| OnceCell::new()).collect(),
        })
    }

    fn row(&self, i: usize) -> &[f64] {
        self.rows[i].get_or_init(|| {
            let logits = self.logits.row(i).unwrap_or_default();
            // Every row was checked in `new`, so this is never the fallback.
            probabilities(logits, self.sampling, i).unwrap_or_else(|_| vec![0.0; logits.len()])
        })
    }

    /// How many rows were warped.
    #[cfg(test)]
    fn warped(&self) -> usize {
        self.rows.iter().filter(|r| r.get().is_some()).count()
    }
}

/// Where a view's target rows come from.
#[derive(Debug, Clone, Copy)]
enum Targets<'a> {
    Rows(&'a [Vec<f64>]),
    Lazy(&'a LazyTargets<'a>),
}

/// The base model's verdict on one block under sampling, as plain host data.
///
/// For a block `[next, x_0, ..., x_{m-1}]`: `target(i)` is the base model's warped distribution
/// at the position of `x_i` (and `target(m)` the one after the whole block), `draft(i)` the
/// distribution the proposer drew `x_i` from (`None`: a point mass on `x_i`), and `uniform(i)`
/// a uniform in `[0, 1)` drawn for `x_i` by the decoder's generator.
#[derive(Debug, Clone, Copy)]
pub struct SampledView<'a> {
    proposed: &'a [i64],
    target: Targets<'a>,
    draft: Option<&'a [Vec<f64>]>,
    uniforms: &'a [f64],
}

impl<'a> SampledView<'a> {
    /// A view over `m` proposals, `m + 1` target rows, `m` draft rows (or point masses) and `m`
    /// uniforms. Fails with [`Error::Contract`] when the sizes do not fit, or when a proposal is
    /// out of its row or has probability 0 under the distribution it was drawn from.
    pub fn new(
        proposed: &'a [i64],
        target: &'a [Vec<f64>],
        draft: Option<&'a [Vec<f64>]>,
        uniforms: &'a [f64],
    ) -> Result<Self> {
        let vocab = target.first().map_or(0, Vec::len);
        Self::checked(
            proposed,
            (Targets::Rows(target), target.len(), vocab),
            draft,
            uniforms,
        )
    }

    /// [`SampledView::new`] over rows warped when read.
    pub(crate) fn lazy(
        proposed: &'a [i64],
        target: &'a LazyTargets<'a>,
        draft: Option<&'a [Vec<f64>]>,
        uniforms: &'a [f64],
    ) -> Result<Self> {
        let rows = (
            Targets::Lazy(target),
            target.rows.len(),
            target.logits.vocab(),
        );
        Self::checked(proposed, rows, draft, uniforms)
    }

    fn checked(
        proposed: &'a [i64],
        (target, rows, vocab): (Targets<'a>, usize, usize),
        draft: Option<&'a [Vec<f64>]>,
        uniforms: &'a [f64],
    ) -> Result<Self> {
        let m = proposed.len();
        let contract = |problem: String| Error::Contract {
            component: "proposer",
            problem,
        };
        if rows != m + 1 || uniforms.len() != m {
            return Err(contract(format!(
                "{m} proposals need {} target rows and {m} uniforms, got {rows} and {}",
                m + 1,
                uniforms.len()
            )));
        }
        for (i, &x) in proposed.iter().enumerate() {
            if x < 0 || x as usize >= vocab {
                return Err(contract(format!(
                    "proposal {i} is token {x}, outside the vocabulary"
                )));
            }
        }
        if let Some(q) = draft {
            if q.len() != m {
                return Err(contract(format!(
                    "returned {} distributions for {m} proposals",
                    q.len()
                )));
            }
            for (i, row) in q.iter().enumerate() {
                if row.len() != vocab {
                    return Err(contract(format!(
                        "distribution {i} has {} entries; the vocabulary has {vocab}",
                        row.len()
                    )));
                }
                let q = row[proposed[i] as usize];
                if q.is_nan() || q <= 0.0 {
                    return Err(contract(format!(
                        "proposal {i} (token {}) has probability 0 under the distribution it \
                         was drawn from",
                        proposed[i]
                    )));
                }
            }
        }
        Ok(SampledView {
            proposed,
            target,
            draft,
            uniforms,
        })
    }

    /// The proposed tokens.
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

    /// The base model's warped distribution at the position of proposal `i` (`i == len()`: after
    /// the whole block).
    pub fn target(&self, i: usize) -> &'a [f64] {
        match self.target {
            Targets::Rows(rows) => &rows[i],
            Targets::Lazy(rows) => rows.row(i),
        }
    }

    /// The distribution proposal `i` was drawn from, or `None` for a point mass.
    pub fn draft(&self, i: usize) -> Option<&'a [f64]> {
        self.draft.map(|q| q[i].as_slice())
    }

    /// `p(x_i)`: the base model's probability of proposal `i`.
    pub fn target_prob(&self, i: usize) -> f64 {
        self.target(i)[self.proposed[i] as usize]
    }

    /// `q(x_i)`: the proposer's probability of proposal `i` (1 for a point mass).
    pub fn draft_prob(&self, i: usize) -> f64 {
        self.draft.map_or(1.0, |q| q[i][self.proposed[i] as usize])
    }

    /// The uniform drawn for proposal `i`.
    pub fn uniform(&self, i: usize) -> f64 {
        self.uniforms[i]
    }
}

/// Where the token after the accepted proposals is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// The base model's warped distribution at that position.
    Target,
    /// Speculative sampling's residual `max(0, p - q)`, normalised, at the first rejected
    /// proposal (the same as `Target` when every proposal was accepted).
    Residual,
}

/// What a criterion decides for a block under sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// How many leading proposals to keep.
    pub accepted: usize,
    /// Where the next token is drawn from.
    pub next: Draw,
}

/// Speculative sampling's rule (Leviathan et al. 2023; Chen et al. 2023): keep proposal `x`
/// with probability `min(1, p(x) / q(x))`; at the first rejection draw from the residual. The
/// generated sequences have exactly the base model's (warped) distribution, whatever the
/// proposer. With point-mass proposals the rule keeps `x` with probability `p(x)`.
pub fn lossless(view: &SampledView<'_>) -> Verdict {
    for i in 0..view.len() {
        // u < min(1, p / q)  <=>  u * q < p, for q > 0 and u in [0, 1)
        if view.uniform(i) * view.draft_prob(i) >= view.target_prob(i) {
            return Verdict {
                accepted: i,
                next: Draw::Residual,
            };
        }
    }
    Verdict {
        accepted: view.len(),
        next: Draw::Target,
    }
}

/// Lossless acceptance: the name of [`Exact`](super::Exact) under sampling, where it runs
/// [`lossless`] (and under greedy decoding keeps the argmax matches).
pub type Lossless = super::Exact;

/// Medusa's typical acceptance (Cai et al. 2024): keep proposal `x` while
/// `p(x) > min(epsilon, delta * exp(-H(p)))`, where `p` is the base model's warped distribution
/// and `H` its entropy in nats; the token after them is drawn from `p`. Not lossless: it trades
/// fidelity to the base model's distribution for longer blocks, accepting more where the model
/// is unsure. Proposers propose their most likely tokens. Under greedy decoding it is
/// [`Exact`](super::Exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Typical {
    epsilon: f64,
    delta: f64,
}

impl Typical {
    /// Medusa's defaults: `epsilon = 0.09`, `delta = 0.3`.
    pub const DEFAULT: Typical = Typical {
        epsilon: 0.09,
        delta: 0.3,
    };

    /// Typical acceptance with a hard threshold `epsilon` in `(0, 1]` and an entropy-scaled one
    /// `delta` in `(0, 1]`.
    pub fn new(epsilon: f64, delta: f64) -> Result<Self> {
        for (field, v) in [("epsilon", epsilon), ("delta", delta)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::config(field, format!("must be in (0, 1], got {v}")));
            }
        }
        Ok(Typical { epsilon, delta })
    }

    /// The hard threshold.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The entropy-scaled threshold.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// The threshold a proposal's probability must exceed under `p`.
    pub fn threshold(&self, p: &[f64]) -> f64 {
        self.epsilon.min(self.delta * (-entropy(p)).exp())
    }
}

impl AcceptanceCriterion for Typical {
    fn accept(&self, view: &BlockView<'_>) -> usize {
        // Under greedy decoding p is a point mass on the argmax: only the argmax passes.
        longest_prefix(view.len(), |i| view.proposed()[i] == view.greedy(i))
    }

    fn supports_sampling(&self) -> bool {
        true
    }

    fn samples_proposals(&self) -> bool {
        false
    }

    fn accept_sampled(&self, view: &SampledView<'_>) -> Verdict {
        let accepted = longest_prefix(view.len(), |i| {
            view.target_prob(i) > self.threshold(view.target(i))
        });
        Verdict {
            accepted,
            next: Draw::Target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acceptance::{Exact, MinBlock};

    #[test]
    fn lossless_keeps_x_with_probability_p_over_q() {
        let target = vec![vec![0.2, 0.8], vec![0.5, 0.5], vec![0.1, 0.9]];
        let draft = vec![vec![0.5, 0.5], vec![0.9, 0.1]];
        // x0 = 1: p/q = 1.6, always kept; x1 = 0: p/q = 5/9.
        let keep = |u1: f64| {
            let u = [0.99, u1];
            lossless(&SampledView::new(&[1, 0], &target, Some(&draft), &u).unwrap())
        };
        assert_eq!(keep(0.55).accepted, 2);
        assert_eq!(keep(0.55).next, Draw::Target);
        assert_eq!(keep(0.56).accepted, 1);
        assert_eq!(keep(0.56).next, Draw::Residual);
        // Point masses: keep x with probability p(x).
        let u = [0.79, 0.0];
        let v = SampledView::new(&[1, 0], &target, None, &u).unwrap();
        assert_eq!(Exact.accept_sampled(&v).accepted, 2);
        let u = [0.8, 0.0];
        let v = SampledView::new(&[1, 0], &target, None, &u).unwrap();
        assert_eq!(Exact.accept_sampled(&v).accepted, 0);
    }

    #[test]
    fn lazy_rows_are_warped_when_read_and_equal_the_eager_ones() {
        // Four rows over five tokens; token 4 is unlikely in the first row and certain after.
        let logits: Vec<f32> = [
            [2.0, 1.0, 0.5, 0.0, -3.0],
            [0.0, 0.0, 0.0, 0.0, 9.0],
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [0.3, -0.2, 0.1, 0.0, 0.0],
        ]
        .concat();
        let rows = LogitRows::new(logits, 5).unwrap();
        let sampling = SamplingConfig::new(0.8);
        let eager: Vec<Vec<f64>> = (0..4)
            .map(|i| probabilities(rows.row(i).unwrap(), &sampling, i).unwrap())
            .collect();
        let proposed = [4, 4, 1];
        // Accepting all three reads their rows; the row after them is the decoder's to read.
        for (u, accepted, warped) in [(0.5, 0, 1), (0.0, 3, 3)] {
            let lazy = LazyTargets::new(&rows, &sampling, 4).unwrap();
            let uniforms = [u, u, u];
            let view = SampledView::lazy(&proposed, &lazy, None, &uniforms).unwrap();
            let verdict = lossless(&view);
            assert_eq!(verdict.accepted, accepted);
            // A rejection at the first proposal reads its row only.
            assert_eq!(lazy.warped(), warped);
            let same = SampledView::new(&proposed, &eager, None, &uniforms).unwrap();
            assert_eq!(lossless(&same), verdict);
            for (i, row) in eager.iter().enumerate() {
                assert_eq!(view.target(i), row.as_slice(), "row {i}");
            }
        }
        // Logits the warp refuses are an error up front, at their block position.
        let mut bad = rows.row(0).unwrap().repeat(4);
        bad[3 * 5 + 2] = f32::NAN;
        let bad = LogitRows::new(bad, 5).unwrap();
        let e = LazyTargets::new(&bad, &sampling, 4).unwrap_err();
        assert!(
            matches!(e, Error::NonFiniteLogits { position: 3, .. }),
            "{e}"
        );
        assert!(LazyTargets::new(&bad, &sampling, 3).is_ok());
    }

    #[test]
    fn views_refuse_inconsistent_proposals() {
        let target = vec![vec![0.5, 0.5], vec![0.5, 0.5]];
        assert!(SampledView::new(&[1], &target, None, &[]).is_err());
        assert!(SampledView::new(&[2], &target, None, &[0.1]).is_err());
        let zero = vec![vec![1.0, 0.0]];
        assert!(SampledView::new(&[1], &target, Some(&zero), &[0.1]).is_err());
        let short = vec![vec![1.0]];
        assert!(SampledView::new(&[0], &target, Some(&short), &[0.1]).is_err());
    }

    #[test]
    fn typical_thresholds_scale_with_entropy() {
        let t = Typical::new(0.3, 0.3).unwrap();
        // A confident row: H small, threshold near min(0.3, 0.3 * e^-H).
        let confident = vec![0.95, 0.05];
        let flat = vec![0.25; 4];
        assert!((t.threshold(&flat) - 0.3 * 0.25).abs() < 1e-12); // e^-ln4 = 1/4
        assert!(t.threshold(&confident) < 0.3);
        // Under the flat row a 0.25 token passes (0.25 > 0.075); under a hard cut of 0.3 alone
        // it would not.
        let target = vec![flat.clone(), flat.clone()];
        let v = SampledView::new(&[3], &target, None, &[0.0]).unwrap();
        assert_eq!(t.accept_sampled(&v).accepted, 1);
        let low = vec![vec![0.97, 0.01, 0.01, 0.01], flat];
        let v = SampledView::new(&[3], &low, None, &[0.0]).unwrap();
        assert_eq!(t.accept_sampled(&v).accepted, 0);
        assert!(Typical::new(0.0, 0.3).is_err());
        assert!(Typical::new(0.3, 1.5).is_err());
    }

    #[test]
    fn min_block_forces_a_floor_under_sampling() {
        let target = vec![vec![0.0, 1.0], vec![0.0, 1.0], vec![0.5, 0.5]];
        let u = [0.5, 0.5];
        let v = SampledView::new(&[0, 0], &target, None, &u).unwrap();
        let floor = MinBlock::new(2, Exact).unwrap();
        assert_eq!(
            floor.accept_sampled(&v),
            Verdict {
                accepted: 1,
                next: Draw::Target
            }
        );
        assert_eq!(Exact.accept_sampled(&v).accepted, 0);
    }
}
