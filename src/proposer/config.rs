//! Proposers as configuration: the serde form and the command-line form, and how each is
//! built for a verified model.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{
    Chain, CorpusIndex, CorpusLookup, DraftModel, HeadsProposer, Lookahead, NGram, NoProposer,
    Proposer,
};
use crate::bundle::{BundleOptions, ModelBundle};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::feature::{DraftWeights, FeatureDraft, FeatureDraftProposer};
use crate::model::{CausalLm, ModelInfo};

/// Where the block's guesses come from, as configuration. In JSON: `"auto"` (the default),
/// `"heads"`, `"none"`,
/// `{"ngram": {"min": 1, "max": 3}}`, `{"corpus": {"path": "answers/", "min": 1, "max": 4}}`,
/// `{"lookahead": {"window": 4, "ngram": 3, "candidates": 4}}`,
/// `{"draft": {"model": "models/smollm2-draft"}}` or
/// `{"eagle": {"draft": "assets/drafts/smollm2", "weights": "int8", "min_confidence": 0.2}}` or
/// `{"chain": [{"ngram": {"min": 1, "max": 3}}, "heads"]}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ProposerConfig {
    /// The fastest exact proposer the model ships with, as measured on open-ended chat
    /// (docs/proposers.md, "What `auto` picks"): where a feature-level draft is shipped for
    /// the model ([`ModelBundle::draft`]), [`ProposerConfig::recommended`] (prompt lookup of
    /// 3-grams, then the draft), which [`ProposerConfig::with_shipped_draft`] fills in; else
    /// the model's proposal heads where it has any; else prompt lookup (`ngram`). A static tree
    /// shape branches on heads, so with one `auto` is the heads.
    #[default]
    Auto,
    /// The model's own proposal heads (combined scoring and proposal).
    Heads,
    /// Prompt lookup over n-grams of `min..=max` tokens.
    Ngram {
        /// Shortest n-gram to match.
        min: usize,
        /// Longest n-gram to match (tried first).
        max: usize,
    },
    /// Corpus lookup ([`CorpusLookup`]) over the token sequences of safetensors files
    /// ([`CorpusIndex::load`]), matching n-grams of `min..=max` tokens.
    Corpus {
        /// A safetensors file, or a folder of them. `None`: the corpus shipped for the model
        /// (`corpus.safetensors` in its shipped draft folder), which
        /// [`ProposerConfig::with_shipped_draft`] fills in.
        #[serde(default)]
        path: Option<String>,
        /// Shortest n-gram to match (default 1).
        #[serde(default = "default_corpus_min")]
        min: usize,
        /// Longest n-gram to match, tried first (default 4).
        #[serde(default = "default_corpus_max")]
        max: usize,
    },
    /// Lookahead decoding ([`Lookahead`]): Jacobi iteration over `window` future positions and
    /// a pool of `ngram`-token n-grams, `candidates` of them verified per call.
    Lookahead {
        /// Jacobi positions per call (W).
        window: usize,
        /// Tokens per pool n-gram (N).
        ngram: usize,
        /// Pool n-grams verified per call (G).
        candidates: usize,
    },
    /// A draft model of the same vocabulary ([`DraftModel`]), loaded from a model folder (see
    /// [`ModelBundle::load`]) on the verified model's device and in its floating-point kind.
    Draft {
        /// `embedded`, an exported folder or a built-in transformer folder.
        model: String,
    },
    /// A feature-level draft ([`FeatureDraftProposer`], EAGLE's idea) loaded from a draft
    /// folder written by [`FeatureDraft::save`]; it reads the verified model's hidden states
    /// and token embeddings.
    Eagle {
        /// The draft folder (`draft.json`, `draft.safetensors`, optional shortlist). `None`:
        /// the draft shipped for the model, which [`ProposerConfig::with_shipped_draft`] fills
        /// in (from [`ModelBundle::draft`]).
        #[serde(default)]
        draft: Option<String>,
        /// The form the draft's products run in (default `auto`: int8 on the crate's native
        /// kernels on x86-64 CPUs with AVX2).
        #[serde(default)]
        weights: DraftWeights,
        /// Guesses whose cumulative probability under the draft is below this are not
        /// proposed ([`FeatureDraftProposer::with_min_confidence`]; default 0: every guess up
        /// to the block size).
        #[serde(default, skip_serializing_if = "is_zero")]
        min_confidence: f64,
        /// Children per node of the dynamic trees it grows (`--tree dynamic:NODES`; default
        /// [`DEFAULT_TREE_WIDTH`](crate::feature::DEFAULT_TREE_WIDTH), at least 1;
        /// [`FeatureDraftProposer::with_tree_width`]). Chains do not read it.
        #[serde(
            default = "default_tree_width",
            skip_serializing_if = "is_default_tree_width"
        )]
        tree_width: usize,
    },
    /// A fallback chain ([`Chain`]): the first member with a proposal wins.
    Chain(Vec<ProposerConfig>),
    /// No proposals: greedy decoding through the blockwise loop.
    None,
}

