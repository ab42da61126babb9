//! A native CPU decoder for Llama-shaped exports: the same model as the TorchScript module of
//! `scripts/export_hf.py`, computed by this crate's own kernels instead of libtorch's
//! operators.
//!
//! Why: a TorchScript step of SmolLM2-135M dispatches about 6,000 operators (norms, RoPE,
//! cache writes, attention, residuals), and its matrix products run below the machine's memory
//! bandwidth (docs/benchmarks.md, "Where the time of a step goes"). Here a step is 121 products
//! that read every weight once, at memory speed (packed four output rows to a stream:
//! `matrix.rs`), and a few loops for the rest; a block of up to six tokens reads the weights
//! once too.
//!
//! What it computes: [`NativeLm`] loads the f32 module's weights and the `native` description
//! `metadata.json` carries (norm epsilon, score scale, rotary frequencies: written by the
//! exporter for the plain Llama shape only: SiLU gates, full-width RoPE, no biases, windows,
//! soft-caps or per-head norms; SmolLM2, Llama 2/3). Activations are float32; the weights are
//! float32 ([`DType::F32`](crate::DType::F32)), rounded once to bfloat16
//! ([`DType::Bf16`](crate::DType::Bf16): half the bytes per step; each weight widened exactly
//! to float32 as it is used, or, by choice on CPUs with AVX-512 BF16, multiplied with the
//! product's inputs rounded to bfloat16 by the CPU's dot products or, on CPUs with AMX, its
//! tile unit: [`Bf16Inputs`]), or int8 with a float32 scale per output row
//! ([`DType::Int8`](crate::DType::Int8): a quarter of the bytes; each dot product of the
//! integers is scaled once).
//!
//! Exactness: every row of a block, of a batch and of a candidate tree is computed with the
//! same operations in the same order as a one-token step (the products' order of additions
//! does not depend on the number of rows: `src/native/matrix.rs`; a row's softmax runs over the
//! slots it may see only, gathered in order), so blockwise and tree decoding with this
//! model return its greedy output bit for bit. Its greedy output is the exported model's up to
//! float32 rounding: the crate's tests compare logits with the f32 module (within the export's
//! 2e-3) and greedy tokens with transformers' (equal, or diverging only at a near-tie).

mod inputs;
mod kernels;
mod masked;
mod matrix;
mod model;
mod pairs;
mod pool;
mod tiles;

pub use inputs::Bf16Inputs;
pub use model::{NativeDescription, NativeLm, NativeOptions};

pub(crate) use kernels::exp_shifted;
pub(crate) use matrix::Matrix;
pub(crate) use model::{attend, rope};
pub(crate) use pool::Pool;

/// Whether the native kernels run vectorised here (x86-64 with AVX2 and FMA); elsewhere they
/// fall back to plain loops, and [`Backend::Auto`](crate::bundle::Backend::Auto) takes the
/// TorchScript module instead.
pub fn vectorised() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        kernels::simd::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
