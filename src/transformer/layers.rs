//! The transformer's building blocks, applied with fallible libtorch ops.

use tch::{nn, Kind, Tensor};

use crate::cache::KvCache;
use crate::error::Result;
use crate::matmul::{PackedLinear, Packing};

/// A dense layer `y = x Wᵀ + b`, optionally through a packed copy of its weights (oneDNN
/// float32 or int8) for inference, or with its product in a narrower float kind (mixed
/// precision for training).
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
    packed: Option<PackedLinear>,
    products: Option<Kind>,
}

impl Linear {
    pub(crate) fn new(path: nn::Path, d_in: i64, d_out: i64) -> Self {
        let l = nn::linear(path, d_in, d_out, Default::default());
        Linear {
            weight: l.ws,
            bias: l.bs.expect("nn::linear has a bias by default"),
            packed: None,
            products: None,
        }
    }

    /// Computes the unpacked product `x Wᵀ` in `kind` from now on (`None`: in the weights' own
    /// kind), casting inputs and weights to it and the result back, the bias added after. The
    /// weights stay what they are (float32 masters that training updates); gradients flow
    /// through the casts.
    pub(crate) fn set_products(&mut self, kind: Option<Kind>) {
        self.products = kind;
    }

    /// Computes through a packed copy of the current weights (CPU only) from now on; with
    /// [`Packing::Plain`], through the weights themselves again. The copy does not follow
    /// training: pack only for inference.
    pub(crate) fn pack(&mut self, packing: Packing) -> Result<()> {
        self.packed = PackedLinear::new(packing, &self.weight, Some(&self.bias))?;
        Ok(())
    }

    /// Drops the packed copy (what `pack(Packing::Plain)` does).
    pub(crate) fn unpack(&mut self) {
        self.packed = None;
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.packed {
            Some(p) => p.apply(x),
            None => match self.products {
                None => Ok(x.f_linear(&self.weight, Some(&self.bias))?),
                Some(kind) => Ok(x
                    .f_to_kind(kind)?
                    .f_linear::<Tensor>(&self.weight.f_to_kind(kind)?, None)?
                    .f_to_kind(x.kind())?
                    .f_add(&self.bias)?),
            },
        }
    }
}

/// Layer normalisation over the last dimension.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(path: nn::Path, dim: i64, eps: f64) -> Self {
        let weight = path.var("weight", &[dim], nn::Init::Const(1.0));
        let bias = path.var("bias", &[dim], nn::Init::Const(0.0));
        LayerNorm {
            weight,
            bias,
            dim,
            eps,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_layer_norm(
            x,
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            false,
        )?)
    }
}

/// One pre-norm transformer layer: causal self-attention then a GELU feed-forward block.
#[derive(Debug)]
pub(crate) struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    n_heads: i64,
    head_dim: i64,
    softmax_f32: bool,
}

pub(crate) struct BlockShape {
    pub d_model: i64,
    pub n_heads: i64,
    pub d_ff: i64,
    pub eps: f64,
    pub softmax_f32: bool,
}

impl Block {
    pub(crate) fn new(path: nn::Path, s: &BlockShape) -> Self {
        Block {
            ln1: LayerNorm::new(&path / "ln1", s.d_model, s.eps),
            qkv: Linear::new(&path / "qkv", s.d_model, 3 * s.d_model),
            proj: Linear::new(&path / "proj", s.d_model, s.d_model),
            ln2: LayerNorm::new(&path / "ln2", s.d_model, s.eps),
            fc1: Linear::new(&path / "fc1", s.d_model, s.d_ff),
            fc2: Linear::new(&path / "fc2", s.d_ff, s.d_model),
            n_heads: s.n_heads,
            head_dim: s.d_model / s.n_heads,
            softmax_f32: s.softmax_f32,
        }
    }

    /// `x`: `[B, T, D]` at positions `start..start+T`; `mask`: `[T, start+T]`, true where a
    /// query may attend a key. Without a cache `start` must be 0.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        start: usize,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.size3()?;
        let h = self.ln1.forward(x)?;
        let qkv = self
            .qkv
            .forward(&h)?
            .f_view([b, t, 3, self.n_heads, self.head_dim])?
            .f_permute([2, 0, 3, 1, 4])?; // [3, B, H, T, Dh]
        let q = qkv.f_get(0)?;
        let k = qkv.f_get(1)?;
        let v = qkv.f_get(2)?;
        // With a cache the block's keys and values are appended to it and attention reads the
        // whole prefix; without one (training on whole sequences) the block is the sequence.
        let (keys, values) = match cache {
            Some(cache) => cache.write(layer, start, &k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = q
            .f_matmul(&keys.f_transpose(-2, -1)?)?
            .f_mul_scalar(scale)?;
        let kind = scores.kind();
        let scores = if self.softmax_f32 {
            scores.f_to_kind(Kind::Float)?
        } else {
            scores
        };
        let scores = scores.f_masked_fill(&mask.f_logical_not()?, f64::NEG_INFINITY)?;
        let att = scores.f_softmax(-1, scores.kind())?.f_to_kind(kind)?;
        let y = att
            .f_matmul(&values)?
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_view([b, t, d])?;
        let x = x.f_add(&self.proj.forward(&y)?)?;
        let m = self
            .fc2
            .forward(&self.fc1.forward(&self.ln2.forward(&x)?)?.f_gelu("none")?)?;
        Ok(x.f_add(&m)?)
    }
}

/// Causal mask for a block of `t` queries at positions `start..start+t` over keys
/// `0..start+t`: `[t, start+t]`, true where key `j <= start + i`.
pub(crate) fn causal_mask(start: usize, t: usize, device: tch::Device) -> Result<Tensor> {
    let opts = (Kind::Int64, device);
    let keys = Tensor::f_arange((start + t) as i64, opts)?.f_unsqueeze(0)?;
    let queries = Tensor::f_arange_start(start as i64, (start + t) as i64, opts)?.f_unsqueeze(1)?;
    Ok(keys.f_le_tensor(&queries)?)
}
