//! The feature-level draft's network: one transformer layer that reads the base model's final
//! hidden state at a position and the embedding of the token after it, and predicts the base
//! model's hidden state at the next position. The base model's own (tied) vocabulary
//! projection, restricted to a shortlist of token ids, turns a predicted state into a guess.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::matmul::{PackedLinear, Packing};
use crate::transformer::layers::{LayerNorm, Linear};

/// File name of the draft's settings inside a draft folder.
pub const DRAFT_CONFIG_FILE: &str = "draft.json";
/// File name of the draft's weights inside a draft folder.
pub const DRAFT_WEIGHTS_FILE: &str = "draft.safetensors";
/// File name of the draft's shortlist inside a draft folder (when it has one).
pub const DRAFT_SHORTLIST_FILE: &str = "shortlist.safetensors";

/// Shape of a feature-level draft, saved as `draft.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDraftConfig {
    /// Width of the base model's final hidden states (and of the draft's layer).
    pub d_model: i64,
    /// Attention heads of the draft's layer (`d_model` must be a multiple).
    pub n_heads: i64,
    /// Hidden width of the draft layer's feed-forward block.
    pub d_ff: i64,
    /// The base model's vocabulary size.
    pub vocab_size: i64,
    /// Transformer layers, each reading the previous one's output (default 1; saved only when
    /// more).
    #[serde(default = "one_layer", skip_serializing_if = "is_one_layer")]
    pub n_layers: i64,
    /// Rotary position embedding in the draft's attention: the base of its frequencies (as a
    /// Llama's `rope_theta`), or none, where the draft sees order only through the base's
    /// states (every draft saved before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Inner layers of the base (0-based) whose residual states the draft reads besides the
    /// final states, EAGLE-3's idea: where the draft reads a state the base computed, a linear
    /// map of these (each RMS-normalised) is added to the final state. The base must hand them
    /// over ([`crate::CausalLm::set_feature_taps`]). None: the final states alone (every draft
    /// saved before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taps: Option<Vec<usize>>,
    /// What the draft was trained on top of (for example the export's source file), checked
    /// when it is attached to an exported model.
    #[serde(default)]
    pub base: Option<String>,
}

fn one_layer() -> i64 {
    1
}

fn is_one_layer(n: &i64) -> bool {
    *n == 1
}

impl FeatureDraftConfig {
    /// A draft for a base of width `d_model` and vocabulary `vocab_size`: one layer of
    /// `d_model / 64` attention heads (at least one) and a feed-forward block of `8/3 · d_model`.
    pub fn for_base(d_model: i64, vocab_size: i64) -> Self {
        let n_heads = (d_model / 64).max(1);
        FeatureDraftConfig {
            d_model,
            n_heads,
            d_ff: (d_model * 8 / 3).max(1),
            vocab_size,
            n_layers: 1,
            rope_theta: None,
            taps: None,
            base: None,
        }
    }

    /// Width of the states the draft reads from the base: the final states' `d_model`, times
    /// one plus the number of tapped layers.
    pub fn feature_width(&self) -> i64 {
        self.d_model * (1 + self.taps.as_ref().map_or(0, Vec::len) as i64)
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.d_model < 1
            || self.n_heads < 1
            || self.d_ff < 1
            || self.vocab_size < 1
            || self.n_layers < 1
        {
            return Err(Error::config(
                "feature draft",
                format!(
                    "d_model, n_heads, d_ff, vocab_size and n_layers must be at least 1, got {}, \
                     {}, {}, {}, {}",
                    self.d_model, self.n_heads, self.d_ff, self.vocab_size, self.n_layers
                ),
            ));
        }
        if let Some(theta) = self.rope_theta {
            if !(theta.is_finite() && theta > 1.0) {
                return Err(Error::config(
                    "feature draft",
                    format!("rope_theta must be a finite number above 1, got {theta}"),
                ));
            }
        }
        if (self.d_model / self.n_heads.max(1)) % 2 != 0 && self.rope_theta.is_some() {
            return Err(Error::config(
                "feature draft",
                format!(
                    "rotary positions need an even head width, got {}",
                    self.d_model / self.n_heads.max(1)
                ),
            ));
        }
        if self.taps.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::config(
                "feature draft",
                "taps names no layer (leave it out for a draft that reads the final states alone)",
            ));
        }
        if self.d_model % self.n_heads != 0 {
            return Err(Error::config(
                "feature draft",
                format!(
                    "d_model {} is not a multiple of n_heads {}",
                    self.d_model, self.n_heads
                ),
            ));
        }
        Ok(())
    }
}

