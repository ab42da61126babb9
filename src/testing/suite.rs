//! A conformance suite users run against their own model and proposer.

use std::cell::RefCell;
use std::ops::RangeInclusive;
use std::panic::{self, AssertUnwindSafe};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use tch::Kind;

use super::checks::{
    check_cache_consistency, check_combined_calls, check_loop_invariants, check_same_output,
    invariants, ConformanceFailure,
};
use super::contract::ContractChecked;
use super::panics::{first_panic_printed, panic_message};
use crate::config::DecodeConfig;
use crate::decoder::{Blockwise, BlockwiseDecoder, GreedyDecoder};
use crate::model::{CausalLm, ModelInfo};
use crate::proposer::Proposer;
use crate::verifier::{CachedVerifier, RecomputeVerifier};

/// One generated case of the suite.
#[derive(Debug, Clone, PartialEq)]
pub struct ConformanceCase {
    /// The prompt.
    pub prompt: Vec<i64>,
    /// Block size `k`.
    pub block_size: usize,
    /// Decode settings.
    pub decode: DecodeConfig,
    /// Seed handed to the proposer factory.
    pub seed: u64,
    /// Whether the recompute verifier is used instead of the cached one.
    pub recompute: bool,
    /// Where to split the sequence for the cache check.
    pub splits: Vec<usize>,
}

/// Property-tests "blockwise output equals greedy decoding" (and the loop, call-count and cache
/// invariants) on a model and proposer of yours, over random prompts, block sizes, lengths and
/// EOS ids. Failing cases are shrunk to a small one before being reported.
#[derive(Debug, Clone)]
pub struct Conformance {
    cases: u32,
    block_sizes: RangeInclusive<usize>,
    max_new_tokens: RangeInclusive<usize>,
    max_prompt_len: usize,
    use_eos: bool,
    recompute: bool,
    cache_tolerance: Option<f64>,
    seed: u64,
}

impl Default for Conformance {
    fn default() -> Self {
        Conformance {
            cases: 64,
            block_sizes: 1..=8,
            max_new_tokens: 0..=32,
            max_prompt_len: 16,
            use_eos: true,
            recompute: false,
            cache_tolerance: None,
            seed: 0x5eed,
        }
    }
}

