//! Serde configuration at the edge, checked before decoding starts.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::acceptance::{
    AcceptanceCriterion, Distance, DistanceMetric, EmbeddingDistance, EmbeddingNorm, Exact,
    MinBlock, TopK, Typical,
};
use crate::error::{Error, Result};
use crate::model::{check_tokens, ModelInfo};
use crate::policy::PolicyConfig;
pub use crate::proposer::{ProposerConfig, RowProposers};
use crate::sampling::SamplingConfig;

/// What to do when the sequence fills the model's context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextPolicy {
    /// Stop and return what was generated ([`StopReason::ContextFull`](crate::StopReason)).
    #[default]
    Stop,
    /// Return [`Error::ContextExhausted`].
    Error,
}

/// Per-call decoding settings, shared by every decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// The most tokens to generate.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Tokens that end the sequence; the first one emitted is the output's last token.
    #[serde(default)]
    pub eos_token_ids: Vec<i64>,
    /// What to do at the model's context limit.
    #[serde(default)]
    pub on_context_full: ContextPolicy,
    /// Feed the prompt in blocks of at most this many tokens (bounds peak memory on long
    /// prompts; the logits are the same). `None`: the whole prompt in one pass.
    #[serde(default)]
    pub prefill_chunk: Option<usize>,
    /// Draw tokens instead of taking the argmax. `None`: greedy decoding.
    #[serde(default)]
    pub sampling: Option<SamplingConfig>,
}

fn default_max_new_tokens() -> usize {
    64
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_new_tokens: default_max_new_tokens(),
            eos_token_ids: Vec::new(),
            on_context_full: ContextPolicy::default(),
            prefill_chunk: None,
            sampling: None,
        }
    }
}

impl DecodeConfig {
    /// Generate at most `max_new_tokens`, no EOS, stop at the context limit.
    pub fn new(max_new_tokens: usize) -> Self {
        DecodeConfig {
            max_new_tokens,
            ..Default::default()
        }
    }

    /// The same settings with these EOS ids.
    pub fn with_eos(mut self, eos_token_ids: impl Into<Vec<i64>>) -> Self {
        self.eos_token_ids = eos_token_ids.into();
        self
    }

    /// The same settings with this context policy.
    pub fn with_context_policy(mut self, policy: ContextPolicy) -> Self {
        self.on_context_full = policy;
        self
    }

    /// The same settings with the prompt fed in blocks of `chunk` tokens.
    pub fn with_prefill_chunk(mut self, chunk: usize) -> Self {
        self.prefill_chunk = Some(chunk);
        self
    }

    /// The same settings, sampling with `sampling` instead of taking the argmax.
    pub fn with_sampling(mut self, sampling: SamplingConfig) -> Self {
        self.sampling = Some(sampling);
        self
    }

    /// Checks the settings and a prompt against a model.
    pub fn check(&self, prompt: &[i64], info: &ModelInfo) -> Result<()> {
        if self.prefill_chunk == Some(0) {
            return Err(Error::config("prefill_chunk", "must be at least 1"));
        }
        if let Some(s) = &self.sampling {
            s.check()?;
        }
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        check_tokens("prompt", prompt, info.vocab_size)?;
        check_tokens("EOS set", &self.eos_token_ids, info.vocab_size)?;
        if prompt.len() > info.max_context {
            return Err(Error::PromptTooLong {
                prompt_len: prompt.len(),
                max_context: info.max_context,
            });
        }
        Ok(())
    }

    /// Whether `token` ends the sequence.
    pub fn is_eos(&self, token: i64) -> bool {
        self.eos_token_ids.contains(&token)
    }
}

/// Which acceptance criterion, as configuration. In JSON: `{"type": "exact"}`,
/// `{"type": "lossless"}`, `{"type": "typical", "epsilon": 0.09, "delta": 0.3}`,
/// `{"type": "top-k", "n": 3}`, `{"type": "distance", "epsilon": 2.0, "metric": "ordinal"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "AcceptanceRepr", into = "AcceptanceRepr")]
pub enum AcceptanceConfig {
    /// Lossless: keep a proposal only if it is the argmax; under sampling, speculative
    /// sampling's rule.
    Exact,
    /// The same criterion as `Exact`, by the name it has under sampling.
    Lossless,
    /// Medusa's typical acceptance under sampling ([`Typical`]); exact under greedy decoding.
    Typical {
        /// The hard threshold.
        epsilon: f64,
        /// The entropy-scaled threshold.
        delta: f64,
    },
    /// Keep a proposal if it is among the `n` best tokens.
    TopK {
        /// How many of the best tokens count.
        n: usize,
    },
    /// Keep a proposal within `epsilon` of the argmax under `metric`.
    Distance {
        /// The tolerance.
        epsilon: f64,
        /// The metric.
        #[serde(default)]
        metric: MetricConfig,
    },
}