/// The corpus shipped beside a model's draft (in its draft folder), which `corpus` without a
/// path reads: SmolLM2's own answers to everyday requests.
pub const SHIPPED_CORPUS_FILE: &str = "corpus.safetensors";

fn default_corpus_min() -> usize {
    1
}

fn default_corpus_max() -> usize {
    4
}

fn is_zero(p: &f64) -> bool {
    *p == 0.0
}

fn default_tree_width() -> usize {
    crate::feature::DEFAULT_TREE_WIDTH
}

fn is_default_tree_width(w: &usize) -> bool {
    *w == crate::feature::DEFAULT_TREE_WIDTH
}

impl ProposerConfig {
    /// Whether building it needs the verified model's token embeddings (a feature-level draft,
    /// alone or in a chain).
    pub fn reads_embeddings(&self) -> bool {
        match self {
            ProposerConfig::Eagle { .. } => true,
            ProposerConfig::Chain(members) => members.iter().any(|m| m.reads_embeddings()),
            _ => false,
        }
    }

    /// The inner layers of the verified model that its feature drafts read
    /// ([`crate::feature::FeatureDraftConfig::taps`], from each draft folder's `draft.json`):
    /// what to pass to [`CausalLm::set_feature_taps`] before decoding. Empty when no draft
    /// reads any; two drafts that read different layers are refused.
    pub fn feature_taps(&self) -> Result<Vec<usize>> {
        let mut found: Option<Vec<usize>> = None;
        self.feature_taps_into(&mut found)?;
        Ok(found.unwrap_or_default())
    }

    fn feature_taps_into(&self, found: &mut Option<Vec<usize>>) -> Result<()> {
        match self {
            ProposerConfig::Eagle {
                draft: Some(dir), ..
            } => {
                let config: crate::feature::FeatureDraftConfig = Error::read_json(
                    std::path::Path::new(dir).join(crate::feature::DRAFT_CONFIG_FILE),
                )?;
                let taps = config.taps.unwrap_or_default();
                match found {
                    Some(seen) if *seen != taps => Err(Error::config(
                        "proposer",
                        format!(
                            "two eagle drafts read different layers of the model ({seen:?} and \
                             {taps:?}); a model hands over one set"
                        ),
                    )),
                    _ => {
                        *found = Some(taps);
                        Ok(())
                    }
                }
            }
            ProposerConfig::Chain(members) => {
                members.iter().try_for_each(|m| m.feature_taps_into(found))
            }
            _ => Ok(()),
        }
    }

    /// What `auto` is for a model with the feature-level draft `draft`: prompt lookup of
    /// 3-grams first (a repeat of the prompt or of the answer so far is proposed at no cost),
    /// then the draft (`chain:ngram:3:3,eagle:DRAFT`). The fastest exact setting measured on
    /// open-ended chat with SmolLM2's shipped draft, in f32 and bf16 alike.
    pub fn recommended(draft: &std::path::Path) -> Self {
        ProposerConfig::Chain(vec![
            ProposerConfig::Ngram { min: 3, max: 3 },
            ProposerConfig::Eagle {
                draft: Some(draft.display().to_string()),
                weights: DraftWeights::Auto,
                min_confidence: 0.0,
                tree_width: crate::feature::DEFAULT_TREE_WIDTH,
            },
        ])
    }

