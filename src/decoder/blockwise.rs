//! The predict, verify, accept loop (Stern, Shazeer & Uszkoreit 2018).

use std::time::Instant;

use tch::Tensor;

use super::sampled::{judge_sampled, pick_first};
use super::{empty_output, seconds_since, BlockwiseDecoder, Budget, DecodeOutput, DraftTree};
use crate::acceptance::{AcceptanceCriterion, BlockView, Exact};
use crate::config::{BlockwiseConfig, DecodeConfig, VerifierConfig};
use crate::error::{Error, Result};
use crate::model::{check_tokens, CausalLm};
use crate::policy::{BlockOutcome, BlockPolicy, Fixed};
use crate::proposer::{NoProposer, Proposal, ProposalContext, Proposer};
use crate::rng::SeededRng;
use crate::sampling::Sampler;
use crate::stats::{DecodeStats, StopReason};
use crate::verifier::{CachedVerifier, RecomputeVerifier, ScoreRequest, Verifier};

/// Blockwise parallel decoding: a proposer guesses up to `k - 1` tokens after the base model's
/// own next token, one verifier call scores the whole block, and the acceptance criterion keeps
/// the longest prefix it agrees with.
///
/// Under [`Exact`] acceptance the output equals [`GreedyDecoder`](super::GreedyDecoder)'s.
/// Under sampling ([`DecodeConfig::sampling`]) the decoder draws with its own seeded generator
/// and [`Exact`] becomes speculative sampling's lossless rule: the output has the distribution
/// of plain sampling from the base model.
///
/// ```no_run
/// use blockwise::{Blockwise, BlockwiseDecoder, DecodeConfig, HeadsProposer, Transformer,
///                 TransformerConfig};
/// # fn main() -> blockwise::Result<()> {
/// let model = Transformer::new_seeded(TransformerConfig::tiny(100, 3), 7, tch::Device::Cpu)?;
/// let mut decoder = Blockwise::builder(model)
///     .block_size(4)
///     .proposer(HeadsProposer)
///     .build()?;
/// let out = decoder.decode(&[1, 2, 3], &DecodeConfig::new(20))?;
/// println!("{:?} in {} model calls", out.tokens, out.stats.model_calls);
/// # Ok(()) }
/// ```
pub struct Blockwise<M> {
    model: M,
    proposer: Box<dyn Proposer>,
    verifier: Box<dyn Verifier>,
    criterion: Box<dyn AcceptanceCriterion>,
    policy: Box<dyn BlockPolicy>,
    block_size: usize,
    tie_guard: Option<f64>,
    rng: SeededRng,
}

impl<M> std::fmt::Debug for Blockwise<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blockwise")
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

/// Assembles a [`Blockwise`] decoder; [`BlockwiseBuilder::build`] checks the parts fit.
pub struct BlockwiseBuilder<M> {
    model: M,
    proposer: Box<dyn Proposer>,
    verifier: Box<dyn Verifier>,
    criterion: Box<dyn AcceptanceCriterion>,
    policy: Box<dyn BlockPolicy>,
    block_size: usize,
    tie_guard: Option<f64>,
    seed: u64,
}

impl<M: CausalLm> BlockwiseBuilder<M> {
    /// Seeds the decoder's generator (default 0); a per-call
    /// [`SamplingConfig::seed`](crate::SamplingConfig) reseeds it again.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Tie guard: where a verified block position's top-2 logit margin is below `margin`, the
    /// block is cut there and the next token is decided by a one-token call, as greedy decoding
    /// decides it. A block-shaped forward rounds differently from a one-token forward, so in
    /// low precision a near-tie can otherwise flip; the guard costs one extra call per near-tie.
    /// It has no effect under sampling.
    pub fn tie_guard(mut self, margin: f64) -> Self {
        self.tie_guard = Some(margin);
        self
    }

    /// Block size `k` (default 4): the always-right token plus up to `k - 1` proposals.
    pub fn block_size(mut self, k: usize) -> Self {
        self.block_size = k;
        self
    }

    /// The proposer (default: none, which decodes greedily through the loop).
    pub fn proposer(mut self, proposer: impl Proposer + 'static) -> Self {
        self.proposer = Box::new(proposer);
        self
    }

    /// The verifier (default: [`CachedVerifier`]).
    pub fn verifier(mut self, verifier: impl Verifier + 'static) -> Self {
        self.verifier = Box::new(verifier);
        self
    }

