//! Block-size policies: how many proposals the next block may hold.
//!
//! The decoder asks its policy before every block, with the most the block has room for
//! (`k - 1`, less near the end of the budget), and reports each block's outcome back. A policy
//! changes only how many tokens are proposed, never which tokens are kept, so under exact
//! acceptance every policy decodes exactly what greedy decoding does.
//!
//! - [`Fixed`] (the default): always the full `k - 1`.
//! - [`Adaptive`]: lengthens the block after full acceptance, shortens it after a rejection.
//! - [`CostAware`]: wraps another policy and proposes only as many tokens as pay for their
//!   verification, given the recent acceptance rate and the measured (or stated) cost of a
//!   block; where proposals keep failing it proposes nothing, so the decoder takes plain
//!   one-token greedy steps.

mod adaptive;
mod cost;

pub use adaptive::Adaptive;
pub use cost::{CostAware, CostModel};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What one block did, reported to the policy after verification.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BlockOutcome {
    /// The proposals the policy allowed.
    pub allowed: usize,
    /// The tokens the proposer actually proposed (at most `allowed`).
    pub proposed: usize,
    /// How many of them the criterion accepted.
    pub accepted: usize,
    /// Seconds the verify call took (the block's forward pass and its commit).
    pub verify_s: f64,
    /// Seconds the proposer took.
    pub propose_s: f64,
    /// What kind of proposal it was ([`Proposer::kind`](crate::Proposer::kind)).
    pub kind: usize,
}

impl BlockOutcome {
    /// An outcome without timings (for tests and stated cost models).
    pub fn new(allowed: usize, proposed: usize, accepted: usize) -> Self {
        BlockOutcome {
            allowed,
            proposed,
            accepted,
            verify_s: 0.0,
            propose_s: 0.0,
            kind: 0,
        }
    }
}

/// Decides how many proposals each block may hold.
pub trait BlockPolicy {
    /// Called once per decode, before the first block.
    fn begin(&mut self) {}

    /// The most proposals for the next block, at most `limit` (0: a plain greedy step, and the
    /// proposer is not asked).
    fn allow(&mut self, limit: usize) -> usize;

    /// After the proposer proposed `proposed` tokens of `kind` ([`Proposer::kind`]), how many
    /// of them to verify (default: all). Lets a policy judge a proposal by its kind, for
    /// proposers cheap enough to be asked before the decision.
    ///
    /// [`Proposer::kind`]: crate::Proposer::kind
    fn trim(&mut self, proposed: usize, kind: usize) -> usize {
        let _ = kind;
        proposed
    }

    /// Called after each verified block.
    fn observe(&mut self, outcome: &BlockOutcome);
}

impl<P: BlockPolicy + ?Sized> BlockPolicy for Box<P> {
    fn begin(&mut self) {
        (**self).begin()
    }
    fn allow(&mut self, limit: usize) -> usize {
        (**self).allow(limit)
    }
    fn trim(&mut self, proposed: usize, kind: usize) -> usize {
        (**self).trim(proposed, kind)
    }
    fn observe(&mut self, outcome: &BlockOutcome) {
        (**self).observe(outcome)
    }
}

/// Always the full block: `k - 1` proposals (the paper's setting).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fixed;

impl BlockPolicy for Fixed {
    fn allow(&mut self, limit: usize) -> usize {
        limit
    }
    fn observe(&mut self, _outcome: &BlockOutcome) {}
}

/// A block-size policy, as configuration. In JSON: `"fixed"`, `"adaptive"`,
/// `{"cost-aware": {}}` (measured costs) or `{"cost-aware": {"per_token": 0.2}}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// [`Fixed`].
    #[default]
    Fixed,
    /// [`Adaptive`] with its defaults.
    Adaptive,
    /// [`CostAware`] over [`Fixed`]; with `per_token` a stated cost model
    /// ([`CostModel::linear`]), without it the measured one (what `decode --adaptive` uses).
    CostAware {
        /// Extra cost of each block token, as a fraction of a one-token step.
        #[serde(default)]
        per_token: Option<f64>,
    },
}

impl PolicyConfig {
    /// Builds the policy.
    pub fn build(&self) -> Result<Box<dyn BlockPolicy>> {
        let cost = |per_token: Option<f64>| match per_token {
            None => Ok(CostModel::measured()),
            Some(p) => CostModel::linear(p),
        };
        Ok(match *self {
            PolicyConfig::Fixed => Box::new(Fixed),
            PolicyConfig::Adaptive => Box::new(Adaptive::default()),
            PolicyConfig::CostAware { per_token } => {
                Box::new(CostAware::new(Fixed, cost(per_token)?))
            }
        })
    }
}

impl std::str::FromStr for PolicyConfig {
    type Err = Error;

    /// `fixed`, `adaptive`, `cost` or `cost:PER_TOKEN`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "policy",
                format!("`{s}` is not one of fixed, adaptive, cost, cost:PER_TOKEN"),
            )
        };
        match s.split(':').collect::<Vec<_>>().as_slice() {
            ["fixed"] => Ok(PolicyConfig::Fixed),
            ["adaptive"] => Ok(PolicyConfig::Adaptive),
            ["cost"] => Ok(PolicyConfig::CostAware { per_token: None }),
            ["cost", p] => Ok(PolicyConfig::CostAware {
                per_token: Some(p.parse().map_err(|_| bad())?),
            }),
            _ => Err(bad()),
        }
    }
}
