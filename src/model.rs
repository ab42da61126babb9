//! The model adapter: one trait for "a causal language model that scores a block".
//!
//! Any model plugs into the decoders through [`CausalLm`]: the built-in
//! [`Transformer`](crate::transformer::Transformer), a TorchScript module, or a type of your own.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// What a decoder needs to know about a model before calling it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelInfo {
    /// Number of token ids the model scores; logits have this last dimension.
    pub vocab_size: i64,
    /// The most positions (prompt plus generated tokens) the model can attend over.
    pub max_context: usize,
    /// Proposal heads: extra predictions for the tokens 2, 3, ... steps ahead (0 when none).
    pub num_heads: usize,
    /// Whether the model keeps a key/value cache between calls. A model without one must be
    /// called with the whole sequence from position 0 every time.
    pub has_cache: bool,
    /// Where the model's tensors live; token ids are passed on this device.
    pub device: Device,
    /// The floating-point kind the model computes in.
    pub kind: Kind,
}

impl ModelInfo {
    /// Info for a model with the given vocabulary and context on the CPU in float32, with a
    /// cache and no proposal heads. Adjust the public fields for anything else.
    pub fn new(vocab_size: i64, max_context: usize) -> Self {
        ModelInfo {
            vocab_size,
            max_context,
            num_heads: 0,
            has_cache: true,
            device: Device::Cpu,
            kind: Kind::Float,
        }
    }
}

/// What one model call returns: scores for *every* block position.
#[derive(Debug)]
#[non_exhaustive]
pub struct ModelOutput {
    /// Next-token logits for every position of the block, `[B, T, V]`.
    pub logits: Tensor,
    /// Final hidden states (what the vocabulary projection reads), `[B, T, D]`, when the model
    /// exposes them. Proposal heads run on these. After [`CausalLm::set_feature_taps`] with
    /// `k` layers, `[B, T, (1 + k) D]`: the final states, then each tapped layer's residual
    /// state in the order the layers were given.
    pub hidden: Option<Tensor>,
}

impl ModelOutput {
    /// Output with logits only.
    pub fn logits(logits: Tensor) -> Self {
        ModelOutput {
            logits,
            hidden: None,
        }
    }

    /// Output with logits and final hidden states.
    pub fn with_hidden(logits: Tensor, hidden: Tensor) -> Self {
        ModelOutput {
            logits,
            hidden: Some(hidden),
        }
    }
}

/// A causal language model that scores a block of tokens appended to what it has cached.
///
/// # Contract
///
/// * `forward(tokens, start)` scores the token ids `tokens` (`[B, T]`, `Kind::Int64`, on
///   [`ModelInfo::device`]) placed at positions `start..start + T`. A cached model first
///   forgets every cached position `>= start` (so `start <= cached_len()` is required) and then
///   appends the block. A model without a cache requires `start == 0` and is given the whole
///   sequence each time.
/// * The output holds logits for every block position (`[B, T, V]`), never only the last one:
///   row `t` scores the token that follows `tokens[.., t]`.
/// * `truncate(len)` forgets cached positions `>= len`, cheaply (never a copy of the whole
///   cache).
///
/// The trait is object safe; decoders hold models as `M: CausalLm` and pass them around as
/// `&mut dyn CausalLm`. `&mut M` and `Box<M>` implement it too, so a decoder can borrow a model.
pub trait CausalLm {
    /// Sizes and placement of the model.
    fn info(&self) -> &ModelInfo;

    /// Scores a block; see the trait documentation for the contract.
    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput>;

    /// Tokens currently held in the cache (always 0 for a model without a cache).
    fn cached_len(&self) -> usize;

    /// Forgets cached positions `>= len`. A no-op when `len >= cached_len()`.
    fn truncate(&mut self, len: usize) -> Result<()>;

    /// Runs the model's proposal heads on final hidden states `[N, D]` and returns their logits
    /// `[N, H, V]` (head `h` predicts the token `h + 2` steps after the position's input token).
    /// `Ok(None)` when the model has no heads.
    fn head_logits(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        let _ = hidden;
        Ok(None)
    }

    /// Like [`CausalLm::head_logits`] for the first `n` heads only (`[N, n, V]`). The default
    /// runs every head and keeps `n`; models whose head projection is costly override it, so
    /// that a small block does not pay for heads it cannot use.
    fn head_logits_first(&self, hidden: &Tensor, n: usize) -> Result<Option<Tensor>> {
        match self.head_logits(hidden)? {
            Some(l) => {
                let n = (n as i64).min(l.size()[1]);
                Ok(Some(l.f_narrow(1, 0, n)?))
            }
            None => Ok(None),
        }
    }

