//! The feature-level draft as a proposer: it reads the base model's final hidden states of
//! every committed token and drafts the block autoregressively with its own small cache.

use std::rc::Rc;

use tch::{Device, Kind, Tensor};

use super::model::{FeatureDraft, VocabProjection};
use super::native::{host, NativeDraft, NativeForm};
use super::weights::DraftWeights;
use crate::cache::{CacheShape, KvCache};
use crate::decoder::DraftTree;
use crate::error::{Error, Result};
use crate::matmul::{F32Matmul, Packing};
use crate::model::CausalLm;
use crate::proposer::{Proposal, ProposalContext, Proposer};
use crate::sampling::Sampler;

/// Children per node of the dynamic trees a [`FeatureDraftProposer`] grows unless told
/// otherwise ([`FeatureDraftProposer::with_tree_width`]). On a 2-core CPU (SmolLM2, chat24) 4
/// accepted as much as 6 at 5 nodes; at 15 nodes 6 accepted 2% more, for a draft 60% dearer
/// (docs/feature-draft.md). Wider trees are for machines where a wide call costs what a
/// narrow one does.
pub const DEFAULT_TREE_WIDTH: usize = 4;

/// Under lossless sampling a guess is drawn from the draft's distribution over its this many
/// most likely tokens (warped as the base's is): beyond them it holds little mass, and warping
/// a whole shortlist (8,192 tokens on SmolLM2) in float64 at every draft step cost more time
/// than the mass it adds. Any distribution keeps sampling exact; this one only decides how
/// often a guess is kept.
const SAMPLED_GUESSES: usize = 64;

/// Proposes a block with a [`FeatureDraft`] (EAGLE's idea): at every committed position `t`
/// the draft's layer reads the base model's hidden state `f_t` and the embedding of the token
/// after it, and predicts `f_{t+1}`; scored with the base's own vocabulary projection, that is
/// the guess for the token after `next`. Each further guess feeds the draft's own predicted
/// state back in, with the embedding of the guess before it.
///
/// The draft keeps its own key/value cache: the true states of every committed position
/// (handed over by the decoder through [`Proposer::observe_hidden`]), then the drafted ones,
/// which are dropped (an O(1) truncate) before the next proposal, when the base's states of
/// the accepted tokens replace them.
pub struct FeatureDraftProposer {
    /// The draft and its vocabulary projection, shared with this proposer's forks.
    draft: Rc<FeatureDraft>,
    embeddings: Tensor,
    projection: Rc<VocabProjection>,
    /// The libtorch draft's key/value cache (none while the native kernels compute it).
    cache: Option<KvCache>,
    /// Committed positions whose true states the cache holds.
    fed: usize,
    /// Hidden states handed over since the last proposal, not yet fed.
    pending: Vec<Tensor>,
    device: Device,
    /// Children per node, and nodes expanded per level, of a dynamic tree.
    tree_width: usize,
    /// The CPU library of the draft's float32 products.
    f32_matmul: F32Matmul,
    /// The form the draft's products run in (resolved: `F32` or `Int8`).
    weights: DraftWeights,
    /// How the draft's products run now: from `weights` and `f32_matmul`.
    packing: Packing,
    /// The draft on the native kernels (its own cache), when `weights` is a native form.
    native: Option<(NativeForm, NativeDraft)>,
    /// Context length the caches hold.
    max_context: usize,
    /// Guesses whose cumulative probability under the draft falls below this are not
    /// proposed (0: every guess up to the block size).
    min_confidence: f64,
}

impl std::fmt::Debug for FeatureDraftProposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureDraftProposer")
            .field("config", self.draft.config())
            .field("fed", &self.fed)
            .finish_non_exhaustive()
    }
}

impl FeatureDraftProposer {
    /// A proposer that drafts for `base` with `draft`. The base must expose its token
    /// embeddings (its tied vocabulary projection) of the draft's vocabulary and width;
    /// otherwise [`Error::MissingCapability`] or [`Error::VocabularyMismatch`]. The draft is
    /// moved to the base's device.
    pub fn new(draft: FeatureDraft, base: &dyn CausalLm) -> Result<Self> {
        let info = base.info();
        let embeddings = base.token_embeddings().ok_or(Error::MissingCapability {
            component: "FeatureDraftProposer",
            capability: "the base model's token embeddings (a tied vocabulary projection)",
        })?;
        Self::with_embeddings(draft, &embeddings, info.max_context)
    }

    /// Like [`FeatureDraftProposer::new`] from the base's token embeddings `[V, D]` and its
    /// context length.
    pub fn with_embeddings(
        mut draft: FeatureDraft,
        embeddings: &Tensor,
        max_context: usize,
    ) -> Result<Self> {
        let config = draft.config().clone();
        let size = embeddings.size();
        if size.len() != 2 || size[0] != config.vocab_size {
            return Err(Error::VocabularyMismatch {
                left: "feature draft",
                left_size: config.vocab_size,
                right: "base model's embeddings",
                right_size: size.first().copied().unwrap_or(0),
            });
        }
        if size[1] != config.d_model {
            return Err(Error::config(
                "feature draft",
                format!(
                    "was made for hidden states of width {}; the base model's are {}",
                    config.d_model, size[1]
                ),
            ));
        }
        let device = embeddings.device();
        draft.to_device(device)?;
        let projection = draft.projection(embeddings)?;
        FeatureDraftProposer {
            draft: Rc::new(draft),
            embeddings: embeddings
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?,
            projection: Rc::new(projection),
            cache: None,
            fed: 0,
            pending: Vec::new(),
            device,
            tree_width: DEFAULT_TREE_WIDTH,
            f32_matmul: F32Matmul::Auto,
            weights: DraftWeights::F32,
            packing: Packing::Plain,
            native: None,
            max_context,
            min_confidence: 0.0,
        }
        .with_weights(DraftWeights::Auto)
    }

    /// Children per node, and nodes expanded per level, of the dynamic trees it grows
    /// (default [`DEFAULT_TREE_WIDTH`], at least 1; 0 is taken as 1, and
    /// [`ProposerConfig`](crate::config::ProposerConfig) refuses it).
    pub fn with_tree_width(mut self, width: usize) -> Self {
        self.tree_width = width.max(1);
        self
    }

    /// Proposes a guess only while the product of the draft's probabilities along it (its
    /// cumulative confidence) is at least `p`: a chain stops at its first guess below, a
    /// dynamic tree keeps only nodes at or above, and when the first guess is below `p` nothing
    /// is proposed and the decoder takes a plain step. The draft's probabilities track how often
    /// its guesses are accepted (EAGLE-2's observation), so unlikely guesses stop costing
    /// verification width. Default 0 (every guess up to the block size); `p` must be in
    /// `0..1`, otherwise [`Error::InvalidConfig`].
    pub fn with_min_confidence(mut self, p: f64) -> Result<Self> {
        check_min_confidence(p)?;
        self.min_confidence = p;
        Ok(self)
    }

