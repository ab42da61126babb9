//! A wrapper that checks the `CausalLm` contract on every call the suite makes to a model:
//! what the outputs alone cannot show (a cache that reports the wrong length, logits of another
//! kind than the model declares).

use std::cell::RefCell;

use tch::Tensor;

use super::checks::{invariants, ConformanceFailure};
use crate::error::Result;
use crate::model::{CausalLm, ModelInfo, ModelOutput};

/// Forwards every call to `inner` and records the first broken promise.
pub(super) struct ContractChecked<'a, M: ?Sized> {
    pub inner: &'a mut M,
    pub broken: RefCell<Option<ConformanceFailure>>,
}

impl<'a, M: CausalLm + ?Sized> ContractChecked<'a, M> {
    pub fn new(inner: &'a mut M) -> Self {
        ContractChecked {
            inner,
            broken: RefCell::new(None),
        }
    }

    fn record(&self, detail: String) {
        let mut b = self.broken.borrow_mut();
        if b.is_none() {
            *b = Some(ConformanceFailure {
                invariant: invariants::CONTRACT,
                detail,
                case: None,
            });
        }
    }

    /// The first broken promise, if any.
    pub fn take(&self) -> Option<ConformanceFailure> {
        self.broken.borrow_mut().take()
    }
}

impl<M: CausalLm + ?Sized> CausalLm for ContractChecked<'_, M> {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        let out = self.inner.forward(tokens, start)?;
        let t = tokens.size().get(1).copied().unwrap_or(0) as usize;
        let info = self.inner.info();
        if info.has_cache && self.inner.cached_len() != start + t {
            self.record(format!(
                "after forward of {t} tokens at start {start}, cached_len() is {} (the contract: \
                 start + T = {})",
                self.inner.cached_len(),
                start + t
            ));
        }
        if out.logits.kind() != info.kind {
            self.record(format!(
                "forward returned {:?} logits, but info().kind says {:?} (set ModelInfo::kind to \
                 the dtype your model computes in: it chooses the suite's tolerance)",
                out.logits.kind(),
                info.kind
            ));
        }
        Ok(out)
    }

    fn cached_len(&self) -> usize {
        self.inner.cached_len()
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.inner.truncate(len)
    }

    fn head_logits(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        self.inner.head_logits(hidden)
    }

    fn head_logits_first(&self, hidden: &Tensor, n: usize) -> Result<Option<Tensor>> {
        self.inner.head_logits_first(hidden, n)
    }

    fn token_embeddings(&self) -> Option<Tensor> {
        self.inner.token_embeddings()
    }

    fn as_masked(&mut self) -> Option<&mut dyn crate::masked::MaskedLm> {
        self.inner.as_masked()
    }

    fn set_feature_taps(&mut self, layers: &[usize]) -> Result<()> {
        self.inner.set_feature_taps(layers)
    }
}