/// The draft: a linear map from `[hidden, embedding]` (`2·D`) to `D`, then pre-norm transformer
/// layers (one by default; attention with rotary positions when the config names a
/// `rope_theta`, without positions otherwise, and a GELU feed-forward block) whose last output
/// is the predicted hidden state.
#[derive(Debug)]
pub struct FeatureDraft {
    vs: nn::VarStore,
    fuse: Linear,
    /// The map from the tapped layers' states to the final state's width (`config.taps`).
    taps: Option<Linear>,
    layers: Vec<DraftLayer>,
    config: FeatureDraftConfig,
    shortlist: Option<Vec<i64>>,
}

/// One transformer layer of the draft.
#[derive(Debug)]
struct DraftLayer {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl DraftLayer {
    fn new(p: &nn::Path, d: i64, d_ff: i64) -> Self {
        DraftLayer {
            ln1: LayerNorm::new(p / "ln1", d, 1e-5),
            qkv: Linear::new(p / "qkv", d, 3 * d),
            proj: Linear::new(p / "proj", d, d),
            ln2: LayerNorm::new(p / "ln2", d, 1e-5),
            fc1: Linear::new(p / "fc1", d, d_ff),
            fc2: Linear::new(p / "fc2", d_ff, d),
        }
    }

    /// The prefix of layer `i`'s variable names: none for the first (the names of one-layer
    /// drafts), `layer{i}.` for the others.
    fn prefix(i: usize) -> String {
        match i {
            0 => String::new(),
            _ => format!("layer{i}."),
        }
    }
}

/// Queries, keys and values of a layer input, `[B, H, T, Dh]` each.
pub(crate) struct Qkv {
    pub(crate) q: Tensor,
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
}

impl FeatureDraft {
    /// A fresh draft (float32, on `device`) with weights drawn from `seed`. The output
    /// projections of the attention and the feed-forward block start at zero and the fused
    /// input at the hidden state, so a fresh draft passes the base's hidden state straight
    /// through (and guesses the base's own next token again).
    pub fn new(config: FeatureDraftConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        crate::cuda::check_device(device)?;
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let d = config.d_model;
        let layers = (0..config.n_layers as usize)
            .map(|i| match i {
                0 => DraftLayer::new(&root, d, config.d_ff),
                _ => DraftLayer::new(&(&root / format!("layer{i}")), d, config.d_ff),
            })
            .collect();
        let taps = config
            .taps
            .as_ref()
            .map(|t| Linear::new(&root / "taps", t.len() as i64 * d, d));
        let draft = FeatureDraft {
            fuse: Linear::new(&root / "fuse", 2 * d, d),
            taps,
            layers,
            vs,
            config,
            shortlist: None,
        };
        tch::no_grad(|| -> Result<()> {
            let vars = draft.vs.variables();
            // The taps' map starts at zero: a draft reads the final states alone until training
            // finds a use for the inner layers.
            let mut zeroed = vec![
                "fuse.bias".to_string(),
                "taps.weight".to_string(),
                "taps.bias".to_string(),
            ];
            for i in 0..draft.layers.len() {
                let p = DraftLayer::prefix(i);
                for name in ["proj.weight", "proj.bias", "fc2.weight", "fc2.bias"] {
                    zeroed.push(format!("{p}{name}"));
                }
            }
            for name in &zeroed {
                if let Some(mut t) = vars.get(name).map(|t| t.shallow_clone()) {
                    let _ = t.f_zero_()?;
                }
            }
            // The fused input starts as the hidden state itself (the embedding's half at zero),
            // and every layer passes its input through (its output projections at zero), so a
            // fresh draft predicts the base's own next token and training moves it on.
            if let Some(w) = vars.get("fuse.weight") {
                let eye = Tensor::f_eye(d, (Kind::Float, device))?;
                let zero = Tensor::f_zeros([d, d], (Kind::Float, device))?;
                w.shallow_clone()
                    .f_copy_(&Tensor::f_cat(&[eye, zero], 1)?)?;
            }
            Ok(())
        })?;
        Ok(draft)
    }