    /// Which CPU library the draft's float32 products run in when its weights are
    /// [`DraftWeights::F32`] (default [`F32Matmul::Auto`]: oneDNN, with the weights packed once
    /// here, on AMD CPUs; libtorch's BLAS elsewhere and off the CPU). The guesses are the same
    /// up to float32 rounding, so only a near tie can change one, and exact acceptance keeps the
    /// output whatever they are. `OneDnn` off the CPU is refused ([`Error::InvalidConfig`]).
    pub fn with_f32_matmul(mut self, choice: F32Matmul) -> Result<Self> {
        choice.packs_own_weights(self.device)?;
        self.unshared(choice != self.f32_matmul)?;
        self.f32_matmul = choice;
        self.repack()?;
        Ok(self)
    }

    /// The form the draft's products run in (default [`DraftWeights::Auto`]: int8 on the
    /// crate's native kernels on x86-64 CPUs with AVX2, float32 through libtorch off the CPU).
    /// Int8 weights read a quarter of the bytes per draft step; the guesses move slightly with
    /// the rounding, and exact acceptance keeps the output whatever they are. A form that
    /// cannot run here is refused ([`Error::InvalidConfig`]).
    pub fn with_weights(mut self, weights: DraftWeights) -> Result<Self> {
        let weights = weights.resolve(self.device)?;
        self.unshared(weights != self.weights)?;
        self.weights = weights;
        self.repack()?;
        Ok(self)
    }

    /// The form the draft's products run in ([`DraftWeights::F32`] or [`DraftWeights::Int8`]).
    pub fn weights(&self) -> DraftWeights {
        self.weights
    }

    /// Packs the draft's weights as `weights` and `f32_matmul` ask, when that changed.
    fn repack(&mut self) -> Result<()> {
        let form = match self.weights {
            DraftWeights::NativeF32 => Some(NativeForm::F32),
            DraftWeights::NativeBf16 => Some(NativeForm::Bf16),
            DraftWeights::NativeInt8 => Some(NativeForm::Int8),
            _ => None,
        };
        if self.native.as_ref().map(|n| n.0) != form || (form.is_none() && self.cache.is_none()) {
            // A new engine holds none of the committed positions.
            self.fed = 0;
            let capacity = self.max_context + 1;
            (self.native, self.cache) = match form {
                Some(f) => (
                    Some((
                        f,
                        NativeDraft::new(&self.draft, &self.projection, f, capacity)?,
                    )),
                    None,
                ),
                None => (None, Some(self.torch_cache()?)),
            };
        }
        let packing = match self.weights {
            _ if form.is_some() => Packing::Plain,
            DraftWeights::Int8 => Packing::Int8,
            _ if self.f32_matmul.packs_own_weights(self.device)? => Packing::OneDnn,
            _ => Packing::Plain,
        };
        if packing != self.packing {
            self.unshared(true)?;
            let (Some(draft), Some(projection)) = (
                Rc::get_mut(&mut self.draft),
                Rc::get_mut(&mut self.projection),
            ) else {
                return Err(self.shared_error());
            };
            draft.pack(packing)?;
            projection.pack(packing)?;
            self.packing = packing;
        }
        Ok(())
    }

    /// Refuses a `change` of form while forks share the draft (they compute with its packed
    /// weights).
    fn unshared(&self, change: bool) -> Result<()> {
        match change && Rc::strong_count(&self.draft) > 1 {
            true => Err(self.shared_error()),
            false => Ok(()),
        }
    }

    fn shared_error(&self) -> Error {
        Error::config(
            "draft weights",
            "this proposer shares its draft with its forks; set the form before forking",
        )
    }

    /// An empty key/value cache for the libtorch draft.
    fn torch_cache(&self) -> Result<KvCache> {
        let config = self.draft.config();
        let shape = CacheShape {
            layers: config.n_layers as usize,
            batch: 1,
            heads: config.n_heads,
            capacity: self.max_context + 1,
            head_dim: config.d_model / config.n_heads,
        };
        KvCache::new(shape, Kind::Float, self.device)
    }

    /// The draft back (computing through its own weights again, ready for training); `None`
    /// while a fork of this proposer still shares it.
    pub fn into_draft(self) -> Option<FeatureDraft> {
        let mut draft = Rc::try_unwrap(self.draft).ok()?;
        draft.unpack();
        Some(draft)
    }

    /// Runs the draft's layers over fused inputs `x` (`[1, T, D]`) written at cache positions
    /// `start..start + T`, each attending every position up to its own; returns the predicted
    /// states `[1, T, D]`.
    fn run(&mut self, x: &Tensor, start: usize) -> Result<Tensor> {
        let t = x.size()[1];
        let positions: Vec<i64> = (start as i64..start as i64 + t).collect();
        self.run_layers(x, start, None, &positions)
    }

    /// Every layer in turn, each writing its keys and values at `start..start + T` of its own
    /// slice of the cache and attending under `mask` (`[T, start + T]`, true where a row may
    /// attend; `None`: every position up to its own), the rows at sequence positions
    /// `positions` (a cache slot's position is its index, except in a tree, where rows of one
    /// depth share theirs).
    fn run_layers(
        &mut self,
        x: &Tensor,
        start: usize,
        mask: Option<&[bool]>,
        positions: &[i64],
    ) -> Result<Tensor> {
        let t = x.size()[1] as usize;
        if let Some((_, native)) = &mut self.native {
            let states = native.run(&host(x)?, t, start, mask, positions)?;
            return on_device(&states, t, self.device);
        }
        let mask = match (mask, t) {
            (Some(m), _) => Some(
                Tensor::from_slice(m)
                    .f_view([t as i64, (start + t) as i64])?
                    .f_to_device(self.device)?,
            ),
            // One query at the end attends every key: no mask needed.
            (None, 1) => None,
            (None, _) => Some(crate::transformer::layers::causal_mask(
                start,
                t,
                self.device,
            )?),
        };
        let cache = self.cache.as_mut().ok_or_else(|| Error::Contract {
            component: "FeatureDraftProposer",
            problem: "the libtorch draft has no cache".into(),
        })?;
        let mut x = x.shallow_clone();
        for layer in 0..self.draft.n_layers() {
            let qkv = self.draft.qkv(layer, &x, positions)?;
            let (keys, values) = cache.write(layer, start, &qkv.k, &qkv.v)?;
            let attended = self.draft.attend(&qkv.q, &keys, &values, mask.as_ref())?;
            x = self.draft.finish(layer, &x, &attended)?;
        }
        cache.set_len(start + t);
        Ok(x)
    }

    /// The fused layer input from hidden states `[1, T, D]` and the embeddings of the tokens
    /// after them `[1, T, D]`.
    fn fuse(&self, hidden: &Tensor, embedded: &Tensor) -> Result<Tensor> {
        match &self.native {
            Some((_, native)) => {
                let t = hidden.size()[1] as usize;
                on_device(
                    &native.fuse(&host(hidden)?, &host(embedded)?, t)?,
                    t,
                    self.device,
                )
            }
            None => self.draft.fuse(hidden, embedded),
        }
    }

