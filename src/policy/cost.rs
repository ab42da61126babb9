//! Propose only what pays for its verification.

use super::{BlockOutcome, BlockPolicy};
use crate::error::{Error, Result};

/// What a block costs, relative to a one-token step.
///
/// [`CostModel::linear`] states it; [`CostModel::measured`] learns it from the decoder's own
/// timings: the recent mean verify time of each block width that has been seen (costs are not
/// linear in the width: a one-token step often runs a different kernel from a block), and for
/// widths not seen yet a least-squares line through all of them, starting from a stated guess
/// until blocks of different widths have been seen. Recent observations weigh most. Proposer
/// time is measured either way (per proposed token).
#[derive(Debug, Clone)]
pub struct CostModel {
    /// Stated (or prior) extra cost per block token, relative to a one-token step.
    per_token: f64,
    measured: bool,
    /// Exponentially weighted sums over (width x, seconds y): weight, x, x², y, xy.
    sums: [f64; 5],
    /// Per block width: weighted mean verify seconds, and its weight.
    widths: Vec<(f64, f64)>,
    /// Weighted mean proposer seconds per proposed token, and its weight.
    propose: (f64, f64),
}

/// Folds `x` into a decayed running mean `(mean, weight)`.
fn fold(slot: &mut (f64, f64), x: f64) {
    let (mean, w) = *slot;
    let w = w * DECAY + 1.0;
    *slot = (mean + (x - mean) / w, w);
}

/// Forgetting factor of the measured sums, per observation.
const DECAY: f64 = 0.95;

impl CostModel {
    /// Each block token beyond the first costs `per_token` of a one-token step (0 on hardware
    /// where a block is as cheap as one token; about 1 where it is as dear as that many steps).
    pub fn linear(per_token: f64) -> Result<Self> {
        if !(per_token >= 0.0 && per_token.is_finite()) {
            return Err(Error::config(
                "cost per_token",
                format!("must be a finite number >= 0, got {per_token}"),
            ));
        }
        Ok(CostModel {
            per_token,
            measured: false,
            sums: [0.0; 5],
            widths: Vec::new(),
            propose: (0.0, 0.0),
        })
    }

    /// Learn the costs from timings, starting from a guess of 0.1 per extra token.
    pub fn measured() -> Self {
        CostModel {
            measured: true,
            ..CostModel::linear(0.1).expect("0.1 is a valid cost")
        }
    }

    fn observe(&mut self, o: &BlockOutcome) {
        if o.verify_s > 0.0 {
            let (x, y) = ((o.proposed + 1) as f64, o.verify_s);
            if self.measured {
                for (s, v) in self.sums.iter_mut().zip([1.0, x, x * x, y, x * y]) {
                    *s = *s * DECAY + v;
                }
            }
            // Per-width times are kept under a stated model too: the one-token step's time is
            // what the proposer's time is weighed against.
            if self.widths.len() <= o.proposed + 1 {
                self.widths.resize(o.proposed + 2, (0.0, 0.0));
            }
            fold(&mut self.widths[o.proposed + 1], y);
        }
        if o.proposed > 0 {
            fold(&mut self.propose, o.propose_s / o.proposed as f64);
        } else if o.allowed > 0 && o.propose_s > 0.0 {
            // The proposer ran and the policy then verified none of it: its time still counts
            // (per token it was allowed, a lower bound), or a proposer whose guesses are always
            // trimmed away would look free and keep being asked.
            fold(&mut self.propose, o.propose_s / o.allowed as f64);
        }
    }

    /// The measured time of a one-token step, if any (a plain step's, else the fitted line's).
    fn step_seconds(&self) -> Option<f64> {
        let plain = self.widths.get(1).filter(|s| s.1 > 0.0).map(|s| s.0);
        plain.or_else(|| self.line().map(|(one, _)| one))
    }

