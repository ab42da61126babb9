//! Training the built-in transformer: an AdamW optimiser whose state is plain tensors,
//! learning-rate schedules with warm-up, gradient-norm clipping, weight decay, and a
//! next-token language-model trainer over a token corpus.
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

mod adamw;
mod lm;
mod schedule;

pub use adamw::{AdamW, OptimConfig};
pub use lm::{evaluate_lm, train_lm, LmTrainConfig, StepLog, TrainReport};
pub use schedule::{Decay, LrSchedule};