    /// Forgets the draft cache's positions from `len` on.
    fn truncate_cache(&mut self, len: usize) {
        if let Some((_, native)) = &mut self.native {
            native.truncate(len);
        }
        if let Some(cache) = &mut self.cache {
            cache.truncate(len);
        }
    }

    /// Positions the draft's cache holds at most.
    fn cache_capacity(&self) -> usize {
        match (&self.native, &self.cache) {
            (Some((_, native)), _) => native.capacity(),
            (None, Some(cache)) => cache.capacity(),
            (None, None) => 0,
        }
    }

    /// Feeds the committed states handed over since the last proposal (each with the token
    /// after it) and returns the predicted state of `ctx.next`'s position (`[1, 1, D]`) and
    /// how many tokens may be proposed, or `None` when there is nothing to propose.
    fn feed(&mut self, ctx: &ProposalContext<'_>) -> Result<Option<(Tensor, usize)>> {
        let len = ctx.tokens.len();
        let fresh = self.pending.iter().map(|h| h.size()[0]).sum::<i64>() as usize;
        if fresh > len {
            return Err(Error::Contract {
                component: "FeatureDraftProposer",
                problem: format!("handed {fresh} hidden states for a sequence of {len} tokens"),
            });
        }
        // When the draft was not handed every committed state (a chain member that missed some)
        // it starts over from what it has: its cache slots stay contiguous positions.
        if self.fed + fresh != len {
            self.fed = 0;
        }
        // Forget the drafted positions of the last proposal.
        self.truncate_cache(self.fed);
        let room = self.cache_capacity().saturating_sub(self.fed + fresh);
        let n = ctx.max_tokens.min(room);
        if fresh == 0 || n == 0 {
            return Ok(None);
        }
        let hidden = Tensor::f_cat(&self.pending, 0)?.f_unsqueeze(0)?;
        self.pending.clear();
        let mut after: Vec<i64> = ctx.tokens[len - fresh + 1..].to_vec();
        after.push(ctx.next);
        let x = self.fuse(&hidden, &self.embed(&after)?)?;
        let states = self.run(&x, self.fed)?;
        self.fed += fresh;
        Ok(Some((states.f_narrow(1, fresh as i64 - 1, 1)?, n)))
    }

    /// The `width` most likely guesses after each predicted state of `states` (`[1, T, D]`),
    /// with the draft's log-probabilities: one host transfer.
    fn top(&self, states: &Tensor, width: usize) -> Result<Vec<Vec<(i64, f64)>>> {
        if let Some((_, native)) = &self.native {
            let t = states.size()[1] as usize;
            let cols = native.columns();
            let logits = native.logits(&host(states)?, t)?;
            return Ok(logits
                .chunks_exact(cols)
                .map(|row| {
                    top_log_probs(row, width)
                        .into_iter()
                        .map(|(c, lp)| (self.projection.token(c as i64), lp))
                        .collect()
                })
                .collect());
        }
        let logp = self
            .projection
            .logits(states)?
            .f_log_softmax(-1, Kind::Float)?
            .f_squeeze_dim(0)?; // [T, S]
        let w = (width as i64).min(logp.size()[1]);
        let (vals, cols) = logp.f_topk(w, -1, true, true)?;
        let vals: Vec<f32> = Vec::try_from(&vals.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?;
        let cols: Vec<i64> = Vec::try_from(&cols.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?;
        Ok(cols
            .chunks(w as usize)
            .zip(vals.chunks(w as usize))
            .map(|(c, v)| {
                c.iter()
                    .zip(v)
                    .map(|(&c, &v)| (self.projection.token(c), v as f64))
                    .collect()
            })
            .collect())
    }

    /// The embeddings of `tokens` as `[1, T, D]`.
    fn embed(&self, tokens: &[i64]) -> Result<Tensor> {
        let ids = Tensor::from_slice(tokens).f_to_device(self.device)?;
        Ok(self.embeddings.f_index_select(0, &ids)?.f_unsqueeze(0)?)
    }

    /// The draft's logits over its columns (the shortlist, or the whole vocabulary) from a
    /// predicted state `[1, 1, D]`, on the host.
    fn column_logits(&self, state: &Tensor) -> Result<Vec<f32>> {
        if let Some((_, native)) = &self.native {
            return native.logits(&host(state)?, 1);
        }
        let logits = self.projection.logits(state)?.f_flatten(0, -1)?;
        Ok(Vec::try_from(&logits.f_to_device(Device::Cpu)?)?)
    }

    /// A guess drawn from a predicted state `[1, 1, D]` (the draft's `position`-th): the draft's
    /// distribution over its `candidates` most likely columns, warped by `sampler`'s settings,
    /// is drawn from. Returns the token, that distribution over the whole vocabulary (0
    /// elsewhere) and its largest probability; `None`, drawing nothing, when the log of that
    /// largest probability is below `floor`.
    fn draw_guess(
        &self,
        state: &Tensor,
        sampler: &mut Sampler<'_>,
        position: usize,
        candidates: usize,
        floor: f64,
    ) -> Result<Option<(i64, Vec<f64>, f64)>> {
        let top = top_columns(&self.column_logits(state)?, candidates);
        let logits: Vec<f32> = top.iter().map(|&(_, v)| v).collect();
        let q_top = sampler.probabilities(&logits, position)?;
        let most = q_top.iter().fold(0.0f64, |m, &p| m.max(p));
        if most.ln() < floor {
            return Ok(None);
        }
        let column = |j: usize| self.projection.token(top[j].0 as i64);
        let token = column(sampler.draw(&q_top) as usize);
        let mut q = vec![0.0; self.embeddings.size()[0] as usize];
        for (j, &p) in q_top.iter().enumerate() {
            q[column(j) as usize] = p;
        }
        Ok(Some((token, q, most)))
    }

    /// The draft's guess from a predicted state `[1, 1, D]`.
    fn guess(&self, state: &Tensor) -> Result<i64> {
        if let Some((_, native)) = &self.native {
            let logits = native.logits(&host(state)?, 1)?;
            // The first of equal maxima, as libtorch's argmax picks.
            let col = logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (c, &v)| match v > best.1 {
                    true => (c, v),
                    false => best,
                })
                .0;
            return Ok(self.projection.token(col as i64));
        }
        let logits = self.projection.logits(state)?;
        let col = i64::try_from(&logits.f_argmax(-1, false)?.f_flatten(0, -1)?.f_get(0)?)?;
        Ok(self.projection.token(col))
    }
}

impl Proposer for FeatureDraftProposer {
    fn begin(&mut self, _prompt: &[i64]) -> Result<()> {
        self.fed = 0;
        self.pending.clear();
        self.truncate_cache(0);
        Ok(())
    }

    fn needs_hidden(&self) -> bool {
        true
    }

