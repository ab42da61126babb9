//! Warping logits into a sampling distribution, and drawing from it.

use super::SamplingConfig;
use crate::error::{Error, Result};

/// The distribution a decoder samples from after `logits` (one row over the vocabulary):
/// softmax at `config.temperature`, cut to top-k, then to top-p, renormalised. In float64.
///
/// `-inf` logits get probability 0; NaN, `+inf` or a row without a finite logit is
/// [`Error::NonFiniteLogits`] at `position`.
pub fn probabilities(logits: &[f32], config: &SamplingConfig, position: usize) -> Result<Vec<f64>> {
    let max = finite_max(logits, position)?;
    let t = config.temperature;
    let mut probs: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / t).exp())
        .collect();
    if let Some(k) = config.top_k {
        if k < probs.len() {
            // Keep everything at least as likely as the k-th most likely token (ties kept).
            let mut sorted = probs.clone();
            let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let cut = *kth;
            probs
                .iter_mut()
                .filter(|p| **p < cut)
                .for_each(|p| *p = 0.0);
        }
    }
    normalise(&mut probs);
    if let Some(top_p) = config.top_p {
        if top_p < 1.0 {
            nucleus(&mut probs, top_p);
            normalise(&mut probs);
        }
    }
    Ok(probs)
}

/// The largest of `logits`: what [`probabilities`] refuses (NaN, `+inf`, no finite logit) is
/// [`Error::NonFiniteLogits`] at `position`.
pub(crate) fn finite_max(logits: &[f32], position: usize) -> Result<f64> {
    let bad = Error::NonFiniteLogits {
        position,
        sequence_position: None,
    };
    let mut max = f64::NEG_INFINITY;
    for &l in logits {
        if l.is_nan() || l == f32::INFINITY {
            return Err(bad);
        }
        max = max.max(l as f64);
    }
    if !max.is_finite() {
        return Err(bad);
    }
    Ok(max)
}

fn normalise(probs: &mut [f64]) {
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
}

/// Zeroes everything outside the smallest set of most likely tokens whose mass reaches `top_p`
/// (ties broken by lower id). Sorts only the tokens that can be in that set.
fn nucleus(probs: &mut [f64], top_p: f64) {
    // Any set {p >= t} whose mass already reaches top_p contains the nucleus.
    let mut t = 1e-4;
    let mut candidates: Vec<usize> = loop {
        let set: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] >= t).collect();
        let mass: f64 = set.iter().map(|&i| probs[i]).sum();
        if mass >= top_p || t == 0.0 {
            break set;
        }
        t = if t < 1e-12 { 0.0 } else { t * 1e-3 };
    };
    candidates.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut keep = vec![false; probs.len()];
    let mut mass = 0.0;
    for &i in &candidates {
        keep[i] = true;
        mass += probs[i];
        if mass >= top_p {
            break;
        }
    }
    for (p, k) in probs.iter_mut().zip(keep) {
        if !k {
            *p = 0.0;
        }
    }
}

/// Draws from `probs` (which need not sum to exactly 1) with the uniform `u` in `[0, 1)`, by
/// the inverse CDF: the first token whose cumulative mass exceeds `u` times the total.
pub fn draw(probs: &[f64], u: f64) -> i64 {
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = i;
            if acc > target {
                return i as i64;
            }
        }
    }
    last as i64 // rounding left `target` at the very top
}

/// What speculative sampling draws from after rejecting `proposed`: `max(0, p - q)`,
/// normalised, where `q` is the proposer's distribution (`None`: a point mass on `proposed`,
/// so the residual is `p` without `proposed`). Falls back to `p` where nothing is left.
pub fn residual(p: &[f64], q: Option<&[f64]>, proposed: i64) -> Vec<f64> {
    let mut r: Vec<f64> = match q {
        Some(q) => p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect(),
        None => {
            let mut r = p.to_vec();
            if let Some(x) = r.get_mut(proposed as usize) {
                *x = 0.0;
            }
            r
        }
    };
    let total: f64 = r.iter().sum();
    if total > 0.0 {
        r.iter_mut().for_each(|x| *x /= total);
        r
    } else {
        p.to_vec()
    }
}

