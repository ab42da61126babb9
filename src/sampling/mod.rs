//! Sampling: temperature, top-k and top-p, drawn with a generator the decoder owns.
//!
//! Under sampling a decoder draws each token from the base model's *warped* distribution
//! (temperature, then top-k, then top-p). [`GreedyDecoder`](crate::GreedyDecoder) does exactly
//! that one token per call and is the reference; [`Blockwise`](crate::Blockwise) with lossless
//! acceptance ([`Exact`](crate::Exact), also called [`Lossless`](crate::acceptance::Lossless))
//! produces sequences with the same distribution (speculative sampling: Leviathan et al. 2023,
//! Chen et al. 2023), in fewer model calls.
//!
//! The warping and drawing are plain host code over `f32` logits, so they are unit-testable and
//! identical on every device and dtype. Randomness comes from [`SeededRng`](crate::rng::SeededRng),
//! never from libtorch's process-wide generator.
//!
//! ```
//! use blockwise::{Blockwise, BlockwiseDecoder, DecodeConfig, HeadsProposer, SamplingConfig,
//!                 Transformer, TransformerConfig};
//! # fn main() -> blockwise::Result<()> {
//! let model = Transformer::new_seeded(TransformerConfig::tiny(50, 3), 7, tch::Device::Cpu)?;
//! let config = DecodeConfig::new(20).with_sampling(SamplingConfig::new(0.8).with_seed(1));
//! let mut decoder = Blockwise::builder(model)
//!     .block_size(4)
//!     .proposer(HeadsProposer)
//!     .build()?;
//! let a = decoder.decode(&[1, 2, 3], &config)?;
//! let b = decoder.decode(&[1, 2, 3], &config)?;
//! assert_eq!(a.tokens, b.tokens); // the per-call seed makes it reproducible
//! assert_eq!(a.tokens.len(), 20);
//! # Ok(()) }
//! ```

mod config;
mod sampler;
pub(crate) mod warp;

pub use config::SamplingConfig;
pub use sampler::Sampler;
pub use warp::{draw, entropy, probabilities, residual};
