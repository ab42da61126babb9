//! The default verifier: appends each block to the model's KV cache and truncates the rejected
//! tail.

use tch::Tensor;

use super::scores::{
    block_scores, head_outputs, step_at, BlockScores, HeadOutputs, ScoreRequest, Step,
};
use super::Verifier;
use crate::error::{Error, Result};
use crate::model::{check_output, prefill_each, token_tensor, CausalLm};

/// Verifies blocks against the model's KV cache: each call runs only the block's tokens.
#[derive(Debug, Default)]
pub struct CachedVerifier {
    committed: usize,
    pending: usize,
    hidden: Option<Tensor>,
    block: Vec<i64>,
    last_token: Option<i64>,
    /// Hidden states of what the last start or commit committed (when requested).
    committed_hidden: Option<Tensor>,
}

impl CachedVerifier {
    /// A verifier with nothing committed.
    pub fn new() -> Self {
        Self::default()
    }

    fn run(&mut self, model: &mut dyn CausalLm, tokens: &[i64], start: usize) -> Result<Tensor> {
        if !model.info().has_cache {
            return Err(Error::MissingCapability {
                component: "CachedVerifier",
                capability: "a KV cache (for a model without one, use the recompute verifier: \
                             `RecomputeVerifier`, `decode --verifier recompute`, or \
                             \"verifier\": \"recompute\" in a config)",
            });
        }
        let out = model.forward(&token_tensor(tokens, model.info().device), start)?;
        check_output(&out, tokens.len(), model.info().vocab_size)?;
        self.hidden = out.hidden;
        Ok(out.logits)
    }
}

impl Verifier for CachedVerifier {
    fn start(
        &mut self,
        model: &mut dyn CausalLm,
        prompt: &[i64],
        req: ScoreRequest,
    ) -> Result<Step> {
        self.committed = 0;
        self.pending = 0;
        if !model.info().has_cache {
            return Err(Error::MissingCapability {
                component: "CachedVerifier",
                capability: "a KV cache (for a model without one, use the recompute verifier: \
                             `RecomputeVerifier`, `decode --verifier recompute`, or \
                             \"verifier\": \"recompute\" in a config)",
            });
        }
        let mut rows: Vec<Tensor> = Vec::new();
        let out = prefill_each(model, prompt, req.prefill_chunk, |o| {
            if let (true, Some(h)) = (req.hidden, &o.hidden) {
                rows.push(h.shallow_clone());
            }
        })?;
        self.committed_hidden = match rows.len() {
            0 => None,
            1 => Some(rows[0].f_squeeze_dim(0)?),
            _ => Some(Tensor::f_cat(&rows, 1)?.f_squeeze_dim(0)?),
        };
        self.last_token = prompt.last().copied();
        self.hidden = out.hidden;
        let logits = out.logits;
        let last_row = logits.size()[1] as usize - 1;
        self.committed = prompt.len();
        step_at(model, &logits, self.hidden.as_ref(), last_row, req)
    }

    fn verify(
        &mut self,
        model: &mut dyn CausalLm,
        block: &[i64],
        req: ScoreRequest,
    ) -> Result<BlockScores> {
        let logits = self.run(model, block, self.committed)?;
        self.pending = block.len();
        self.block = block.to_vec();
        block_scores(&logits, block.len(), req)
    }

    fn commit(
        &mut self,
        model: &mut dyn CausalLm,
        keep: usize,
        req: ScoreRequest,
    ) -> Result<Option<HeadOutputs>> {
        if keep == 0 || keep > self.pending {
            return Err(Error::Contract {
                component: "CachedVerifier::commit",
                problem: format!("keep {keep} of a block of {}", self.pending),
            });
        }
        self.committed += keep;
        self.pending = 0;
        self.last_token = Some(self.block[keep - 1]);
        model.truncate(self.committed)?;
        self.committed_hidden = match (&self.hidden, req.hidden) {
            (Some(h), true) => Some(h.f_select(0, 0)?.f_narrow(0, 0, keep as i64)?),
            _ => None,
        };
        head_outputs(model, self.hidden.as_ref(), keep - 1, req)
    }

    fn committed_hidden(&self) -> Option<Tensor> {
        self.committed_hidden.as_ref().map(|h| h.shallow_clone())
    }

    fn rescore_last(&mut self, model: &mut dyn CausalLm, req: ScoreRequest) -> Result<Step> {
        let last = self.committed.checked_sub(1).ok_or(Error::Contract {
            component: "CachedVerifier::rescore_last",
            problem: "nothing committed".into(),
        })?;
        let token = self.last_token.ok_or(Error::Contract {
            component: "CachedVerifier::rescore_last",
            problem: "the last committed token is unknown".into(),
        })?;
        let logits = self.run(model, &[token], last)?;
        step_at(model, &logits, self.hidden.as_ref(), 0, req)
    }
}
