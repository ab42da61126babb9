//! The invariants (docs/invariants.md) as property tests over random float64 models, prompts, block
//! sizes, lengths, EOS ids and proposers. At least 256 cases each (`PROPTEST_CASES` raises it).

use blockwise::acceptance::{Distance, DistanceMetric, EmbeddingDistance, EmbeddingNorm};
use blockwise::policy::{Adaptive, BlockOutcome, BlockPolicy, CostAware, CostModel, Fixed};
use blockwise::proposer::{Chain, CorpusIndex, CorpusLookup, DraftModel};
use blockwise::testing::strategies::{model_case, ModelCase};
use blockwise::testing::{
    check_cache_consistency, check_combined_calls, check_loop_invariants, check_same_output,
    OracleProposer, RandomProposer,
};
use blockwise::{
    AcceptanceCriterion, Blockwise, BlockwiseDecoder, CachedVerifier, ContextPolicy, DecodeOutput,
    Exact, GreedyDecoder, HeadsProposer, Lookahead, MinBlock, NGram, NoProposer, Proposer,
    RecomputeVerifier, TopK, Transformer,
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
        .max(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Heads,
    Random,
    Oracle,
    NGram,
    Draft,
    Chain,
    Lookahead,
    Corpus,
    None,
}

fn greedy(model: &mut Transformer, case: &ModelCase) -> DecodeOutput {
    GreedyDecoder::new(model)
        .decode(&case.prompt, &case.decode)
        .expect("greedy decode")
}

fn proposer(kind: Kind, case: &ModelCase, reference: &DecodeOutput) -> Box<dyn Proposer> {
    let vocab = case.config.vocab_size;
    match kind {
        Kind::Heads => Box::new(HeadsProposer),
        Kind::Random => Box::new(RandomProposer::new(vocab, case.proposer_seed)),
        Kind::Oracle => {
            let mut truth = case.prompt.clone();
            truth.extend_from_slice(&reference.tokens);
            Box::new(OracleProposer::new(
                truth,
                vocab,
                case.corrupt,
                case.proposer_seed,
            ))
        }
        Kind::NGram => Box::new(NGram::new(1, 3).unwrap()),
        Kind::Draft => {
            // A smaller model of the same vocabulary, with other weights.
            let mut c = case.config.clone();
            c.n_layers = 1;
            c.d_model = 8;
            c.n_heads = 2;
            c.d_ff = 16;
            let draft = Transformer::new_seeded(c, case.proposer_seed, tch::Device::Cpu).unwrap();
            Box::new(DraftModel::new(draft, vocab).unwrap())
        }
        Kind::Chain => Box::new(Chain::new(vec![
            Box::new(NGram::new(2, 3).unwrap()),
            Box::new(RandomProposer::new(vocab, case.proposer_seed)),
        ])),
        Kind::Lookahead => {
            // Window, n-gram size and candidates from the case's seed.
            let s = case.proposer_seed as usize;
            Box::new(Lookahead::new(1 + s % 5, 2 + (s / 5) % 3, 1 + (s / 15) % 4).unwrap())
        }
        Kind::Corpus => Box::new(CorpusLookup::new(std::sync::Arc::new(corpus_index(
            case, reference,
        )))),
        Kind::None => Box::new(NoProposer),
    }
}

/// A corpus that is right part of the time: the case's own greedy text with random tokens
/// spliced in (at the case's corruption rate), beside random sequences, over n-grams of 1 to
/// 1-4 tokens (from the case's seed).
fn corpus_index(case: &ModelCase, reference: &DecodeOutput) -> CorpusIndex {
    let vocab = case.config.vocab_size as i64;
    let mut rng = case.proposer_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut truth = case.prompt.clone();
    truth.extend_from_slice(&reference.tokens);
    let spliced: Vec<i64> = truth
        .iter()
        .map(|&t| {
            if (next() % 1000) as f64 / 1000.0 < case.corrupt {
                (next() % vocab as u64) as i64
            } else {
                t
            }
        })
        .collect();
    let noise: Vec<Vec<i64>> = (0..3)
        .map(|_| (0..20).map(|_| (next() % vocab as u64) as i64).collect())
        .collect();
    let mut sequences = vec![spliced];
    sequences.extend(noise);
    let max_n = 1 + (case.proposer_seed % 4) as usize;
    CorpusIndex::new(&sequences, 1, max_n).unwrap()
}

fn blockwise(
    model: &mut Transformer,
    case: &ModelCase,
    proposer: Box<dyn Proposer>,
    criterion: Box<dyn AcceptanceCriterion>,
) -> DecodeOutput {
    let recompute = case.proposer_seed % 4 == 0;
    let b = Blockwise::builder(model)
        .block_size(case.block_size)
        .proposer(proposer)
        .criterion(criterion);
    let b = if recompute {
        b.verifier(RecomputeVerifier::new())
    } else {
        b.verifier(CachedVerifier::new())
    };
    b.build()
        .expect("build")
        .decode(&case.prompt, &case.decode)
        .expect("blockwise decode")
}

/// Invariants 1 and 2 (and 3 on the heads path) for one proposer kind.
fn equals_greedy(kind: Kind, case: &ModelCase) -> Result<(), TestCaseError> {
    let mut model = case.model().expect("model");
    let reference = greedy(&mut model, case);
    let p = proposer(kind, case, &reference);
    let out = blockwise(&mut model, case, p, Box::new(Exact));
    check_same_output(&reference, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    check_loop_invariants(&out, &case.decode, case.block_size)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    if matches!(kind, Kind::Heads) {
        check_combined_calls(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    // Proposals can only save calls: never more than greedy's (a last block that holds only
    // the token the previous call chose costs no call).
    prop_assert!(out.stats.model_calls <= reference.stats.model_calls);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Invariant 1 with the model's own (untrained) heads; invariants 2 and 3 too.
    #[test]
    fn exact_heads_equal_greedy(case in model_case()) {
        equals_greedy(Kind::Heads, &case)?;
    }

    /// Invariant 1 with uniformly random proposals.
    #[test]
    fn exact_random_equals_greedy(case in model_case()) {
        equals_greedy(Kind::Random, &case)?;
    }

    /// Invariant 1 with an oracle that lies at random positions: every accepted length occurs.
    #[test]
    fn exact_oracle_equals_greedy(case in model_case()) {
        equals_greedy(Kind::Oracle, &case)?;
    }

    /// Invariant 1 with n-gram prompt lookup (random models repeat themselves, so it hits).
    #[test]
    fn exact_ngram_equals_greedy(case in model_case()) {
        equals_greedy(Kind::NGram, &case)?;
    }

    /// Invariant 1 with a draft model (smaller, other weights, same vocabulary).
    #[test]
    fn exact_corpus_lookup_equals_greedy(case in model_case()) {
        equals_greedy(Kind::Corpus, &case)?;
    }

    #[test]
    fn exact_draft_model_equals_greedy(case in model_case()) {
        equals_greedy(Kind::Draft, &case)?;
    }

    /// Invariant 1 with lookahead decoding's chain form: a pool n-gram, or the Jacobi window.
    #[test]
    fn exact_lookahead_equals_greedy(case in model_case()) {
        equals_greedy(Kind::Lookahead, &case)?;
    }

    /// Invariant 1 with a fallback chain (n-gram, then random guesses).
    #[test]
    fn exact_chain_equals_greedy(case in model_case()) {
        equals_greedy(Kind::Chain, &case)?;
    }

    /// A draft that is the model itself proposes the greedy continuation: every block is full.
    #[test]
    fn self_draft_fills_blocks(case in model_case()) {
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let twin = case.model().expect("model");
        let p = Box::new(DraftModel::new(twin, case.config.vocab_size).unwrap());
        let out = blockwise(&mut model, &case, p, Box::new(Exact));
        check_same_output(&reference, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out.stats.iterations, out.tokens.len().div_ceil(case.block_size));
    }

    /// With no proposals the loop is greedy decoding, one token per call.
    #[test]
    fn no_proposer_is_greedy(case in model_case()) {
        equals_greedy(Kind::None, &case)?;
    }

    /// An oracle that never lies is accepted whole: every block but those cut short by the
    /// budget or EOS has k tokens.
    #[test]
    fn perfect_oracle_fills_blocks(case in model_case()) {
        let mut case = case;
        case.corrupt = 0.0;
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let p = proposer(Kind::Oracle, &case, &reference);
        let out = blockwise(&mut model, &case, p, Box::new(Exact));
        check_same_output(&reference, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let n = out.tokens.len();
        let k = case.block_size;
        prop_assert_eq!(out.stats.iterations, n.div_ceil(k));
    }

    /// Streaming hands over exactly the output, one accepted block at a time (one token at a
    /// time for greedy decoding).
    #[test]
    fn streaming_hands_over_each_accepted_block(case in model_case()) {
        let mut model = case.model().expect("model");
        let mut greedy_chunks = Vec::new();
        let reference = GreedyDecoder::new(&mut model)
            .decode_streaming(&case.prompt, &case.decode, &mut |t| greedy_chunks.push(t.to_vec()))
            .expect("greedy decode");
        prop_assert!(greedy_chunks.iter().all(|c| c.len() == 1));
        prop_assert_eq!(greedy_chunks.concat(), reference.tokens.clone());
        let mut chunks = Vec::new();
        let out = Blockwise::builder(&mut model)
            .block_size(case.block_size)
            .proposer(HeadsProposer)
            .build()
            .expect("build")
            .decode_streaming(&case.prompt, &case.decode, &mut |t| chunks.push(t.to_vec()))
            .expect("blockwise decode");
        check_same_output(&reference, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(chunks.concat(), out.tokens.clone());
        prop_assert_eq!(chunks.len(), out.stats.iterations);
        let mut hist = vec![0usize; case.block_size + 1];
        for c in &chunks {
            hist[c.len()] += 1;
        }
        let recorded = &out.stats.accepted_hist;
        for n in 0..hist.len().max(recorded.len()) {
            prop_assert_eq!(hist.get(n).copied().unwrap_or(0), recorded.get(n).copied().unwrap_or(0));
        }
    }

    /// Invariant 2 holds under approximate acceptance too, whatever the output.
    #[test]
    fn loop_invariants_under_approximate_acceptance(case in model_case(), which in 0u8..4) {
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let criterion: Box<dyn AcceptanceCriterion> = match which {
            0 => Box::new(TopK::new(3).unwrap()),
            1 => Box::new(Distance::new(2.0, DistanceMetric::Ordinal).unwrap()),
            2 => Box::new(MinBlock::new(case.block_size.min(3), Exact).unwrap()),
            _ => Box::new(MinBlock::new(2, TopK::new(2).unwrap()).unwrap()),
        };
        let p = proposer(Kind::Oracle, &case, &reference);
        let out = blockwise(&mut model, &case, p, criterion);
        check_loop_invariants(&out, &case.decode, case.block_size)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }

    /// Invariant 4: cached logits equal uncached ones; truncate then re-append equals never
    /// appended.
    #[test]
    fn cache_matches_recompute(case in model_case(), splits in proptest::collection::vec(1usize..60, 0..4)) {
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let mut seq = case.prompt.clone();
        seq.extend_from_slice(&reference.tokens);
        let junk: Vec<i64> = seq.iter().map(|t| (t + 1) % case.config.vocab_size).take(4).collect();
        check_cache_consistency(&mut model, &seq, &splits, &junk, 1e-9)
            .expect("forward")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }

    /// Invariant 5: TopK(1), Distance(0) (ordinal and L2 embedding) and MinBlock(1) all behave
    /// exactly as Exact: same tokens, same accepted-length histogram.
    #[test]
    fn degenerate_criteria_are_exact(case in model_case()) {
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let emb = EmbeddingDistance::new(model.embedding_matrix(), EmbeddingNorm::L2).unwrap();
        let exact = {
            let p = proposer(Kind::Oracle, &case, &reference);
            blockwise(&mut model, &case, p, Box::new(Exact))
        };
        let others: Vec<Box<dyn AcceptanceCriterion>> = vec![
            Box::new(TopK::new(1).unwrap()),
            Box::new(Distance::new(0.0, DistanceMetric::Ordinal).unwrap()),
            Box::new(Distance::new(0.0, DistanceMetric::Embedding(emb)).unwrap()),
            Box::new(MinBlock::new(1, Exact).unwrap()),
        ];
        for c in others {
            let p = proposer(Kind::Oracle, &case, &reference);
            let out = blockwise(&mut model, &case, p, c);
            check_same_output(&exact, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&exact.stats.accepted_hist, &out.stats.accepted_hist);
            prop_assert_eq!(exact.stats.model_calls, out.stats.model_calls);
        }
    }

    /// The tie guard never changes the output in float64 (at any margin, even one that cuts every
    /// block), and its extra calls are accounted for.
    #[test]
    fn tie_guard_keeps_the_output(case in model_case(), margin in prop_oneof![Just(0.0), Just(0.5), Just(5.0), Just(1e9)]) {
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let out = Blockwise::builder(&mut model)
            .block_size(case.block_size)
            .proposer(HeadsProposer)
            .tie_guard(margin)
            .build()
            .expect("build")
            .decode(&case.prompt, &case.decode)
            .expect("blockwise");
        check_same_output(&reference, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_loop_invariants(&out, &case.decode, case.block_size)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_combined_calls(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if margin >= 1e9 {
            // Every multi-token block is cut to its first token.
            prop_assert_eq!(out.stats.new_tokens, out.stats.iterations);
        }
    }

    /// Chunked prefill gives the same output as one pass over the prompt, for both decoders.
    #[test]
    fn chunked_prefill_changes_nothing(case in model_case(), chunk in 1usize..=4) {
        let mut model = case.model().expect("model");
        let mut whole = case.decode.clone();
        whole.prefill_chunk = None;
        let mut chunked = case.decode.clone();
        chunked.prefill_chunk = Some(chunk);
        let g1 = GreedyDecoder::new(&mut model).decode(&case.prompt, &whole).expect("greedy");
        let g2 = GreedyDecoder::new(&mut model).decode(&case.prompt, &chunked).expect("greedy");
        check_same_output(&g1, &g2).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let b = Blockwise::builder(&mut model)
            .block_size(case.block_size)
            .proposer(HeadsProposer)
            .build()
            .expect("build")
            .decode(&case.prompt, &chunked)
            .expect("blockwise");
        check_same_output(&g1, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_combined_calls(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }

    /// At the context limit both decoders stop at the same token, or both return the error
    /// the policy asks for.
    #[test]
    fn context_limit_is_handled_alike(case in model_case()) {
        let mut case = case;
        case.decode.max_new_tokens = case.config.max_context; // always reaches the limit
        case.decode.on_context_full = ContextPolicy::Error;
        let mut model = case.model().expect("model");
        let g = GreedyDecoder::new(&mut model).decode(&case.prompt, &case.decode);
        let b = Blockwise::builder(&mut model)
            .block_size(case.block_size)
            .proposer(HeadsProposer)
            .build()
            .expect("build")
            .decode(&case.prompt, &case.decode);
        match (g, b) {
            (Ok(g), Ok(b)) => check_same_output(&g, &b).map_err(|e| TestCaseError::fail(e.to_string()))?,
            (Err(g), Err(b)) => prop_assert_eq!(g.to_string(), b.to_string()),
            (g, b) => prop_assert!(false, "greedy {:?} but blockwise {:?}", g.map(|o| o.tokens), b.map(|o| o.tokens)),
        }
    }
}

/// A policy that ignores its limit and changes its mind at random; the decoder must still cut
/// blocks to fit.
struct Unruly(u64);

impl BlockPolicy for Unruly {
    fn allow(&mut self, _limit: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        match self.0 >> 62 {
            0 => 0,
            1 => 1,
            2 => 3,
            _ => usize::MAX,
        }
    }
    fn observe(&mut self, _outcome: &BlockOutcome) {}
}

/// Decodes `case` with exact acceptance, this proposer and this block-size policy.
fn with_policy(
    model: &mut Transformer,
    case: &ModelCase,
    proposer: impl Proposer + 'static,
    policy: impl BlockPolicy + 'static,
) -> DecodeOutput {
    Blockwise::builder(model)
        .block_size(case.block_size)
        .proposer(proposer)
        .policy(policy)
        .build()
        .expect("build")
        .decode(&case.prompt, &case.decode)
        .expect("blockwise decode")
}

fn policy(which: u8, seed: u64) -> Box<dyn BlockPolicy> {
    match which {
        0 => Box::new(Fixed),
        1 => Box::new(Adaptive::default()),
        2 => Box::new(CostAware::new(Fixed, CostModel::linear(0.3).unwrap()).probe_every(3)),
        3 => Box::new(CostAware::new(
            Adaptive::new(1, 1, 3).unwrap(),
            CostModel::measured(),
        )),
        _ => Box::new(Unruly(seed)),
    }
}

proptest! {
    #![proptest_config(config())]

    /// A block-size policy changes how much is proposed, never what is decoded: every policy
    /// (fixed, adaptive, cost-aware with stated or measured costs, and one that ignores its
    /// limit) under exact acceptance equals greedy, with the loop invariants intact.
    #[test]
    fn every_block_policy_equals_greedy(case in model_case(), which in 0u8..5, kind in 0u8..3) {
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let kind = [Kind::Oracle, Kind::NGram, Kind::Heads][kind as usize];
        let p = proposer(kind, &case, &reference);
        let out = with_policy(&mut model, &case, p, policy(which, case.proposer_seed));
        check_same_output(&reference, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_loop_invariants(&out, &case.decode, case.block_size)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(out.stats.proposed <= out.stats.iterations * (case.block_size - 1));
    }

    /// Where every proposal fails, the cost-aware policy soon stops proposing: after at most
    /// two proposed tokens of warm-up it proposes only its probes (one block in five here, of
    /// at most three tokens at this cost), so the decode costs about what greedy decoding costs.
    #[test]
    fn cost_aware_stops_proposing_what_fails(case in model_case()) {
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let mut truth = case.prompt.clone();
        truth.extend_from_slice(&reference.tokens);
        let always_wrong = OracleProposer::new(truth, case.config.vocab_size, 1.0, case.proposer_seed);
        let out = with_policy(&mut model, &case, always_wrong, CostAware::new(Fixed, CostModel::linear(0.3).unwrap()).probe_every(4));
        check_same_output(&reference, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            out.stats.proposed <= 2 + 3 * (out.stats.iterations / 5 + 1),
            "{} tokens proposed over {} blocks", out.stats.proposed, out.stats.iterations
        );
    }

    /// And where every proposal succeeds, it fills the blocks: a perfect oracle under the
    /// cost-aware adaptive policy accepts everything it proposes, and once three blocks have
    /// shown it (the prior rate makes the first ones shorter) every block is full but the
    /// last.
    #[test]
    fn cost_aware_fills_blocks_that_succeed(case in model_case()) {
        let mut model = case.model().expect("model");
        let reference = greedy(&mut model, &case);
        let mut truth = case.prompt.clone();
        truth.extend_from_slice(&reference.tokens);
        let perfect = OracleProposer::new(truth, case.config.vocab_size, 0.0, case.proposer_seed);
        let out = with_policy(&mut model, &case, perfect, CostAware::new(Adaptive::default(), CostModel::linear(0.1).unwrap()));
        check_same_output(&reference, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out.stats.new_tokens - out.stats.iterations, out.stats.proposed);
        let full = out.stats.accepted_hist.get(case.block_size).copied().unwrap_or(0);
        prop_assert!(out.stats.iterations <= full + 4, "hist {:?}", out.stats.accepted_hist);
    }
}