    /// `(seconds of a one-token step, extra seconds per block token)`; `None` before any
    /// timing, when only the stated ratio is known.
    fn line(&self) -> Option<(f64, f64)> {
        let [w, sx, sxx, sy, sxy] = self.sums;
        if !self.measured || w < 1e-9 {
            return None;
        }
        let (mx, my) = (sx / w, sy / w);
        let var = sxx / w - mx * mx;
        if var < 0.05 {
            // One width seen so far: scale the stated ratio to the measured time.
            let one = my / (1.0 + self.per_token * (mx - 1.0));
            return Some((one, one * self.per_token));
        }
        let slope = ((sxy / w - mx * my) / var).max(0.0);
        let one = (my + slope * (1.0 - mx)).max(1e-9);
        Some((one, slope))
    }

    /// Proposer time per proposed token, as a share of a one-token step (0 before both are
    /// measured; measured under a stated cost model too).
    pub fn proposer_share(&self) -> f64 {
        match self.step_seconds() {
            Some(one) if one > 0.0 => self.propose.0 / one,
            _ => 0.0,
        }
    }

    /// The cost of a block of `n` proposals (width `n + 1`), in one-token steps, proposer
    /// included.
    pub fn cost(&self, n: usize) -> f64 {
        let Some((one, per)) = self.line() else {
            return 1.0 + n as f64 * self.per_token;
        };
        let seen = |w: usize| self.widths.get(w).filter(|s| s.1 > 0.0).map(|s| s.0);
        let one = seen(1).unwrap_or(one);
        let verify = seen(n + 1).map_or(1.0 + n as f64 * per / one, |t| t / one);
        verify + n as f64 * self.propose.0 / one
    }
}

/// Allows only as many proposals as are worth their cost: with `a` the recent rate at which
/// proposed tokens are accepted, a block of `n` proposals yields `1 + a + ... + a^n` tokens on
/// average and costs [`CostModel::cost`]`(n)` steps; the policy picks the `n` (up to what the
/// inner policy allows) with the most tokens per step. The rate is kept apart for blocks that
/// follow a fully accepted block and for the others, because acceptance comes in runs (a
/// passage being copied), so one success says more about the next block than the average does. When that is 0 it proposes nothing and
/// the decoder takes a plain greedy step, so where proposals fail the decode runs at greedy
/// speed. After `probe_every` such steps in a row it allows one block of the size that would
/// pay if a run of accepted proposals had begun, to notice when proposals start to succeed
/// again (text that begins to repeat).
#[derive(Debug, Clone)]
pub struct CostAware<P> {
    inner: P,
    cost: CostModel,
    /// Per proposal kind ([`Proposer::kind`](crate::Proposer::kind)): decayed counts of
    /// accepted and tried proposal positions, as `(hits, tries)`, after a block that was not
    /// fully accepted (index 0) and after one that was (index 1).
    counts: Vec<[(f64, f64); 2]>,
    /// Whether the last block with proposals accepted all of them.
    streak: bool,
    skipped: usize,
    probe_every: usize,
}

/// The acceptance rate assumed before any evidence, after a block that was not fully accepted
/// and after one that was (acceptance comes in runs), and the weight of those guesses in tries.
const PRIOR_RATE: [f64; 2] = [0.5, 0.8];
const PRIOR_WEIGHT: f64 = 2.0;
/// Forgetting factor of the acceptance counts, per block with proposals.
const RATE_DECAY: f64 = 0.9;
/// A proposer is cheap when proposing a token costs less than this share of a one-token step:
/// then the policy lets it propose and decides on what it proposed (whose kind it then knows).
const CHEAP_PROPOSER: f64 = 0.02;

impl<P: BlockPolicy> CostAware<P> {
    /// Cost-aware gating over `inner`'s block sizes.
    pub fn new(inner: P, cost: CostModel) -> Self {
        CostAware {
            inner,
            cost,
            counts: Vec::new(),
            streak: false,
            skipped: 0,
            probe_every: 16,
        }
    }