    /// A proposer sharing this one's draft (its weights and their packed copies, read-only
    /// while it proposes), with an empty cache: the per-sequence state. `None` only when that
    /// cache cannot be allocated.
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        let (native, cache) = match &self.native {
            Some((form, native)) => (Some((*form, native.fork())), None),
            None => (None, Some(self.torch_cache().ok()?)),
        };
        Some(Box::new(FeatureDraftProposer {
            draft: Rc::clone(&self.draft),
            embeddings: self.embeddings.shallow_clone(),
            projection: Rc::clone(&self.projection),
            cache,
            fed: 0,
            pending: Vec::new(),
            device: self.device,
            tree_width: self.tree_width,
            f32_matmul: self.f32_matmul,
            weights: self.weights,
            packing: self.packing,
            native,
            max_context: self.max_context,
            min_confidence: self.min_confidence,
        }))
    }

    fn observe_hidden(&mut self, hidden: &Tensor) -> Result<()> {
        let size = hidden.size();
        if size.len() != 2 {
            return Err(Error::BadOutputShape {
                output: "hidden",
                expected: format!(
                    "[n, {}] (tokens, width)",
                    self.draft.config().feature_width()
                ),
                actual: size,
            });
        }
        // The width is checked there, naming the taps the draft reads.
        let _guard = tch::no_grad_guard();
        self.pending.push(self.draft.true_state(hidden)?);
        Ok(())
    }

    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        let _guard = tch::no_grad_guard();
        let mut proposal = Vec::with_capacity(ctx.max_tokens);
        let Some((mut state, n)) = self.feed(ctx)? else {
            return Ok(proposal);
        };
        let floor = self.min_confidence.ln(); // -inf when unset
        let mut confidence = 0.0;
        loop {
            let token = match self.min_confidence > 0.0 {
                true => {
                    let top = self.top(&state, 1)?;
                    let Some(&(token, lp)) = top.first().and_then(|t| t.first()) else {
                        return Ok(proposal);
                    };
                    confidence += lp;
                    if confidence < floor {
                        return Ok(proposal);
                    }
                    token
                }
                false => self.guess(&state)?,
            };
            proposal.push(token);
            if proposal.len() == n {
                return Ok(proposal);
            }
            let x = self.fuse(&state, &self.embed(&[token])?)?;
            let pos = self.fed + proposal.len() - 1;
            state = self.run(&x, pos)?;
        }
    }

    /// Under lossless sampling, each guess is drawn from the draft's own distribution over its
    /// 64 most likely tokens, warped as the base's is (temperature, top-k, top-p), and handed
    /// over with it, so that a guess is kept with probability `min(1, p/q)` rather than `p`
    /// alone. Elsewhere the distribution is 0. With a confidence floor the chain stops before a
    /// draw whose most likely outcome would take the cumulative confidence (the product of the
    /// most likely outcomes' probabilities so far) below it: a stop that depends on the drawn
    /// token would bias what is proposed away from the distribution handed over.
    fn propose_sampled(
        &mut self,
        ctx: &ProposalContext<'_>,
        sampler: &mut Sampler<'_>,
    ) -> Result<Proposal> {
        if !sampler.samples_proposals() {
            return Ok(Proposal::points(self.propose(ctx)?));
        }
        let _guard = tch::no_grad_guard();
        let (mut tokens, mut probs) = (Vec::new(), Vec::new());
        let Some((mut state, n)) = self.feed(ctx)? else {
            return Ok(Proposal::default());
        };
        let floor = self.min_confidence.ln(); // -inf when unset
        let mut confidence = 0.0;
        while let Some((token, q, most)) = self.draw_guess(
            &state,
            sampler,
            tokens.len() + 1,
            SAMPLED_GUESSES,
            floor - confidence,
        )? {
            confidence += most.ln();
            tokens.push(token);
            probs.push(q);
            if tokens.len() == n {
                break;
            }
            let x = self.fuse(&state, &self.embed(&[token])?)?;
            let pos = self.fed + tokens.len() - 1;
            state = self.run(&x, pos)?;
        }
        Ok(Proposal::sampled(tokens, probs))
    }

    /// EAGLE-2's dynamic tree: from the root, the draft's top `width` guesses become children;
    /// at every further level the `width` nodes of the last level with the highest cumulative
    /// confidence (the product of the draft's probabilities along the path) are expanded in
    /// one draft call; finally the `nodes` most confident nodes of all are kept (every node's
    /// ancestors are at least as confident, so the kept set is a tree).
    fn propose_tree(
        &mut self,
        ctx: &ProposalContext<'_>,
        nodes: usize,
    ) -> Result<Option<DraftTree>> {
        let _guard = tch::no_grad_guard();
        let Some((root, depth)) = self.feed(ctx)? else {
            return Ok(Some(DraftTree::default()));
        };
        let width = self.tree_width.min(nodes.max(1));
        // Every node made: token, parent (0 root, j + 1 node j), depth, cumulative log-prob,
        // and the cache slot of its draft input once expanded.
        let mut tree = GrownTree::default();
        let children = self.top(&root, width)?;
        let mut level: Vec<usize> = Vec::new();
        for (token, lp) in children.into_iter().next().unwrap_or_default() {
            level.push(tree.push(token, 0, 1, lp));
        }
        let base = self.fed;
        let mut written = 0usize;
        for _ in 1..depth {
            // The level's most confident nodes, expanded together.
            let mut frontier = level.clone();
            frontier.sort_by(|&a, &b| tree.score[b].total_cmp(&tree.score[a]).then(a.cmp(&b)));
            frontier.truncate(width);
            if frontier.is_empty() || base + written + frontier.len() > self.cache_capacity() {
                break;
            }
            // Each node's draft input: its parent's predicted state and its own token.
            let parents: Vec<Tensor> = frontier
                .iter()
                .map(|&n| match tree.parent[n] {
                    0 => root.shallow_clone(),
                    p => tree.state[p - 1]
                        .as_ref()
                        .expect("parents are expanded")
                        .shallow_clone(),
                })
                .collect();
            let tokens: Vec<i64> = frontier.iter().map(|&n| tree.token[n]).collect();
            let x = self.fuse(&Tensor::f_cat(&parents, 1)?, &self.embed(&tokens)?)?;
            let start = base + written;
            let f = frontier.len();
            // Each sees the committed prefix, its ancestors' slots and its own.
            let mut mask = vec![false; f * (start + f)];
            for (q, &n) in frontier.iter().enumerate() {
                let row = &mut mask[q * (start + f)..(q + 1) * (start + f)];
                row[..base].iter_mut().for_each(|m| *m = true);
                row[start + q] = true;
                let mut a = tree.parent[n];
                while a != 0 {
                    row[tree.slot[a - 1].expect("ancestors are expanded")] = true;
                    a = tree.parent[a - 1];
                }
            }
            // A node of depth `d` drafts the token `d` places after the root's: its input sits
            // at the committed length plus `d - 1`.
            let positions: Vec<i64> = frontier
                .iter()
                .map(|&n| (base + tree.depth[n] - 1) as i64)
                .collect();
            let states = self.run_layers(&x, start, Some(&mask), &positions)?;
            written += f;
            let tops = self.top(&states, width)?;
            let mut next_level = Vec::new();
            for (q, (&n, top)) in frontier.iter().zip(tops).enumerate() {
                tree.slot[n] = Some(start + q);
                tree.state[n] = Some(states.f_narrow(1, q as i64, 1)?);
                for (token, lp) in top {
                    let s = tree.score[n] + lp;
                    next_level.push(tree.push(token, n + 1, tree.depth[n] + 1, s));
                }
            }
            level = next_level;
        }
        Ok(Some(tree.best(nodes, self.min_confidence.ln())))
    }
}

