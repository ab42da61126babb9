//! Stern-style proposal heads: one shared feed-forward layer (hidden `H·d_ff`, output `H·d`) with
//! a residual from the input to each of the `H` outputs, then the model's own vocabulary
//! projection.

use tch::{nn, Tensor};

use super::layers::Linear;
use crate::error::Result;

/// The shared head layer. Head `h` predicts the token `h + 2` steps after a position's input.
#[derive(Debug)]
pub(crate) struct SternHeads {
    fc1: Linear,
    fc2: Linear,
    num_heads: i64,
    d_model: i64,
}

impl SternHeads {
    pub(crate) fn new(path: nn::Path, d_model: i64, num_heads: usize, head_d_ff: i64) -> Self {
        let n = num_heads as i64;
        SternHeads {
            fc1: Linear::new(&path / "fc1", d_model, n * head_d_ff),
            fc2: Linear::new(&path / "fc2", n * head_d_ff, n * d_model),
            num_heads: n,
            d_model,
        }
    }

    /// Final hidden states `[N, D]` -> head states `[N, H, D]` (before the vocabulary projection).
    pub(crate) fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let n = hidden.size()[0];
        let delta = self
            .fc2
            .forward(&self.fc1.forward(hidden)?.f_relu()?)?
            .f_view([n, self.num_heads, self.d_model])?;
        Ok(delta.f_add(&hidden.f_unsqueeze(1)?)?)
    }
}