    /// The same configuration with every `eagle` that names no draft folder given `shipped`
    /// (the draft shipped for the model, [`ModelBundle::draft`]), every `corpus` that names
    /// no corpus given `shipped`'s [`SHIPPED_CORPUS_FILE`] where there is one, and `auto`
    /// made [`ProposerConfig::recommended`] where there is a draft (without one `auto` stays,
    /// and is built as the model's heads or prompt lookup).
    pub fn with_shipped_draft(self, shipped: Option<&std::path::Path>) -> Self {
        self.map_members(&|mut e| {
            match &mut e {
                ProposerConfig::Auto => {
                    if let Some(draft) = shipped {
                        e = Self::recommended(draft);
                    }
                }
                ProposerConfig::Eagle {
                    draft: d @ None, ..
                } => *d = shipped.map(|p| p.display().to_string()),
                ProposerConfig::Corpus { path: c @ None, .. } => {
                    *c = shipped
                        .map(|p| p.join(SHIPPED_CORPUS_FILE))
                        .filter(|p| p.is_file())
                        .map(|p| p.display().to_string())
                }
                _ => {}
            }
            e
        })
    }

    /// [`ProposerConfig::with_shipped_draft`] with the draft shipped for the model `name`
    /// ([`crate::bundle::draft_for`]), found before the model loads: so that settings of the
    /// draft (`decode`'s and the server's draft flags) reach the one `auto` names.
    pub fn with_draft_for(self, name: &str) -> Result<Self> {
        Ok(self.with_shipped_draft(crate::bundle::draft_for(name)?.as_deref()))
    }

    /// The same configuration with every `eagle`'s draft computing in `weights`.
    pub fn with_draft_weights(self, weights: DraftWeights) -> Self {
        self.map_eagles(&|mut e| {
            if let ProposerConfig::Eagle { weights: w, .. } = &mut e {
                *w = weights;
            }
            e
        })
    }

    /// The same configuration with every `eagle`'s draft proposing only guesses of cumulative
    /// confidence `p` or more ([`FeatureDraftProposer::with_min_confidence`]; checked when
    /// built).
    pub fn with_draft_min_confidence(self, p: f64) -> Self {
        self.map_eagles(&|mut e| {
            if let ProposerConfig::Eagle { min_confidence, .. } = &mut e {
                *min_confidence = p;
            }
            e
        })
    }

    /// The same configuration with every `eagle`'s dynamic trees `width` children wide
    /// ([`FeatureDraftProposer::with_tree_width`]; checked when built).
    pub fn with_draft_tree_width(self, width: usize) -> Self {
        self.map_eagles(&|mut e| {
            if let ProposerConfig::Eagle { tree_width, .. } = &mut e {
                *tree_width = width;
            }
            e
        })
    }

    /// `f` applied to every `eagle` of the configuration, chain members included.
    fn map_eagles(self, f: &dyn Fn(ProposerConfig) -> ProposerConfig) -> Self {
        self.map_members(&|m| match m {
            eagle @ ProposerConfig::Eagle { .. } => f(eagle),
            other => other,
        })
    }

    /// `f` applied to every proposer of the configuration that is not a chain, chain members
    /// included.
    fn map_members(self, f: &dyn Fn(ProposerConfig) -> ProposerConfig) -> Self {
        match self {
            ProposerConfig::Chain(members) => {
                ProposerConfig::Chain(members.into_iter().map(|m| m.map_members(f)).collect())
            }
            other => f(other),
        }
    }

    /// Builds the proposer for the verified model `target` (a draft model is loaded here, and
    /// refused when its vocabulary differs; a feature-level draft reads the model's token
    /// embeddings).
    pub fn build_for(&self, target: &dyn CausalLm) -> Result<Box<dyn Proposer>> {
        self.build_with(target.info(), target.token_embeddings().as_ref())
    }

    /// Proposers for the rows of a batch or a server: one built here from this configuration
    /// (as [`ProposerConfig::build_with`]) is kept, and every row gets a fork of it
    /// ([`Proposer::fork`]: a feature draft shares its weights and their packed copies instead of
    /// loading and packing them again, about 0.17 s a row for SmolLM2's) or, where it cannot
    /// fork, one built afresh ([`RowProposers`]).
    pub fn row_proposers(
        &self,
        target: &ModelInfo,
        embeddings: Option<&tch::Tensor>,
    ) -> Result<RowProposers> {
        Ok(RowProposers {
            prototype: std::rc::Rc::from(self.build_with(target, embeddings)?),
            config: self.clone(),
            target: target.clone(),
            embeddings: embeddings.map(|e| e.shallow_clone()),
        })
    }

