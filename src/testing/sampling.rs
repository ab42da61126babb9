//! Checking sampling against the model's exact distribution: enumerate every short
//! continuation's probability, sample many times, and compare by a chi-square test.

use std::collections::BTreeMap;

use crate::config::DecodeConfig;
use crate::decoder::BlockwiseDecoder;
use crate::error::{Error, Result};
use crate::model::{check_output, token_tensor, CausalLm};
use crate::sampling::{probabilities, SamplingConfig};
use crate::verifier::LogitRows;

/// The most continuations [`sequence_distribution`] will enumerate.
pub const MAX_SEQUENCES: usize = 100_000;

/// The exact probability of every continuation of `len` tokens after `prompt` under plain
/// sampling from `model` with `sampling` (no EOS), found by scoring every prefix from scratch.
/// Continuations of probability 0 (cut by top-k or top-p) are left out. Fails when there would
/// be more than [`MAX_SEQUENCES`].
pub fn sequence_distribution(
    model: &mut dyn CausalLm,
    prompt: &[i64],
    len: usize,
    sampling: &SamplingConfig,
) -> Result<BTreeMap<Vec<i64>, f64>> {
    sampling.check()?;
    let _guard = tch::no_grad_guard();
    let mut out = BTreeMap::new();
    let mut frontier = vec![(Vec::new(), 1.0f64)];
    for _ in 0..len {
        let mut next = Vec::new();
        for (prefix, prob) in frontier {
            let mut seq = prompt.to_vec();
            seq.extend_from_slice(&prefix);
            let p = next_distribution(model, &seq, sampling)?;
            for (t, &pt) in p.iter().enumerate() {
                if pt > 0.0 {
                    let mut longer = prefix.clone();
                    longer.push(t as i64);
                    next.push((longer, prob * pt));
                }
            }
            if next.len() > MAX_SEQUENCES {
                return Err(Error::config(
                    "len",
                    format!("more than {MAX_SEQUENCES} continuations to enumerate"),
                ));
            }
        }
        frontier = next;
    }
    out.extend(frontier);
    Ok(out)
}

/// The warped distribution after `seq`, scored from an empty cache.
fn next_distribution(
    model: &mut dyn CausalLm,
    seq: &[i64],
    sampling: &SamplingConfig,
) -> Result<Vec<f64>> {
    let info = model.info().clone();
    model.truncate(0)?;
    let out = model.forward(&token_tensor(seq, info.device), 0)?;
    check_output(&out, seq.len(), info.vocab_size)?;
    let rows = LogitRows::from_tensor(&out.logits, 1)?;
    probabilities(rows.row(0).unwrap_or_default(), sampling, 0)
}

/// A chi-square goodness-of-fit result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    /// The statistic, sum of (observed - expected)^2 / expected over the cells.
    pub statistic: f64,
    /// Degrees of freedom: cells - 1.
    pub df: usize,
    /// The probability of a statistic at least this large if the samples follow the expected
    /// distribution.
    pub p_value: f64,
}

/// Chi-square goodness of fit of `observed` counts against `expected` probabilities (one per
/// cell, summing to 1). Cells whose expected count is below 5 are pooled, smallest first, so
/// every cell tested expects at least 5. A count in a cell of probability 0 gives p = 0.
pub fn chi_square(observed: &[u64], expected: &[f64]) -> ChiSquare {
    let n: u64 = observed.iter().sum();
    let n = n as f64;
    let impossible = observed
        .iter()
        .zip(expected)
        .any(|(&o, &e)| o > 0 && e <= 0.0);
    if impossible {
        return ChiSquare {
            statistic: f64::INFINITY,
            df: 0,
            p_value: 0.0,
        };
    }
    let mut cells: Vec<(f64, f64)> = observed
        .iter()
        .zip(expected)
        .filter(|(_, &e)| e > 0.0)
        .map(|(&o, &e)| (o as f64, e * n))
        .collect();
    cells.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut pooled: Vec<(f64, f64)> = Vec::new();
    let mut acc = (0.0, 0.0);
    for (o, e) in cells {
        if e >= 5.0 && acc.1 == 0.0 {
            pooled.push((o, e));
            continue;
        }
        acc = (acc.0 + o, acc.1 + e);
        if acc.1 >= 5.0 {
            pooled.push(acc);
            acc = (0.0, 0.0);
        }
    }
    if acc.1 > 0.0 {
        match pooled.last_mut() {
            Some(last) => *last = (last.0 + acc.0, last.1 + acc.1),
            None => pooled.push(acc),
        }
    }
    let statistic: f64 = pooled.iter().map(|(o, e)| (o - e) * (o - e) / e).sum();
    let df = pooled.len().saturating_sub(1);
    let p_value = if df == 0 {
        1.0
    } else {
        upper_gamma_regularized(df as f64 / 2.0, statistic / 2.0)
    };
    ChiSquare {
        statistic,
        df,
        p_value,
    }
}

