//! The built-in transformer's configuration (serde at the edge, checked before use).

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::heads::HeadArch;

/// Shape of the built-in decoder-only transformer and its proposal heads.
///
/// Saved as `config.json` next to the weights. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Model width.
    pub d_model: i64,
    /// Number of transformer layers.
    pub n_layers: usize,
    /// Attention heads per layer (must divide `d_model`).
    pub n_heads: i64,
    /// Hidden width of each layer's feed-forward block.
    pub d_ff: i64,
    /// Context window: the most positions the model attends over.
    pub max_context: usize,
    /// Proposal heads (Stern et al.): predictions 2, 3, ..., `num_proposal_heads + 1` tokens
    /// ahead. A block size of `k` uses `k - 1` heads.
    #[serde(default)]
    pub num_proposal_heads: usize,
    /// Hidden width per proposal head of the shared head layer (its total hidden width is
    /// `num_proposal_heads * head_d_ff`).
    #[serde(default = "default_head_d_ff")]
    pub head_d_ff: i64,
    /// Architecture of the proposal heads (default Stern et al.'s shared layer).
    #[serde(default)]
    pub head_arch: HeadArch,
    /// Floating-point kind of the weights and activations.
    #[serde(default)]
    pub dtype: DType,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_head_d_ff() -> i64 {
    64
}

fn default_eps() -> f64 {
    1e-5
}

impl TransformerConfig {
    /// A tiny model, handy in tests: 2 layers, width 32, 4 attention heads.
    pub fn tiny(vocab_size: i64, num_proposal_heads: usize) -> Self {
        TransformerConfig {
            vocab_size,
            d_model: 32,
            n_layers: 2,
            n_heads: 4,
            d_ff: 64,
            max_context: 128,
            num_proposal_heads,
            head_d_ff: 32,
            head_arch: HeadArch::Stern,
            dtype: DType::F64,
            layer_norm_eps: 1e-5,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &'static str, v: i64| {
            if v <= 0 {
                Err(Error::config(field, format!("must be positive, got {v}")))
            } else {
                Ok(())
            }
        };
        positive("vocab_size", self.vocab_size)?;
        positive("d_model", self.d_model)?;
        positive("n_heads", self.n_heads)?;
        positive("d_ff", self.d_ff)?;
        if self.n_layers == 0 {
            return Err(Error::config("n_layers", "must be at least 1"));
        }
        if self.max_context == 0 {
            return Err(Error::config("max_context", "must be at least 1"));
        }
        if self.d_model % self.n_heads != 0 {
            return Err(Error::config(
                "n_heads",
                format!(
                    "must divide d_model ({} is not a multiple of {})",
                    self.d_model, self.n_heads
                ),
            ));
        }
        if self.num_proposal_heads > 0 {
            positive("head_d_ff", self.head_d_ff)?;
        }
        if self.dtype == DType::Int8 {
            return Err(Error::config(
                "dtype",
                "int8 is a weight form of TorchScript exports; the built-in transformer computes \
                 in f32, f64, bf16 or f16",
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(Error::config("layer_norm_eps", "must be a positive number"));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.d_model / self.n_heads
    }
}
