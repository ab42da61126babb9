//! Distance-based acceptance (Stern et al. §5): accept a proposal whose distance to the base
//! model's argmax is at most `epsilon`.

use std::fmt;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::{longest_prefix, AcceptanceCriterion, BlockView};
use crate::error::{Error, Result};

/// How far apart two token ids are.
#[derive(Clone)]
pub enum DistanceMetric {
    /// `|a - b|` on token ids: meaningful where ids are ordered (pixel intensities, digits,
    /// quantised values).
    Ordinal,
    /// A distance between rows of an embedding matrix.
    Embedding(EmbeddingDistance),
    /// A user metric.
    Custom(Arc<dyn Fn(i64, i64) -> f64 + Send + Sync>),
}

impl fmt::Debug for DistanceMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DistanceMetric::Ordinal => f.write_str("Ordinal"),
            DistanceMetric::Embedding(e) => f.debug_tuple("Embedding").field(&e.norm).finish(),
            DistanceMetric::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl DistanceMetric {
    /// The distance between tokens `a` and `b`.
    pub fn distance(&self, a: i64, b: i64) -> f64 {
        match self {
            DistanceMetric::Ordinal => (a - b).unsigned_abs() as f64,
            DistanceMetric::Embedding(e) => e.distance(a, b),
            DistanceMetric::Custom(f) => f(a, b),
        }
    }
}

/// Which distance between embedding rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingNorm {
    /// `1 - cos(a, b)`, in `[0, 2]`.
    Cosine,
    /// Euclidean distance.
    L2,
}

/// Distances between rows of an embedding matrix, held on the host.
#[derive(Clone)]
pub struct EmbeddingDistance {
    table: Arc<Vec<f64>>,
    norms: Arc<Vec<f64>>,
    dim: usize,
    rows: usize,
    norm: EmbeddingNorm,
}

impl EmbeddingDistance {
    /// Copies an embedding matrix `[V, D]` (any float kind, any device) to the host.
    pub fn new(embeddings: &Tensor, norm: EmbeddingNorm) -> Result<Self> {
        let size = embeddings.size();
        if size.len() != 2 || size[0] == 0 || size[1] == 0 {
            return Err(Error::BadOutputShape {
                output: "embedding matrix",
                expected: "[V, D] with V, D > 0".into(),
                actual: size,
            });
        }
        let flat = embeddings
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Double)?
            .f_flatten(0, -1)?;
        let table: Vec<f64> = Vec::try_from(&flat)?;
        if table.iter().any(|x| !x.is_finite()) {
            return Err(Error::config(
                "embedding matrix",
                "holds NaN or infinite values",
            ));
        }
        let (rows, dim) = (size[0] as usize, size[1] as usize);
        let norms = table
            .chunks(dim)
            .map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt())
            .collect();
        Ok(EmbeddingDistance {
            table: Arc::new(table),
            norms: Arc::new(norms),
            dim,
            rows,
            norm,
        })
    }

    /// Rows in the table (the vocabulary size it covers).
    pub fn vocab_size(&self) -> usize {
        self.rows
    }

    fn row(&self, t: i64) -> Option<&[f64]> {
        let t = usize::try_from(t).ok().filter(|&t| t < self.rows)?;
        Some(&self.table[t * self.dim..(t + 1) * self.dim])
    }

    /// Distance between the embeddings of `a` and `b`; infinite for ids outside the table.
    pub fn distance(&self, a: i64, b: i64) -> f64 {
        if a == b {
            return 0.0;
        }
        let (Some(ra), Some(rb)) = (self.row(a), self.row(b)) else {
            return f64::INFINITY;
        };
        match self.norm {
            EmbeddingNorm::L2 => ra
                .iter()
                .zip(rb)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f64>()
                .sqrt(),
            EmbeddingNorm::Cosine => {
                let dot: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
                let denom = self.norms[a as usize] * self.norms[b as usize];
                if denom == 0.0 {
                    1.0
                } else {
                    1.0 - dot / denom
                }
            }
        }
    }
}

/// Accept proposal `i` when `metric(p_i, argmax_i) <= epsilon`. With `epsilon = 0` and a metric
/// that is zero only on equal tokens, this is [`Exact`](super::Exact).
#[derive(Debug, Clone)]
pub struct Distance {
    epsilon: f64,
    metric: DistanceMetric,
}

impl Distance {
    /// Distance acceptance; `epsilon` must be finite and non-negative.
    pub fn new(epsilon: f64, metric: DistanceMetric) -> Result<Self> {
        if !(epsilon >= 0.0 && epsilon.is_finite()) {
            return Err(Error::config(
                "epsilon",
                format!("must be a finite number >= 0, got {epsilon}"),
            ));
        }
        Ok(Distance { epsilon, metric })
    }

    /// The tolerance.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }
}

impl AcceptanceCriterion for Distance {
    fn accept(&self, view: &BlockView<'_>) -> usize {
        longest_prefix(view.len(), |i| {
            self.metric.distance(view.proposed()[i], view.greedy(i)) <= self.epsilon
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinal_tolerance() {
        let v = BlockView::new(&[10, 12, 30], &[11, 14, 20], 1).unwrap();
        let d = |e| {
            Distance::new(e, DistanceMetric::Ordinal)
                .unwrap()
                .accept(&v)
        };
        assert_eq!(d(0.0), 0);
        assert_eq!(d(1.0), 1);
        assert_eq!(d(2.0), 2);
        assert_eq!(d(10.0), 3);
        assert!(Distance::new(-1.0, DistanceMetric::Ordinal).is_err());
        assert!(Distance::new(f64::NAN, DistanceMetric::Ordinal).is_err());
    }

    #[test]
    fn embedding_distances() {
        let e = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 2.0, 0.0]).view([3, 2]);
        let cos = EmbeddingDistance::new(&e, EmbeddingNorm::Cosine).unwrap();
        assert!((cos.distance(0, 2)).abs() < 1e-12);
        assert!((cos.distance(0, 1) - 1.0).abs() < 1e-12);
        let l2 = EmbeddingDistance::new(&e, EmbeddingNorm::L2).unwrap();
        assert!((l2.distance(0, 2) - 1.0).abs() < 1e-12);
        assert!(l2.distance(0, 7).is_infinite());
    }

    #[test]
    fn custom_metric() {
        let same_parity = DistanceMetric::Custom(Arc::new(|a, b| ((a - b) % 2).abs() as f64));
        let v = BlockView::new(&[4, 5], &[2, 2], 1).unwrap();
        assert_eq!(Distance::new(0.0, same_parity).unwrap().accept(&v), 1);
    }
}
