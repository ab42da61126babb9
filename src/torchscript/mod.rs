//! Any libtorch model: TorchScript modules exported from PyTorch (`scripts/export_hf.py`
//! exports Hugging Face causal LMs).
//!
//! # Calling convention
//!
//! **Cached form** (the fast path):
//!
//! ```text
//! forward(input_ids      int64 [B, T],
//!         position_ids   int64 [B, T],        absolute positions of the block
//!         attention_mask int64 [B, P + T],    1 for every position to attend; P = cached length
//!         k_cache        [L, B, KVH, MAX, Dh],
//!         v_cache        [L, B, KVH, MAX, Dh])
//!     -> (logits [B, T, V], hidden [B, T, D])
//! ```
//!
//! The module writes the block's keys and values into the caches at positions `P..P+T` in
//! place and attends over positions `0..P+T`. The caches are allocated once by
//! [`TorchScriptLm`]; rolling back a rejected block only moves its length cursor, and no call
//! copies the cache, whatever the past length.
//!
//! **Uncached form**: `forward(input_ids int64 [B, T]) -> (logits [B, T, V], hidden [B, T, D])`
//! (or logits alone). Use it with [`RecomputeVerifier`](crate::RecomputeVerifier).

mod masked;
mod metadata;
mod module;

pub use metadata::{DtypeFiles, ExportMetadata, Oracle, FORMAT};
pub use module::{F32Matmul, LoadOptions, ModuleForm, ModuleSpec, TorchScriptLm};