impl Conformance {
    /// 64 cases, block sizes 1 to 8, up to 32 new tokens, prompts up to 16 tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of random cases.
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = cases.max(1);
        self
    }

    /// Block sizes to draw from.
    pub fn block_sizes(mut self, sizes: RangeInclusive<usize>) -> Self {
        self.block_sizes = sizes;
        self
    }

    /// New-token counts to draw from.
    pub fn max_new_tokens(mut self, range: RangeInclusive<usize>) -> Self {
        self.max_new_tokens = range;
        self
    }

    /// Longest prompt to draw.
    pub fn max_prompt_len(mut self, len: usize) -> Self {
        self.max_prompt_len = len.max(1);
        self
    }

    /// Whether to draw random EOS ids (default true).
    pub fn with_eos(mut self, on: bool) -> Self {
        self.use_eos = on;
        self
    }

    /// Also run half the cases through [`RecomputeVerifier`] (a model without a cache always
    /// runs through it).
    pub fn with_recompute(mut self, on: bool) -> Self {
        self.recompute = on;
        self
    }

    /// Largest logit difference the cache check tolerates (default by the model's kind:
    /// 1e-9 float64, 1e-3 float32, 5e-2 half precision).
    pub fn cache_tolerance(mut self, tol: f64) -> Self {
        self.cache_tolerance = Some(tol);
        self
    }

    /// Seed of the case generator (the suite is deterministic).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn strategy(&self, vocab: i64, max_context: usize) -> impl Strategy<Value = ConformanceCase> {
        let max_prompt = self.max_prompt_len.min(max_context).max(1);
        let eos = if self.use_eos {
            proptest::collection::vec(0..vocab, 0..=2).boxed()
        } else {
            Just(Vec::new()).boxed()
        };
        let recompute = if self.recompute {
            any::<bool>().boxed()
        } else {
            Just(false).boxed()
        };
        (
            proptest::collection::vec(0..vocab, 1..=max_prompt),
            self.block_sizes.clone(),
            self.max_new_tokens.clone(),
            eos,
            any::<u64>(),
            recompute,
            proptest::collection::vec(1usize..64, 0..3),
        )
            .prop_map(|(prompt, block_size, n, eos, seed, recompute, splits)| {
                ConformanceCase {
                    prompt,
                    block_size,
                    decode: DecodeConfig::new(n).with_eos(eos),
                    seed,
                    recompute,
                    splits,
                }
            })
    }

    /// Runs the suite. `make_proposer(seed)` builds a fresh proposer for each case. Every case
    /// (and every shrinking step) runs on this one model, one after another, as a long-lived
    /// model in an application is used; a model that carries state from one decode into the
    /// next can make a later case fail with the wrong symptom. [`Conformance::run_fresh`] gives
    /// each case a model of its own.
    pub fn run<M, F>(&self, model: &mut M, make_proposer: F) -> Result<(), ConformanceFailure>
    where
        M: CausalLm,
        F: Fn(u64) -> Box<dyn Proposer>,
    {
        let info = model.info().clone();
        let model = RefCell::new(model);
        self.run_cases(&info, make_proposer, |case, make, tol| {
            let mut m = model.borrow_mut();
            run_case(&mut **m, case, make, tol)
        })
    }

    /// Runs the suite with a fresh model for every case and every shrinking step
    /// (`make_model()`), so that nothing one case does to a model reaches the next, and
    /// shrinking finds the smallest case that fails on its own.
    pub fn run_fresh<M, G, F>(
        &self,
        make_model: G,
        make_proposer: F,
    ) -> Result<(), ConformanceFailure>
    where
        M: CausalLm,
        G: Fn() -> M,
        F: Fn(u64) -> Box<dyn Proposer>,
    {
        let info = make_model().info().clone();
        self.run_cases(&info, make_proposer, |case, make, tol| {
            run_case(&mut make_model(), case, make, tol)
        })
    }

    fn run_cases<F, R>(
        &self,
        info: &ModelInfo,
        make_proposer: F,
        run: R,
    ) -> Result<(), ConformanceFailure>
    where
        F: Fn(u64) -> Box<dyn Proposer>,
        R: Fn(&ConformanceCase, &F, f64) -> Result<(), ConformanceFailure>,
    {
        let tol = self.tolerance(info.kind);
        let strategy = self.strategy(info.vocab_size, info.max_context);
        let mut config = Config::with_cases(self.cases);
        config.failure_persistence = None;
        let mut runner = TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &seed_bytes(self.seed),
            ),
        );
        // The invariant and detail of the latest failure: proptest reports the smallest failing
        // case last, and keeps only its message.
        let last: RefCell<Option<ConformanceFailure>> = RefCell::new(None);
        // A panicking model would print its panic once per case and shrinking step: the first
        // is printed, the rest counted.
        let (result, panics) = first_panic_printed(|| {
            runner.run(&strategy, |case| {
                let outcome =
                    panic::catch_unwind(AssertUnwindSafe(|| run(&case, &make_proposer, tol)))
                        .unwrap_or_else(|payload| {
                            Err(ConformanceFailure {
                                invariant: invariants::DECODE,
                                detail: format!("the model panicked: {}", panic_message(&*payload)),
                                case: None,
                            })
                        });
                outcome.map_err(|f| {
                    let text = f.to_string();
                    *last.borrow_mut() = Some(f);
                    TestCaseError::fail(text)
                })
            })
        });
        let panicked = match panics {
            0 => String::new(),
            1 => " (the model panicked once; that panic was printed)".to_string(),
            n => format!(" (the model panicked in {n} runs; only the first panic was printed)"),
        };
        match result {
            Ok(()) => Ok(()),
            Err(TestError::Fail(reason, case)) => {
                let (invariant, detail) = match last.into_inner() {
                    Some(f) => (f.invariant, f.detail),
                    None => (invariants::DECODE, reason.to_string()),
                };
                Err(ConformanceFailure {
                    invariant,
                    detail: format!("{detail}; smallest failing case: {case:?}{panicked}"),
                    case: Some(case),
                })
            }
            Err(TestError::Abort(reason)) => Err(ConformanceFailure {
                invariant: invariants::DECODE,
                detail: format!("aborted: {reason}"),
                case: None,
            }),
        }
    }

    /// Checks one case (for example the smallest failing case a [`Conformance::run`] reported,
    /// rebuilt from its printout) on `model`, with the tolerance `run` would use.
    pub fn check_case<M, F>(
        &self,
        model: &mut M,
        case: &ConformanceCase,
        make_proposer: F,
    ) -> Result<(), ConformanceFailure>
    where
        M: CausalLm,
        F: Fn(u64) -> Box<dyn Proposer>,
    {
        let tol = self.tolerance(model.info().kind);
        run_case(model, case, &make_proposer, tol)
    }

    fn tolerance(&self, kind: Kind) -> f64 {
        self.cache_tolerance.unwrap_or(match kind {
            Kind::Double => 1e-9,
            Kind::Float => 1e-3,
            _ => 5e-2,
        })
    }
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed.wrapping_add(i as u64)).to_le_bytes());
    }
    bytes
}

