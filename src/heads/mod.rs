//! Proposal heads: the two architectures (Stern et al.'s shared layer, Medusa's ResBlocks),
//! and [`WithHeads`], which attaches trained heads to any model that exposes its final hidden
//! states and tied token embeddings. [`crate::train`] trains them.

mod attach;
mod layers;

pub use attach::{HeadsConfig, WithHeads, HEADS_CONFIG_FILE, HEADS_WEIGHTS_FILE, SHORTLIST_FILE};
pub use layers::{Dropout, HeadArch, ProposalHeads};