/// The serde form of [`AcceptanceConfig`]: struct variants only, so that unknown fields are
/// rejected for every type (serde ignores them on unit variants of tagged enums).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
enum AcceptanceRepr {
    Exact {},
    Lossless {},
    Typical {
        epsilon: f64,
        delta: f64,
    },
    TopK {
        n: usize,
    },
    Distance {
        epsilon: f64,
        #[serde(default)]
        metric: MetricConfig,
    },
}

impl From<AcceptanceRepr> for AcceptanceConfig {
    fn from(r: AcceptanceRepr) -> Self {
        match r {
            AcceptanceRepr::Exact {} => AcceptanceConfig::Exact,
            AcceptanceRepr::Lossless {} => AcceptanceConfig::Lossless,
            AcceptanceRepr::Typical { epsilon, delta } => {
                AcceptanceConfig::Typical { epsilon, delta }
            }
            AcceptanceRepr::TopK { n } => AcceptanceConfig::TopK { n },
            AcceptanceRepr::Distance { epsilon, metric } => {
                AcceptanceConfig::Distance { epsilon, metric }
            }
        }
    }
}

impl From<AcceptanceConfig> for AcceptanceRepr {
    fn from(c: AcceptanceConfig) -> Self {
        match c {
            AcceptanceConfig::Exact => AcceptanceRepr::Exact {},
            AcceptanceConfig::Lossless => AcceptanceRepr::Lossless {},
            AcceptanceConfig::Typical { epsilon, delta } => {
                AcceptanceRepr::Typical { epsilon, delta }
            }
            AcceptanceConfig::TopK { n } => AcceptanceRepr::TopK { n },
            AcceptanceConfig::Distance { epsilon, metric } => {
                AcceptanceRepr::Distance { epsilon, metric }
            }
        }
    }
}

/// The token metric of distance acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricConfig {
    /// `|a - b|` on token ids.
    #[default]
    Ordinal,
    /// `1 - cos` between the model's token embeddings.
    EmbeddingCosine,
    /// Euclidean distance between the model's token embeddings.
    EmbeddingL2,
}

impl AcceptanceConfig {
    /// Builds the criterion, wrapped in [`MinBlock`] when `min_block` is given. Embedding
    /// metrics read `embeddings` (`[V, D]`).
    pub fn build(
        &self,
        min_block: Option<usize>,
        embeddings: Option<&Tensor>,
    ) -> Result<Box<dyn AcceptanceCriterion>> {
        let inner: Box<dyn AcceptanceCriterion> = match self {
            AcceptanceConfig::Exact | AcceptanceConfig::Lossless => Box::new(Exact),
            AcceptanceConfig::Typical { epsilon, delta } => {
                Box::new(Typical::new(*epsilon, *delta)?)
            }
            AcceptanceConfig::TopK { n } => Box::new(TopK::new(*n)?),
            AcceptanceConfig::Distance { epsilon, metric } => {
                let metric = match metric {
                    MetricConfig::Ordinal => DistanceMetric::Ordinal,
                    MetricConfig::EmbeddingCosine | MetricConfig::EmbeddingL2 => {
                        let table = embeddings.ok_or(Error::MissingCapability {
                            component: "embedding distance acceptance",
                            capability: "an embedding matrix",
                        })?;
                        let norm = if *metric == MetricConfig::EmbeddingL2 {
                            EmbeddingNorm::L2
                        } else {
                            EmbeddingNorm::Cosine
                        };
                        DistanceMetric::Embedding(EmbeddingDistance::new(table, norm)?)
                    }
                };
                Box::new(Distance::new(*epsilon, metric)?)
            }
        };
        match min_block {
            None => Ok(inner),
            Some(l) => Ok(Box::new(MinBlock::new(l, inner)?)),
        }
    }
}

