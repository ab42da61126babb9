//! Proposal heads attached to any model that exposes its final hidden states and its
//! vocabulary projection (tied to the token embeddings): a TorchScript export, a user model, a
//! built-in transformer without heads.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::layers::{HeadArch, ProposalHeads};
use crate::error::{Error, Result};
use crate::model::{CausalLm, ModelInfo, ModelOutput};
use crate::rng::SeededRng;

/// File name of the heads' settings inside a heads folder.
pub const HEADS_CONFIG_FILE: &str = "heads.json";
/// File name of the heads' weights inside a heads folder.
pub const HEADS_WEIGHTS_FILE: &str = "heads.safetensors";
/// File name of the shortlist inside a heads folder (when there is one).
pub const SHORTLIST_FILE: &str = "shortlist.safetensors";

/// Shape of a set of attached heads, saved as `heads.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsConfig {
    /// Architecture.
    #[serde(default)]
    pub arch: HeadArch,
    /// Heads: a block of `k` tokens uses `k - 1`.
    pub num_heads: usize,
    /// Width of the base model's final hidden states.
    pub d_model: i64,
    /// Stern heads: hidden width per head.
    #[serde(default = "default_d_ff")]
    pub d_ff: i64,
    /// The base model's vocabulary size.
    pub vocab_size: i64,
    /// What the heads were trained on top of (for example the export's source file), checked
    /// when they are loaded onto an exported model.
    #[serde(default)]
    pub base: Option<String>,
}

fn default_d_ff() -> i64 {
    64
}

/// A model with proposal heads of its own, attached on top of its final hidden states. The
/// heads' logits come from the base's vocabulary projection (its token embeddings, tied), so
/// the heads' weights stay small. With a *shortlist* the heads score only those token ids (the
/// others get `-inf`): a cheaper projection per iteration, and proposals the base would reject
/// anyway are never made. Verification still scores the whole vocabulary, so output is
/// unchanged.
///
/// The heads compute in float32 whatever the base's kind.
pub struct WithHeads<M> {
    base: M,
    vs: nn::VarStore,
    heads: ProposalHeads,
    config: HeadsConfig,
    projection: Tensor,
    shortlist: Option<Tensor>,
    target_map: Option<Tensor>,
    info: ModelInfo,
    /// Slots used and slots per row of the base's batched cache (see `MaskedLm`).
    slots: (usize, usize),
}

impl<M> std::fmt::Debug for WithHeads<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithHeads")
            .field("config", &self.config)
            .field("shortlist", &self.shortlist.as_ref().map(|s| s.size()[0]))
            .finish_non_exhaustive()
    }
}

impl<M: CausalLm> WithHeads<M> {
    /// Fresh heads (seeded; each starts as the base's next-token prediction) on `base`.
    pub fn new(base: M, config: HeadsConfig, seed: u64) -> Result<Self> {
        let out = Self::build(base, config)?;
        out.heads.init(&mut SeededRng::new(seed))?;
        Ok(out)
    }

    fn build(base: M, config: HeadsConfig) -> Result<Self> {
        let emb = base.token_embeddings().ok_or(Error::MissingCapability {
            component: "WithHeads",
            capability: "token embeddings (the tied vocabulary projection)",
        })?;
        let size = emb.size();
        if size.len() != 2 || size[1] != config.d_model {
            return Err(Error::BadOutputShape {
                output: "token embeddings",
                expected: format!("[V, {}] (vocabulary, the heads' d_model)", config.d_model),
                actual: size,
            });
        }
        let info = base.info().clone();
        if size[0] != info.vocab_size || config.vocab_size != info.vocab_size {
            return Err(Error::VocabularyMismatch {
                left: "base model",
                left_size: info.vocab_size,
                right: "heads",
                right_size: config.vocab_size,
            });
        }
        let vs = nn::VarStore::new(info.device);
        let heads = ProposalHeads::new(
            vs.root() / "heads",
            config.arch,
            config.d_model,
            config.num_heads,
            config.d_ff,
        )?;
        let projection = emb.f_detach()?.f_to_kind(Kind::Float)?;
        let mut info = info;
        info.num_heads = config.num_heads;
        Ok(WithHeads {
            base,
            vs,
            heads,
            config,
            projection,
            shortlist: None,
            target_map: None,
            info,
            slots: (0, 0),
        })
    }

