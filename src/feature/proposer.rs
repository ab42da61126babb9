//! The feature-level draft as a proposer: it reads the base model's final hidden states of
//! every committed token and drafts the block autoregressively with its own small cache.

use tch::{Device, Kind, Tensor};

use super::model::{FeatureDraft, VocabProjection};
use crate::cache::{CacheShape, KvCache};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::proposer::{ProposalContext, Proposer};

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
    draft: FeatureDraft,
    embeddings: Tensor,
    projection: VocabProjection,
    cache: KvCache,
    /// Committed positions whose true states the cache holds.
    fed: usize,
    /// Hidden states handed over since the last proposal, not yet fed.
    pending: Vec<Tensor>,
    device: Device,
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
        let cache = KvCache::new(
            CacheShape {
                layers: 1,
                batch: 1,
                heads: config.n_heads,
                capacity: max_context + 1,
                head_dim: config.d_model / config.n_heads,
            },
            Kind::Float,
            device,
        )?;
        Ok(FeatureDraftProposer {
            draft,
            embeddings: embeddings.f_detach()?,
            projection,
            cache,
            fed: 0,
            pending: Vec::new(),
            device,
        })
    }

    /// The draft back.
    pub fn into_draft(self) -> FeatureDraft {
        self.draft
    }

    /// Runs the draft layer over fused inputs `x` (`[1, T, D]`) written at cache positions
    /// `start..start + T`; returns the predicted states `[1, T, D]`.
    fn run(&mut self, x: &Tensor, start: usize) -> Result<Tensor> {
        let t = x.size()[1] as usize;
        let qkv = self.draft.qkv(x)?;
        let (keys, values) = self.cache.write(0, start, &qkv.k, &qkv.v)?;
        self.cache.set_len(start + t);
        let mask = crate::transformer::layers::causal_mask(start, t, self.device)?;
        let attended = self.draft.attend(&qkv.q, &keys, &values, &mask)?;
        self.draft.finish(x, &attended)
    }

    /// The embeddings of `tokens` as `[1, T, D]`.
    fn embed(&self, tokens: &[i64]) -> Result<Tensor> {
        let ids = Tensor::from_slice(tokens).f_to_device(self.device)?;
        Ok(self.embeddings.f_index_select(0, &ids)?.f_unsqueeze(0)?)
    }

    /// The draft's guess from a predicted state `[1, 1, D]`.
    fn guess(&self, state: &Tensor) -> Result<i64> {
        let logits = self.projection.logits(state)?;
        let col = i64::try_from(&logits.f_argmax(-1, false)?.f_flatten(0, -1)?.f_get(0)?)?;
        Ok(self.projection.token(col))
    }
}

impl Proposer for FeatureDraftProposer {
    fn begin(&mut self, _prompt: &[i64]) -> Result<()> {
        self.fed = 0;
        self.pending.clear();
        self.cache.truncate(0);
        Ok(())
    }

    fn needs_hidden(&self) -> bool {
        true
    }

    fn observe_hidden(&mut self, hidden: &Tensor) -> Result<()> {
        let size = hidden.size();
        if size.len() != 2 || size[1] != self.draft.config().d_model {
            return Err(Error::BadOutputShape {
                output: "hidden",
                expected: format!("[n, {}] (tokens, width)", self.draft.config().d_model),
                actual: size,
            });
        }
        self.pending.push(hidden.shallow_clone());
        Ok(())
    }

    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        let _guard = tch::no_grad_guard();
        let len = ctx.tokens.len();
        let fresh: i64 = self.pending.iter().map(|h| h.size()[0]).sum();
        let fresh = fresh as usize;
        if fresh > len {
            return Err(Error::Contract {
                component: "FeatureDraftProposer",
                problem: format!("handed {fresh} hidden states for a sequence of {len} tokens"),
            });
        }
        // The draft's attention has no positions of its own, so when it was not handed every
        // committed state (a chain member that missed some) it starts over from what it has.
        if self.fed + fresh != len {
            self.fed = 0;
        }
        // Forget the drafted positions of the last proposal.
        self.cache.truncate(self.fed);
        let mut proposal = Vec::with_capacity(ctx.max_tokens);
        let room = self.cache.capacity().saturating_sub(self.fed + fresh);
        let n = ctx.max_tokens.min(room);
        if fresh == 0 || n == 0 {
            return Ok(proposal);
        }
        // Feed the committed states, each with the token that followed it.
        let hidden = Tensor::f_cat(&self.pending, 0)?.f_unsqueeze(0)?;
        self.pending.clear();
        let mut after: Vec<i64> = ctx.tokens[len - fresh + 1..].to_vec();
        after.push(ctx.next);
        let x = self.draft.fuse(&hidden, &self.embed(&after)?)?;
        let states = self.run(&x, self.fed)?;
        self.fed += fresh;
        let mut state = states.f_narrow(1, fresh as i64 - 1, 1)?;
        loop {
            let token = self.guess(&state)?;
            proposal.push(token);
            if proposal.len() == n {
                return Ok(proposal);
            }
            let x = self.draft.fuse(&state, &self.embed(&[token])?)?;
            let pos = self.fed + proposal.len() - 1;
            state = self.run(&x, pos)?;
        }
    }
}
