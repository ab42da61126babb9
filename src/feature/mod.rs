//! Feature-level drafts (EAGLE's idea, Li et al. 2024): a one-layer draft that reads the base
//! model's final hidden states of the committed tokens, predicts the next hidden state, and
//! scores it with the base model's own vocabulary projection.
//!
//! * [`FeatureDraft`] — the network (its settings, weights and optional shortlist of token ids).
//! * [`FeatureDraftProposer`] — drafts chains for the blockwise decoder, with its own cache.
//! * [`train_feature_draft`](crate::train::train_feature_draft) — trains it, unrolled over
//!   several draft steps on its own predictions.
//!
//! Exact acceptance still decides what is kept, so the output equals greedy decoding whatever
//! the draft guesses; a good draft only means fewer model calls.

mod model;
mod native;
mod proposer;
mod weights;

pub use model::{
    FeatureDraft, FeatureDraftConfig, VocabProjection, DRAFT_CONFIG_FILE, DRAFT_SHORTLIST_FILE,
    DRAFT_WEIGHTS_FILE,
};
pub(crate) use proposer::check_min_confidence;
pub use proposer::{FeatureDraftProposer, DEFAULT_TREE_WIDTH};
pub use weights::DraftWeights;