    /// The base's token embeddings in float32, without gradients: the heads' projection.
    fn full_projection(base: &M) -> Result<Tensor> {
        let emb = base.token_embeddings().ok_or(Error::MissingCapability {
            component: "WithHeads",
            capability: "token embeddings (the tied vocabulary projection)",
        })?;
        Ok(emb.f_detach()?.f_to_kind(Kind::Float)?)
    }

    /// Restricts the heads to the token ids `ids` (distinct, in the vocabulary).
    pub fn with_shortlist(mut self, ids: &[i64]) -> Result<Self> {
        crate::model::check_tokens("shortlist", ids, self.info.vocab_size)?;
        let mut seen = vec![false; self.info.vocab_size as usize];
        for &id in ids {
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
        let device = self.info.device;
        let list = Tensor::from_slice(ids).f_to_device(device)?;
        let mut map = vec![-100i64; self.info.vocab_size as usize];
        for (i, &id) in ids.iter().enumerate() {
            map[id as usize] = i as i64;
        }
        // Without a shortlist yet, the projection is the whole (float32) embedding matrix.
        let full = match self.shortlist {
            None => self.projection.shallow_clone(),
            Some(_) => Self::full_projection(&self.base)?,
        };
        self.projection = full.f_index_select(0, &list)?;
        self.target_map = Some(Tensor::from_slice(&map).f_to_device(device)?);
        self.shortlist = Some(list);
        Ok(self)
    }

    /// Loads heads saved by [`WithHeads::save`] from `dir` onto `base`.
    pub fn load(base: M, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config: HeadsConfig = Error::read_json(dir.join(HEADS_CONFIG_FILE))?;
        let mut out = Self::build(base, config)?;
        let weights = dir.join(HEADS_WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(Error::io("reading", &weights)(
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        out.vs.load(&weights)?;
        let list = dir.join(SHORTLIST_FILE);
        if list.is_file() {
            let tensors = Tensor::read_safetensors(&list)?;
            let ids = tensors
                .into_iter()
                .find(|(n, _)| n == "shortlist")
                .ok_or_else(|| Error::config("shortlist", "the file has no `shortlist` tensor"))?
                .1;
            let ids: Vec<i64> = Vec::try_from(&ids.f_to_kind(Kind::Int64)?)?;
            out = out.with_shortlist(&ids)?;
        }
        Ok(out)
    }

    /// Writes `heads.json`, `heads.safetensors` and (with a shortlist) `shortlist.safetensors`
    /// into `dir` (created if missing).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let path = dir.join(HEADS_CONFIG_FILE);
        let json = serde_json::to_string_pretty(&self.config).map_err(|source| Error::Json {
            what: "heads config".into(),
            source,
        })?;
        std::fs::write(&path, json + "\n").map_err(Error::io("writing", &path))?;
        self.vs.save(dir.join(HEADS_WEIGHTS_FILE))?;
        if let Some(list) = &self.shortlist {
            Tensor::write_safetensors(
                &[("shortlist", list.f_to_device(Device::Cpu)?)],
                dir.join(SHORTLIST_FILE),
            )?;
        }
        Ok(())
    }

    /// The heads' settings.
    pub fn config(&self) -> &HeadsConfig {
        &self.config
    }

    /// The base model.
    pub fn base(&self) -> &M {
        &self.base
    }

    /// The base model, mutably.
    pub fn base_mut(&mut self) -> &mut M {
        &mut self.base
    }

    /// Gives the base model back.
    pub fn into_base(self) -> M {
        self.base
    }

    /// The heads.
    pub fn heads(&self) -> &ProposalHeads {
        &self.heads
    }

    /// The heads' variables (what training updates and checkpoints save).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The shortlisted token ids, when the heads have a shortlist.
    pub fn shortlist(&self) -> Option<&Tensor> {
        self.shortlist.as_ref()
    }

    /// For training: maps a vocabulary id to its column of [`WithHeads::project`]'s output
    /// (`-100`, ignored by the loss, for ids off the shortlist). `None` without a shortlist.
    pub fn target_map(&self) -> Option<&Tensor> {
        self.target_map.as_ref()
    }

    /// Head states `[N, H, D]` -> logits over the heads' vocabulary (the shortlist, when there
    /// is one) `[N, H, V']`.
    pub fn project(&self, states: &Tensor) -> Result<Tensor> {
        Ok(states.f_matmul(&self.projection.f_transpose(0, 1)?)?)
    }
}

impl<M: CausalLm> CausalLm for WithHeads<M> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        self.base.forward(tokens, start)
    }

    fn cached_len(&self) -> usize {
        self.base.cached_len()
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.base.truncate(len)
    }

    fn head_logits(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        self.head_logits_first(hidden, self.config.num_heads)
    }

    fn head_logits_first(&self, hidden: &Tensor, n: usize) -> Result<Option<Tensor>> {
        let _guard = tch::no_grad_guard();
        let n = (n.min(self.config.num_heads) as i64).max(1);
        // The final states alone, when the base also returns feature taps.
        let hidden = crate::model::final_states(hidden, self.projection.size()[1])?;
        let states = self.heads.forward(&hidden, None)?.f_narrow(1, 0, n)?;
        let logits = self.project(&states)?;
        let Some(list) = &self.shortlist else {
            return Ok(Some(logits));
        };
        let (n, h, _) = logits.size3()?;
        let full = Tensor::f_full(
            [n, h, self.info.vocab_size],
            f64::NEG_INFINITY,
            (logits.kind(), logits.device()),
        )?;
        let index = list.f_view([1, 1, -1])?.f_expand([n, h, -1], false)?;
        Ok(Some(full.f_scatter(2, &index, &logits)?))
    }

    fn token_embeddings(&self) -> Option<Tensor> {
        self.base.token_embeddings()
    }

    fn set_feature_taps(&mut self, layers: &[usize]) -> Result<()> {
        self.base.set_feature_taps(layers)
    }

    fn as_masked(&mut self) -> Option<&mut dyn crate::masked::MaskedLm> {
        if self.base.as_masked().is_some() {
            Some(self)
        } else {
            None
        }
    }
}

/// Batched and tree decoding through the base model's masked calling convention; the heads run
/// on the hidden states it returns.
impl<M: CausalLm> crate::masked::MaskedLm for WithHeads<M> {
    fn begin_batch(&mut self, batch: usize, slots: usize) -> Result<()> {
        let base = masked_base(&mut self.base)?;
        base.begin_batch(batch, slots)?;
        self.slots = (base.slots_used(), base.slot_capacity());
        Ok(())
    }
    fn slots_used(&self) -> usize {
        self.slots.0
    }
    fn slot_capacity(&self) -> usize {
        self.slots.1
    }
    fn forward_masked(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<ModelOutput> {
        let base = masked_base(&mut self.base)?;
        let out = base.forward_masked(tokens, positions, mask)?;
        self.slots.0 = base.slots_used();
        Ok(out)
    }
    fn compact(&mut self, index: &Tensor) -> Result<()> {
        let base = masked_base(&mut self.base)?;
        base.compact(index)?;
        self.slots.0 = base.slots_used();
        Ok(())
    }
}

fn masked_base<M: CausalLm>(base: &mut M) -> Result<&mut dyn crate::masked::MaskedLm> {
    base.as_masked().ok_or(Error::MissingCapability {
        component: "batched and tree decoding",
        capability: "a base model with the masked calling convention",
    })
}
