//! The invariants (docs/invariants.md) as plain functions returning a described failure.

use tch::{Kind, Tensor};

use crate::config::DecodeConfig;
use crate::decoder::DecodeOutput;
use crate::error::Result;
use crate::model::{token_tensor, CausalLm};
use crate::stats::StopReason;

/// An invariant that did not hold, with what was seen.
#[derive(Debug, Clone, PartialEq)]
pub struct ConformanceFailure {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
    /// The smallest failing case, when the failure comes from [`Conformance::run`]
    /// (re-run it with [`Conformance::check_case`]).
    ///
    /// [`Conformance::run`]: super::Conformance::run
    /// [`Conformance::check_case`]: super::Conformance::check_case
    pub case: Option<super::ConformanceCase>,
}

impl std::fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

impl std::error::Error for ConformanceFailure {}

/// The names a [`ConformanceFailure`] carries in `invariant`, to match on.
pub mod invariants {
    /// Blockwise output (tokens and stop reason) equals greedy decoding's (invariant 1).
    pub const SAME_OUTPUT: &str = "output equals the reference";
    /// Accepted lengths, token counts, `max_new_tokens` and EOS are consistent (invariant 2).
    pub const LOOP: &str = "loop invariants";
    /// On the heads path, model calls == iterations + 1, less a last block that needed no call
    /// (invariant 3).
    pub const COMBINED_CALLS: &str = "combined path: model calls + skipped calls == iterations + 1";
    /// Block-by-block logits against the cache equal one uncached pass (invariant 4).
    pub const CACHE: &str = "cache: cached logits == uncached logits";
    /// After `truncate(n)`, the model's cache holds `n` tokens (part of invariant 4).
    pub const TRUNCATE: &str = "cache: truncate(n) then re-append == never appended";
    /// Every `forward(tokens, start)` leaves `cached_len() == start + T` (cached models), and
    /// logits are of `info().kind`.
    pub const CONTRACT: &str = "the CausalLm contract: cached_len and logits kind";
    /// A second decode of the same case on the same model equals the first (no state leaks
    /// from one decode into the next).
    pub const REPEATABLE: &str = "a second decode on the same model equals the first";
    /// A decoder or the model returned an error where the case is valid input.
    pub const DECODE: &str = "decoding a valid case returns no error";
    /// A query scored over scattered kept slots by mask scores the same after
    /// `MaskedLm::compact` moved them to the front ([`check_compaction`](super::check_compaction)).
    pub const COMPACTION: &str =
        "MaskedLm::compact: a query scores the same over its kept slots compacted";
}

fn fail(invariant: &'static str, detail: String) -> std::result::Result<(), ConformanceFailure> {
    Err(ConformanceFailure {
        invariant,
        detail,
        case: None,
    })
}

/// Invariant 1 (and 5): `candidate` emitted exactly the tokens of `reference`, and stopped for
/// the same reason.
pub fn check_same_output(
    reference: &DecodeOutput,
    candidate: &DecodeOutput,
) -> std::result::Result<(), ConformanceFailure> {
    if reference.tokens != candidate.tokens {
        let at = reference
            .tokens
            .iter()
            .zip(&candidate.tokens)
            .position(|(a, b)| a != b)
            .unwrap_or(reference.tokens.len().min(candidate.tokens.len()));
        return fail(
            invariants::SAME_OUTPUT,
            format!(
                "first difference at new token {at}: reference {:?}, candidate {:?}",
                reference.tokens, candidate.tokens
            ),
        );
    }
    if reference.stop != candidate.stop {
        return fail(
            invariants::SAME_OUTPUT,
            format!(
                "same tokens, but stopped for {:?} instead of {:?}",
                candidate.stop, reference.stop
            ),
        );
    }
    Ok(())
}