    /// Builds the proposer for a verified model described by `target` whose token embeddings
    /// (`[V, D]`, its tied vocabulary projection) are `embeddings`, which only a feature-level
    /// draft reads.
    pub fn build_with(
        &self,
        target: &ModelInfo,
        embeddings: Option<&tch::Tensor>,
    ) -> Result<Box<dyn Proposer>> {
        Ok(match self {
            ProposerConfig::Auto => return Self::auto_without_draft(target).build(target),
            ProposerConfig::Eagle {
                draft,
                weights,
                min_confidence,
                tree_width,
            } => {
                crate::feature::check_min_confidence(*min_confidence)?;
                if *tree_width == 0 {
                    return Err(Error::config(
                        "tree_width",
                        "an eagle draft's trees need at least 1 child per node",
                    ));
                }
                let dir = draft.as_ref().ok_or_else(|| {
                    Error::config(
                        "proposer",
                        "eagle needs a draft folder (eagle:DIR), and no draft is shipped for \
                         this model",
                    )
                })?;
                let embeddings = embeddings.ok_or(Error::MissingCapability {
                    component: "a feature-level draft",
                    capability:
                        "the verified model's token embeddings (a tied vocabulary projection)",
                })?;
                let draft = FeatureDraft::load(dir, target.device)?;
                Box::new(
                    FeatureDraftProposer::with_embeddings(draft, embeddings, target.max_context)?
                        .with_weights(*weights)?
                        .with_min_confidence(*min_confidence)?
                        .with_tree_width(*tree_width),
                )
            }
            ProposerConfig::Chain(members) if !members.is_empty() => Box::new(Chain::new(
                members
                    .iter()
                    .map(|m| m.build_with(target, embeddings))
                    .collect::<Result<_>>()?,
            )),
            other => other.build(target)?,
        })
    }

    /// The same configuration with every `auto` that no draft filled in
    /// ([`ProposerConfig::with_shipped_draft`]) made what it builds for the model `target`: its
    /// heads where it has any, else prompt lookup of 1- to 3-grams.
    pub fn without_auto(self, target: &ModelInfo) -> Self {
        self.map_members(&|m| match m {
            ProposerConfig::Auto => Self::auto_without_draft(target),
            other => other,
        })
    }

    fn auto_without_draft(target: &ModelInfo) -> Self {
        if target.num_heads > 0 {
            ProposerConfig::Heads
        } else {
            ProposerConfig::Ngram { min: 1, max: 3 }
        }
    }

    /// Builds the proposer for a verified model described by `target` (a draft model is loaded
    /// here, and refused when its vocabulary differs). A feature-level draft needs the model
    /// itself: [`ProposerConfig::build_for`].
    pub fn build(&self, target: &ModelInfo) -> Result<Box<dyn Proposer>> {
        Ok(match self {
            // Refused there, with the reason.
            ProposerConfig::Eagle { .. } => return self.build_with(target, None),
            ProposerConfig::Chain(_) if self.reads_embeddings() => {
                return self.build_with(target, None)
            }
            ProposerConfig::Auto => return Self::auto_without_draft(target).build(target),
            ProposerConfig::Heads => Box::new(HeadsProposer),
            ProposerConfig::Ngram { min, max } => Box::new(NGram::new(*min, *max)?),
            ProposerConfig::Corpus { path, min, max } => {
                let path = path.as_ref().ok_or_else(|| {
                    Error::config(
                        "proposer",
                        "corpus needs a corpus file or folder (corpus:PATH), and none is \
                         shipped for this model",
                    )
                })?;
                Box::new(CorpusLookup::new(std::sync::Arc::new(CorpusIndex::load(
                    path, *min, *max,
                )?)))
            }
            ProposerConfig::Lookahead {
                window,
                ngram,
                candidates,
            } => Box::new(Lookahead::new(*window, *ngram, *candidates)?),
            ProposerConfig::None => Box::new(NoProposer),
            ProposerConfig::Draft { model } => {
                let dtype = DType::from_kind(target.kind).ok_or_else(|| {
                    Error::config(
                        "proposer",
                        format!("a draft model cannot compute in {:?}", target.kind),
                    )
                })?;
                let options = BundleOptions {
                    dtype,
                    device: target.device,
                    max_context: Some(target.max_context),
                    heads: crate::bundle::HeadsChoice::None,
                    f32_matmul: Default::default(),
                    backend: Default::default(),
                    bf16_inputs: Default::default(),
                };
                let draft = ModelBundle::load(model, &options)?.model;
                Box::new(DraftModel::new(draft, target.vocab_size)?)
            }
            ProposerConfig::Chain(members) => {
                if members.is_empty() {
                    return Err(Error::config(
                        "proposer",
                        "a chain needs at least one member",
                    ));
                }
                Box::new(Chain::new(
                    members
                        .iter()
                        .map(|m| m.build(target))
                        .collect::<Result<_>>()?,
                ))
            }
        })
    }
}

