//! The built-in decoder-only transformer: learned positions, pre-norm layers, tied vocabulary
//! projection, a preallocated KV cache and optional Stern-style proposal heads.

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::config::TransformerConfig;
use super::layers::{causal_mask, Block, BlockShape, LayerNorm};
use crate::cache::{CacheShape, KvCache};
use crate::error::{Error, Result};
use crate::heads::ProposalHeads;
use crate::masked::{check_batch, check_masked_input, MaskedLm};
use crate::model::{check_input, CausalLm, ModelInfo, ModelOutput};
use crate::rng::SeededRng;

/// File name of the weights inside a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the configuration inside a model folder.
pub const CONFIG_FILE: &str = "config.json";

/// A small GPT-style model in `tch::nn`, usable as a [`CausalLm`] with proposal heads.
#[derive(Debug)]
pub struct Transformer {
    vs: nn::VarStore,
    config: TransformerConfig,
    info: ModelInfo,
    tok_emb: Tensor,
    pos_emb: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    heads: Option<ProposalHeads>,
    cache: KvCache,
    /// The batched slot cache of [`MaskedLm`], made by [`MaskedLm::begin_batch`].
    batch_cache: Option<KvCache>,
    /// Layers whose residual states follow the final states in every output
    /// ([`CausalLm::set_feature_taps`]).
    taps: Vec<usize>,
}

impl Transformer {
    /// A model with weights drawn from a generator seeded with `seed` (the same seed gives the
    /// same weights, whatever runs in parallel).
    ///
    /// Embeddings are standard normal and dense weights scaled by `1/sqrt(fan_in)`, so even an
    /// untrained model has confident, well-separated predictions.
    pub fn new_seeded(config: TransformerConfig, seed: u64, device: Device) -> Result<Self> {
        let mut model = Self::build(config, device)?;
        model.fill_seeded(seed, 1.0)?;
        Ok(model)
    }

    /// A model to train from scratch: like [`Transformer::new_seeded`], but with token and
    /// position embeddings drawn with standard deviation 0.02 (GPT-2's), so that the tied
    /// output projection starts near uniform instead of with logits in the tens.
    pub fn new_for_training(config: TransformerConfig, seed: u64, device: Device) -> Result<Self> {
        let mut model = Self::build(config, device)?;
        model.fill_seeded(seed, 0.02)?;
        Ok(model)
    }