    /// The token embedding matrix `[V, D]`, when the model exposes it (embedding-distance
    /// acceptance reads it).
    fn token_embeddings(&self) -> Option<Tensor> {
        None
    }

    /// The model as a [`MaskedLm`](crate::MaskedLm) — explicit positions and attention masks,
    /// for batched rows and candidate trees — when it is one. The default says it is not.
    fn as_masked(&mut self) -> Option<&mut dyn crate::masked::MaskedLm> {
        None
    }

    /// Asks every later call (causal and masked) to return, after the final hidden states, the
    /// residual state after each of `layers` (0-based, in the given order), so that
    /// [`ModelOutput::hidden`] is `[B, T, (1 + k) D]`. A feature draft that reads inner layers
    /// needs them ([`crate::feature::FeatureDraftConfig::taps`]). An empty list returns to the
    /// final states alone. The default refuses any layer ([`Error::MissingCapability`]); a layer
    /// past the model's is refused ([`Error::InvalidConfig`]).
    fn set_feature_taps(&mut self, layers: &[usize]) -> Result<()> {
        if layers.is_empty() {
            return Ok(());
        }
        Err(Error::MissingCapability {
            component: "a feature draft that reads inner layers",
            capability: "the residual states of inner layers (CausalLm::set_feature_taps)",
        })
    }
}

/// The final states `[.., D]` of hidden states that may carry feature taps after them
/// (`[.., (1 + k) D]`, [`CausalLm::set_feature_taps`]).
pub fn final_states(hidden: &Tensor, d: i64) -> Result<Tensor> {
    let width = hidden.size().last().copied().unwrap_or(0);
    if width == d {
        return Ok(hidden.shallow_clone());
    }
    if d < 1 || width % d != 0 {
        return Err(Error::config(
            "hidden states",
            format!("{width} wide, neither the final states' {d} nor a multiple of it"),
        ));
    }
    Ok(hidden.f_narrow(-1, 0, d)?)
}

/// Checks feature taps against a model of `n_layers` layers (for implementations of
/// [`CausalLm::set_feature_taps`]).
pub fn check_feature_taps(layers: &[usize], n_layers: usize) -> Result<()> {
    if let Some(&l) = layers.iter().find(|&&l| l >= n_layers) {
        return Err(Error::config(
            "feature taps",
            format!("layer {l} is past the model's {n_layers} layers (they count from 0)"),
        ));
    }
    Ok(())
}

impl<M: CausalLm + ?Sized> CausalLm for &mut M {
    fn info(&self) -> &ModelInfo {
        (**self).info()
    }
    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        (**self).forward(tokens, start)
    }
    fn cached_len(&self) -> usize {
        (**self).cached_len()
    }
    fn truncate(&mut self, len: usize) -> Result<()> {
        (**self).truncate(len)
    }
    fn head_logits(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        (**self).head_logits(hidden)
    }
    fn head_logits_first(&self, hidden: &Tensor, n: usize) -> Result<Option<Tensor>> {
        (**self).head_logits_first(hidden, n)
    }
    fn token_embeddings(&self) -> Option<Tensor> {
        (**self).token_embeddings()
    }
    fn as_masked(&mut self) -> Option<&mut dyn crate::masked::MaskedLm> {
        (**self).as_masked()
    }
    fn set_feature_taps(&mut self, layers: &[usize]) -> Result<()> {
        (**self).set_feature_taps(layers)
    }
}

impl<M: CausalLm + ?Sized> CausalLm for Box<M> {
    fn info(&self) -> &ModelInfo {
        (**self).info()
    }
    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        (**self).forward(tokens, start)
    }
    fn cached_len(&self) -> usize {
        (**self).cached_len()
    }
    fn truncate(&mut self, len: usize) -> Result<()> {
        (**self).truncate(len)
    }
    fn head_logits(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        (**self).head_logits(hidden)
    }
    fn head_logits_first(&self, hidden: &Tensor, n: usize) -> Result<Option<Tensor>> {
        (**self).head_logits_first(hidden, n)
    }
    fn token_embeddings(&self) -> Option<Tensor> {
        (**self).token_embeddings()
    }
    fn as_masked(&mut self) -> Option<&mut dyn crate::masked::MaskedLm> {
        (**self).as_masked()
    }
    fn set_feature_taps(&mut self, layers: &[usize]) -> Result<()> {
        (**self).set_feature_taps(layers)
    }
}