    /// Loads a draft saved by [`FeatureDraft::save`] from `dir`, onto `device`.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config: FeatureDraftConfig = Error::read_json(dir.join(DRAFT_CONFIG_FILE))?;
        let mut draft = FeatureDraft::new(config, 0, device)?;
        let weights = dir.join(DRAFT_WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(Error::io("reading", &weights)(
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let saved: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(&weights)?.into_iter().collect();
        draft.copy_weights(&saved, &weights.display().to_string(), false)?;
        let list = dir.join(DRAFT_SHORTLIST_FILE);
        if list.is_file() {
            let ids = Tensor::read_safetensors(&list)?
                .into_iter()
                .find(|(n, _)| n == "shortlist")
                .ok_or_else(|| Error::config("shortlist", "the file has no `shortlist` tensor"))?
                .1;
            draft = draft.with_shortlist(Vec::try_from(&ids.f_to_kind(Kind::Int64)?)?)?;
        }
        Ok(draft)
    }

    /// The same draft with `n_layers` layers: the first ones its own, fresh ones on top, each
    /// passing its input through (so the draft's guesses are unchanged until training moves
    /// them). For fine-tuning a deeper draft from a trained one; fewer layers than it has are
    /// refused.
    pub fn with_layers(self, n_layers: i64) -> Result<Self> {
        if n_layers < self.config.n_layers {
            return Err(Error::config(
                "feature draft",
                format!(
                    "has {} layers; a draft can only grow (asked for {n_layers})",
                    self.config.n_layers
                ),
            ));
        }
        let mut config = self.config.clone();
        config.n_layers = n_layers;
        self.regrown(config)
    }

    /// A draft of `config` holding this one's weights and shortlist: what `config` adds keeps
    /// a fresh draft's values (layers and maps that pass their input through).
    fn regrown(self, config: FeatureDraftConfig) -> Result<Self> {
        let mut grown = FeatureDraft::new(config, 0, self.vs.device())?;
        let own: std::collections::HashMap<String, Tensor> =
            self.vs.variables().into_iter().collect();
        grown.copy_weights(&own, "the draft", true)?;
        grown.shortlist = self.shortlist;
        Ok(grown)
    }

    /// The same draft reading the base's inner layers `layers` too (`config.taps`), their map
    /// at zero, so its guesses are unchanged until training moves it. For fine-tuning a draft
    /// that reads the final states alone; a draft that already has taps is refused.
    pub fn with_taps(self, layers: Vec<usize>) -> Result<Self> {
        if let Some(own) = &self.config.taps {
            return Err(Error::config(
                "feature draft",
                format!("already reads layers {own:?}; taps can only be added to a draft without"),
            ));
        }
        let mut config = self.config.clone();
        config.taps = Some(layers);
        self.regrown(config)
    }

    /// The state the draft reads where the base computed one, `[.., D]` (float32), from what
    /// the base hands over (`[.., feature_width]`): the final state, plus the taps' map of the
    /// inner layers' states when the draft has taps.
    pub(crate) fn true_state(&self, hidden: &Tensor) -> Result<Tensor> {
        let d = self.config.d_model;
        let width = self.config.feature_width();
        if hidden.size().last().copied() != Some(width) {
            return Err(Error::BadOutputShape {
                output: "hidden",
                expected: match &self.config.taps {
                    None => format!("[.., {d}] (the final states)"),
                    Some(t) => format!(
                        "[.., {width}] (the final states, then layers {t:?}: call \
                         CausalLm::set_feature_taps on the base)"
                    ),
                },
                actual: hidden.size(),
            });
        }
        let hidden = hidden.f_to_kind(Kind::Float)?;
        let Some(map) = &self.taps else {
            return Ok(hidden);
        };
        let k = width / d - 1;
        let mut shape = hidden.size();
        let last = shape.len() - 1;
        shape[last] = k;
        shape.push(d);
        let inner = hidden.f_narrow(-1, d, k * d)?.f_view(shape.as_slice())?;
        let normed = inner.f_mul(
            &inner
                .f_square()?
                .f_mean_dim(-1, true, Kind::Float)?
                .f_add_scalar(1e-6)?
                .f_rsqrt()?,
        )?;
        Ok(hidden
            .f_narrow(-1, 0, d)?
            .f_add(&map.forward(&normed.f_flatten(-2, -1)?)?)?)
    }

    /// Copies `saved` (named as the draft's variables, any float kind) into the draft's
    /// variables; with `partial`, variables `saved` lacks keep their values.
    fn copy_weights(
        &mut self,
        saved: &std::collections::HashMap<String, Tensor>,
        what: &str,
        partial: bool,
    ) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let device = self.vs.device();
        for (name, mut var) in self.vs.variables() {
            let Some(src) = saved.get(&name) else {
                if partial {
                    continue;
                }
                return Err(Error::config(
                    "feature draft",
                    format!("{what} has no `{name}`"),
                ));
            };
            if src.size() != var.size() {
                return Err(Error::config(
                    "feature draft",
                    format!(
                        "`{name}` is {:?} in {what}, {:?} here",
                        src.size(),
                        var.size()
                    ),
                ));
            }
            // Stored in bfloat16; computed in float32.
            var.f_copy_(&src.f_to_kind(Kind::Float)?.f_to_device(device)?)?;
        }
        Ok(())
    }

    /// Restricts the draft's guesses to the token ids `ids` (distinct, in the vocabulary): a
    /// cheaper vocabulary projection per draft step. Verification still scores the whole
    /// vocabulary, so output is unchanged.
    pub fn with_shortlist(mut self, ids: Vec<i64>) -> Result<Self> {
        crate::model::check_tokens("shortlist", &ids, self.config.vocab_size)?;
        let mut seen = vec![false; self.config.vocab_size as usize];
        for &id in &ids {
            if std::mem::replace(&mut seen[id as usize], true) {
                return Err(Error::config(
                    "shortlist",
                    format!("token id {id} appears twice"),
                ));
            }
        }
        if ids.is_empty() {
            return Err(Error::config("shortlist", "is empty"));
        }
        self.shortlist = Some(ids);
        Ok(self)
    }

    /// The shortlist's token ids, when the draft has one.
    pub fn shortlist(&self) -> Option<&[i64]> {
        self.shortlist.as_deref()
    }

    /// The vocabulary projection the draft scores with: the base's token embeddings
    /// `embeddings` (`[V, D]`, tied to its output projection), restricted to the shortlist.
    pub fn projection(&self, embeddings: &Tensor) -> Result<VocabProjection> {
        VocabProjection::new(
            embeddings,
            self.shortlist.as_deref(),
            self.config.vocab_size,
        )
    }

    /// Writes `draft.json`, `draft.safetensors` (weights in bfloat16) and, with a shortlist,
    /// `shortlist.safetensors` into `dir` (created if missing).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let path = dir.join(DRAFT_CONFIG_FILE);
        let json = serde_json::to_string_pretty(&self.config).map_err(|source| Error::Json {
            what: "feature draft config".into(),
            source,
        })?;
        std::fs::write(&path, json + "\n").map_err(Error::io("writing", &path))?;
        // Weights are stored in bfloat16 (half the size; loading casts them back to float32).
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_to_kind(Kind::BFloat16)?.f_to_device(Device::Cpu)?)))
            .collect::<Result<_>>()?;
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let refs: Vec<(&str, Tensor)> = named
            .iter()
            .map(|(n, t)| (n.as_str(), t.shallow_clone()))
            .collect();
        Tensor::write_safetensors(&refs, dir.join(DRAFT_WEIGHTS_FILE))?;
        if let Some(ids) = &self.shortlist {
            Tensor::write_safetensors(
                &[("shortlist", Tensor::from_slice(ids))],
                dir.join(DRAFT_SHORTLIST_FILE),
            )?;
        }
        Ok(())
    }

    /// Runs the layer's products through packed copies of its current weights (oneDNN float32
    /// or int8, on the CPU; for inference: the copies do not follow training) or through the
    /// weights themselves ([`Packing::Plain`]).
    pub(crate) fn pack(&mut self, packing: Packing) -> Result<()> {
        for l in self.linears() {
            l.pack(packing)?;
        }
        Ok(())
    }

    /// Computes through the weights themselves again (drops the packed copies).
    pub(crate) fn unpack(&mut self) {
        self.linears().into_iter().for_each(Linear::unpack);
    }

    /// Computes the layers' unpacked products in `kind` from now on (`None`: float32), the
    /// weights kept in float32 (`DraftTrainConfig::products`: a training step 1.6x faster on
    /// a 2-core Xeon with AMX).
    pub(crate) fn set_products(&mut self, kind: Option<Kind>) {
        for l in self.linears() {
            l.set_products(kind);
        }
    }

    fn linears(&mut self) -> Vec<&mut Linear> {
        let mut out = vec![&mut self.fuse];
        out.extend(self.taps.as_mut());
        for l in &mut self.layers {
            out.extend([&mut l.qkv, &mut l.proj, &mut l.fc1, &mut l.fc2]);
        }
        out
    }

    /// The number of layers.
    pub(crate) fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The draft's settings.
    pub fn config(&self) -> &FeatureDraftConfig {
        &self.config
    }

    /// Records what the draft was trained on top of (saved with it).
    pub fn set_base(&mut self, base: Option<String>) {
        self.config.base = base;
    }

    /// The draft's variables (what training updates and a checkpoint saves).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Moves the draft's weights to `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        if self.vs.device() != device {
            self.vs.set_device(device);
        }
        Ok(())
    }

    /// The fused layer input from hidden states `[B, T, D]` and the embeddings of the tokens
    /// after them `[B, T, D]` (any float kind; computed in float32).
    pub(crate) fn fuse(&self, hidden: &Tensor, embedded: &Tensor) -> Result<Tensor> {
        let x = Tensor::f_cat(
            &[
                hidden.f_to_kind(Kind::Float)?,
                embedded.f_to_kind(Kind::Float)?,
            ],
            -1,
        )?;
        self.fuse.forward(&x)
    }

    /// Queries, keys and values of layer `layer`'s input `[B, T, D]` (the fused input for the
    /// first layer, the previous layer's output for the others) at sequence positions
    /// `positions` (`T` of them; they rotate queries and keys when the draft has rotary
    /// positions, and only their differences matter).
    pub(crate) fn qkv(&self, layer: usize, x: &Tensor, positions: &[i64]) -> Result<Qkv> {
        let (b, t, _) = x.size3()?;
        let h = self.config.n_heads;
        let dh = self.config.d_model / h;
        let l = &self.layers[layer];
        let qkv = l
            .qkv
            .forward(&l.ln1.forward(x)?)?
            .f_view([b, t, 3, h, dh])?
            .f_permute([2, 0, 3, 1, 4])?; // [3, B, H, T, Dh]
        let (q, k) = (qkv.f_get(0)?, qkv.f_get(1)?);
        let (q, k) = match self.rotation(positions, x.device())? {
            Some((cos, sin)) => (rotate(&q, &cos, &sin)?, rotate(&k, &cos, &sin)?),
            None => (q, k),
        };
        Ok(Qkv {
            q,
            k,
            v: qkv.f_get(2)?,
        })
    }

    /// The rotary frequencies of one head (`Dh / 2`, Llama's convention), when the draft has
    /// rotary positions.
    pub(crate) fn rope_inv_freq(&self) -> Option<Vec<f64>> {
        let theta = self.config.rope_theta?;
        let dh = self.config.d_model / self.config.n_heads;
        Some(
            (0..dh / 2)
                .map(|i| theta.powf(-(2 * i) as f64 / dh as f64))
                .collect(),
        )
    }

    /// Cosines and sines `[T, Dh / 2]` (float32) of `positions`' angles, when the draft has
    /// rotary positions.
    fn rotation(&self, positions: &[i64], device: Device) -> Result<Option<(Tensor, Tensor)>> {
        let Some(freq) = self.rope_inv_freq() else {
            return Ok(None);
        };
        let angles: Vec<f32> = positions
            .iter()
            .flat_map(|&p| freq.iter().map(move |&f| (p as f32) * (f as f32)))
            .collect();
        let angles = Tensor::from_slice(&angles)
            .f_view([positions.len() as i64, freq.len() as i64])?
            .f_to_device(device)?;
        Ok(Some((angles.f_cos()?, angles.f_sin()?)))
    }

    /// The scale of attention scores.
    pub(crate) fn scale(&self) -> f64 {
        1.0 / ((self.config.d_model / self.config.n_heads) as f64).sqrt()
    }

    /// Layer `layer`'s output from its input `x` (`[B, T, D]`) and the attention's result
    /// (`[B, H, T, Dh]`); the last layer's is the predicted hidden states `[B, T, D]`.
    pub(crate) fn finish(&self, layer: usize, x: &Tensor, attended: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.size3()?;
        let l = &self.layers[layer];
        let y = attended
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_view([b, t, d])?;
        let x = x.f_add(&l.proj.forward(&y)?)?;
        let m = l
            .fc2
            .forward(&l.fc1.forward(&l.ln2.forward(&x)?)?.f_gelu("none")?)?;
        Ok(x.f_add(&m)?)
    }

    /// Attention of the queries `q` over `keys`/`values` (`[B, H, S, Dh]`, the block's own
    /// last), with `mask` (`[T, S]` or broadcastable, true where a query may attend; `None`: every
    /// key).
    pub(crate) fn attend(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut scores = q
            .f_matmul(&keys.f_transpose(-2, -1)?)?
            .f_mul_scalar(self.scale())?;
        if let Some(mask) = mask {
            scores = scores.f_masked_fill(&mask.f_logical_not()?, f64::NEG_INFINITY)?;
        }
        Ok(scores.f_softmax(-1, Kind::Float)?.f_matmul(values)?)
    }
}