/// Decodes `prompt` `samples` times with `decoder` (whose generator must not be reseeded per
/// call: `config.sampling.seed` must be `None`) and tests the sequences against `exact` (from
/// [`sequence_distribution`], with `config.max_new_tokens` equal to its length).
pub fn check_sampling(
    decoder: &mut dyn BlockwiseDecoder,
    exact: &BTreeMap<Vec<i64>, f64>,
    prompt: &[i64],
    config: &DecodeConfig,
    samples: usize,
) -> Result<ChiSquare> {
    match &config.sampling {
        None => {
            return Err(Error::config(
                "sampling",
                "the check needs a sampling config",
            ))
        }
        Some(s) if s.seed.is_some() => {
            return Err(Error::config(
                "seed",
                "a per-call seed makes every sample the same; seed the decoder instead",
            ))
        }
        Some(_) => {}
    }
    let mut counts: BTreeMap<Vec<i64>, u64> = exact.keys().map(|k| (k.clone(), 0)).collect();
    let mut unexpected = 0u64;
    for _ in 0..samples {
        let out = decoder.decode(prompt, config)?;
        match counts.get_mut(&out.tokens) {
            Some(c) => *c += 1,
            None => unexpected += 1,
        }
    }
    let mut observed: Vec<u64> = counts.values().copied().collect();
    let mut expected: Vec<f64> = exact.values().copied().collect();
    observed.push(unexpected);
    expected.push(0.0);
    Ok(chi_square(&observed, &expected))
}

/// Q(a, x) = Γ(a, x) / Γ(a): the upper regularized incomplete gamma function.
fn upper_gamma_regularized(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let log_prefix = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        // P(a, x) by its series; Q = 1 - P.
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * log_prefix.exp()).clamp(0.0, 1.0)
    } else {
        // Q(a, x) by its continued fraction (modified Lentz).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (h * log_prefix.exp()).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        for (n, f) in [(1.0, 1.0f64), (2.0, 1.0), (5.0, 24.0), (11.0, 3_628_800.0)] {
            assert!((ln_gamma(n) - f.ln()).abs() < 1e-10, "{n}");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-10);
    }

    #[test]
    fn p_values_match_chi_square_tables() {
        // 5% critical values: df 1: 3.841, df 10: 18.307, df 100: 124.342; 0.1% at df 10: 29.588.
        for (df, x, p) in [
            (1.0, 3.841, 0.05),
            (10.0, 18.307, 0.05),
            (100.0, 124.342, 0.05),
            (10.0, 29.588, 0.001),
        ] {
            let q = upper_gamma_regularized(df / 2.0, x / 2.0);
            assert!((q - p).abs() < p * 0.01, "df {df}: {q} vs {p}");
        }
    }

    #[test]
    fn chi_square_tells_a_fair_die_from_a_loaded_one() {
        let expected = [1.0 / 6.0; 6];
        let fair = chi_square(&[98, 105, 101, 95, 99, 102], &expected);
        assert_eq!(fair.df, 5);
        assert!(fair.p_value > 0.5);
        let loaded = chi_square(&[160, 88, 88, 88, 88, 88], &expected);
        assert!(loaded.p_value < 0.001, "{loaded:?}");
        // A count where nothing was expected can never fit.
        assert_eq!(chi_square(&[1, 5], &[0.0, 1.0]).p_value, 0.0);
    }

    #[test]
    fn small_cells_are_pooled() {
        // 100 samples; cells expecting 1, 1, 2, 2 pool into one expecting 6.
        let expected = [0.01, 0.01, 0.02, 0.02, 0.44, 0.5];
        let r = chi_square(&[1, 1, 2, 2, 44, 50], &expected);
        assert_eq!(r.df, 2);
        assert!(r.statistic.abs() < 1e-12);
    }
}
