//! Models for tests: a user-style adapter with injectable faults.

#![allow(dead_code)]

use blockwise::{CausalLm, ModelInfo, ModelOutput, Result, Transformer, TransformerConfig};
use tch::{Device, Kind, Tensor};

pub fn tiny(vocab: i64, heads: usize, seed: u64) -> Transformer {
    Transformer::new_seeded(TransformerConfig::tiny(vocab, heads), seed, Device::Cpu).unwrap()
}

/// What a faulty model does wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Logits only for the last position ([1, 1, V]).
    LastPositionOnly,
    /// NaN logits from the n-th call on.
    NanFromCall(usize),
    /// Wrong vocabulary size in the logits.
    WrongVocab,
    /// Claims to have no cache.
    NoCache,
}

/// Wraps a transformer and misbehaves as told.
pub struct Faulty {
    pub inner: Transformer,
    pub fault: Fault,
    pub calls: usize,
    info: ModelInfo,
}

impl Faulty {
    pub fn new(inner: Transformer, fault: Fault) -> Self {
        let mut info = inner.info().clone();
        if fault == Fault::NoCache {
            info.has_cache = false;
        }
        Faulty {
            inner,
            fault,
            calls: 0,
            info,
        }
    }
}

impl CausalLm for Faulty {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        self.calls += 1;
        let out = self.inner.forward(tokens, start)?;
        let logits = match self.fault {
            Fault::LastPositionOnly => out.logits.narrow(1, out.logits.size()[1] - 1, 1),
            Fault::NanFromCall(n) if self.calls >= n => out.logits.full_like(f64::NAN),
            Fault::WrongVocab => out.logits.narrow(2, 0, self.info.vocab_size - 1),
            _ => out.logits,
        };
        Ok(match out.hidden {
            Some(h) if self.fault != Fault::LastPositionOnly => ModelOutput::with_hidden(logits, h),
            _ => ModelOutput::logits(logits),
        })
    }

    fn cached_len(&self) -> usize {
        if self.fault == Fault::NoCache {
            0
        } else {
            self.inner.cached_len()
        }
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.inner.truncate(len)
    }

    fn head_logits(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        self.inner.head_logits(hidden)
    }
}

/// Max |a - b| over two tensors.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