    /// The block-size policy (default: [`Fixed`], always `k - 1` proposals). See
    /// [`policy`](crate::policy) for adaptive and cost-aware ones.
    pub fn policy(mut self, policy: impl BlockPolicy + 'static) -> Self {
        self.policy = Box::new(policy);
        self
    }

    /// The acceptance criterion (default: [`Exact`]).
    pub fn criterion(mut self, criterion: impl AcceptanceCriterion + 'static) -> Self {
        self.criterion = Box::new(criterion);
        self
    }

    /// Checks the block size against the model and the proposer.
    pub fn build(self) -> Result<Blockwise<M>> {
        let k = self.block_size;
        if k == 0 {
            return Err(Error::config(
                "block_size",
                "must be at least 1 (1 is plain greedy decoding)",
            ));
        }
        if let Some(m) = self.tie_guard {
            if !(m >= 0.0 && m.is_finite()) {
                return Err(Error::config(
                    "tie_guard",
                    format!("must be a finite margin >= 0, got {m}"),
                ));
            }
        }
        let info = self.model.info();
        if k > info.max_context {
            return Err(Error::config(
                "block_size",
                format!(
                    "is {k}, more than the model's context of {} tokens",
                    info.max_context
                ),
            ));
        }
        if self.proposer.needs_heads() && k > 1 && info.num_heads < k - 1 {
            return Err(Error::config(
                "block_size",
                format!(
                    "is {k}, which needs {} proposal heads; the model has {}",
                    k - 1,
                    info.num_heads
                ),
            ));
        }
        Ok(Blockwise {
            model: self.model,
            proposer: self.proposer,
            verifier: self.verifier,
            criterion: self.criterion,
            policy: self.policy,
            block_size: k,
            tie_guard: self.tie_guard,
            rng: SeededRng::new(self.seed),
        })
    }
}

impl<M: CausalLm> Blockwise<M> {
    /// Starts assembling a decoder around `model` (which may be a `&mut` borrow).
    pub fn builder(model: M) -> BlockwiseBuilder<M> {
        BlockwiseBuilder {
            model,
            proposer: Box::new(NoProposer),
            verifier: Box::new(CachedVerifier::new()),
            criterion: Box::new(Exact),
            policy: Box::new(Fixed),
            block_size: 4,
            tie_guard: None,
            seed: 0,
        }
    }

    /// Builds a decoder from configuration. `embeddings` (`[V, D]`) serve embedding-distance
    /// acceptance; pass `None` otherwise. A configuration with a tree is refused (trees are
    /// verified by [`BatchBlockwise`](crate::decoder::BatchBlockwise)). A feature draft that
    /// reads inner layers sets the model's taps ([`CausalLm::set_feature_taps`]).
    pub fn from_config(
        model: M,
        config: &BlockwiseConfig,
        embeddings: Option<&Tensor>,
    ) -> Result<Self> {
        if let Some(tree) = &config.tree {
            return Err(Error::config(
                "tree",
                format!(
                    "Blockwise verifies chains; a tree ({tree}) is verified by BatchBlockwise \
                     (BatchBlockwise::builder(model).config(..))"
                ),
            ));
        }
        let criterion = config.acceptance.build(config.min_block, embeddings)?;
        let mut builder = Blockwise::builder(model)
            .block_size(config.block_size)
            .criterion(criterion)
            .policy(config.policy.build()?);
        if let Some(m) = config.tie_guard {
            builder = builder.tie_guard(m);
        }
        // A feature draft that reads inner layers needs the model to hand them over.
        builder
            .model
            .set_feature_taps(&config.proposer.feature_taps()?)?;
        let proposer = config.proposer.build_for(&builder.model)?;
        let builder = builder.proposer(proposer);
        let builder = match config.verifier {
            VerifierConfig::Cached => builder.verifier(CachedVerifier::new()),
            VerifierConfig::Recompute => builder.verifier(RecomputeVerifier::new()),
        };
        builder.build()
    }

    /// The block size `k`.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, mutably: for example to decode greedily with it between blockwise decodes
    /// (each decode starts from an empty cache).
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// The model back.
    pub fn into_model(self) -> M {
        self.model
    }

    fn request(&self, config: &DecodeConfig) -> ScoreRequest {
        let sampling = config.sampling.is_some();
        ScoreRequest {
            candidates: self.criterion.candidates_needed().max(1),
            heads: self.proposer.needs_heads() && self.block_size > 1,
            prefill_chunk: config.prefill_chunk,
            margins: self.tie_guard.is_some() && !sampling,
            head_count: Some(self.block_size.saturating_sub(1)),
            logits: sampling,
            hidden: self.proposer.needs_hidden(),
        }
    }

