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

mod config;
mod sampler;
mod warp;

pub use config::SamplingConfig;
pub use sampler::Sampler;
pub use warp::{draw, entropy, probabilities, residual};
