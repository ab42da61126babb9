//! Batched and tree decoding from a [`BlockwiseConfig`]: the tree it names, and the block
//! size and acceptance it applies, with what a batch cannot do refused.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::BatchBuilder;
use crate::config::{BlockwiseConfig, VerifierConfig};
use crate::decoder::TreeShape;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::policy::PolicyConfig;
use crate::proposer::ProposerConfig;

/// The tree a batch decoder verifies instead of chains, as configuration. In JSON
/// `{"shape": [3, 2, 1]}` (the heads' top candidates, [`BatchBuilder::tree`]) or `{"dynamic":
/// 5}` (trees the proposer grows by its own confidence, at most 5 nodes,
/// [`BatchBuilder::dynamic_tree`]); on the command line `3,2,1` or `dynamic:5`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum TreeConfig {
    /// Widths per depth over the heads' candidates.
    Shape(TreeShape),
    /// A node budget for trees the proposer builds ([`Proposer::propose_tree`]).
    ///
    /// [`Proposer::propose_tree`]: crate::Proposer::propose_tree
    Dynamic(usize),
}

impl std::fmt::Display for TreeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TreeConfig::Shape(shape) => write!(f, "{shape}"),
            TreeConfig::Dynamic(nodes) => write!(f, "dynamic:{nodes}"),
        }
    }
}

impl std::str::FromStr for TreeConfig {
    type Err = Error;

    /// `3,2,1` (a shape) or `dynamic:NODES`.
    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix("dynamic:") {
            Some(n) => n.parse().map(TreeConfig::Dynamic).map_err(|_| {
                Error::config(
                    "tree",
                    format!("`{s}`: dynamic:NODES needs a number of nodes, e.g. dynamic:16"),
                )
            }),
            None if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b',' || b == b' ') =>
            {
                Err(Error::config(
                    "tree",
                    format!("`{s}` is neither widths such as 3,2,1 nor dynamic:NODES"),
                ))
            }
            None => Ok(TreeConfig::Shape(s.parse()?)),
        }
    }
}

impl<M: CausalLm> BatchBuilder<M> {
    /// The block size, the acceptance (chains) and the tree of `config`; `embeddings` serve
    /// embedding-distance acceptance. The proposer is given apart ([`BatchBuilder::proposer`],
    /// [`BatchBuilder::proposer_factory`], or [`ProposerConfig::row_proposers`] for
    /// `config.proposer`). Refused, as what a batch cannot do: a block-size policy other than
    /// fixed, a tie guard, the recompute verifier; with a tree, a criterion other than exact or
    /// a minimum block (trees are verified exactly); with a tree shape, a proposer other than
    /// the heads (the shape branches on their candidates).
    pub fn config(mut self, config: &BlockwiseConfig, embeddings: Option<&Tensor>) -> Result<Self> {
        if config.policy != PolicyConfig::Fixed {
            return Err(Error::config(
                "policy",
                "batched and tree decoding use fixed block sizes; drop the policy",
            ));
        }
        if config.tie_guard.is_some() {
            return Err(Error::config(
                "tie_guard",
                "batched and tree decoding have no tie guard; drop it",
            ));
        }
        if config.verifier != VerifierConfig::Cached {
            return Err(Error::config(
                "verifier",
                "batched and tree decoding verify against the model's cache; use the cached \
                 verifier",
            ));
        }
        self = self.block_size(config.block_size);
        let Some(tree) = &config.tree else {
            let criterion = config.acceptance.build(config.min_block, embeddings)?;
            self.criterion = Some(criterion);
            return Ok(self);
        };
        if config.acceptance != crate::config::AcceptanceConfig::Exact || config.min_block.is_some()
        {
            return Err(Error::config(
                "acceptance",
                format!("trees are verified exactly; drop the criterion and min_block ({tree})"),
            ));
        }
        Ok(match tree {
            TreeConfig::Shape(shape) => {
                // `auto` without a draft filled in is the heads (`ProposerConfig::Auto`).
                if !matches!(
                    config.proposer,
                    ProposerConfig::Heads | ProposerConfig::Auto
                ) {
                    return Err(Error::config(
                        "tree",
                        format!(
                            "the shape {shape} branches on the heads' candidates; the proposer \
                             must be heads, not {}",
                            config.proposer
                        ),
                    ));
                }
                self.tree(shape.clone())
            }
            TreeConfig::Dynamic(nodes) => self.dynamic_tree(*nodes),
        })
    }
}
