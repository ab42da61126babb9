//! Lossless sampling (invariant 6 of docs/invariants.md): blockwise sampling generates sequences with the
//! base model's own distribution, checked by a chi-square test against the exact distribution
//! of every continuation, enumerated from a small float64 model. Seeds are fixed, so every run
//! draws the same samples; each test states its significance level. The broken-rule twins show
//! the test can fail.

use std::collections::BTreeMap;

use blockwise::acceptance::{lossless, Draw, SampledView, Verdict};
use blockwise::feature::{DraftWeights, FeatureDraft, FeatureDraftConfig, FeatureDraftProposer};
use blockwise::proposer::DraftModel;
use blockwise::proposer::{Proposal, ProposalContext};
use blockwise::sampling::Sampler;
use blockwise::testing::{
    check_loop_invariants, check_sampling, sequence_distribution, ChiSquare, RandomProposer,
};
use blockwise::{
    AcceptanceCriterion, BlockView, Blockwise, BlockwiseDecoder, DecodeConfig, Error, Exact,
    GreedyDecoder, HeadsProposer, NGram, NoProposer, Proposer, SamplingConfig, TopK, Transformer,
    TransformerConfig, Typical,
};

/// Significance level: a correct sampler fails a test with probability 0.001 (and, the seeds
/// being fixed, either always or never).
const ALPHA: f64 = 0.001;
const VOCAB: i64 = 6;
const LEN: usize = 3;
const SAMPLES: usize = 3000;
const PROMPT: [i64; 3] = [1, 4, 2];

fn base() -> Transformer {
    Transformer::new_seeded(TransformerConfig::tiny(VOCAB, 3), 11, tch::Device::Cpu).unwrap()
}

fn draft() -> DraftModel<Transformer> {
    let d =
        Transformer::new_seeded(TransformerConfig::tiny(VOCAB, 0), 29, tch::Device::Cpu).unwrap();
    DraftModel::new(d, VOCAB).unwrap()
}

/// A feature-level draft for [`base`] with its weights nudged at random, scored on a shortlist
/// of 5 of the 6 ids (id 3 is never proposed), in `weights`, with a confidence floor of
/// `floor` (0: none).
fn feature_draft(weights: DraftWeights, floor: f64) -> FeatureDraftProposer {
    let model = base();
    let c = model.config();
    let draft = FeatureDraft::new(
        FeatureDraftConfig::for_base(c.d_model, VOCAB),
        3,
        tch::Device::Cpu,
    )
    .unwrap()
    .with_shortlist(vec![0, 1, 2, 4, 5])
    .unwrap();
    tch::manual_seed(3);
    tch::no_grad(|| {
        for (_, mut v) in draft.var_store().variables() {
            let noise = tch::Tensor::randn(v.size(), (tch::Kind::Float, tch::Device::Cpu)) * 0.1;
            v.copy_(&(&v + noise));
        }
    });
    FeatureDraftProposer::new(draft, &model)
        .unwrap()
        .with_weights(weights)
        .unwrap()
        .with_min_confidence(floor)
        .unwrap()
}

/// The random model is confident (one continuation has probability 0.98 at temperature 1);
/// these temperatures spread its distribution over enough continuations to test.
const HOT: f64 = 8.0;
const WARM: f64 = 5.0;

fn sampling(temperature: f64) -> SamplingConfig {
    SamplingConfig::new(temperature)
}

fn exact(s: &SamplingConfig) -> BTreeMap<Vec<i64>, f64> {
    let mut model = base();
    sequence_distribution(&mut model, &PROMPT, LEN, s).unwrap()
}

/// Samples `SAMPLES` continuations with a blockwise decoder and tests them against `exact`.
fn blockwise_fit(
    s: &SamplingConfig,
    proposer: impl Proposer + 'static,
    criterion: impl AcceptanceCriterion + 'static,
    seed: u64,
) -> (ChiSquare, f64) {
    let exact = exact(s);
    let mut decoder = Blockwise::builder(base())
        .block_size(4)
        .proposer(proposer)
        .criterion(criterion)
        .seed(seed)
        .build()
        .unwrap();
    let config = DecodeConfig::new(LEN).with_sampling(s.clone());
    let mut accepted = (0usize, 0usize);
    let fit = check_sampling(&mut decoder, &exact, &PROMPT, &config, SAMPLES).unwrap();
    for _ in 0..50 {
        let out = decoder.decode(&PROMPT, &config).unwrap();
        accepted.0 += out.stats.new_tokens;
        accepted.1 += out.stats.iterations;
    }
    (fit, accepted.0 as f64 / accepted.1 as f64)
}