    /// Loads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
            action: "reading",
            path: config_path.clone(),
            source,
        })?;
        let config: TransformerConfig =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                what: config_path.display().to_string(),
                source,
            })?;
        let mut model = Self::build(config, device)?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(Error::Io {
                action: "reading",
                path: weights,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        model.vs.load(&weights)?;
        Ok(model)
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if missing).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        let config_path = dir.join(CONFIG_FILE);
        let json = serde_json::to_string_pretty(&self.config).map_err(|source| Error::Json {
            what: "transformer config".into(),
            source,
        })?;
        std::fs::write(&config_path, json + "\n").map_err(|source| Error::Io {
            action: "writing",
            path: config_path,
            source,
        })?;
        self.vs.save(dir.join(WEIGHTS_FILE))?;
        Ok(())
    }

    fn build(config: TransformerConfig, device: Device) -> Result<Self> {
        config.validate()?;
        crate::cuda::check_device(device)?;
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let d = config.d_model;
        let tok_emb = root.var("tok_emb", &[config.vocab_size, d], nn::Init::Const(0.0));
        let pos_emb = root.var(
            "pos_emb",
            &[config.max_context as i64, d],
            nn::Init::Const(0.0),
        );
        let shape = BlockShape {
            d_model: d,
            n_heads: config.n_heads,
            d_ff: config.d_ff,
            eps: config.layer_norm_eps,
            softmax_f32: config.dtype.is_half(),
        };
        let blocks = (0..config.n_layers)
            .map(|i| Block::new(&root / "layers" / i, &shape))
            .collect();
        let ln_f = LayerNorm::new(&root / "ln_f", d, config.layer_norm_eps);
        let heads = if config.num_proposal_heads > 0 {
            Some(ProposalHeads::new(
                &root / "heads",
                config.head_arch,
                d,
                config.num_proposal_heads,
                config.head_d_ff,
            )?)
        } else {
            None
        };
        vs.set_kind(config.dtype.kind());
        let cache = KvCache::new(
            CacheShape {
                layers: config.n_layers,
                batch: 1,
                heads: config.n_heads,
                capacity: config.max_context,
                head_dim: config.head_dim(),
            },
            config.dtype.kind(),
            device,
        )?;
        let mut info = ModelInfo::new(config.vocab_size, config.max_context);
        info.num_heads = config.num_proposal_heads;
        info.device = device;
        info.kind = config.dtype.kind();
        Ok(Transformer {
            vs,
            config,
            info,
            tok_emb,
            pos_emb,
            blocks,
            ln_f,
            heads,
            cache,
            batch_cache: None,
            taps: Vec::new(),
        })
    }

    fn fill_seeded(&mut self, seed: u64, embedding_std: f64) -> Result<()> {
        let mut rng = SeededRng::new(seed);
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let _guard = tch::no_grad_guard();
        for (name, var) in vars {
            let size = var.size();
            let numel: i64 = size.iter().product();
            let values: Vec<f64> = if name.ends_with("bias") {
                vec![0.0; numel as usize]
            } else if name.contains("ln") {
                vec![1.0; numel as usize]
            } else if name.ends_with("emb") {
                (0..numel).map(|_| rng.normal() * embedding_std).collect()
            } else {
                let fan_in = *size.last().unwrap_or(&1) as f64;
                (0..numel).map(|_| rng.normal() / fan_in.sqrt()).collect()
            };
            let src = Tensor::from_slice(&values)
                .f_view(size.as_slice())?
                .f_to_kind(var.kind())?
                .f_to_device(var.device())?;
            let mut var = var;
            var.f_copy_(&src)?;
        }
        Ok(())
    }

    /// The model's configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The token embedding matrix `[V, D]` (also the vocabulary projection).
    pub fn embedding_matrix(&self) -> &Tensor {
        &self.tok_emb
    }

    /// The proposal heads, when the model has them.
    pub fn heads(&self) -> Option<&ProposalHeads> {
        self.heads.as_ref()
    }

    /// Fresh proposal heads (see [`ProposalHeads::init`]): each starts as the model's own
    /// next-token prediction, ready to be trained.
    pub fn reset_heads(&self, seed: u64) -> Result<()> {
        match &self.heads {
            Some(h) => h.init(&mut SeededRng::new(seed)),
            None => Err(Error::MissingCapability {
                component: "Transformer::reset_heads",
                capability: "proposal heads (num_proposal_heads > 0)",
            }),
        }
    }

    /// Loads weights from a model folder's `model.safetensors` whose variables are a subset of
    /// this model's (for example a base trained without heads); returns the names of this
    /// model's variables the file did not have.
    pub fn load_partial(&mut self, dir: impl AsRef<Path>) -> Result<Vec<String>> {
        let path = dir.as_ref().join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(Error::Io {
                action: "reading",
                path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut missing = self.vs.load_partial(&path)?;
        missing.sort();
        Ok(missing)
    }

    /// The variables, for training or inspection.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Converts the weights (and the cache) to another floating-point kind.
    pub fn set_dtype(&mut self, dtype: crate::DType) -> Result<()> {
        let mut config = self.config.clone();
        config.dtype = dtype;
        config.validate()?;
        self.config.dtype = dtype;
        let mut rebuilt = Self::build(self.config.clone(), self.info.device)?;
        rebuilt.taps = std::mem::take(&mut self.taps);
        // Re-create the layers so that attention uses the right softmax precision, then copy
        // the weights across.
        let _guard = tch::no_grad_guard();
        let mut dst = rebuilt.vs.variables();
        for (name, src) in self.vs.variables() {
            if let Some(d) = dst.get_mut(&name) {
                d.f_copy_(&src)?;
            }
        }
        *self = rebuilt;
        Ok(())
    }

    /// Whole sequences `[B, T]` from position 0, without the cache and with gradients (when
    /// not under a no-grad guard): logits `[B, T, V]` and final hidden states `[B, T, D]`. For
    /// training; decoding goes through [`CausalLm::forward`].
    pub fn forward_sequences(&self, tokens: &Tensor) -> Result<ModelOutput> {
        let (_, t) = tokens.size2()?;
        let t = t as usize;
        if t == 0 || t > self.config.max_context {
            return Err(Error::BlockBeyondContext {
                start: 0,
                block_len: t,
                max_context: self.config.max_context,
            });
        }
        let device = self.info.device;
        let positions = Tensor::f_arange(t as i64, (Kind::Int64, device))?;
        let mut x = Tensor::f_embedding(&self.tok_emb, tokens, -1, false, false)?.f_add(
            &Tensor::f_embedding(&self.pos_emb, &positions, -1, false, false)?,
        )?;
        let mask = causal_mask(0, t, device)?;
        let mut states = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, i, 0, &mask, None)?;
            if !self.taps.is_empty() {
                states.push(x.shallow_clone());
            }
        }
        self.output(&x, &states)
    }

    pub(crate) fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.f_matmul(&self.tok_emb.f_transpose(0, 1)?)?)
    }

    /// Logits and hidden states from the last layer's residual state `x`: the final states,
    /// then the tapped layers' (`states[l]`: after layer `l`).
    fn output(&self, x: &Tensor, states: &[Tensor]) -> Result<ModelOutput> {
        let hidden = self.ln_f.forward(x)?;
        let logits = self.logits(&hidden)?;
        if self.taps.is_empty() {
            return Ok(ModelOutput::with_hidden(logits, hidden));
        }
        let mut parts = vec![hidden];
        parts.extend(self.taps.iter().map(|&l| states[l].shallow_clone()));
        Ok(ModelOutput::with_hidden(logits, Tensor::f_cat(&parts, -1)?))
    }
}

