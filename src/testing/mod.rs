//! Conformance checks and proptest strategies (cargo feature `testing`).
//!
//! The crate's own property tests are built from these, and so can yours: run
//! [`Conformance`] against your own [`CausalLm`](crate::CausalLm) and [`Proposer`](crate::Proposer) to check that blockwise output
//! equals greedy decoding of your model.
//!
//! ```no_run
//! use blockwise::testing::{Conformance, RandomProposer};
//! use blockwise::{Transformer, TransformerConfig};
//!
//! let mut model = Transformer::new_seeded(TransformerConfig::tiny(32, 7), 3, tch::Device::Cpu)
//!     .unwrap();
//! Conformance::new()
//!     .cases(64)
//!     .run(&mut model, |seed| Box::new(RandomProposer::new(32, seed)))
//!     .unwrap();
//! ```

mod checks;
mod contract;
mod masked;
mod panics;
mod proposers;
mod sampling;
pub mod strategies;
mod suite;

pub use checks::{
    check_cache_consistency, check_combined_calls, check_loop_invariants, check_same_output,
    invariants, ConformanceFailure,
};
pub use masked::check_compaction;
pub use proposers::{OracleProposer, RandomProposer};
pub use sampling::{check_sampling, chi_square, sequence_distribution, ChiSquare, MAX_SEQUENCES};
pub use suite::{Conformance, ConformanceCase};
