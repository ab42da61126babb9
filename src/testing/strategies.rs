//! proptest strategies: random small float64 models, prompts and decode settings.

use proptest::prelude::*;

use crate::config::DecodeConfig;
use crate::dtype::DType;
use crate::error::Result;
use crate::transformer::{Transformer, TransformerConfig};

/// The most proposal heads a random model gets: enough for block sizes up to 10.
pub const MAX_HEADS: usize = 9;

/// Small float64 transformer shapes: vocabulary 4 to 40 (small, so random guesses and EOS ids
/// get hit), width 8 to 32, 1 or 2 layers, context 12 to 80 (small, so the context limit gets
/// hit), and [`MAX_HEADS`] untrained proposal heads.
pub fn tiny_transformer_config() -> impl Strategy<Value = TransformerConfig> {
    (
        4i64..=40,
        prop_oneof![Just(8i64), Just(16), Just(32)],
        1usize..=2,
        12usize..=80,
    )
        .prop_map(
            |(vocab_size, d_model, n_layers, max_context)| TransformerConfig {
                vocab_size,
                d_model,
                n_layers,
                n_heads: if d_model >= 16 { 4 } else { 2 },
                d_ff: 2 * d_model,
                max_context,
                num_proposal_heads: MAX_HEADS,
                head_d_ff: 16,
                head_arch: crate::heads::HeadArch::Stern,
                dtype: DType::F64,
                layer_norm_eps: 1e-5,
            },
        )
}

/// A prompt of 1 to `max_len` tokens in `0..vocab_size`.
pub fn prompt(vocab_size: i64, max_len: usize) -> impl Strategy<Value = Vec<i64>> {
    proptest::collection::vec(0..vocab_size, 1..=max_len.max(1))
}

/// Zero to two EOS ids in `0..vocab_size`.
pub fn eos_ids(vocab_size: i64) -> impl Strategy<Value = Vec<i64>> {
    proptest::collection::vec(0..vocab_size, 0..=2)
}

/// Decode settings: 0 to `max_new` new tokens and random EOS ids.
pub fn decode_config(vocab_size: i64, max_new: usize) -> impl Strategy<Value = DecodeConfig> {
    (0..=max_new, eos_ids(vocab_size)).prop_map(|(n, eos)| DecodeConfig::new(n).with_eos(eos))
}

/// One random decoding problem on a random built-in model.
#[derive(Debug, Clone)]
pub struct ModelCase {
    /// The model's shape.
    pub config: TransformerConfig,
    /// Seed of its weights.
    pub seed: u64,
    /// The prompt.
    pub prompt: Vec<i64>,
    /// Block size `k`, 1 to 10.
    pub block_size: usize,
    /// Decode settings.
    pub decode: DecodeConfig,
    /// Seed for randomised proposers.
    pub proposer_seed: u64,
    /// Probability that the oracle corrupts a proposed token.
    pub corrupt: f64,
}

impl ModelCase {
    /// The seeded model (float64, CPU).
    pub fn model(&self) -> Result<Transformer> {
        Transformer::new_seeded(self.config.clone(), self.seed, tch::Device::Cpu)
    }
}

/// Random models, prompts up to 12 tokens (or the context), block sizes 1 to 10, up to 40 new
/// tokens, random EOS ids, and seeds for the proposers.
pub fn model_case() -> impl Strategy<Value = ModelCase> {
    tiny_transformer_config().prop_flat_map(|config| {
        let vocab = config.vocab_size;
        let max_prompt = config.max_context.min(12);
        (
            Just(config),
            any::<u64>(),
            prompt(vocab, max_prompt),
            1usize..=10,
            decode_config(vocab, 40),
            any::<u64>(),
            prop_oneof![Just(0.0), Just(0.1), Just(0.3), Just(0.7)],
        )
            .prop_map(
                |(config, seed, prompt, block_size, decode, proposer_seed, corrupt)| ModelCase {
                    config,
                    seed,
                    prompt,
                    block_size,
                    decode,
                    proposer_seed,
                    corrupt,
                },
            )
    })
}