#[test]
fn plain_sampling_matches_the_model() {
    let s = sampling(HOT);
    let exact = exact(&s);
    let mut decoder = GreedyDecoder::new(base()).seed(5);
    let config = DecodeConfig::new(LEN).with_sampling(s);
    let fit = check_sampling(&mut decoder, &exact, &PROMPT, &config, SAMPLES).unwrap();
    eprintln!("plain: {fit:?}");
    assert!(fit.p_value > ALPHA, "{fit:?}");
    assert!(fit.df >= 50, "too few cells to test anything: {fit:?}");
}

#[test]
fn lossless_with_a_sampling_draft_matches_the_model() {
    let (fit, mean) = blockwise_fit(&sampling(HOT), draft(), Exact, 1);
    eprintln!("draft: {fit:?}, mean accepted {mean:.2}");
    assert!(fit.p_value > ALPHA, "{fit:?}");
    assert!(
        mean > 1.2,
        "the draft should get proposals accepted: {mean}"
    );
}

#[test]
fn lossless_with_a_sampling_feature_draft_matches_the_model() {
    // Its guesses drawn from its own distribution over the shortlist (libtorch's products and
    // the native kernels'), and cut by a confidence floor.
    for (weights, floor, seed) in [
        (DraftWeights::NativeF32, 0.0, 5),
        (DraftWeights::F32, 0.04, 6),
    ] {
        let (fit, mean) = blockwise_fit(&sampling(HOT), feature_draft(weights, floor), Exact, seed);
        eprintln!("feature draft {weights}, floor {floor}: {fit:?}, mean accepted {mean:.2}");
        assert!(fit.p_value > ALPHA, "{weights}, floor {floor}: {fit:?}");
        assert!(
            mean > 1.2,
            "{weights}, floor {floor}: the draft should get proposals accepted: {mean}"
        );
    }
}

#[test]
fn lossless_with_sampled_heads_matches_the_model() {
    let (fit, mean) = blockwise_fit(&sampling(WARM), HeadsProposer, Exact, 2);
    eprintln!("heads: {fit:?}, mean accepted {mean:.2}");
    assert!(fit.p_value > ALPHA, "{fit:?}");
}

#[test]
fn lossless_with_point_masses_and_cuts_matches_the_model() {
    // Random proposals (point masses) under top-k and top-p, whose cut supports make the
    // residual and the target share zeros.
    let s = sampling(WARM).with_top_k(4).with_top_p(0.9);
    let (fit, mean) = blockwise_fit(&s, RandomProposer::new(VOCAB, 3), Exact, 3);
    eprintln!("random: {fit:?}, mean accepted {mean:.2}");
    assert!(fit.p_value > ALPHA, "{fit:?}");
}

/// The classic bug: on rejection, draw from the target instead of the residual.
struct TargetOnRejection;

impl AcceptanceCriterion for TargetOnRejection {
    fn accept(&self, view: &BlockView<'_>) -> usize {
        Exact.accept(view)
    }
    fn supports_sampling(&self) -> bool {
        true
    }
    fn accept_sampled(&self, view: &SampledView<'_>) -> Verdict {
        Verdict {
            accepted: lossless(view).accepted,
            next: Draw::Target,
        }
    }
}

/// Another: ignore the proposer's probabilities (treat sampled drafts as point masses).
struct IgnoresDraftProbabilities;

impl AcceptanceCriterion for IgnoresDraftProbabilities {
    fn accept(&self, view: &BlockView<'_>) -> usize {
        Exact.accept(view)
    }
    fn supports_sampling(&self) -> bool {
        true
    }
    fn accept_sampled(&self, view: &SampledView<'_>) -> Verdict {
        let accepted = (0..view.len())
            .take_while(|&i| view.uniform(i) < view.target_prob(i))
            .count();
        Verdict {
            accepted,
            next: if accepted < view.len() {
                Draw::Residual
            } else {
                Draw::Target
            },
        }
    }
}