/// Shannon entropy in nats.
pub fn entropy(probs: &[f64]) -> f64 {
    -probs
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| p * p.ln())
        .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-7)
    }

    #[test]
    fn temperature_scales_the_softmax() {
        let l = [0.0f32, 1.0f32.ln(), 2.0f32.ln(), 5.0f32.ln()]; // weights 1:1:2:5
        let p = probabilities(&l, &SamplingConfig::new(1.0), 0).unwrap();
        assert!(close(&p, &[1.0 / 9.0, 1.0 / 9.0, 2.0 / 9.0, 5.0 / 9.0]));
        // Temperature 0.5 squares the weights: 1:1:4:25.
        let p = probabilities(&l, &SamplingConfig::new(0.5), 0).unwrap();
        let w = [1.0, 1.0, 4.0, 25.0];
        let expected: Vec<f64> = w.iter().map(|x| x / 31.0).collect();
        assert!(p.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn top_k_keeps_ties_at_the_cut() {
        let l = [3.0f32, 1.0, 2.0, 2.0, 0.0];
        let p = probabilities(&l, &SamplingConfig::new(1.0).with_top_k(2), 0).unwrap();
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 3);
        assert_eq!((p[1], p[4]), (0.0, 0.0));
        let p = probabilities(&l, &SamplingConfig::new(1.0).with_top_k(1), 0).unwrap();
        assert_eq!(p, vec![1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_that_reaches_it() {
        let w = [0.5f64, 0.3, 0.15, 0.05];
        let l: Vec<f32> = w.iter().map(|x| x.ln() as f32).collect();
        let nonzero = |p: f64| {
            let q = probabilities(&l, &SamplingConfig::new(1.0).with_top_p(p), 0).unwrap();
            q.iter().filter(|&&x| x > 0.0).count()
        };
        assert_eq!(nonzero(0.5), 1);
        assert_eq!(nonzero(0.6), 2);
        assert_eq!(nonzero(0.8), 2);
        assert_eq!(nonzero(0.81), 3);
        assert_eq!(nonzero(1.0), 4);
        let q = probabilities(&l, &SamplingConfig::new(1.0).with_top_p(0.7), 0).unwrap();
        assert!(close(&q, &[0.625, 0.375, 0.0, 0.0]));
    }

    #[test]
    fn top_p_over_a_long_flat_tail() {
        // Mass spread so thin that the first thresholds hold too little of it.
        let mut l = vec![0.0f32; 50_000];
        l[7] = 3.0;
        let q = probabilities(&l, &SamplingConfig::new(1.0).with_top_p(0.9), 0).unwrap();
        let kept = q.iter().filter(|&&x| x > 0.0).count();
        let p7 = 3f64.exp() / (3f64.exp() + 49_999.0);
        // token 7 plus enough of the flat tail to reach 0.9
        let tail = ((0.9 - p7) / (1.0 / (3f64.exp() + 49_999.0))).ceil() as usize;
        assert!(
            (kept as i64 - (1 + tail) as i64).abs() <= 1,
            "{kept} vs {}",
            1 + tail
        );
        assert!(q[7] > 0.0);
    }

    #[test]
    fn non_finite_rows_are_errors() {
        let c = SamplingConfig::new(1.0);
        for bad in [
            [0.0, f32::NAN],
            [f32::INFINITY, 0.0],
            [f32::NEG_INFINITY; 2],
        ] {
            assert!(matches!(
                probabilities(&bad, &c, 3),
                Err(Error::NonFiniteLogits {
                    position: 3,
                    sequence_position: None
                })
            ));
        }
        let p = probabilities(&[f32::NEG_INFINITY, 0.0], &c, 0).unwrap();
        assert_eq!(p, vec![0.0, 1.0]);
    }

    #[test]
    fn draw_inverts_the_cdf() {
        let p = [0.25, 0.0, 0.5, 0.25];
        assert_eq!(draw(&p, 0.0), 0);
        assert_eq!(draw(&p, 0.2499), 0);
        assert_eq!(draw(&p, 0.25), 2);
        assert_eq!(draw(&p, 0.7499), 2);
        assert_eq!(draw(&p, 0.75), 3);
        assert_eq!(draw(&p, 0.999_999_999), 3);
        // Unnormalised weights work too.
        assert_eq!(draw(&[2.0, 2.0], 0.6), 1);
    }

    #[test]
    fn residual_removes_what_the_proposer_covered() {
        let p = [0.5, 0.3, 0.2];
        assert!(close(&residual(&p, None, 0), &[0.0, 0.6, 0.4]));
        let q = [0.2, 0.6, 0.2];
        assert!(close(&residual(&p, Some(&q), 1), &[1.0, 0.0, 0.0]));
        // p == q leaves nothing: fall back to p.
        assert!(close(&residual(&p, Some(&p), 1), &p));
    }

    #[test]
    fn entropy_in_nats() {
        assert!((entropy(&[0.5, 0.5]) - 2f64.ln()).abs() < 1e-12);
        assert_eq!(entropy(&[1.0, 0.0]), 0.0);
    }
}
