//! # blockwise
//!
//! Blockwise parallel decoding (Stern, Shazeer & Uszkoreit, NeurIPS 2018) for libtorch models:
//! decode several tokens per model call without changing what the model says.
//!
//! Each iteration **predicts** a block (the base model's own next token plus up to `k - 1`
//! guesses from a [`Proposer`]), **verifies** the whole block with one forward pass
//! ([`Verifier`]), and **accepts** the longest prefix an [`AcceptanceCriterion`] agrees with.
//! Under [`Exact`] acceptance the output is identical to [`GreedyDecoder`]'s.
//!
//! ```no_run
//! use blockwise::{Blockwise, BlockwiseDecoder, DecodeConfig, GreedyDecoder, HeadsProposer,
//!                 Transformer, TransformerConfig};
//! # fn main() -> blockwise::Result<()> {
//! let mut model = Transformer::new_seeded(TransformerConfig::tiny(64, 3), 1, tch::Device::Cpu)?;
//! let config = DecodeConfig::new(32).with_eos([0]);
//! let greedy = GreedyDecoder::new(&mut model).decode(&[5, 9, 2], &config)?;
//! let fast = Blockwise::builder(&mut model)
//!     .block_size(4)
//!     .proposer(HeadsProposer)
//!     .build()?
//!     .decode(&[5, 9, 2], &config)?;
//! assert_eq!(fast.tokens, greedy.tokens);
//! # Ok(()) }
//! ```
//!
//! The parts: [`model`] (the [`CausalLm`] adapter trait), [`cache`] (a KV cache with O(1)
//! truncate), [`transformer`] (a built-in model with proposal heads), [`proposer`],
//! [`verifier`], [`acceptance`], [`decoder`], [`config`] and [`stats`]; [`cuda`] makes
//! libtorch's CUDA backend present for models on a GPU. With the `testing`
//! feature, [`testing`] holds conformance checks for your own models and proposers.

#![warn(missing_docs)]

pub mod acceptance;
pub mod bundle;
pub mod cache;
pub mod compare;
pub mod config;
pub mod cuda;
pub mod decoder;
mod dtype;
mod error;
pub mod feature;
pub mod heads;
mod int8;
pub mod masked;
mod matmul;
pub mod model;
pub mod native;
pub mod policy;
pub mod proposer;
pub mod rng;
pub mod sampling;
pub mod stats;
pub mod tokenizer;
pub mod torchscript;
pub mod train;
pub mod transformer;
pub mod verifier;

#[cfg(feature = "testing")]
pub mod testing;

pub use acceptance::{
    AcceptanceCriterion, BlockView, Distance, DistanceMetric, Exact, Lossless, MinBlock, TopK,
    Typical,
};
pub use config::{AcceptanceConfig, BlockwiseConfig, ContextPolicy, DecodeConfig};
pub use decoder::{
    BatchBlockwise, Blockwise, BlockwiseDecoder, DecodeOutput, GreedyDecoder, TreeShape,
};
pub use dtype::DType;
pub use error::{Error, Result};
pub use masked::MaskedLm;
pub use matmul::F32Matmul;
pub use model::{CausalLm, ModelInfo, ModelOutput};
pub use proposer::{
    CorpusIndex, CorpusLookup, HeadsProposer, Lookahead, NGram, NoProposer, Proposal,
    ProposalContext, Proposer,
};
pub use sampling::SamplingConfig;
pub use stats::{DecodeStats, StopReason};
pub use transformer::{Transformer, TransformerConfig};
pub use verifier::{CachedVerifier, RecomputeVerifier, Verifier};
