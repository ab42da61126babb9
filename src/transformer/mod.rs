//! The built-in transformer (`tch::nn`): configuration, layers, proposal heads and I/O.

mod config;
pub(crate) mod layers;
mod model;

pub use config::TransformerConfig;
pub use model::{Transformer, CONFIG_FILE, WEIGHTS_FILE};