    /// Hands the hidden states of what the verifier just committed to a proposer that reads
    /// them.
    fn hand_hidden(&mut self, req: ScoreRequest) -> Result<()> {
        if !req.hidden {
            return Ok(());
        }
        let hidden = self
            .verifier
            .committed_hidden()
            .ok_or(Error::MissingCapability {
                component: "a feature-level draft",
                capability:
                    "a model that returns final hidden states (and a verifier that keeps them)",
            })?;
        self.proposer.observe_hidden(&hidden)
    }

    /// The proposer's guesses, checked and cut to what the block may hold: at most `room`
    /// tokens, nothing after an EOS token. Under sampling the proposer draws with the decoder's
    /// generator.
    fn propose(&mut self, ctx: &ProposalContext<'_>, config: &DecodeConfig) -> Result<Proposal> {
        if ctx.max_tokens == 0 {
            return Ok(Proposal::default());
        }
        let mut proposal = match &config.sampling {
            None => Proposal::points(self.proposer.propose(ctx)?),
            Some(s) => {
                let draws = self.criterion.samples_proposals();
                let mut sampler = Sampler::new(s, &mut self.rng, draws);
                self.proposer.propose_sampled(ctx, &mut sampler)?
            }
        };
        proposal.truncate(ctx.max_tokens);
        check_tokens("proposal", &proposal.tokens, self.model.info().vocab_size)?;
        if let Some(eos) = proposal.tokens.iter().position(|&t| config.is_eos(t)) {
            proposal.truncate(eos + 1);
        }
        Ok(proposal)
    }
}

impl<M: CausalLm> BlockwiseDecoder for Blockwise<M> {
    fn decode(&mut self, prompt: &[i64], config: &DecodeConfig) -> Result<DecodeOutput> {
        self.decode_streaming(prompt, config, &mut |_| {})
    }