impl FromStr for AcceptanceConfig {
    type Err = Error;

    /// `exact`, `lossless`, `typical` (epsilon 0.09, delta 0.3), `typical:EPS:DELTA`,
    /// `top-k:N`, `distance:EPS` (ordinal), `distance:EPS:cosine` or `distance:EPS:l2`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            Error::config(
                "accept",
                format!(
                    "`{s}` is not one of exact, lossless, typical[:EPS:DELTA], top-k:N, \
                     distance:EPS[:ordinal|cosine|l2]"
                ),
            )
        };
        match parts.as_slice() {
            ["exact"] => Ok(AcceptanceConfig::Exact),
            ["lossless"] => Ok(AcceptanceConfig::Lossless),
            ["typical"] => Ok(AcceptanceConfig::Typical {
                epsilon: Typical::DEFAULT.epsilon(),
                delta: Typical::DEFAULT.delta(),
            }),
            ["typical", eps, delta] => Ok(AcceptanceConfig::Typical {
                epsilon: eps.parse().map_err(|_| bad())?,
                delta: delta.parse().map_err(|_| bad())?,
            }),
            ["top-k", n] => Ok(AcceptanceConfig::TopK {
                n: n.parse().map_err(|_| bad())?,
            }),
            ["distance", eps, rest @ ..] if rest.len() <= 1 => {
                let metric = match rest.first().copied() {
                    None | Some("ordinal") => MetricConfig::Ordinal,
                    Some("cosine") => MetricConfig::EmbeddingCosine,
                    Some("l2") => MetricConfig::EmbeddingL2,
                    Some(_) => return Err(bad()),
                };
                Ok(AcceptanceConfig::Distance {
                    epsilon: eps.parse().map_err(|_| bad())?,
                    metric,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// How blocks are verified, as configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifierConfig {
    /// Against the model's KV cache.
    #[default]
    Cached,
    /// By recomputing the whole sequence (models without a cache).
    Recompute,
}

/// A whole blockwise decoder, as configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockwiseConfig {
    /// Block size `k`: the always-right token plus up to `k - 1` proposals.
    pub block_size: usize,
    /// The acceptance criterion.
    #[serde(default = "default_acceptance")]
    pub acceptance: AcceptanceConfig,
    /// Always accept at least this many tokens per block.
    #[serde(default)]
    pub min_block: Option<usize>,
    /// The proposer.
    #[serde(default)]
    pub proposer: ProposerConfig,
    /// The verifier.
    #[serde(default)]
    pub verifier: VerifierConfig,
    /// How many proposals each block may hold (default: always `block_size - 1`).
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Cut blocks at positions whose top-2 logit margin is below this, and decide them with a
    /// one-token call (see [`BlockwiseBuilder::tie_guard`](crate::decoder::BlockwiseBuilder::tie_guard)).
    #[serde(default)]
    pub tie_guard: Option<f64>,
    /// Verify a tree instead of a chain: `{"shape": [3, 2, 1]}` or `{"dynamic": 5}`
    /// ([`TreeConfig`](crate::decoder::TreeConfig)). Trees are verified by
    /// [`BatchBlockwise`](crate::decoder::BatchBlockwise) ([`BatchBuilder::config`](crate::decoder::BatchBuilder::config));
    /// [`Blockwise::from_config`](crate::decoder::Blockwise::from_config) refuses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<crate::decoder::TreeConfig>,
}

fn default_acceptance() -> AcceptanceConfig {
    AcceptanceConfig::Exact
}

impl BlockwiseConfig {
    /// Exact acceptance with the model's heads at block size `k`.
    pub fn heads(block_size: usize) -> Self {
        BlockwiseConfig {
            block_size,
            acceptance: AcceptanceConfig::Exact,
            min_block: None,
            proposer: ProposerConfig::Heads,
            verifier: VerifierConfig::Cached,
            policy: PolicyConfig::Fixed,
            tie_guard: None,
            tree: None,
        }
    }

    /// Parses a JSON document, rejecting unknown fields.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|source| Error::Json {
            what: "blockwise config".into(),
            source,
        })
    }
}
