//! Training: an AdamW optimiser whose state is plain tensors, learning-rate schedules with
//! warm-up, gradient-norm clipping, weight decay, a next-token language-model trainer for the
//! built-in transformer, and the proposal-heads trainer ([`train_heads`]) under Stern et al.'s
//! regimes (frozen or fine-tuned base, corpus or [`distill`]ed data), with checkpoints that
//! resume ([`checkpoint`]) and a [`ProgressBar`].
//!
//! ```no_run
//! use blockwise::train::{train_lm, LmTrainConfig};
//! use blockwise::{Transformer, TransformerConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let text: Vec<i64> = std::fs::read("corpus.txt")?.into_iter().map(i64::from).collect();
//! let mut model = Transformer::new_seeded(TransformerConfig::tiny(257, 0), 1, tch::Device::Cpu)?;
//! let report = train_lm(&mut model, &text, &LmTrainConfig::default(), |log| {
//!     eprintln!("step {} loss {:.3}", log.step, log.loss)
//! })?;
//! println!("final loss {:.3}", report.final_loss);
//! # Ok(()) }
//! ```
//!
//! Heads on a frozen model, validated by the mean accepted block size:
//!
//! ```no_run
//! use blockwise::train::{train_heads, HeadsTrainConfig, ProgressBar, Validation};
//! use blockwise::{Transformer, TransformerConfig};
//! # fn main() -> blockwise::Result<()> {
//! let mut model = Transformer::new_seeded(TransformerConfig::tiny(64, 3), 1, tch::Device::Cpu)?;
//! model.reset_heads(7)?;
//! let data: Vec<Vec<i64>> = vec![(0..200).map(|i| i % 64).collect()];
//! let validation = Validation {
//!     prompts: vec![vec![1, 2, 3]],
//!     block_size: 4,
//!     max_new_tokens: 32,
//!     eos: vec![],
//! };
//! let mut bar = ProgressBar::new("heads");
//! let report = train_heads(&mut model, &data, Some(&validation), &HeadsTrainConfig::default(),
//!     None, |l| bar.update(l.step, l.steps, l.loss, l.elapsed_s, ""))?;
//! println!("mean accepted block size {:.2}", report.mean_accepted.unwrap());
//! # Ok(()) }
//! ```

mod adamw;
pub mod checkpoint;
mod distill;
mod draft_data;
mod feature_draft;
mod heads;
mod heads_states;
mod lm;
mod progress;
mod schedule;
mod trainee;

pub use adamw::{AdamW, OptimConfig};
pub use distill::distill;
pub use draft_data::DraftData;
pub use feature_draft::{
    evaluate_feature_draft, evaluate_feature_draft_on_answers, train_feature_draft, DraftLog,
    DraftReport, DraftTrainConfig, Products,
};
pub use heads::{
    mean_accepted_with_heads, train_heads, HeadLoss, HeadsLog, HeadsReport, HeadsTrainConfig,
    Regime, Validation,
};
pub use heads_states::train_heads_on_states;
pub use lm::{evaluate_lm, train_lm, LmTrainConfig, StepLog, TrainReport};
pub use progress::{clock, render, ProgressBar};
pub use schedule::{Decay, LrSchedule};
pub use trainee::HeadsTrainee;