    fn decode_streaming(
        &mut self,
        prompt: &[i64],
        config: &DecodeConfig,
        on_tokens: &mut dyn FnMut(&[i64]),
    ) -> Result<DecodeOutput> {
        let _guard = tch::no_grad_guard();
        let t0 = Instant::now();
        let info = self.model.info().clone();
        config.check(prompt, &info)?;
        let budget = Budget::new(config, info.max_context);
        if budget.remaining(0, prompt.len()) == 0 {
            return Ok(empty_output(
                prompt.len(),
                budget.exhausted(0, config.on_context_full)?,
            ));
        }
        if let Some(s) = &config.sampling {
            if !self.criterion.supports_sampling() {
                return Err(Error::config(
                    "acceptance",
                    "this criterion is defined for greedy decoding only; under sampling use \
                     lossless (exact) or typical acceptance",
                ));
            }
            if let Some(seed) = s.seed {
                self.rng = SeededRng::new(seed);
            }
        }
        let req = self.request(config);
        let mut stats = DecodeStats::new(prompt.len(), self.block_size);

        self.policy.begin();
        let tp = Instant::now();
        self.proposer.begin(prompt)?;
        stats.proposer_s += seconds_since(tp);

        let tm = Instant::now();
        let step = self
            .verifier
            .start(&mut self.model, prompt, req)
            .map_err(|e| e.in_sequence_at(prompt.len().saturating_sub(1)))?;
        stats.model_s += seconds_since(tm);
        stats.model_calls += 1;
        let tp = Instant::now();
        self.hand_hidden(req)?;
        stats.proposer_s += seconds_since(tp);

        let mut seq = prompt.to_vec();
        let mut next = pick_first(&step, config.sampling.as_ref(), &mut self.rng)?;
        let mut heads = step.heads;
        let stop = loop {
            let room = budget.remaining(seq.len() - prompt.len(), seq.len());
            if room == 0 {
                break budget.exhausted(seq.len() - prompt.len(), config.on_context_full)?;
            }
            // A block that can hold only the token the last call chose needs no verify call:
            // that call already decided it, and nothing follows it in this decode.
            if room == 1 || config.is_eos(next) {
                seq.push(next);
                on_tokens(&[next]);
                stats.record_free_iteration();
                if config.is_eos(next) {
                    break StopReason::Eos;
                }
                continue;
            }
            // Predict: the base model's own next token, then the proposer's guesses.
            let limit = (self.block_size - 1).min(room - 1);
            let max_tokens = self.policy.allow(limit).min(limit);
            let ctx = ProposalContext::new(&seq, next, max_tokens)
                .with_heads(heads.as_ref().map(|h| h.argmax.as_slice()))
                .with_head_logits(heads.as_ref().and_then(|h| h.logits.as_ref()));
            let tp = Instant::now();
            let mut proposal = self.propose(&ctx, config)?;
            let kind = self.proposer.kind();
            let keep = self.policy.trim(proposal.len(), kind).min(proposal.len());
            proposal.truncate(keep);
            let propose_s = seconds_since(tp);
            stats.proposer_s += propose_s;
            stats.proposed += proposal.len();
            let mut block = Vec::with_capacity(proposal.len() + 1);
            block.push(next);
            block.extend_from_slice(&proposal.tokens);

            // Verify: one base-model call over the whole block.
            let tm = Instant::now();
            let scores = self
                .verifier
                .verify(&mut self.model, &block, req)
                .map_err(|e| e.in_sequence_at(seq.len()))?;
            let mut verify_s = seconds_since(tm);
            stats.model_calls += 1;

            // Accept: the longest prefix the criterion agrees with, plus the first token.
            if scores.len() < block.len() {
                return Err(Error::Contract {
                    component: "verifier",
                    problem: format!(
                        "returned {} score rows for a block of {}",
                        scores.len(),
                        block.len()
                    ),
                });
            }
            // Under sampling the token after the accepted ones is drawn now, from the rows
            // this verify returned.
            let (accepted, drawn) = match &config.sampling {
                None => {
                    let view = BlockView::new(&proposal.tokens, scores.ranked(), scores.width())
                        .ok_or_else(|| Error::Contract {
                            component: "verifier",
                            problem: "returned too few ranked candidates".into(),
                        })?;
                    (self.criterion.accept(&view), None)
                }
                Some(s) => {
                    let (a, t) =
                        judge_sampled(&*self.criterion, s, &mut self.rng, &proposal, &scores)?;
                    (a, Some(t))
                }
            };
            if accepted > proposal.len() {
                return Err(Error::Contract {
                    component: "acceptance criterion",
                    problem: format!("accepted {accepted} of {} proposed tokens", proposal.len()),
                });
            }
            let mut keep = accepted + 1;
            // Tie guard: cut the block at the first row too close to call; a one-token call
            // decides what follows it.
            let mut rescore = false;
            if let (Some(tol), Some(margins), true) =
                (self.tie_guard, scores.margins(), block.len() > 1)
            {
                if let Some(j) = margins.iter().take(keep).position(|&g| g < tol) {
                    keep = j + 1;
                    rescore = true;
                }
            }
            let tm = Instant::now();
            heads = self.verifier.commit(&mut self.model, keep, req)?;
            verify_s += seconds_since(tm);
            stats.model_s += verify_s;
            self.policy.observe(&BlockOutcome {
                allowed: max_tokens,
                proposed: proposal.len(),
                accepted,
                verify_s,
                propose_s,
                kind,
            });

            let kept = &block[..keep];
            seq.extend_from_slice(kept);
            on_tokens(kept);
            stats.record_iteration(keep);
            let tp = Instant::now();
            self.hand_hidden(req)?;
            let greedy: Vec<i64> = (0..block.len()).map(|i| scores.greedy(i)).collect();
            self.proposer
                .observe_tree(&DraftTree::chain(&proposal.tokens), &greedy)?;
            self.proposer.observe(kept)?;
            stats.proposer_s += seconds_since(tp);
            if kept.iter().any(|&t| config.is_eos(t)) {
                break StopReason::Eos;
            }
            next = if let Some(t) = drawn {
                t
            } else if rescore && budget.remaining(seq.len() - prompt.len(), seq.len()) > 0 {
                let tm = Instant::now();
                let step = self.verifier.rescore_last(&mut self.model, req)?;
                stats.model_s += seconds_since(tm);
                stats.model_calls += 1;
                stats.rescored += 1;
                heads = step.heads;
                step.next
            } else {
                scores.greedy(keep - 1)
            };
        };
        stats.finish(seconds_since(t0));
        Ok(DecodeOutput {
            tokens: seq[prompt.len()..].to_vec(),
            stats,
            stop,
        })
    }
}