#[test]
fn a_broken_rejection_rule_fails_the_test() {
    let (fit, _) = blockwise_fit(&sampling(HOT), draft(), TargetOnRejection, 1);
    eprintln!("target on rejection: {fit:?}");
    assert!(
        fit.p_value < ALPHA,
        "the broken rule went unnoticed: {fit:?}"
    );
    let (fit, _) = blockwise_fit(&sampling(HOT), draft(), IgnoresDraftProbabilities, 1);
    eprintln!("ignores q: {fit:?}");
    assert!(
        fit.p_value < ALPHA,
        "the broken rule went unnoticed: {fit:?}"
    );
    // The feature draft's guesses are draws too, not its most likely tokens: taking them for
    // point masses is caught.
    let draft = feature_draft(DraftWeights::F32, 0.0);
    let (fit, _) = blockwise_fit(&sampling(HOT), draft, IgnoresDraftProbabilities, 4);
    eprintln!("feature draft, ignores q: {fit:?}");
    assert!(
        fit.p_value < ALPHA,
        "the broken rule went unnoticed: {fit:?}"
    );
}

#[test]
fn without_proposals_blockwise_sampling_is_plain_sampling_draw_for_draw() {
    // Both decoders draw one uniform per token from the same stream: identical output.
    let model = base();
    let mut plain = GreedyDecoder::new(model);
    let mut blockwise = Blockwise::builder(base())
        .block_size(4)
        .proposer(NoProposer)
        .build()
        .unwrap();
    for seed in 0..8 {
        let s = sampling(WARM).with_top_p(0.95).with_seed(seed);
        let config = DecodeConfig::new(20).with_sampling(s).with_eos(vec![5]);
        let a = plain.decode(&PROMPT, &config).unwrap();
        let b = blockwise.decode(&PROMPT, &config).unwrap();
        assert_eq!(a.tokens, b.tokens, "seed {seed}");
    }
}

#[test]
fn a_seed_makes_sampling_reproducible() {
    let mut decoder = Blockwise::builder(base())
        .block_size(4)
        .proposer(HeadsProposer)
        .build()
        .unwrap();
    let config = DecodeConfig::new(30).with_sampling(sampling(HOT).with_seed(42));
    let a = decoder.decode(&PROMPT, &config).unwrap();
    let b = decoder.decode(&PROMPT, &config).unwrap();
    assert_eq!(a.tokens, b.tokens);
    let other = DecodeConfig::new(30).with_sampling(sampling(HOT).with_seed(43));
    let c = decoder.decode(&PROMPT, &other).unwrap();
    assert_ne!(
        a.tokens, c.tokens,
        "another seed should draw another sequence"
    );
}

#[test]
fn typical_acceptance_keeps_the_loop_invariants_and_accepts_more() {
    let s = sampling(WARM);
    let mut lens = Vec::new();
    for criterion in [
        Box::new(Exact) as Box<dyn AcceptanceCriterion>,
        Box::new(Typical::new(0.3, 0.6).unwrap()),
    ] {
        let mut decoder = Blockwise::builder(base())
            .block_size(4)
            .proposer(draft())
            .criterion(criterion)
            .seed(9)
            .build()
            .unwrap();
        let (mut tokens, mut iterations) = (0, 0);
        for i in 0..40 {
            let config = DecodeConfig::new(1 + i % 17)
                .with_sampling(s.clone())
                .with_eos(vec![0]);
            let out = decoder.decode(&PROMPT, &config).unwrap();
            check_loop_invariants(&out, &config, 4).unwrap();
            tokens += out.stats.new_tokens;
            iterations += out.stats.iterations;
        }
        lens.push(tokens as f64 / iterations as f64);
    }
    eprintln!(
        "mean accepted: lossless {:.2}, typical {:.2}",
        lens[0], lens[1]
    );
    assert!(lens[1] > lens[0], "{lens:?}");
}