/// Rotates heads `x` (`[B, H, T, Dh]`) by the angles whose cosines and sines are `cos`, `sin`
/// (`[T, Dh / 2]`): element `i` and `i + Dh / 2` of each head turn together (Llama's halves).
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = cos.size()[1];
    let (a, b) = (x.f_narrow(-1, 0, half)?, x.f_narrow(-1, half, half)?);
    Ok(Tensor::f_cat(
        &[
            a.f_mul(cos)?.f_sub(&b.f_mul(sin)?)?,
            b.f_mul(cos)?.f_add(&a.f_mul(sin)?)?,
        ],
        -1,
    )?)
}

/// The base model's vocabulary projection as the draft uses it: float32 rows of the token
/// embeddings (all of them, or the shortlist's), and the map between columns and token ids.
#[derive(Debug)]
pub struct VocabProjection {
    weight: Tensor,
    packed: Option<PackedLinear>,
    /// The weight cast to the kind the unpacked product computes in, when not float32.
    narrow: Option<Tensor>,
    ids: Option<Tensor>,
    ids_host: Option<Vec<i64>>,
    target_map: Option<Tensor>,
}

impl VocabProjection {
    /// From the base's token embeddings `[V, D]` and an optional shortlist of ids.
    pub fn new(embeddings: &Tensor, shortlist: Option<&[i64]>, vocab_size: i64) -> Result<Self> {
        let size = embeddings.size();
        if size.len() != 2 || size[0] != vocab_size {
            return Err(Error::BadOutputShape {
                output: "token embeddings",
                expected: format!("[{vocab_size}, D]"),
                actual: size,
            });
        }
        let device = embeddings.device();
        let weight = embeddings.f_detach()?.f_to_kind(Kind::Float)?;
        Ok(match shortlist {
            None => VocabProjection {
                weight,
                packed: None,
                narrow: None,
                ids: None,
                ids_host: None,
                target_map: None,
            },
            Some(list) => {
                let ids = Tensor::from_slice(list).f_to_device(device)?;
                let mut map = vec![-100i64; vocab_size as usize];
                for (i, &id) in list.iter().enumerate() {
                    map[id as usize] = i as i64;
                }
                VocabProjection {
                    weight: weight.f_index_select(0, &ids)?.f_contiguous()?,
                    packed: None,
                    narrow: None,
                    ids: Some(ids),
                    ids_host: Some(list.to_vec()),
                    target_map: Some(Tensor::from_slice(&map).f_to_device(device)?),
                }
            }
        })
    }

