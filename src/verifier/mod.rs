//! Verifiers: run the base model over a block and hand back what acceptance needs, as host data.
//!
//! A verifier owns the cache transaction: [`Verifier::verify`] appends a block tentatively,
//! [`Verifier::commit`] keeps its first tokens and rolls the rest back.

mod cached;
mod recompute;
mod scores;

pub use cached::CachedVerifier;
pub use recompute::RecomputeVerifier;
pub use scores::{
    head_outputs, heads_at, rank_rows, top2_margins, BlockScores, HeadOutputs, LogitRows,
    ScoreRequest, Step,
};
pub(crate) use scores::{host_argmax, ranked_candidates};

use crate::error::Result;
use crate::model::CausalLm;

/// Scores blocks with the base model.
pub trait Verifier {
    /// Starts a new sequence: scores the prompt and returns the step at its last position.
    fn start(
        &mut self,
        model: &mut dyn CausalLm,
        prompt: &[i64],
        req: ScoreRequest,
    ) -> Result<Step>;

    /// Scores `block` appended after everything committed; one base-model call.
    fn verify(
        &mut self,
        model: &mut dyn CausalLm,
        block: &[i64],
        req: ScoreRequest,
    ) -> Result<BlockScores>;

    /// Keeps the first `keep` tokens of the last verified block and forgets the rest. Returns
    /// the proposal heads' outputs at the last kept position when `req.heads` is set (see
    /// [`head_outputs`]).
    fn commit(
        &mut self,
        model: &mut dyn CausalLm,
        keep: usize,
        req: ScoreRequest,
    ) -> Result<Option<HeadOutputs>>;

    /// The base model's final hidden states `[n, D]` of the tokens the last
    /// [`Verifier::start`] (the whole prompt) or [`Verifier::commit`] (the kept tokens)
    /// committed, when [`ScoreRequest::hidden`] asked for them and the model returns hidden
    /// states. The default has none.
    fn committed_hidden(&self) -> Option<tch::Tensor> {
        None
    }

    /// Scores the last committed token again with a one-token call (as greedy decoding would),
    /// and returns the step after it. The tie guard uses it where a block's scores are too close
    /// to call. One base-model call.
    fn rescore_last(&mut self, model: &mut dyn CausalLm, req: ScoreRequest) -> Result<Step> {
        let _ = (model, req);
        Err(crate::Error::MissingCapability {
            component: "the tie guard",
            capability: "a verifier that can rescore its last token",
        })
    }
}

impl<V: Verifier + ?Sized> Verifier for Box<V> {
    fn start(
        &mut self,
        model: &mut dyn CausalLm,
        prompt: &[i64],
        req: ScoreRequest,
    ) -> Result<Step> {
        (**self).start(model, prompt, req)
    }
    fn verify(
        &mut self,
        model: &mut dyn CausalLm,
        block: &[i64],
        req: ScoreRequest,
    ) -> Result<BlockScores> {
        (**self).verify(model, block, req)
    }
    fn commit(
        &mut self,
        model: &mut dyn CausalLm,
        keep: usize,
        req: ScoreRequest,
    ) -> Result<Option<HeadOutputs>> {
        (**self).commit(model, keep, req)
    }
    fn rescore_last(&mut self, model: &mut dyn CausalLm, req: ScoreRequest) -> Result<Step> {
        (**self).rescore_last(model, req)
    }
    fn committed_hidden(&self) -> Option<tch::Tensor> {
        (**self).committed_hidden()
    }
}