#[test]
fn greedy_only_criteria_and_bad_settings_are_refused() {
    let config = DecodeConfig::new(5).with_sampling(sampling(1.0));
    let mut decoder = Blockwise::builder(base())
        .proposer(NGram::new(1, 2).unwrap())
        .criterion(TopK::new(2).unwrap())
        .build()
        .unwrap();
    match decoder.decode(&PROMPT, &config) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "acceptance"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let mut decoder = Blockwise::builder(base()).build().unwrap();
    for (bad, name) in [
        (sampling(0.0), "temperature"),
        (sampling(1.0).with_top_k(0), "top_k"),
        (sampling(1.0).with_top_p(2.0), "top_p"),
    ] {
        let config = DecodeConfig::new(5).with_sampling(bad);
        match decoder.decode(&PROMPT, &config) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, name),
            other => panic!("expected a config error for {name}, got {other:?}"),
        }
        match GreedyDecoder::new(base()).decode(&PROMPT, &config) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, name),
            other => panic!("expected a config error for {name}, got {other:?}"),
        }
    }
}

/// A user proposer that claims distributions inconsistent with its tokens.
struct Inconsistent {
    zero_probability: bool,
}

impl Proposer for Inconsistent {
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> blockwise::Result<Vec<i64>> {
        Ok(vec![1; ctx.max_tokens])
    }
    fn propose_sampled(
        &mut self,
        ctx: &ProposalContext<'_>,
        _sampler: &mut Sampler<'_>,
    ) -> blockwise::Result<Proposal> {
        let n = ctx.max_tokens;
        let q = if self.zero_probability {
            // Token 1 proposed, all mass on token 2.
            vec![vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0]; n]
        } else {
            vec![vec![0.2; 5]; n] // one entry short of the vocabulary
        };
        Ok(Proposal::sampled(vec![1; n], q))
    }
}

#[test]
fn proposers_whose_distributions_do_not_fit_their_tokens_are_errors() {
    for zero_probability in [true, false] {
        let mut decoder = Blockwise::builder(base())
            .block_size(3)
            .proposer(Inconsistent { zero_probability })
            .build()
            .unwrap();
        let config = DecodeConfig::new(5).with_sampling(sampling(1.0));
        match decoder.decode(&PROMPT, &config) {
            Err(Error::Contract { component, .. }) => assert_eq!(component, "proposer"),
            other => panic!("expected a contract error, got {other:?}"),
        }
    }
}

mod properties {
    //! Invariant 2 under sampling, over random models, prompts, block sizes, lengths, EOS ids,
    //! temperatures and proposers; and invariant 3 on the heads path.
    use super::*;
    use blockwise::testing::check_combined_calls;
    use blockwise::testing::strategies::{model_case, ModelCase};
    use proptest::prelude::*;

    fn decoder(case: &ModelCase, which: u8, typical: bool) -> Blockwise<Transformer> {
        let vocab = case.config.vocab_size;
        let proposer: Box<dyn Proposer> = match which % 4 {
            0 => Box::new(HeadsProposer),
            1 => Box::new(RandomProposer::new(vocab, case.proposer_seed)),
            2 => Box::new(NGram::new(1, 3).unwrap()),
            _ => {
                let mut c = case.config.clone();
                c.num_proposal_heads = 0;
                let d = Transformer::new_seeded(c, case.proposer_seed, tch::Device::Cpu).unwrap();
                Box::new(DraftModel::new(d, vocab).unwrap())
            }
        };
        let criterion: Box<dyn AcceptanceCriterion> = if typical {
            Box::new(Typical::DEFAULT)
        } else {
            Box::new(Exact)
        };
        Blockwise::builder(case.model().unwrap())
            .block_size(case.block_size)
            .proposer(proposer)
            .criterion(criterion)
            .seed(case.seed)
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn sampled_decoding_keeps_the_loop_invariants(
            case in model_case(),
            which in 0u8..4,
            typical in any::<bool>(),
            temperature in prop_oneof![Just(0.5), Just(1.0), Just(4.0)],
            top_p in prop_oneof![Just(None), Just(Some(0.8))],
        ) {
            let mut d = decoder(&case, which, typical);
            let mut s = SamplingConfig::new(temperature);
            s.top_p = top_p;
            let config = case.decode.clone().with_sampling(s);
            let out = d.decode(&case.prompt, &config).unwrap();
            check_loop_invariants(&out, &config, case.block_size)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if which % 4 == 0 {
                check_combined_calls(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
    }
}
