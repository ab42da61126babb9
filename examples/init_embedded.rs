//! Writes the embedded default model into `assets/embedded/`: a seeded, untrained byte-level
//! transformer with 7 proposal heads (block sizes up to 8). Trained weights will replace it.
//!
//! ```text
//! cargo run --release --example init_embedded
//! ```

use blockwise::tokenizer::ByteTokenizer;
use blockwise::{DType, Result, Transformer, TransformerConfig};

/// Seed of the shipped weights.
const SEED: u64 = 2018;

fn main() -> Result<()> {
    let config = TransformerConfig {
        vocab_size: ByteTokenizer::VOCAB_SIZE,
        d_model: 128,
        n_layers: 3,
        n_heads: 4,
        d_ff: 512,
        max_context: 512,
        num_proposal_heads: 7,
        head_d_ff: 64,
        head_arch: blockwise::heads::HeadArch::Stern,
        dtype: DType::F32,
        layer_norm_eps: 1e-5,
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/embedded");
    Transformer::new_seeded(config, SEED, tch::Device::Cpu)?.save(dir)?;
    println!("wrote {dir}");
    Ok(())
}