impl std::fmt::Display for ProposerConfig {
    /// The command-line form [`ProposerConfig::from_str`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposerConfig::Auto => f.write_str("auto"),
            ProposerConfig::Heads => f.write_str("heads"),
            ProposerConfig::None => f.write_str("none"),
            ProposerConfig::Ngram { min, max } => write!(f, "ngram:{min}:{max}"),
            ProposerConfig::Corpus {
                path: None,
                min: 1,
                max: 4,
            } => f.write_str("corpus"),
            ProposerConfig::Corpus { path, min, max } => {
                write!(f, "corpus:{}:{min}:{max}", path.as_deref().unwrap_or(""))
            }
            ProposerConfig::Lookahead {
                window,
                ngram,
                candidates,
            } => write!(f, "lookahead:{window}:{ngram}:{candidates}"),
            ProposerConfig::Draft { model } => write!(f, "draft:{model}"),
            ProposerConfig::Eagle {
                draft,
                weights,
                min_confidence,
                ..
            } => {
                f.write_str("eagle")?;
                if let Some(d) = draft {
                    write!(f, ":{d}")?;
                }
                if *weights != DraftWeights::Auto {
                    write!(f, "@{weights}")?;
                }
                match *min_confidence {
                    0.0 => Ok(()),
                    p => write!(f, "~{p}"),
                }
            }
            ProposerConfig::Chain(members) => {
                f.write_str("chain:")?;
                for (i, m) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{m}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for ProposerConfig {
    type Err = Error;

    /// `auto` ([`ProposerConfig::Auto`]), `heads`, `none`, `ngram` (1 to 3 tokens), `ngram:MIN:MAX`, `corpus` (the corpus shipped
    /// for the model, 1 to 4 tokens), `corpus:PATH`, `corpus:PATH:MIN:MAX`, `corpus::MIN:MAX`,
    /// `lookahead` (W 4, N 3, G 4),
    /// `lookahead:W:N:G`, `draft:DIR`, `eagle` (the draft shipped for the model), `eagle:DIR`
    /// (either with `@` and a [`DraftWeights`] form after it: `@f32`, `@int8`, `@native-int8`,
    /// ..., then optionally `~P`, the draft's minimum cumulative confidence:
    /// `eagle@native-int8~0.2`) or `chain:A,B,...` whose members are any of the others.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "proposer",
                format!(
                    "`{s}` is not one of auto, heads, none, ngram, ngram:MIN:MAX, corpus, corpus:PATH, \
                     corpus:PATH:MIN:MAX, lookahead, \
                     lookahead:W:N:G, draft:DIR, eagle, eagle:DIR (either with @FORM: @f32, \
                     @int8, @native-int8, ..., and ~MIN_CONFIDENCE: ~0.2), chain:A,B"
                ),
            )
        };
        if let Some(members) = s.strip_prefix("chain:") {
            let members = members
                .split(',')
                .map(|m| match m.parse()? {
                    ProposerConfig::Chain(_) => Err(bad()),
                    p => Ok(p),
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(ProposerConfig::Chain(members));
        }
        if let Some(rest) = s.strip_prefix("corpus:") {
            // Two trailing numbers are the n-gram lengths; anything else is the path's.
            // `corpus::MIN:MAX`: the shipped corpus with those lengths.
            let lengths = rest.rsplitn(3, ':').collect::<Vec<_>>();
            let (path, min, max) = match lengths.as_slice() {
                [max, min, path] => match (min.parse(), max.parse()) {
                    (Ok(min), Ok(max)) => ((!path.is_empty()).then_some(*path), min, max),
                    _ => (Some(rest), default_corpus_min(), default_corpus_max()),
                },
                _ => (Some(rest), default_corpus_min(), default_corpus_max()),
            };
            if path == Some("") {
                return Err(bad());
            }
            return Ok(ProposerConfig::Corpus {
                path: path.map(String::from),
                min,
                max,
            });
        }
        if let Some(dir) = s.strip_prefix("draft:") {
            if dir.is_empty() {
                return Err(bad());
            }
            return Ok(ProposerConfig::Draft { model: dir.into() });
        }
        if s == "eagle"
            || ["eagle:", "eagle@", "eagle~"]
                .iter()
                .any(|p| s.starts_with(p))
        {
            // A trailing `~P` is the minimum confidence; any other `~` is the folder's.
            let (s, min_confidence) = match s.rsplit_once('~').map(|(r, p)| (r, p.parse())) {
                Some((rest, Ok(p))) => (rest, p),
                _ => (s, 0.0),
            };
            // A trailing `@` form (`@auto`, `@f32`, `@int8`, `@native-int8`, ...) is the
            // weights; any other `@` is the folder's.
            let (rest, weights) = match s.rsplit_once('@').map(|(r, w)| (r, w.parse())) {
                Some((rest, Ok(w))) => (rest, w),
                _ => (s, DraftWeights::Auto),
            };
            let draft = match rest.strip_prefix("eagle") {
                Some("") => None,
                Some(d) => match d.strip_prefix(':') {
                    Some(dir) if !dir.is_empty() => Some(dir.to_string()),
                    _ => return Err(bad()),
                },
                None => return Err(bad()),
            };
            return Ok(ProposerConfig::Eagle {
                draft,
                weights,
                min_confidence,
                tree_width: crate::feature::DEFAULT_TREE_WIDTH,
            });
        }
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["auto"] => Ok(ProposerConfig::Auto),
            ["heads"] => Ok(ProposerConfig::Heads),
            ["none"] => Ok(ProposerConfig::None),
            ["ngram"] => Ok(ProposerConfig::Ngram { min: 1, max: 3 }),
            ["corpus"] => Ok(ProposerConfig::Corpus {
                path: None,
                min: default_corpus_min(),
                max: default_corpus_max(),
            }),
            ["lookahead"] => {
                let (window, ngram, candidates) = Lookahead::default().settings();
                Ok(ProposerConfig::Lookahead {
                    window,
                    ngram,
                    candidates,
                })
            }
            ["lookahead", w, n, g] => Ok(ProposerConfig::Lookahead {
                window: w.parse().map_err(|_| bad())?,
                ngram: n.parse().map_err(|_| bad())?,
                candidates: g.parse().map_err(|_| bad())?,
            }),
            ["ngram", min, max] => Ok(ProposerConfig::Ngram {
                min: min.parse().map_err(|_| bad())?,
                max: max.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }
}

/// Proposers for further sequences from one built proposer ([`ProposerConfig::row_proposers`]):
/// its forks where it forks, else proposers built afresh from the configuration. Keep it for as
/// long as sequences come (a server keeps it for its life), so the proposer is built once.
pub struct RowProposers {
    prototype: std::rc::Rc<dyn Proposer>,
    config: ProposerConfig,
    target: ModelInfo,
    embeddings: Option<tch::Tensor>,
}

impl std::fmt::Debug for RowProposers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowProposers")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RowProposers {
    /// Whether the proposers read the model's proposal heads.
    pub fn needs_heads(&self) -> bool {
        self.prototype.needs_heads()
    }

    /// A proposer for another sequence.
    pub fn make(&self) -> Result<Box<dyn Proposer>> {
        match self.prototype.fork() {
            Some(p) => Ok(p),
            None => self
                .config
                .build_with(&self.target, self.embeddings.as_ref()),
        }
    }

    /// [`RowProposers::make`] as a batch's factory
    /// ([`BatchBuilder::proposer_factory`](crate::decoder::BatchBuilder::proposer_factory)).
    pub fn factory(&self) -> crate::decoder::ProposerFactory {
        let rows = RowProposers {
            prototype: std::rc::Rc::clone(&self.prototype),
            config: self.config.clone(),
            target: self.target.clone(),
            embeddings: self.embeddings.as_ref().map(|e| e.shallow_clone()),
        };
        Box::new(move || rows.make())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eagle_settings_reach_every_eagle_and_nothing_else() {
        let config: ProposerConfig = "chain:ngram:1:3,eagle,eagle:own@int8~0.3".parse().unwrap();
        let shipped = std::path::Path::new("assets/drafts/smollm2");
        let config = config
            .with_shipped_draft(Some(shipped))
            .with_draft_weights(DraftWeights::NativeBf16)
            .with_draft_min_confidence(0.2);
        assert_eq!(
            config.to_string(),
            "chain:ngram:1:3,eagle:assets/drafts/smollm2@native-bf16~0.2,eagle:own@native-bf16~0.2"
        );
        // A draft that names its folder keeps it; other proposers are left as they are.
        let alone: ProposerConfig = "eagle:own".parse().unwrap();
        assert_eq!(
            alone.with_shipped_draft(Some(shipped)).to_string(),
            "eagle:own"
        );
        let heads = ProposerConfig::Heads
            .with_shipped_draft(Some(shipped))
            .with_draft_weights(DraftWeights::F32)
            .with_draft_min_confidence(0.5);
        assert_eq!(heads, ProposerConfig::Heads);
    }

    #[test]
    fn a_tree_width_reaches_every_eagle_and_round_trips() {
        let config: ProposerConfig = "chain:ngram,eagle,eagle:own".parse().unwrap();
        let wide = config.clone().with_draft_tree_width(6);
        let ProposerConfig::Chain(members) = &wide else {
            panic!("a chain")
        };
        let widths: Vec<usize> = members
            .iter()
            .filter_map(|m| match m {
                ProposerConfig::Eagle { tree_width, .. } => Some(*tree_width),
                _ => None,
            })
            .collect();
        assert_eq!(widths, [6, 6]);
        assert_eq!(members[0], ProposerConfig::Ngram { min: 1, max: 3 });
        let json = serde_json::to_string(&wide).unwrap();
        assert!(json.contains(r#""tree_width":6"#), "{json}");
        assert_eq!(serde_json::from_str::<ProposerConfig>(&json).unwrap(), wide);
        // The default width is not written, and reads back as the default.
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("tree_width"), "{json}");
        let back: ProposerConfig = serde_json::from_str(r#"{"eagle": {}}"#).unwrap();
        assert_eq!(back, "eagle".parse().unwrap());
        let e = serde_json::from_str::<ProposerConfig>(r#"{"eagle": {"tree_width": 0}}"#)
            .unwrap()
            .build_with(&ModelInfo::new(50, 64), None)
            .err()
            .expect("width 0");
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "tree_width",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn corpus_forms_round_trip_and_find_the_shipped_corpus() {
        for text in [
            "corpus",
            "corpus:a/b.safetensors:2:3",
            "corpus::2:3",
            "corpus:dir:1:4",
        ] {
            let config: ProposerConfig = text.parse().unwrap();
            let back: ProposerConfig = config.to_string().parse().unwrap();
            assert_eq!(back, config, "{text}");
            let json = serde_json::to_string(&config).unwrap();
            assert_eq!(
                serde_json::from_str::<ProposerConfig>(&json).unwrap(),
                config
            );
        }
        // A path may hold colons; two trailing numbers are the lengths.
        assert_eq!(
            "corpus:c:/x".parse::<ProposerConfig>().unwrap(),
            ProposerConfig::Corpus {
                path: Some("c:/x".into()),
                min: 1,
                max: 4
            }
        );
        assert!("corpus:".parse::<ProposerConfig>().is_err());
        let json: ProposerConfig = serde_json::from_str(r#"{"corpus": {"max": 2}}"#).unwrap();
        assert_eq!(
            json,
            ProposerConfig::Corpus {
                path: None,
                min: 1,
                max: 2
            }
        );
        // The shipped corpus is the draft folder's file, when it has one.
        let dir = std::env::temp_dir().join(format!("shipped-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config: ProposerConfig = "chain:ngram,corpus,corpus:own".parse().unwrap();
        let none = config.clone().with_shipped_draft(Some(&dir));
        assert_eq!(none.to_string(), "chain:ngram:1:3,corpus,corpus:own:1:4");
        let e = none
            .build_with(&ModelInfo::new(50, 64), None)
            .err()
            .expect("no corpus");
        assert!(e.to_string().contains("corpus:PATH"), "{e}");
        let tokens = tch::Tensor::from_slice(&[1i64, 2, 3]);
        tch::Tensor::write_safetensors(&[("tokens", &tokens)], dir.join(SHIPPED_CORPUS_FILE))
            .unwrap();
        let found = config.with_shipped_draft(Some(&dir));
        let ProposerConfig::Chain(members) = &found else {
            panic!("a chain")
        };
        assert_eq!(
            members[1],
            ProposerConfig::Corpus {
                path: Some(dir.join(SHIPPED_CORPUS_FILE).display().to_string()),
                min: 1,
                max: 4
            }
        );
        assert!(members[1]
            .build_with(&ModelInfo::new(50, 64), None)
            .unwrap()
            .fork()
            .is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn auto_is_the_draft_with_lookup_where_one_is_shipped_else_heads_else_lookup() {
        // The default, in each form.
        assert_eq!(ProposerConfig::default(), ProposerConfig::Auto);
        let auto: ProposerConfig = "auto".parse().unwrap();
        assert_eq!(auto, ProposerConfig::Auto);
        assert_eq!(auto.to_string(), "auto");
        assert_eq!(serde_json::to_string(&auto).unwrap(), r#""auto""#);
        assert_eq!(
            serde_json::from_str::<ProposerConfig>(r#""auto""#).unwrap(),
            auto
        );
        let config = crate::config::BlockwiseConfig::from_json(r#"{"block_size": 4}"#).unwrap();
        assert_eq!(config.proposer, ProposerConfig::Auto);
        // With a shipped draft: lookup of 3-grams, then the draft, inside chains too.
        let dir = std::path::Path::new("drafts/some-model");
        let filled = auto.clone().with_shipped_draft(Some(dir));
        assert_eq!(filled, ProposerConfig::recommended(dir));
        assert_eq!(
            filled.to_string(),
            "chain:ngram:3:3,eagle:drafts/some-model"
        );
        assert!(filled.reads_embeddings());
        let in_chain: ProposerConfig = "chain:ngram:2:2,auto".parse().unwrap();
        assert_eq!(
            in_chain.clone().with_shipped_draft(Some(dir)).to_string(),
            "chain:ngram:2:2,chain:ngram:3:3,eagle:drafts/some-model"
        );
        // Without one it stays `auto`, and builds the heads where the model has them...
        assert_eq!(auto.clone().with_shipped_draft(None), ProposerConfig::Auto);
        let mut with_heads = ModelInfo::new(50, 64);
        with_heads.num_heads = 3;
        assert_eq!(
            auto.clone().without_auto(&with_heads),
            ProposerConfig::Heads
        );
        assert_eq!(
            in_chain
                .clone()
                .without_auto(&ModelInfo::new(50, 64))
                .to_string(),
            "chain:ngram:2:2,ngram:1:3"
        );
        assert!(!auto.reads_embeddings());
        assert!(auto.build_with(&with_heads, None).unwrap().needs_heads());
        assert!(auto.build(&with_heads).unwrap().needs_heads());
        // ... else prompt lookup: it proposes what followed the last token before.
        let plain = ModelInfo::new(50, 64);
        let mut lookup = auto.build_with(&plain, None).unwrap();
        assert!(!lookup.needs_heads());
        let tokens = [7, 8, 9, 10, 11, 7, 8];
        lookup.begin(&tokens).unwrap();
        let ctx = crate::proposer::ProposalContext::new(&tokens, 9, 3);
        assert_eq!(lookup.propose(&ctx).unwrap(), [10, 11, 7]);
    }

    #[test]
    fn row_proposers_fork_instead_of_being_built_again() {
        // A chain forks only when every member does: an n-gram member that could not made
        // `chain:ngram,eagle` load and pack the draft again for every row (about 0.17 s each).
        let info = ModelInfo::new(50, 64);
        for text in [
            "none",
            "ngram",
            "ngram:2:4",
            "lookahead:3:2:2",
            "heads",
            "chain:ngram,heads",
        ] {
            let config: ProposerConfig = text.parse().unwrap();
            let built = config.build_with(&info, None).unwrap();
            assert!(built.fork().is_some(), "{text} does not fork");
        }
    }
}