/// Refuses a confidence floor outside `0..1` ([`Error::InvalidConfig`]).
pub(crate) fn check_min_confidence(p: f64) -> Result<()> {
    match (0.0..1.0).contains(&p) {
        true => Ok(()),
        false => Err(Error::config(
            "draft min_confidence",
            format!("must be at least 0 and below 1, got {p}"),
        )),
    }
}

/// `t` rows of `D` values as a `[1, t, D]` tensor on `device`.
fn on_device(values: &[f32], t: usize, device: Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(values)
        .f_view([1, t as i64, (values.len() / t.max(1)) as i64])?
        .f_to_device(device)?)
}

/// The `width` largest entries of `logits` as (column, value), largest first (equal values:
/// the lower column first).
fn top_columns(logits: &[f32], width: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(width + 1);
    for (c, &v) in logits.iter().enumerate() {
        if best.len() == width && best.last().is_some_and(|&(_, b)| v <= b) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (c, v));
        best.truncate(width);
    }
    best
}

/// The `width` largest entries of `logits` as (column, log-probability), most likely first
/// (equal values: the lower column first).
fn top_log_probs(logits: &[f32], width: usize) -> Vec<(usize, f64)> {
    let best = top_columns(logits, width);
    let Some(&(_, max)) = best.first() else {
        return Vec::new();
    };
    // log Σ exp(v) = max + log Σ exp(v - max), the exponentials vectorised.
    let log_sum = max as f64 + (crate::native::exp_shifted(&mut logits.to_vec(), max) as f64).ln();
    best.into_iter()
        .map(|(c, v)| (c, v as f64 - log_sum))
        .collect()
}

/// The nodes a dynamic tree grows, before the most confident are kept.
#[derive(Default)]
struct GrownTree {
    token: Vec<i64>,
    parent: Vec<usize>,
    depth: Vec<usize>,
    score: Vec<f64>,
    slot: Vec<Option<usize>>,
    state: Vec<Option<Tensor>>,
}

impl GrownTree {
    fn push(&mut self, token: i64, parent: usize, depth: usize, score: f64) -> usize {
        self.token.push(token);
        self.parent.push(parent);
        self.depth.push(depth);
        self.score.push(score);
        self.slot.push(None);
        self.state.push(None);
        self.token.len() - 1
    }

