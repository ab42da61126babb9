//! The blockwise loop's sampling steps: drawing the first token, and judging a verified block.

use crate::acceptance::{AcceptanceCriterion, Draw, LazyTargets, SampledView};
use crate::error::{Error, Result};
use crate::proposer::Proposal;
use crate::rng::SeededRng;
use crate::sampling::{draw, probabilities, residual, SamplingConfig};
use crate::verifier::{BlockScores, LogitRows, Step};

/// The block's first token after the prompt: the argmax, or a draw from the base model's
/// warped distribution under sampling.
pub(crate) fn pick_first(
    step: &Step,
    sampling: Option<&SamplingConfig>,
    rng: &mut SeededRng,
) -> Result<i64> {
    let Some(s) = sampling else {
        return Ok(step.next);
    };
    let rows = step.logits.as_ref().ok_or_else(missing_logits)?;
    let p = probabilities(row(rows, 0)?, s, 0)?;
    Ok(draw(&p, rng.uniform()))
}

/// Judges a verified block under sampling: the base model's warped distribution at every block
/// position, one uniform per proposal, the criterion's verdict, then the token after the
/// accepted proposals drawn from where the verdict says. Returns (accepted, drawn token).
pub(crate) fn judge_sampled(
    criterion: &dyn AcceptanceCriterion,
    sampling: &SamplingConfig,
    rng: &mut SeededRng,
    proposal: &Proposal,
    scores: &BlockScores,
) -> Result<(usize, i64)> {
    let rows = scores.logits().ok_or_else(missing_logits)?;
    let m = proposal.len();
    // Every block position has its row, warped as the criterion reads it: after a rejection
    // the later rows are not needed.
    row(rows, m)?;
    let target = LazyTargets::new(rows, sampling, m + 1)?;
    let uniforms: Vec<f64> = (0..m).map(|_| rng.uniform()).collect();
    let view = SampledView::lazy(
        &proposal.tokens,
        &target,
        proposal.probs.as_deref(),
        &uniforms,
    )?;
    let verdict = criterion.accept_sampled(&view);
    let a = verdict.accepted;
    if a > m {
        return Err(Error::Contract {
            component: "acceptance criterion",
            problem: format!("accepted {a} of {m} proposed tokens"),
        });
    }
    let token = match verdict.next {
        Draw::Residual if a < m => {
            let r = residual(view.target(a), view.draft(a), proposal.tokens[a]);
            draw(&r, rng.uniform())
        }
        _ => draw(view.target(a), rng.uniform()),
    };
    Ok((a, token))
}

fn row(rows: &LogitRows, i: usize) -> Result<&[f32]> {
    rows.row(i).ok_or_else(|| Error::Contract {
        component: "verifier",
        problem: format!("returned {} logit rows; row {i} is needed", rows.rows()),
    })
}

fn missing_logits() -> Error {
    Error::Contract {
        component: "verifier",
        problem: "did not return the logits that sampling asked for (ScoreRequest::logits)".into(),
    }
}