    /// Computes [`VocabProjection::logits`] through a packed copy of the weights (oneDNN
    /// float32 or int8, on the CPU) or through the weights themselves ([`Packing::Plain`]).
    pub(crate) fn pack(&mut self, packing: Packing) -> Result<()> {
        self.packed = PackedLinear::new(packing, &self.weight, None)?;
        Ok(())
    }

    /// Computes the unpacked product in `kind` from now on (`None`: float32), as
    /// [`FeatureDraft::set_products`] does for the draft: logits come back as float32.
    pub(crate) fn set_products(&mut self, kind: Option<Kind>) -> Result<()> {
        self.narrow = match kind {
            None | Some(Kind::Float) => None,
            Some(kind) => Some(self.weight.f_to_kind(kind)?),
        };
        Ok(())
    }

    /// The projection's float32 rows (`[columns, D]`).
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Logits over the projection's columns for states `[.., D]`.
    pub fn logits(&self, states: &Tensor) -> Result<Tensor> {
        let states = states.f_to_kind(Kind::Float)?;
        match (&self.packed, &self.narrow) {
            (Some(p), _) => p.apply(&states),
            (None, Some(w)) => Ok(states
                .f_to_kind(w.kind())?
                .f_matmul(&w.f_transpose(0, 1)?)?
                .f_to_kind(Kind::Float)?),
            (None, None) => Ok(states.f_matmul(&self.weight.f_transpose(0, 1)?)?),
        }
    }