    /// The `nodes` most confident nodes whose parents are kept, level by level, none with a
    /// cumulative log-probability below `floor`.
    fn best(&self, nodes: usize, floor: f64) -> DraftTree {
        let mut order: Vec<usize> = (0..self.token.len()).collect();
        order.sort_by(|&a, &b| self.score[b].total_cmp(&self.score[a]).then(a.cmp(&b)));
        let mut kept = vec![false; self.token.len()];
        let mut count = 0;
        for &n in &order {
            if count == nodes || self.score[n] < floor {
                break;
            }
            if self.parent[n] == 0 || kept[self.parent[n] - 1] {
                kept[n] = true;
                count += 1;
            }
        }
        let mut chosen: Vec<usize> = (0..self.token.len()).filter(|&n| kept[n]).collect();
        chosen.sort_by_key(|&n| (self.depth[n], n));
        let mut place = vec![0usize; self.token.len()];
        let mut out = DraftTree::default();
        for (i, &n) in chosen.iter().enumerate() {
            place[n] = i + 1;
            out.tokens.push(self.token[n]);
            out.parents.push(match self.parent[n] {
                0 => 0,
                p => place[p - 1],
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feature::FeatureDraftConfig;

    /// A draft of `n_layers` layers whose every weight is drawn at random.
    fn random_proposer(n_layers: i64) -> FeatureDraftProposer {
        random_proposer_with(n_layers, None)
    }

    /// [`random_proposer`] with rotary positions of base `rope_theta` (or none).
    fn random_proposer_with(n_layers: i64, rope_theta: Option<f64>) -> FeatureDraftProposer {
        random_proposer_on(n_layers, rope_theta, None)
    }

    /// [`random_proposer_with`] scored on the shortlist `ids` (or the whole vocabulary).
    fn random_proposer_on(
        n_layers: i64,
        rope_theta: Option<f64>,
        ids: Option<Vec<i64>>,
    ) -> FeatureDraftProposer {
        let config = FeatureDraftConfig {
            n_layers,
            rope_theta,
            ..FeatureDraftConfig::for_base(32, 40)
        };
        let mut draft = FeatureDraft::new(config, 0, Device::Cpu).unwrap();
        if let Some(ids) = ids {
            draft = draft.with_shortlist(ids).unwrap();
        }
        tch::manual_seed(21);
        let mut vars: Vec<(String, Tensor)> = draft.var_store().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (_, mut v) in vars {
                v.copy_(&(Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        });
        let emb = Tensor::randn([40, 32], (Kind::Float, Device::Cpu));
        FeatureDraftProposer::with_embeddings(draft, &emb, 16)
            .unwrap()
            .with_weights(DraftWeights::F32)
            .unwrap()
    }

    /// Largest absolute difference between two tensors.
    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).unwrap()
    }

    /// What a proposer computes on fixed inputs: the fused inputs, a causal block of three,
    /// two single rows, two tree-masked rows, their top guesses and a guess.
    type Computed = (Vec<Tensor>, Vec<Vec<(i64, f64)>>, i64);

    fn compute(p: &mut FeatureDraftProposer, inputs: &[Tensor]) -> Computed {
        let x = p.fuse(&inputs[0], &inputs[1]).unwrap();
        let mut out = vec![x.shallow_clone(), p.run(&x.narrow(1, 0, 3), 0).unwrap()];
        for i in 3..5 {
            out.push(p.run(&x.narrow(1, i, 1), i as usize).unwrap());
        }
        // Two rows after the five, each seeing the first three positions and itself only.
        let mut mask = vec![false; 2 * 7];
        for q in 0..2 {
            mask[q * 7..q * 7 + 3].iter_mut().for_each(|m| *m = true);
            mask[q * 7 + 5 + q] = true;
        }
        // Tree rows of one depth share a position.
        let rows = p.run_layers(&inputs[2], 5, Some(&mask), &[5, 5]).unwrap();
        let top = p.top(&rows, 3).unwrap();
        let guess = p.guess(&rows.narrow(1, 1, 1)).unwrap();
        out.push(rows);
        (out, top, guess)
    }

    #[test]
    fn the_native_kernels_compute_what_libtorch_computes() {
        let _guard = tch::no_grad_guard();
        for (n_layers, rope_theta) in [(1, None), (2, None), (1, Some(1e4)), (2, Some(50.0))] {
            let inputs: Vec<Tensor> = [5, 5, 2]
                .iter()
                .map(|&t| Tensor::randn([1, t, 32], (Kind::Float, Device::Cpu)))
                .collect();
            let mut p = random_proposer_with(n_layers, rope_theta);
            assert!(p.native.is_none() && p.cache.is_some());
            let (torch, torch_top, torch_guess) = compute(&mut p, &inputs);
            // The same weights on the native kernels (a fresh, empty cache).
            let mut p = p.with_weights(DraftWeights::NativeF32).unwrap();
            assert!(p.native.is_some() && p.cache.is_none());
            let (native, native_top, native_guess) = compute(&mut p, &inputs);
            for (i, (t, n)) in torch.iter().zip(&native).enumerate() {
                let diff = max_diff(t, n);
                assert!(diff < 1e-4, "{n_layers} layers, output {i}: {diff}");
            }
            // The same guesses and log-probabilities (random weights: no near-ties expected).
            for (rt, rn) in torch_top.iter().zip(&native_top) {
                assert_eq!(rt.len(), 3);
                for (&(tt, lt), &(tn, ln)) in rt.iter().zip(rn) {
                    assert_eq!(tt, tn);
                    assert!((lt - ln).abs() < 1e-4, "log-probabilities {lt} and {ln}");
                }
            }
            assert_eq!(torch_guess, native_guess);
            // Rows past the cache are refused, not written.
            let x = Tensor::randn([1, 3, 32], (Kind::Float, Device::Cpu));
            let e = p.run(&x, 15).unwrap_err().to_string();
            assert!(e.contains("cache of 17"), "{e}");
        }
    }

    /// One draft step (fuse, layer, shortlist logits) of a SmolLM2-sized draft after 100
    /// cached positions, with the caches flushed before each, in every form
    /// (`cargo test --release --lib draft_step_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn draft_step_speed() {
        let _guard = tch::no_grad_guard();
        let config = FeatureDraftConfig::for_base(576, 49152);
        let draft = FeatureDraft::new(config, 0, Device::Cpu)
            .unwrap()
            .with_shortlist((0..8192).collect())
            .unwrap();
        let emb = Tensor::randn([49152, 576], (Kind::Float, Device::Cpu)) * 0.05;
        let mut flush = vec![0u8; 64 << 20];
        for w in [
            DraftWeights::Int8,
            DraftWeights::NativeInt8,
            DraftWeights::NativeBf16,
            DraftWeights::NativeF32,
        ] {
            let d = FeatureDraft::new(FeatureDraftConfig::for_base(576, 49152), 0, Device::Cpu)
                .unwrap()
                .with_shortlist(draft.shortlist().unwrap().to_vec())
                .unwrap();
            let mut p = FeatureDraftProposer::with_embeddings(d, &emb, 512)
                .unwrap()
                .with_weights(w)
                .unwrap();
            let prefix = Tensor::randn([1, 100, 576], (Kind::Float, Device::Cpu));
            let _ = p.run(&prefix, 0).unwrap();
            let (mut best, mut best_logits) = (f64::MAX, f64::MAX);
            for _ in 0..20 {
                flush.iter_mut().for_each(|b| *b = b.wrapping_add(1));
                let h = Tensor::randn([1, 1, 576], (Kind::Float, Device::Cpu));
                let t0 = std::time::Instant::now();
                let x = p.fuse(&h, &p.embed(&[7]).unwrap()).unwrap();
                let state = p.run(&x, 100).unwrap();
                let t1 = std::time::Instant::now();
                let _ = p.guess(&state).unwrap();
                best = best.min(t0.elapsed().as_secs_f64());
                best_logits = best_logits.min(t1.elapsed().as_secs_f64());
            }
            println!(
                "{w}: {:.3} ms a step, of which {:.3} ms the guess",
                best * 1e3,
                best_logits * 1e3
            );
        }
        std::hint::black_box(&flush);
    }

    #[test]
    fn sampled_guesses_come_with_the_warped_distribution_they_were_drawn_from() {
        use crate::rng::SeededRng;
        use crate::sampling::{probabilities, SamplingConfig};
        let _guard = tch::no_grad_guard();
        let tokens = vec![3, 9, 1, 4];
        tch::manual_seed(5);
        let hidden = Tensor::randn([4, 32], (Kind::Float, Device::Cpu));
        // Every third id: the other 26 are never proposed.
        let shortlist: Vec<i64> = (0..40).filter(|i| i % 3 == 1).collect();
        let warp = SamplingConfig::new(1.5).with_top_k(6);
        for form in [DraftWeights::F32, DraftWeights::NativeF32] {
            let mut p = random_proposer_on(1, None, Some(shortlist.clone()))
                .with_weights(form)
                .unwrap();
            let ctx = ProposalContext::new(&tokens, 6, 4);
            let mut firsts = std::collections::BTreeSet::new();
            for seed in 0..16 {
                let mut rng = SeededRng::new(seed);
                let mut sampler = Sampler::new(&warp, &mut rng, true);
                p.begin(&tokens).unwrap();
                p.observe_hidden(&hidden).unwrap();
                let proposal = p.propose_sampled(&ctx, &mut sampler).unwrap();
                let probs = proposal.probs.clone().expect("drawn guesses carry their q");
                assert_eq!((proposal.len(), probs.len()), (4, 4), "{form}");
                firsts.insert(proposal.tokens[0]);
                // Step by step: each q is the draft's logits over the shortlist warped as the
                // base's are, 0 elsewhere, and the guess was drawn from it.
                p.begin(&tokens).unwrap();
                p.observe_hidden(&hidden).unwrap();
                let (mut state, _) = p.feed(&ctx).unwrap().unwrap();
                for (i, (&token, q)) in proposal.tokens.iter().zip(&probs).enumerate() {
                    let logits = p.column_logits(&state).unwrap();
                    let mut expected = vec![0.0; 40];
                    for (c, w) in probabilities(&logits, &warp, i + 1)
                        .unwrap()
                        .iter()
                        .enumerate()
                    {
                        expected[shortlist[c] as usize] = *w;
                    }
                    assert_eq!(q.len(), 40);
                    let off = q.iter().zip(&expected).map(|(a, b)| (a - b).abs());
                    assert!(off.fold(0.0, f64::max) < 1e-12, "{form} step {i}: {q:?}");
                    assert!(q[token as usize] > 0.0, "{form}: {token} drawn from q = 0");
                    assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                    assert!(q.iter().filter(|&&w| w > 0.0).count() <= 6, "top-k 6");
                    let x = p.fuse(&state, &p.embed(&[token]).unwrap()).unwrap();
                    state = p.run(&x, p.fed + i).unwrap();
                }
            }
            assert!(firsts.len() > 1, "{form}: every seed drew {firsts:?}");
            // Drawn from the most likely candidates only: here 3 of the 14 columns.
            p.begin(&tokens).unwrap();
            p.observe_hidden(&hidden).unwrap();
            let (state, _) = p.feed(&ctx).unwrap().unwrap();
            let logits = p.column_logits(&state).unwrap();
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let best: Vec<f32> = order[..3].iter().map(|&c| logits[c]).collect();
            let mut expected = vec![0.0; 40];
            for (j, w) in probabilities(&best, &warp, 1).unwrap().iter().enumerate() {
                expected[shortlist[order[j]] as usize] = *w;
            }
            let mut rng = SeededRng::new(7);
            let mut sampler = Sampler::new(&warp, &mut rng, true);
            let (token, q, most) = p
                .draw_guess(&state, &mut sampler, 1, 3, f64::NEG_INFINITY)
                .unwrap()
                .unwrap();
            let off = q.iter().zip(&expected).map(|(a, b)| (a - b).abs());
            assert!(off.fold(0.0, f64::max) < 1e-12, "{form}: {q:?}");
            assert!(q[token as usize] > 0.0);
            assert_eq!(most, expected.iter().fold(0.0, |m: f64, &w| m.max(w)));
            // A floor above the largest probability draws nothing.
            let above = most.ln() + 1e-9;
            assert!(p
                .draw_guess(&state, &mut sampler, 1, 3, above)
                .unwrap()
                .is_none());
            // Asked for point masses (typical acceptance), it proposes its greedy chain.
            let mut rng = SeededRng::new(0);
            let mut sampler = Sampler::new(&warp, &mut rng, false);
            p.begin(&tokens).unwrap();
            p.observe_hidden(&hidden).unwrap();
            let points = p.propose_sampled(&ctx, &mut sampler).unwrap();
            p.begin(&tokens).unwrap();
            p.observe_hidden(&hidden).unwrap();
            assert_eq!(points, Proposal::points(p.propose(&ctx).unwrap()), "{form}");
        }
    }

    #[test]
    fn a_confidence_floor_cuts_the_chain_where_the_draft_doubts() {
        let _guard = tch::no_grad_guard();
        let tokens = vec![3, 9, 1, 4];
        tch::manual_seed(5);
        let hidden = Tensor::randn([4, 32], (Kind::Float, Device::Cpu));
        for form in [DraftWeights::F32, DraftWeights::NativeF32] {
            let mut p = random_proposer(1).with_weights(form).unwrap();
            let ctx = ProposalContext::new(&tokens, 6, 6);
            let run = |p: &mut FeatureDraftProposer| {
                p.begin(&tokens).unwrap();
                p.observe_hidden(&hidden).unwrap();
                p.propose(&ctx).unwrap()
            };
            let full = run(&mut p);
            assert_eq!(full.len(), 6);
            // The chain's cumulative log-probabilities, step by step as the draft sees them.
            p.begin(&tokens).unwrap();
            p.observe_hidden(&hidden).unwrap();
            let (mut state, _) = p.feed(&ctx).unwrap().unwrap();
            let mut cumulative = Vec::new();
            for (i, &token) in full.iter().enumerate() {
                let (top, lp) = p.top(&state, 1).unwrap()[0][0];
                assert_eq!(top, token);
                cumulative.push(cumulative.last().unwrap_or(&0.0) + lp);
                let x = p.fuse(&state, &p.embed(&[token]).unwrap()).unwrap();
                state = p.run(&x, p.fed + i).unwrap();
            }
            // A floor between two cumulative confidences keeps exactly the guesses above it;
            // one above the first guess's proposes nothing.
            let mut p = p.with_min_confidence(0.0).unwrap();
            let mut checked = 0;
            for keep in 0..=6 {
                let above = if keep == 0 { 0.0 } else { cumulative[keep - 1] };
                let below = cumulative.get(keep).copied().unwrap_or(f64::NEG_INFINITY);
                if above - below < 1e-3 {
                    continue; // too near a tie for float32 to place a floor between them
                }
                let floor = ((above + below.max(above - 1.0)) / 2.0).exp();
                p.min_confidence = floor.min(0.999_999);
                assert_eq!(run(&mut p), full[..keep], "{form}: floor {floor}");
                checked += 1;
            }
            assert!(
                checked >= 3,
                "{form}: cumulative confidences {cumulative:?}"
            );
        }
        // Dynamic trees keep only nodes at or above the floor.
        let mut p = random_proposer(1).with_min_confidence(0.999_999).unwrap();
        p.begin(&tokens).unwrap();
        p.observe_hidden(&hidden).unwrap();
        let tree = p
            .propose_tree(&ProposalContext::new(&tokens, 6, 4), 8)
            .unwrap()
            .unwrap();
        assert!(tree.tokens.is_empty(), "{:?}", tree.tokens);
        // Floors outside 0..1 are refused.
        for bad in [1.0, -0.1, f64::NAN] {
            let e = random_proposer(1).with_min_confidence(bad).unwrap_err();
            assert!(e.to_string().contains("below 1"), "{e}");
        }
    }

    #[test]
    fn lookup_before_the_draft_forks_sharing_the_weights() {
        // A batch row or a server request gets a fork of `chain:ngram,eagle`; before n-gram
        // lookup forked, the whole chain (the draft's weights included) was built again.
        let original = random_proposer(1);
        let weights = Rc::clone(&original.draft);
        let chain = crate::proposer::Chain::new(vec![
            Box::new(crate::proposer::NGram::new(3, 3).unwrap()),
            Box::new(original),
        ]);
        let fork = chain.fork().expect("every member forks");
        assert!(fork.needs_hidden());
        // Here, in the chain's draft and in the fork's.
        assert_eq!(Rc::strong_count(&weights), 3);
        drop(fork);
        assert_eq!(Rc::strong_count(&weights), 2);
    }

    #[test]
    fn forks_share_the_weights_and_keep_their_own_caches() {
        let _guard = tch::no_grad_guard();
        // On the native kernels and through libtorch.
        for form in [DraftWeights::NativeInt8, DraftWeights::F32] {
            let mut original = random_proposer(2).with_weights(form).unwrap();
            let mut fork = original.fork().expect("drafts fork");
            assert_eq!(Rc::strong_count(&original.draft), 2);
            // Two sequences, decoded through the trait as a batch's rows are.
            let sequences: Vec<(Vec<i64>, Tensor)> = [vec![3, 9, 1, 4], vec![5, 2, 8]]
                .into_iter()
                .map(|tokens| {
                    let n = tokens.len() as i64;
                    (tokens, Tensor::randn([n, 32], (Kind::Float, Device::Cpu)))
                })
                .collect();
            let proposals = |p: &mut dyn Proposer, (tokens, hidden): &(Vec<i64>, Tensor)| {
                p.begin(tokens).unwrap();
                p.observe_hidden(hidden).unwrap();
                p.propose(&ProposalContext::new(tokens, 6, 4)).unwrap()
            };
            let next = [sequences[0].0.clone(), vec![6]].concat();
            let later = Tensor::randn([1, 32], (Kind::Float, Device::Cpu));
            // The first sequence and one more iteration, on the original alone.
            let first = proposals(&mut original, &sequences[0]);
            original.observe_hidden(&later).unwrap();
            let second = original
                .propose(&ProposalContext::new(&next, 2, 4))
                .unwrap();
            assert_eq!((first.len(), second.len()), (4, 4));
            // The same on the fork while the original decodes the other sequence in between:
            // the fork guesses the same, so it shares the weights and keeps its own cache.
            assert_eq!(proposals(&mut *fork, &sequences[0]), first, "{form}");
            let other = proposals(&mut original, &sequences[1]);
            fork.observe_hidden(&later).unwrap();
            assert_eq!(
                fork.propose(&ProposalContext::new(&next, 2, 4)).unwrap(),
                second,
                "{form}"
            );
            assert_eq!(other.len(), 4);
            // A shared draft can neither change its form nor be taken back; alone again, it
            // can.
            let other_form = match form {
                DraftWeights::F32 => DraftWeights::NativeF32,
                _ => DraftWeights::F32,
            };
            let e = original.with_weights(other_form).unwrap_err().to_string();
            assert!(e.contains("shares its draft"), "{e}");
            drop(fork);
            let original = random_proposer(1).with_weights(form).unwrap();
            assert!(original
                .with_weights(other_form)
                .unwrap()
                .into_draft()
                .is_some());
        }
    }

    #[test]
    fn top_log_probs_are_the_largest_in_order() {
        let logits = [0.5f32, 2.0, -1.0, 2.0, 1.0];
        let top = top_log_probs(&logits, 3);
        let cols: Vec<usize> = top.iter().map(|t| t.0).collect();
        assert_eq!(cols, vec![1, 3, 4]);
        let sum: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        assert!((top[2].1 - (1.0 - sum.ln())).abs() < 1e-6);
        assert_eq!(top_log_probs(&logits, 9).len(), 5);
    }

    #[test]
    fn the_cached_layers_give_what_one_pass_over_the_sequence_gives() {
        let _guard = tch::no_grad_guard();
        for (n_layers, rope_theta) in [
            (1, None),
            (2, None),
            (3, None),
            (1, Some(1e4)),
            (2, Some(1e4)),
        ] {
            let mut p = random_proposer_with(n_layers, rope_theta);
            let x = Tensor::randn([1, 6, 32], (Kind::Float, Device::Cpu));
            let whole = p.run(&x, 0).unwrap();
            // Again from an empty cache: two positions, then one at a time, as decoding feeds
            // committed states and then its own guesses.
            p.truncate_cache(0);
            let mut parts = vec![p.run(&x.narrow(1, 0, 2), 0).unwrap()];
            for i in 2..6 {
                parts.push(p.run(&x.narrow(1, i, 1), i as usize).unwrap());
            }
            let stepwise = Tensor::cat(&parts, 1);
            let diff = f64::try_from((&stepwise - &whole).abs().max()).unwrap();
            assert!(diff < 1e-5, "{n_layers} layers: states differ by {diff}");
            // Each layer matters: the layers' outputs are not their inputs.
            let moved = f64::try_from((&whole - &x).abs().max()).unwrap();
            assert!(moved > 1e-2, "{n_layers} layers: {moved}");
        }
    }

    #[test]
    fn rotary_positions_count_only_their_differences() {
        let _guard = tch::no_grad_guard();
        for weights in [DraftWeights::F32, DraftWeights::NativeF32] {
            let mut p = random_proposer_with(2, Some(100.0))
                .with_weights(weights)
                .unwrap();
            let x = Tensor::randn([1, 6, 32], (Kind::Float, Device::Cpu));
            let at = |p: &mut FeatureDraftProposer, positions: &[i64]| {
                p.truncate_cache(0);
                p.run_layers(&x, 0, None, positions).unwrap()
            };
            let from_zero = at(&mut p, &[0, 1, 2, 3, 4, 5]);
            // Every position moved by the same amount: the same states.
            let moved = at(&mut p, &[40, 41, 42, 43, 44, 45]);
            let diff = max_diff(&from_zero, &moved);
            assert!(
                diff < 1e-4,
                "{weights:?}: shifted positions changed the states by {diff}"
            );
            // Other differences between them: other states (the first row sees itself alone).
            let spread = at(&mut p, &[0, 2, 4, 6, 8, 10]);
            assert!(max_diff(&from_zero.narrow(1, 0, 1), &spread.narrow(1, 0, 1)) < 1e-5);
            let diff = max_diff(&from_zero, &spread);
            assert!(
                diff > 1e-3,
                "{weights:?}: spread positions changed the states by {diff}"
            );
        }
        // A draft without positions ignores them.
        let mut p = random_proposer(1);
        let x = Tensor::randn([1, 3, 32], (Kind::Float, Device::Cpu));
        let a = p.run_layers(&x, 0, None, &[0, 1, 2]).unwrap();
        p.truncate_cache(0);
        let b = p.run_layers(&x, 0, None, &[7, 3, 9]).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
    }

    #[test]
    fn a_tree_branch_computes_what_a_chain_along_it_computes() {
        let _guard = tch::no_grad_guard();
        for weights in [DraftWeights::F32, DraftWeights::NativeF32] {
            for rope_theta in [None, Some(100.0)] {
                let mut p = random_proposer_with(2, rope_theta)
                    .with_weights(weights)
                    .unwrap();
                let prefix = Tensor::randn([1, 5, 32], (Kind::Float, Device::Cpu));
                let (x0, other, x1) = (
                    Tensor::randn([1, 1, 32], (Kind::Float, Device::Cpu)),
                    Tensor::randn([1, 1, 32], (Kind::Float, Device::Cpu)),
                    Tensor::randn([1, 1, 32], (Kind::Float, Device::Cpu)),
                );
                // A chain: the committed prefix, then two drafted positions.
                let _ = p.run(&prefix, 0).unwrap();
                let _ = p.run(&x0, 5).unwrap();
                let chain = p.run(&x1, 6).unwrap();
                // A tree over the same prefix: two siblings at depth 1 (slots 5 and 6, both at
                // position 5), then the first one's child at depth 2 (slot 7, position 6),
                // seeing the prefix, its parent and itself.
                p.truncate_cache(5);
                let mut mask = vec![false; 2 * 7];
                for q in 0..2 {
                    mask[q * 7..q * 7 + 5].iter_mut().for_each(|m| *m = true);
                    mask[q * 7 + 5 + q] = true;
                }
                let _ = p
                    .run_layers(&Tensor::cat(&[&x0, &other], 1), 5, Some(&mask), &[5, 5])
                    .unwrap();
                let mut mask = vec![true; 8];
                mask[6] = false;
                let tree = p.run_layers(&x1, 7, Some(&mask), &[6]).unwrap();
                let diff = max_diff(&chain, &tree);
                assert!(
                    diff < 1e-4,
                    "{weights:?}, rope {rope_theta:?}: differs by {diff}"
                );
                // At the slot's own position instead, a rotary draft computes something else.
                if rope_theta.is_some() {
                    let wrong = p.run_layers(&x1, 7, Some(&mask), &[7]).unwrap();
                    assert!(max_diff(&chain, &wrong) > 1e-3, "{weights:?}");
                }
            }
        }
    }
}