impl CausalLm for Transformer {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        let t = check_input(tokens, self.config.vocab_size, "Transformer::forward")?;
        if start > self.cache.len() {
            return Err(Error::CacheGap {
                start,
                cached: self.cache.len(),
            });
        }
        if start + t > self.config.max_context {
            return Err(Error::BlockBeyondContext {
                start,
                block_len: t,
                max_context: self.config.max_context,
            });
        }
        self.cache.truncate(start);
        let device = self.info.device;
        let positions =
            Tensor::f_arange_start(start as i64, (start + t) as i64, (Kind::Int64, device))?;
        let mut x = Tensor::f_embedding(&self.tok_emb, tokens, -1, false, false)?.f_add(
            &Tensor::f_embedding(&self.pos_emb, &positions, -1, false, false)?,
        )?;
        let mask = causal_mask(start, t, device)?;
        let mut states = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, i, start, &mask, Some(&mut self.cache))?;
            if !self.taps.is_empty() {
                states.push(x.shallow_clone());
            }
        }
        self.cache.set_len(start + t);
        self.output(&x, &states)
    }

    fn cached_len(&self) -> usize {
        self.cache.len()
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.cache.truncate(len);
        Ok(())
    }

    fn token_embeddings(&self) -> Option<Tensor> {
        Some(self.tok_emb.shallow_clone())
    }

    fn as_masked(&mut self) -> Option<&mut dyn MaskedLm> {
        Some(self)
    }

    fn set_feature_taps(&mut self, layers: &[usize]) -> Result<()> {
        crate::model::check_feature_taps(layers, self.blocks.len())?;
        self.taps = layers.to_vec();
        Ok(())
    }

    fn head_logits(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        self.head_logits_first(hidden, self.config.num_proposal_heads)
    }

    fn head_logits_first(&self, hidden: &Tensor, n: usize) -> Result<Option<Tensor>> {
        match &self.heads {
            None => Ok(None),
            Some(heads) => {
                let n = (n.min(heads.num_heads()) as i64).max(1);
                let hidden = crate::model::final_states(hidden, self.config.d_model)?;
                let states = heads.forward(&hidden, None)?.f_narrow(1, 0, n)?;
                Ok(Some(self.logits(&states)?))
            }
        }
    }
}

impl MaskedLm for Transformer {
    fn begin_batch(&mut self, batch: usize, slots: usize) -> Result<()> {
        check_batch(batch, slots)?;
        self.batch_cache = Some(KvCache::new(
            CacheShape {
                layers: self.config.n_layers,
                batch: batch as i64,
                heads: self.config.n_heads,
                capacity: slots,
                head_dim: self.config.head_dim(),
            },
            self.config.dtype.kind(),
            self.info.device,
        )?);
        Ok(())
    }

    fn slots_used(&self) -> usize {
        self.batch_cache.as_ref().map_or(0, KvCache::len)
    }

    fn slot_capacity(&self) -> usize {
        self.batch_cache.as_ref().map_or(0, KvCache::capacity)
    }

    fn forward_masked(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<ModelOutput> {
        let start = self.slots_used();
        check_masked_input(
            tokens,
            positions,
            mask,
            start,
            self.config.vocab_size,
            self.config.max_context,
        )?;
        let cache = self.batch_cache.as_mut().ok_or(Error::Contract {
            component: "Transformer::forward_masked",
            problem: "no batched cache: call MaskedLm::begin_batch first".into(),
        })?;
        let x = Tensor::f_embedding(&self.tok_emb, tokens, -1, false, false)?;
        if x.size()[0] != cache.rows() {
            return Err(Error::Contract {
                component: "Transformer::forward_masked",
                problem: format!("{} rows for a batch of {}", x.size()[0], cache.rows()),
            });
        }
        let mut x = x.f_add(&Tensor::f_embedding(
            &self.pos_emb,
            positions,
            -1,
            false,
            false,
        )?)?;
        let mask = mask.f_unsqueeze(1)?; // [B, 1, T, S]: the same for every attention head
        let mut states = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, i, start, &mask, Some(&mut *cache))?;
            if !self.taps.is_empty() {
                states.push(x.shallow_clone());
            }
        }
        cache.set_len(start + tokens.size()[1] as usize);
        self.output(&x, &states)
    }

    fn compact(&mut self, index: &Tensor) -> Result<()> {
        match self.batch_cache.as_mut() {
            Some(cache) => cache.compact(index),
            None => Err(Error::Contract {
                component: "Transformer::compact",
                problem: "no batched cache: call MaskedLm::begin_batch first".into(),
            }),
        }
    }
}