/// Checks token ids against a vocabulary, naming the sequence in the error.
pub fn check_tokens(what: &'static str, tokens: &[i64], vocab_size: i64) -> Result<()> {
    match tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t < 0 || t >= vocab_size)
    {
        Some((position, &token)) => Err(Error::TokenOutOfVocabulary {
            what,
            position,
            token,
            vocab_size,
        }),
        None => Ok(()),
    }
}

/// Checks that a block of `block_len` tokens at `start` follows a cache of `cached` positions
/// (no gap) and fits `max_context`: what a cached model checks before writing its cache.
pub fn check_block(
    start: usize,
    block_len: usize,
    cached: usize,
    max_context: usize,
) -> Result<()> {
    if start > cached {
        return Err(Error::CacheGap { start, cached });
    }
    if start + block_len > max_context {
        return Err(Error::BlockBeyondContext {
            start,
            block_len,
            max_context,
        });
    }
    Ok(())
}

/// Checks a model input: `[1, T]` int64 with `T >= 1` and every id in the vocabulary (one small
/// host transfer). Returns `T`.
pub fn check_input(tokens: &Tensor, vocab_size: i64, component: &'static str) -> Result<usize> {
    let size = tokens.size();
    if size.len() != 2 || size[0] != 1 || size[1] == 0 || tokens.kind() != tch::Kind::Int64 {
        return Err(Error::Contract {
            component,
            problem: format!(
                "token ids must be int64 [1, T] with T >= 1, got {:?} {size:?}",
                tokens.kind()
            ),
        });
    }
    let ids: Vec<i64> = Vec::try_from(&tokens.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?;
    check_tokens("model input", &ids, vocab_size)?;
    Ok(size[1] as usize)
}

/// Feeds `prompt` to a cached model from position 0 in blocks of at most `chunk` tokens (all at
/// once when `None`), so peak activation memory is bounded by the chunk rather than the prompt.
/// Returns the last block's output (its last row scores the token after the prompt). A model
/// without a cache always gets the whole prompt.
pub fn prefill(
    model: &mut dyn CausalLm,
    prompt: &[i64],
    chunk: Option<usize>,
) -> Result<ModelOutput> {
    prefill_each(model, prompt, chunk, |_| {})
}

/// [`prefill`], handing every block's output to `each` before the next block runs (for example
/// to keep the hidden states of the whole prompt).
pub fn prefill_each(
    model: &mut dyn CausalLm,
    prompt: &[i64],
    chunk: Option<usize>,
    mut each: impl FnMut(&ModelOutput),
) -> Result<ModelOutput> {
    let info = model.info().clone();
    let step = match chunk {
        Some(0) => return Err(Error::config("prefill_chunk", "must be at least 1")),
        Some(c) if info.has_cache => c,
        _ => prompt.len().max(1),
    };
    let mut start = 0;
    loop {
        let end = (start + step).min(prompt.len());
        let block = &prompt[start..end];
        let out = model.forward(&token_tensor(block, info.device), start)?;
        check_output(&out, block.len(), info.vocab_size)?;
        each(&out);
        if end == prompt.len() {
            return Ok(out);
        }
        start = end;
    }
}

/// Token ids as a `[1, T]` int64 tensor on `device`.
pub fn token_tensor(tokens: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(tokens).to_device(device).unsqueeze(0)
}

/// Checks that a model's output matches the calling convention for a block of `block_len`
/// tokens (batch 1): logits `[1, T, V]`, hidden `[1, T, D]` when present.
pub fn check_output(out: &ModelOutput, block_len: usize, vocab_size: i64) -> Result<()> {
    let size = out.logits.size();
    if size.len() != 3 || size[0] != 1 || size[1] != block_len as i64 || size[2] != vocab_size {
        return Err(Error::BadOutputShape {
            output: "logits",
            expected: format!("[1, {block_len}, {vocab_size}] (batch, block, vocabulary)"),
            actual: size,
        });
    }
    if let Some(h) = &out.hidden {
        let hs = h.size();
        if hs.len() != 3 || hs[0] != 1 || hs[1] != block_len as i64 {
            return Err(Error::BadOutputShape {
                output: "hidden",
                expected: format!("[1, {block_len}, D] (batch, block, width)"),
                actual: hs,
            });
        }
    }
    Ok(())
}