    /// Probe after this many skipped blocks in a row (default 16; 0 never probes).
    pub fn probe_every(mut self, blocks: usize) -> Self {
        self.probe_every = blocks;
        self
    }

    /// The recent acceptance rate of a proposed token of `kind`, in the current state (after a
    /// fully accepted block or not).
    pub fn rate(&self, kind: usize) -> f64 {
        let i = usize::from(self.streak);
        let (hits, tries) = self.counts.get(kind).map_or((0.0, 0.0), |c| c[i]);
        (hits + PRIOR_RATE[i] * PRIOR_WEIGHT) / (tries + PRIOR_WEIGHT)
    }

    /// The number of proposals in `0..=limit` with the most expected tokens per unit cost, for
    /// proposals of `kind`.
    pub fn best(&self, limit: usize, kind: usize) -> usize {
        self.best_at(limit, self.rate(kind))
    }

    fn best_at(&self, limit: usize, a: f64) -> usize {
        let (mut best, mut best_value) = (0, 1.0);
        let (mut expected, mut term) = (1.0, 1.0);
        for n in 1..=limit {
            term *= a;
            expected += term;
            let value = expected / self.cost.cost(n);
            if value > best_value * (1.0 + 1e-9) {
                (best, best_value) = (n, value);
            }
        }
        best
    }

    /// The best size up to `limit`, or 0 (a greedy step), or now and then a probe.
    fn gate(&mut self, limit: usize, kind: usize) -> usize {
        let n = self.best(limit, kind);
        if n > 0 || limit == 0 {
            self.skipped = 0;
            return n;
        }
        self.skipped += 1;
        if self.probe_every > 0 && self.skipped > self.probe_every {
            // Probe as if a run of accepted proposals had begun.
            self.skipped = 0;
            return self.best_at(limit, PRIOR_RATE[1]).max(1);
        }
        0
    }
}

impl<P: BlockPolicy> BlockPolicy for CostAware<P> {
    fn begin(&mut self) {
        // Costs carry over between decodes (same model, same machine); acceptance does not.
        self.inner.begin();
        self.counts.clear();
        self.streak = false;
        self.skipped = 0;
    }

    fn allow(&mut self, limit: usize) -> usize {
        let inner = self.inner.allow(limit);
        if self.cost.proposer_share() < CHEAP_PROPOSER {
            inner // decided in `trim`, once the proposal's kind is known
        } else {
            self.gate(inner, 0)
        }
    }

    fn trim(&mut self, proposed: usize, kind: usize) -> usize {
        if proposed > 0 && self.cost.proposer_share() < CHEAP_PROPOSER {
            self.gate(proposed, kind)
        } else {
            proposed
        }
    }