/// Invariant 2: every iteration emits at least one and at most `block_size` tokens; emitted
/// tokens equal the sum of accepted lengths; never more than `max_new_tokens`; nothing after
/// EOS; the stop reason fits the output.
pub fn check_loop_invariants(
    out: &DecodeOutput,
    config: &DecodeConfig,
    block_size: usize,
) -> std::result::Result<(), ConformanceFailure> {
    let inv = invariants::LOOP;
    let s = &out.stats;
    if s.accepted_hist.first().copied().unwrap_or(0) != 0 {
        return fail(
            inv,
            format!("an iteration accepted 0 tokens: {:?}", s.accepted_hist),
        );
    }
    if s.accepted_hist.iter().skip(block_size + 1).any(|&c| c > 0) {
        return fail(
            inv,
            format!(
                "an iteration accepted more than k = {block_size}: {:?}",
                s.accepted_hist
            ),
        );
    }
    let summed: usize = s.accepted_hist.iter().enumerate().map(|(n, c)| n * c).sum();
    let iterations: usize = s.accepted_hist.iter().sum();
    if summed != out.tokens.len() || s.new_tokens != out.tokens.len() {
        return fail(
            inv,
            format!(
                "emitted {} tokens, accepted lengths sum to {summed}, stats say {}",
                out.tokens.len(),
                s.new_tokens
            ),
        );
    }
    if iterations != s.iterations {
        return fail(
            inv,
            format!(
                "histogram counts {iterations} iterations, stats say {}",
                s.iterations
            ),
        );
    }
    if out.tokens.len() > config.max_new_tokens {
        return fail(
            inv,
            format!(
                "emitted {} tokens, max_new_tokens is {}",
                out.tokens.len(),
                config.max_new_tokens
            ),
        );
    }
    if let Some(p) = out.tokens.iter().position(|&t| config.is_eos(t)) {
        if p + 1 != out.tokens.len() {
            return fail(inv, format!("tokens after EOS at {p}: {:?}", out.tokens));
        }
        if out.stop != StopReason::Eos {
            return fail(inv, format!("emitted EOS but stopped for {:?}", out.stop));
        }
    } else if out.stop == StopReason::Eos {
        return fail(inv, "stopped for EOS without emitting one".into());
    }
    if out.stop == StopReason::MaxNewTokens && out.tokens.len() != config.max_new_tokens {
        return fail(
            inv,
            format!(
                "stopped for max_new_tokens after {} of {}",
                out.tokens.len(),
                config.max_new_tokens
            ),
        );
    }
    Ok(())
}

/// Invariant 3: on the combined heads path, model calls equal iterations plus the prompt pass
/// (plus the tie guard's one-token calls, when it is on), less a last block that held only the
/// token the previous call chose ([`DecodeStats::skipped_calls`](crate::DecodeStats)).
pub fn check_combined_calls(out: &DecodeOutput) -> std::result::Result<(), ConformanceFailure> {
    let s = &out.stats;
    let expected = if s.iterations == 0 {
        0
    } else {
        (s.iterations + 1 + s.rescored).saturating_sub(s.skipped_calls)
    };
    if s.model_calls != expected {
        return fail(
            invariants::COMBINED_CALLS,
            format!(
                "{} model calls for {} iterations ({} without a call)",
                s.model_calls, s.iterations, s.skipped_calls
            ),
        );
    }
    Ok(())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(a.f_to_kind(Kind::Double)?
        .f_sub(&b.f_to_kind(Kind::Double)?)?
        .f_abs()?
        .f_max()?
        .f_double_value(&[])?)
}

/// Invariant 4 on a cached model: logits computed block by block against the cache (split at
/// `splits`) equal one pass over the whole sequence; and truncating after a junk block, then
/// appending the real tokens, equals never having appended the junk. `tol` bounds the largest
/// absolute logit difference (use ~1e-9 in float64).
pub fn check_cache_consistency(
    model: &mut dyn CausalLm,
    tokens: &[i64],
    splits: &[usize],
    junk: &[i64],
    tol: f64,
) -> Result<std::result::Result<(), ConformanceFailure>> {
    let _guard = tch::no_grad_guard();
    let inv = invariants::CACHE;
    let device = model.info().device;
    let full = model.forward(&token_tensor(tokens, device), 0)?.logits;
    if !model.info().has_cache {
        return Ok(Ok(()));
    }
    let mut cuts: Vec<usize> = splits
        .iter()
        .copied()
        .filter(|&s| s > 0 && s < tokens.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(tokens.len());
    let mut pieces = Vec::new();
    for w in bounds.windows(2) {
        if w[0] > 0 && !junk.is_empty() && w[0] + junk.len() <= model.info().max_context {
            // Append junk, roll it back, then append the real block.
            model.forward(&token_tensor(junk, device), w[0])?;
            model.truncate(w[0])?;
            if model.cached_len() != w[0] {
                return Ok(fail(
                    invariants::TRUNCATE,
                    format!("cached_len {} after truncate({})", model.cached_len(), w[0]),
                ));
            }
        }
        pieces.push(
            model
                .forward(&token_tensor(&tokens[w[0]..w[1]], device), w[0])?
                .logits,
        );
    }
    let chunked = Tensor::f_cat(&pieces, 1)?;
    let diff = max_abs_diff(&full, &chunked)?;
    if diff.is_nan() || diff > tol {
        return Ok(fail(
            inv,
            format!("largest logit difference {diff:e} > {tol:e} at splits {bounds:?}"),
        ));
    }
    Ok(Ok(()))
}
