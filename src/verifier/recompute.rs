//! A verifier for models without a KV cache: every call runs the whole sequence.

use tch::Tensor;

use super::scores::{
    block_scores, head_outputs, step_at, BlockScores, HeadOutputs, ScoreRequest, Step,
};
use super::Verifier;
use crate::error::{Error, Result};
use crate::model::{check_output, token_tensor, CausalLm};

/// Verifies each block by recomputing the whole sequence from position 0. Works with any
/// [`CausalLm`], cached or not; costs grow with the sequence length.
#[derive(Debug, Default)]
pub struct RecomputeVerifier {
    tokens: Vec<i64>,
    pending: Vec<i64>,
    hidden: Option<Tensor>,
    /// Hidden states of what the last start or commit committed (when requested).
    committed_hidden: Option<Tensor>,
}

impl RecomputeVerifier {
    /// A verifier with nothing committed.
    pub fn new() -> Self {
        Self::default()
    }

    fn run(&mut self, model: &mut dyn CausalLm, tokens: &[i64]) -> Result<Tensor> {
        let out = model.forward(&token_tensor(tokens, model.info().device), 0)?;
        check_output(&out, tokens.len(), model.info().vocab_size)?;
        self.hidden = out.hidden;
        Ok(out.logits)
    }

    /// Rows `start..start + n` of the last call's hidden states, when `req` asks for them.
    fn rows(&self, start: usize, n: usize, req: ScoreRequest) -> Result<Option<Tensor>> {
        match (&self.hidden, req.hidden) {
            (Some(h), true) => Ok(Some(h.f_select(0, 0)?.f_narrow(
                0,
                start as i64,
                n as i64,
            )?)),
            _ => Ok(None),
        }
    }
}

impl Verifier for RecomputeVerifier {
    fn start(
        &mut self,
        model: &mut dyn CausalLm,
        prompt: &[i64],
        req: ScoreRequest,
    ) -> Result<Step> {
        self.tokens = prompt.to_vec();
        self.pending.clear();
        let logits = self.run(model, prompt)?;
        self.committed_hidden = self.rows(0, prompt.len(), req)?;
        step_at(model, &logits, self.hidden.as_ref(), prompt.len() - 1, req)
    }

    fn verify(
        &mut self,
        model: &mut dyn CausalLm,
        block: &[i64],
        req: ScoreRequest,
    ) -> Result<BlockScores> {
        let mut all = self.tokens.clone();
        all.extend_from_slice(block);
        let logits = self.run(model, &all)?;
        self.pending = block.to_vec();
        block_scores(&logits, block.len(), req)
    }

    fn commit(
        &mut self,
        model: &mut dyn CausalLm,
        keep: usize,
        req: ScoreRequest,
    ) -> Result<Option<HeadOutputs>> {
        if keep == 0 || keep > self.pending.len() {
            return Err(Error::Contract {
                component: "RecomputeVerifier::commit",
                problem: format!("keep {keep} of a block of {}", self.pending.len()),
            });
        }
        let row = self.tokens.len() + keep - 1;
        self.committed_hidden = self.rows(self.tokens.len(), keep, req)?;
        self.tokens.extend_from_slice(&self.pending[..keep]);
        self.pending.clear();
        head_outputs(model, self.hidden.as_ref(), row, req)
    }

    fn committed_hidden(&self) -> Option<Tensor> {
        self.committed_hidden.as_ref().map(|h| h.shallow_clone())
    }

    fn rescore_last(&mut self, model: &mut dyn CausalLm, req: ScoreRequest) -> Result<Step> {
        // Recomputing is already a pass over the whole sequence with the last token last.
        let tokens = self.tokens.clone();
        let logits = self.run(model, &tokens)?;
        step_at(model, &logits, self.hidden.as_ref(), tokens.len() - 1, req)
    }
}