    fn observe(&mut self, o: &BlockOutcome) {
        self.cost.observe(o);
        if o.proposed > 0 {
            let tried = o.accepted + usize::from(o.accepted < o.proposed);
            if self.counts.len() <= o.kind {
                self.counts.resize(o.kind + 1, [(0.0, 0.0); 2]);
            }
            let c = &mut self.counts[o.kind][usize::from(self.streak)];
            *c = (
                c.0 * RATE_DECAY + o.accepted as f64,
                c.1 * RATE_DECAY + tried as f64,
            );
            self.streak = o.accepted == o.proposed;
            self.inner.observe(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Fixed;

    #[test]
    fn failing_proposals_turn_into_greedy_steps_then_probe() {
        let mut p = CostAware::new(Fixed, CostModel::linear(0.3).unwrap()).probe_every(3);
        assert!(p.trim(4, 0) > 0, "the prior rate pays for a block");
        for _ in 0..10 {
            p.observe(&BlockOutcome::new(4, 4, 0));
        }
        let allowed: Vec<usize> = (0..8).map(|_| p.trim(4, 0)).collect();
        // Probes are sized for a run at the optimistic rate: 3 proposals at 0.3 per token.
        assert_eq!(allowed, [0, 0, 0, 3, 0, 0, 0, 3]);
    }

    #[test]
    fn accepted_proposals_earn_long_blocks() {
        let mut p = CostAware::new(Fixed, CostModel::linear(0.1).unwrap());
        for _ in 0..10 {
            let n = p.trim(7, 0);
            p.observe(&BlockOutcome::new(7, n, n));
        }
        assert_eq!(p.trim(7, 0), 7);
        assert!(p.rate(0) > 0.9);
    }

    /// An expensive proposer (a feature draft) whose proposals the policy trims away is not
    /// asked again before the decision: its time counts although none of it was verified, and
    /// the one-token step it is weighed against is measured under a stated cost model too.
    #[test]
    fn an_expensive_proposer_is_gated_before_it_runs() {
        for cost in [CostModel::linear(0.3).unwrap(), CostModel::measured()] {
            let mut p = CostAware::new(Fixed, cost).probe_every(0);
            let timed = |allowed, proposed, accepted, verify_s, propose_s| BlockOutcome {
                verify_s,
                propose_s,
                ..BlockOutcome::new(allowed, proposed, accepted)
            };
            // Proposals fail; plain steps take 10 ms.
            for _ in 0..10 {
                p.observe(&timed(4, 4, 0, 0.013, 0.002));
                p.observe(&timed(0, 0, 0, 0.010, 0.0));
            }
            // A proposal of 4 costing 2 ms, all trimmed away by the policy.
            let allowed = p.allow(4);
            let kept = p.trim(4, 0);
            p.observe(&timed(allowed, kept, 0, 0.010, 0.002));
            assert!(
                p.cost.proposer_share() > CHEAP_PROPOSER,
                "{}",
                p.cost.proposer_share()
            );
            assert_eq!(
                p.allow(4),
                0,
                "failing and dear: a plain step, without proposing"
            );
        }
    }

    /// The time of a proposal the policy discarded still counts: only plain steps verified,
    /// then one proposal of up to 4 tokens that took 2 ms and was trimmed to nothing.
    #[test]
    fn discarded_proposals_count_in_the_proposer_time() {
        let mut c = CostModel::measured();
        let timed = |allowed, propose_s| BlockOutcome {
            verify_s: 0.010,
            propose_s,
            ..BlockOutcome::new(allowed, 0, 0)
        };
        for _ in 0..5 {
            c.observe(&timed(0, 0.0));
        }
        assert_eq!(c.proposer_share(), 0.0);
        c.observe(&timed(4, 0.002));
        assert!(
            (c.proposer_share() - 0.05).abs() < 1e-9,
            "{}",
            c.proposer_share()
        );
    }

    #[test]
    fn free_blocks_are_always_worth_filling() {
        let p = CostAware::new(Fixed, CostModel::linear(0.0).unwrap());
        assert_eq!(p.best(9, 0), 9);
    }

    #[test]
    fn measured_costs_follow_the_timings() {
        let mut c = CostModel::measured();
        for i in 0..40 {
            let n = i % 5;
            let mut o = BlockOutcome::new(4, n, 0);
            o.verify_s = 0.010 + 0.005 * n as f64; // width 1: 10 ms, each extra token +5 ms
            c.observe(&o);
        }
        assert!((c.cost(4) - 3.0).abs() < 1e-6, "cost(4) = {}", c.cost(4));
    }

    #[test]
    fn kinds_keep_their_own_rates() {
        let mut p = CostAware::new(Fixed, CostModel::linear(0.3).unwrap());
        for _ in 0..10 {
            let mut bad = BlockOutcome::new(4, 4, 0);
            bad.kind = 1;
            p.observe(&bad);
        }
        assert_eq!(p.trim(4, 1), 0, "kind 1 always failed");
        assert!(p.trim(4, 3) > 0, "kind 3 has no record against it");
    }

    #[test]
    fn bad_stated_costs_are_refused() {
        assert!(CostModel::linear(-1.0).is_err());
        assert!(CostModel::linear(f64::NAN).is_err());
    }
}