fn run_case<M: CausalLm + ?Sized, F: Fn(u64) -> Box<dyn Proposer>>(
    model: &mut M,
    case: &ConformanceCase,
    make_proposer: &F,
    tol: f64,
) -> Result<(), ConformanceFailure> {
    let mut checked = ContractChecked::new(model);
    let result = run_checked(&mut checked, case, make_proposer, tol);
    // A broken promise explains the symptoms that follow from it: report it first.
    match checked.take() {
        Some(broken) => Err(broken),
        None => result,
    }
}

fn run_checked<M: CausalLm, F: Fn(u64) -> Box<dyn Proposer>>(
    model: &mut M,
    case: &ConformanceCase,
    make_proposer: &F,
    tol: f64,
) -> Result<(), ConformanceFailure> {
    let decode_error = |what: &str, e: crate::Error| ConformanceFailure {
        invariant: invariants::DECODE,
        detail: format!("{what} failed: {e}"),
        case: None,
    };
    let greedy = GreedyDecoder::new(&mut *model)
        .decode(&case.prompt, &case.decode)
        .map_err(|e| decode_error("greedy decode", e))?;
    let proposer = make_proposer(case.seed);
    let has_cache = model.info().has_cache;
    let heads = proposer.needs_heads();
    let builder = Blockwise::builder(&mut *model)
        .block_size(case.block_size)
        .proposer(proposer);
    let builder = if case.recompute || !has_cache {
        builder.verifier(RecomputeVerifier::new())
    } else {
        builder.verifier(CachedVerifier::new())
    };
    let blockwise = builder
        .build()
        .and_then(|mut d| d.decode(&case.prompt, &case.decode))
        .map_err(|e| decode_error("blockwise decode", e))?;
    check_same_output(&greedy, &blockwise)?;
    check_loop_invariants(&blockwise, &case.decode, case.block_size)?;
    if heads {
        check_combined_calls(&blockwise)?;
    }
    // The same greedy decode again, after a blockwise decode used the model.
    let again = GreedyDecoder::new(&mut *model)
        .decode(&case.prompt, &case.decode)
        .map_err(|e| decode_error("the second greedy decode", e))?;
    if again.tokens != greedy.tokens || again.stop != greedy.stop {
        return Err(ConformanceFailure {
            invariant: invariants::REPEATABLE,
            detail: format!(
                "greedy gave {:?} ({:?}) the first time and {:?} ({:?}) the second",
                greedy.tokens, greedy.stop, again.tokens, again.stop
            ),
            case: None,
        });
    }
    let mut seq = case.prompt.clone();
    seq.extend_from_slice(&greedy.tokens);
    let junk: Vec<i64> = seq.iter().rev().take(3).copied().collect();
    check_cache_consistency(&mut *model, &seq, &case.splits, &junk, tol).map_err(|e| {
        ConformanceFailure {
            invariant: invariants::CACHE,
            detail: format!("the cache check's model calls failed: {e}"),
            case: None,
        }
    })??;
    Ok(())
}