    /// The token id of column `c`.
    pub fn token(&self, c: i64) -> i64 {
        match &self.ids_host {
            Some(ids) => ids.get(c as usize).copied().unwrap_or(0),
            None => c,
        }
    }

    /// Token ids of columns `[..]` (a tensor of column indices).
    pub fn tokens(&self, columns: &Tensor) -> Result<Tensor> {
        match &self.ids {
            Some(ids) => Ok(ids
                .f_index_select(0, &columns.f_flatten(0, -1)?)?
                .f_reshape(columns.size())?),
            None => Ok(columns.shallow_clone()),
        }
    }

    /// Columns of token ids `[..]` (`-100` for ids outside the shortlist: not scored).
    pub fn columns(&self, tokens: &Tensor) -> Result<Tensor> {
        match &self.target_map {
            Some(map) => Ok(map
                .f_index_select(0, &tokens.f_flatten(0, -1)?)?
                .f_reshape(tokens.size())?),
            None => Ok(tokens.shallow_clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A draft whose every weight is drawn at random (a fresh one passes its input through).
    fn random_draft(seed: i64, n_layers: i64) -> FeatureDraft {
        let config = FeatureDraftConfig {
            n_layers,
            ..FeatureDraftConfig::for_base(64, 50)
        };
        let draft = FeatureDraft::new(config, 0, Device::Cpu).expect("a valid draft");
        tch::manual_seed(seed);
        tch::no_grad(|| {
            for (_, mut v) in draft.var_store().variables() {
                let r = Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.2;
                v.copy_(&r);
            }
        });
        draft
    }

    /// The draft's output for an input of a few positions, attention over all of them.
    fn layer_output(draft: &FeatureDraft, hidden: &Tensor, embedded: &Tensor) -> Tensor {
        let mut x = draft.fuse(hidden, embedded).unwrap();
        for l in 0..draft.n_layers() {
            let t = x.size()[1];
            let qkv = draft.qkv(l, &x, &(0..t).collect::<Vec<_>>()).unwrap();
            let attended = draft.attend(&qkv.q, &qkv.k, &qkv.v, None).unwrap();
            x = draft.finish(l, &x, &attended).unwrap();
        }
        x
    }

    #[test]
    fn onednn_packed_products_give_the_same_states_and_logits() {
        if !tch::utils::has_mkldnn() {
            return;
        }
        let _guard = tch::no_grad_guard();
        let mut draft = random_draft(3, 1);
        let hidden = Tensor::randn([1, 3, 64], (Kind::Float, Device::Cpu));
        let embedded = Tensor::randn([1, 3, 64], (Kind::Float, Device::Cpu));
        let embeddings = Tensor::randn([50, 64], (Kind::Float, Device::Cpu));
        let plain = layer_output(&draft, &hidden, &embedded);
        let mut projection = VocabProjection::new(&embeddings, Some(&[4, 9, 2, 31]), 50).unwrap();
        let plain_logits = projection.logits(&plain).unwrap();
        draft.pack(Packing::OneDnn).unwrap();
        projection.pack(Packing::OneDnn).unwrap();
        let packed = layer_output(&draft, &hidden, &embedded);
        let packed_logits = projection.logits(&packed).unwrap();
        let diff = f64::try_from((&packed - &plain).abs().max()).unwrap();
        let scale = f64::try_from(plain.abs().max()).unwrap();
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "states differ by {diff} (scale {scale})"
        );
        let diff = f64::try_from((&packed_logits - &plain_logits).abs().max()).unwrap();
        assert!(diff <= 1e-4, "logits differ by {diff}");
        assert_eq!(packed_logits.size(), vec![1, 3, 4]);
        // The packed copy is of the weights at packing time; unpacking computes from them again.
        draft.unpack();
        let again = layer_output(&draft, &hidden, &embedded);
        assert_eq!(f64::try_from((&again - &plain).abs().max()).unwrap(), 0.0);
    }

    #[test]
    fn int8_packed_products_give_close_states_and_logits() {
        if !crate::int8::int8_available() {
            return;
        }
        let _guard = tch::no_grad_guard();
        let mut draft = random_draft(5, 2);
        tch::manual_seed(9);
        let hidden = Tensor::randn([1, 6, 64], (Kind::Float, Device::Cpu));
        let embedded = Tensor::randn([1, 6, 64], (Kind::Float, Device::Cpu));
        let embeddings = Tensor::randn([50, 64], (Kind::Float, Device::Cpu));
        let plain = layer_output(&draft, &hidden, &embedded);
        let mut projection = VocabProjection::new(&embeddings, None, 50).unwrap();
        let plain_logits = projection.logits(&plain).unwrap();
        draft.pack(Packing::Int8).unwrap();
        projection.pack(Packing::Int8).unwrap();
        let int8 = layer_output(&draft, &hidden, &embedded);
        let int8_logits = projection.logits(&int8).unwrap();
        let rel = |a: &Tensor, b: &Tensor| {
            f64::try_from((a - b).norm()).unwrap() / f64::try_from(b.norm()).unwrap()
        };
        // Rounding to 8 bits moves the states and logits by a few percent, not more.
        let (s, l) = (rel(&int8, &plain), rel(&int8_logits, &plain_logits));
        assert!(s > 0.0 && s < 0.05, "states moved by {s}");
        assert!(l > 0.0 && l < 0.05, "logits moved by {l}");
        assert_eq!(int8_logits.size(), vec![1, 6, 50]);
        draft.unpack();
        let again = layer_output(&draft, &hidden, &embedded);
        assert_eq!(f64::try_from((&again - &plain).abs().max()).unwrap(), 0.0);
    }

    #[test]
    fn a_grown_draft_guesses_the_same_and_saves_its_layers() {
        let _guard = tch::no_grad_guard();
        let draft = random_draft(7, 1);
        tch::manual_seed(11);
        let hidden = Tensor::randn([1, 5, 64], (Kind::Float, Device::Cpu));
        let embedded = Tensor::randn([1, 5, 64], (Kind::Float, Device::Cpu));
        let before = layer_output(&draft, &hidden, &embedded);
        let grown = draft.with_layers(3).unwrap();
        assert_eq!(grown.n_layers(), 3);
        assert_eq!(grown.config().n_layers, 3);
        // Fresh layers pass their input through: the same states, exactly.
        let after = layer_output(&grown, &hidden, &embedded);
        assert_eq!(f64::try_from((&after - &before).abs().max()).unwrap(), 0.0);
        let e = grown.with_layers(2).unwrap_err().to_string();
        assert!(e.contains("can only grow"), "{e}");

        // Saved and loaded with its layers (weights in bfloat16: compare after one round).
        let mut deep = random_draft(8, 2);
        deep.set_base(Some("test".into()));
        let dir = std::env::temp_dir().join(format!("blockwise-draft-{}", std::process::id()));
        deep.save(&dir).unwrap();
        let json = std::fs::read_to_string(dir.join(DRAFT_CONFIG_FILE)).unwrap();
        assert!(json.contains("\"n_layers\": 2"), "{json}");
        let loaded = FeatureDraft::load(&dir, Device::Cpu).unwrap();
        loaded.save(&dir).unwrap();
        let again = FeatureDraft::load(&dir, Device::Cpu).unwrap();
        let (a, b) = (
            layer_output(&loaded, &hidden, &embedded),
            layer_output(&again, &hidden, &embedded),
        );
        assert_eq!(f64::try_from((&a - &b).abs().max()).unwrap(), 0.0);
        assert_eq!(again.n_layers(), 2);
        // A one-layer draft's file has no n_layers (files of earlier versions read the same).
        random_draft(9, 1).save(&dir).unwrap();
        let json = std::fs::read_to_string(dir.join(DRAFT_CONFIG_FILE)).unwrap();
        assert!(!json.contains("n_layers"), "{json}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
