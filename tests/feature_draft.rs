//! The feature-level draft: exact acceptance equals greedy decoding whatever it guesses (random
//! float64 models, prompts, block sizes, shortlists, verifiers, chains), its training targets
//! are aligned with what the decoder hands it, training makes it guess better, and the
//! conformance suite passes.

use blockwise::feature::{DraftWeights, FeatureDraft, FeatureDraftConfig, FeatureDraftProposer};
use blockwise::proposer::Chain;
use blockwise::testing::strategies::{model_case, ModelCase};
use blockwise::testing::{check_loop_invariants, check_same_output, Conformance};
use blockwise::train::{
    evaluate_feature_draft, evaluate_feature_draft_on_answers, train_feature_draft, DraftData,
    DraftTrainConfig, Products,
};
use blockwise::{
    BatchBlockwise, Blockwise, BlockwiseDecoder, CachedVerifier, CausalLm, DecodeConfig,
    DecodeOutput, Error, F32Matmul, GreedyDecoder, NGram, Proposer, RecomputeVerifier, Transformer,
    TransformerConfig,
};
use proptest::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256u32)
        .max(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn draft_for(
    model: &Transformer,
    seed: u64,
    shortlist: Option<usize>,
    taps: Option<Vec<usize>>,
) -> FeatureDraftProposer {
    let c = model.config();
    let mut draft = new_draft(c.d_model, c.vocab_size, seed, taps).unwrap();
    if let Some(n) = shortlist {
        // Every other id, starting from a seeded offset: guesses outside it are never made.
        let ids: Vec<i64> = (0..c.vocab_size)
            .filter(|i| (i + seed as i64) % 2 == 0)
            .take(n.max(1))
            .collect();
        draft = draft.with_shortlist(ids).unwrap();
    }
    let (matmul, weights) = forms_for(seed);
    FeatureDraftProposer::new(draft, model)
        .unwrap()
        .with_f32_matmul(matmul)
        .unwrap()
        .with_weights(weights)
        .unwrap()
        .with_min_confidence(floor_for(seed))
        .unwrap()
}

/// The draft's confidence floor, by seed: none (every guess up to the block size) half the
/// time, else a low or a high one, so that chains cut short, trees pruned and steps with no
/// proposal at all come up.
fn floor_for(seed: u64) -> f64 {
    [0.0, 0.0, 0.1, 0.5][(seed / 12 % 4) as usize]
}

/// The base's inner layers a draft reads, by seed: none for a third of the seeds, the first
/// layer, or the last and the first (out of order) — the model must hand over the same
/// ([`CausalLm::set_feature_taps`]).
fn taps_for(seed: u64, n_layers: usize) -> Option<Vec<usize>> {
    match seed / 96 % 3 {
        0 => None,
        1 => Some(vec![0]),
        _ => Some(vec![n_layers - 1, 0]),
    }
}

/// A fresh draft, by seed: one layer, or two with every weight drawn at random (so that the
/// second layer's cache and attention decide what it guesses); with rotary positions in its
/// attention for half the seeds (then its weights drawn at random too, so that positions
/// change its guesses); reading the base's inner layers `taps` too when given (then its
/// weights drawn at random too, so that the inner layers change its guesses).
fn new_draft(
    d_model: i64,
    vocab_size: i64,
    seed: u64,
    taps: Option<Vec<usize>>,
) -> blockwise::Result<FeatureDraft> {
    let n_layers = 1 + (seed / 6 % 2) as i64;
    let rope_theta = (seed / 48 % 2 == 1).then_some(100.0);
    let noisy = n_layers > 1 || rope_theta.is_some() || taps.is_some();
    let config = FeatureDraftConfig {
        n_layers,
        rope_theta,
        taps,
        ..FeatureDraftConfig::for_base(d_model, vocab_size)
    };
    let draft = FeatureDraft::new(config, seed, Device::Cpu)?;
    if noisy {
        tch::no_grad(|| {
            for (_, mut v) in draft.var_store().variables() {
                let noise = Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.1;
                v.copy_(&(&v + noise));
            }
        });
    }
    Ok(draft)
}

/// How the draft's products run, by seed: float32 through oneDNN (weights packed once),
/// float32 through BLAS, int8 through FBGEMM (where this libtorch has the kernels; float32
/// through BLAS elsewhere), or the crate's native kernels in float32, bfloat16 and int8, so
/// that every property below covers each.
fn forms_for(seed: u64) -> (F32Matmul, DraftWeights) {
    let int8 = if int8_here() {
        DraftWeights::Int8
    } else {
        DraftWeights::F32
    };
    match seed % 6 {
        0 => (F32Matmul::OneDnn, DraftWeights::F32),
        1 => (F32Matmul::Blas, DraftWeights::F32),
        2 => (F32Matmul::Blas, int8),
        3 => (F32Matmul::Blas, DraftWeights::NativeF32),
        4 => (F32Matmul::Blas, DraftWeights::NativeBf16),
        _ => (F32Matmul::Blas, DraftWeights::NativeInt8),
    }
}

/// Whether libtorch's int8 draft products run here.
fn int8_here() -> bool {
    DraftWeights::Int8.resolve(Device::Cpu).is_ok()
}

#[derive(Debug, Clone, Copy)]
enum Setup {
    Plain,
    Shortlist,
    Recompute,
    DraftThenNgram,
    NgramThenDraft,
}

fn run(case: &ModelCase, setup: Setup) -> (DecodeOutput, DecodeOutput) {
    let mut model = case.model().unwrap();
    let reference = GreedyDecoder::new(&mut model)
        .decode(&case.prompt, &case.decode)
        .unwrap();
    let seed = case.proposer_seed;
    let taps = taps_for(seed, case.config.n_layers);
    model
        .set_feature_taps(taps.as_deref().unwrap_or(&[]))
        .unwrap();
    let draft = |shortlist| draft_for(&model, seed, shortlist, taps.clone());
    let proposer: Box<dyn Proposer> = match setup {
        Setup::Plain | Setup::Recompute => Box::new(draft(None)),
        Setup::Shortlist => Box::new(draft(Some(3))),
        Setup::DraftThenNgram => Box::new(Chain::new(vec![
            Box::new(draft(None)),
            Box::new(NGram::new(1, 3).unwrap()),
        ])),
        Setup::NgramThenDraft => Box::new(Chain::new(vec![
            Box::new(NGram::new(1, 3).unwrap()),
            Box::new(draft(None)),
        ])),
    };
    let builder = Blockwise::builder(&mut model)
        .block_size(case.block_size)
        .proposer(proposer);
    let builder = match setup {
        Setup::Recompute => builder.verifier(RecomputeVerifier::new()),
        _ => builder.verifier(CachedVerifier::new()),
    };
    let out = builder
        .build()
        .unwrap()
        .decode(&case.prompt, &case.decode)
        .unwrap();
    (out, reference)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn feature_draft_equals_greedy(case in model_case(), pick in 0usize..5) {
        let setup = [Setup::Plain, Setup::Shortlist, Setup::Recompute, Setup::DraftThenNgram,
                     Setup::NgramThenDraft][pick];
        let (out, reference) = run(&case, setup);
        check_same_output(&out, &reference).map_err(|e| TestCaseError::fail(format!("{setup:?}: {e}")))?;
        check_loop_invariants(&out, &case.decode, case.block_size)
            .map_err(|e| TestCaseError::fail(format!("{setup:?}: {e}")))?;
    }
}

proptest! {
    #![proptest_config(config())]

    /// Batched rows drafting chains or dynamic trees (EAGLE-2) with the feature draft: every row
    /// equals greedy decoding of its prompt alone, with and without cache compaction and
    /// chunked prefill; with `lookup_first`, n-gram lookup and the draft in a `Chain` (its
    /// continuation merged into the draft's tree).
    #[test]
    fn batched_chains_and_dynamic_trees_equal_greedy(
        case in model_case(),
        more in proptest::collection::vec(proptest::collection::vec(0i64..4, 1..8), 0..3),
        nodes in prop_oneof![Just(None), Just(Some(1usize)), Just(Some(5)), Just(Some(16))],
        width in 1usize..5,
        tight_slots in any::<bool>(),
        chunk in prop_oneof![Just(None), Just(Some(1usize)), Just(Some(3))],
        lookup_first in any::<bool>(),
        speculate in prop_oneof![Just(None), Just(Some(0usize)), Just(Some(1))],
    ) {
        let mut model = case.model().unwrap();
        let mut prompts = vec![case.prompt.clone()];
        prompts.extend(more.into_iter().filter(|p| p.len() < case.config.max_context));
        let mut decode = case.decode.clone();
        decode.prefill_chunk = chunk;
        let reference: Vec<DecodeOutput> = prompts
            .iter()
            .map(|p| GreedyDecoder::new(&mut model).decode(p, &decode).unwrap())
            .collect();
        let emb = model.token_embeddings().unwrap().copy();
        let (d, vocab, ctx) = (case.config.d_model, case.config.vocab_size, case.config.max_context);
        let mut seed = case.proposer_seed;
        // One set of inner layers for the whole batch: the model hands over one.
        let taps = taps_for(seed, case.config.n_layers);
        model.set_feature_taps(taps.as_deref().unwrap_or(&[])).unwrap();
        let build = move |seed: u64| -> blockwise::Result<Box<dyn Proposer>> {
            let draft = new_draft(d, vocab, seed, taps.clone())?;
            let draft: Box<dyn Proposer> = Box::new(
                FeatureDraftProposer::with_embeddings(draft, &emb, ctx)?
                    .with_tree_width(width)
                    .with_f32_matmul(forms_for(seed).0)?
                    .with_weights(forms_for(seed).1)?
                    .with_min_confidence(floor_for(seed))?,
            );
            Ok(match lookup_first {
                true => Box::new(Chain::new(vec![Box::new(NGram::new(1, 3)?), draft])),
                false => draft,
            })
        };
        // Every other row shares one draft's weights through forks (where the form forks: the
        // native kernels), each fork with its own cache, decoding beside the others.
        let prototype = build(seed)?;
        let mut b = BatchBlockwise::builder(&mut model)
            .block_size(case.block_size)
            .proposer_factory(false, move || {
                seed = seed.wrapping_add(1);
                match (seed % 2, prototype.fork()) {
                    (0, Some(fork)) => Ok(fork),
                    _ => build(seed),
                }
            });
        if let Some(n) = nodes {
            b = b.dynamic_tree(n);
        }
        if tight_slots {
            b = b.slots(1);
        }
        if let Some(rows) = speculate {
            // The draft skips proposing while more rows are busy, its cache still kept.
            b = b.speculate_up_to(rows);
        }
        let outs = b.build().unwrap().decode_batch(&prompts, &decode).unwrap();
        for (i, (o, r)) in outs.iter().zip(&reference).enumerate() {
            prop_assert_eq!(&o.tokens, &r.tokens, "row {}", i);
            check_loop_invariants(o, &decode, nodes.map_or(case.block_size, |n| n + 1).max(case.block_size))
                .map_err(|e| TestCaseError::fail(format!("row {i}: {e}")))?;
        }
    }
}

fn fixed_model(seed: u64) -> Transformer {
    let mut c = TransformerConfig::tiny(24, 0);
    c.d_model = 32;
    c.n_heads = 4;
    c.d_ff = 64;
    c.n_layers = 2;
    c.max_context = 128;
    c.dtype = blockwise::DType::F64;
    Transformer::new_seeded(c, seed, Device::Cpu).unwrap()
}

/// Prompts and their greedy continuations: what the decoder will see.
fn greedy_sequences(model: &mut Transformer, n: usize, new_tokens: usize) -> Vec<Vec<i64>> {
    (0..n)
        .map(|i| {
            let prompt: Vec<i64> = (0..4)
                .map(|j| ((i * 7 + j * 5 + i * j) % 24) as i64)
                .collect();
            let out = GreedyDecoder::new(&mut *model)
                .decode(&prompt, &DecodeConfig::new(new_tokens))
                .unwrap();
            [prompt, out.tokens].concat()
        })
        .collect()
}

/// Records every hidden state the decoder hands over.
struct Recorder {
    rows: Rc<RefCell<Vec<Tensor>>>,
}

impl Proposer for Recorder {
    fn propose(&mut self, ctx: &blockwise::ProposalContext<'_>) -> blockwise::Result<Vec<i64>> {
        Ok(vec![(ctx.next + 1) % 24; ctx.max_tokens])
    }
    fn needs_hidden(&self) -> bool {
        true
    }
    fn observe_hidden(&mut self, hidden: &Tensor) -> blockwise::Result<()> {
        self.rows.borrow_mut().push(hidden.copy());
        Ok(())
    }
}

#[test]
fn training_targets_are_what_the_decoder_hands_the_draft() {
    let mut model = fixed_model(5);
    let prompt = vec![1, 2, 3, 4, 5];
    let config = DecodeConfig::new(40);
    for (chunk, k) in [(None, 4), (Some(2), 3), (None, 1)] {
        let rows = Rc::new(RefCell::new(Vec::new()));
        let out = Blockwise::builder(&mut model)
            .block_size(k)
            .proposer(Recorder { rows: rows.clone() })
            .build()
            .unwrap()
            .decode(
                &prompt,
                &match chunk {
                    Some(c) => config.clone().with_prefill_chunk(c),
                    None => config.clone(),
                },
            )
            .unwrap();
        let seq = [prompt.clone(), out.tokens.clone()].concat();
        let data = DraftData::teacher_forced(&mut model, &[seq.clone()], Kind::Double).unwrap();
        let handed = Tensor::cat(&rows.borrow(), 0);
        // Every committed position was handed over exactly once, in order, and equals the
        // teacher-forced state of the final sequence at that position; a last token emitted
        // without a call (nothing follows it) has no state to hand over.
        let n = seq.len() - out.stats.skipped_calls;
        assert_eq!(handed.size()[0] as usize, n, "k {k}, chunk {chunk:?}");
        let diff =
            f64::try_from((handed - data.hidden.narrow(0, 0, n as i64)).abs().max()).unwrap();
        assert!(
            diff < 1e-9,
            "decoder and teacher-forced hidden states differ by {diff}"
        );
        // On a greedy sequence the teacher-forced argmax after each position from the prompt's
        // last on is the next token: the draft's token targets are the base's greedy tokens.
        let argmax: Vec<i64> = Vec::try_from(&data.argmax).unwrap();
        for t in prompt.len() - 1..seq.len() - 1 {
            assert_eq!(argmax[t], seq[t + 1], "argmax target at position {t}");
        }
    }
}

fn mean_accepted(model: &mut Transformer, draft: FeatureDraft, prompts: &[Vec<i64>]) -> f64 {
    let (mut calls, mut tokens) = (0usize, 0usize);
    let proposer = FeatureDraftProposer::new(draft, &*model).unwrap();
    let mut decoder = Blockwise::builder(&mut *model)
        .block_size(5)
        .proposer(proposer)
        .build()
        .unwrap();
    let config = DecodeConfig::new(48);
    let mut outs = Vec::new();
    for p in prompts {
        let out = decoder.decode(p, &config).unwrap();
        calls += out.stats.iterations;
        tokens += out.tokens.len();
        outs.push(out);
    }
    drop(decoder);
    for (p, out) in prompts.iter().zip(&outs) {
        let reference = GreedyDecoder::new(&mut *model).decode(p, &config).unwrap();
        assert_eq!(out.tokens, reference.tokens, "prompt {p:?}");
    }
    tokens as f64 / calls as f64
}

#[test]
fn training_makes_the_draft_guess_better_and_checkpoints_resume() {
    let mut model = fixed_model(11);
    // Fixed text (seeded random token sequences, teacher-forced) and greedy continuations, as
    // the SmolLM2 data mixes text and chat; held out: other sequences of both kinds.
    let seqs = greedy_sequences(&mut model, 48, 60);
    let (train, held) = seqs.split_at(40);
    let mut rng = blockwise::rng::SeededRng::new(9);
    let mut text = |n: usize| -> Vec<Vec<i64>> {
        (0..n)
            .map(|_| (0..64).map(|_| rng.below(24) as i64).collect())
            .collect()
    };
    let (train_text, held_text) = (text(120), text(20));
    let data =
        DraftData::teacher_forced(&mut model, &[train, &train_text].concat(), Kind::Float).unwrap();
    let held_data = DraftData::teacher_forced(&mut model, &held_text, Kind::Float).unwrap();
    let emb = model.token_embeddings().unwrap();
    let c = model.config().clone();
    let fresh = || {
        FeatureDraft::new(
            FeatureDraftConfig::for_base(c.d_model, c.vocab_size),
            3,
            Device::Cpu,
        )
        .unwrap()
    };
    let settings = DraftTrainConfig {
        steps: 200,
        batch_size: 8,
        seq_len: 48,
        unroll: 3,
        log_every: 40,
        ..DraftTrainConfig::default()
    };
    let mut draft = fresh();
    let before = evaluate_feature_draft(&draft, &emb, &held_data, 48, 3, 64).unwrap();
    let report = train_feature_draft(&mut draft, &emb, &data, &settings, None, |_| {}).unwrap();
    let after = evaluate_feature_draft(&draft, &emb, &held_data, 48, 3, 64).unwrap();
    assert!(
        report.logs.first().unwrap().loss > report.final_loss,
        "{:?}",
        report.logs
    );
    eprintln!("held-out agreement per draft step {before:?} -> {after:?}");
    assert!(
        after[0] > before[0] + 0.2,
        "held-out agreement {before:?} -> {after:?}"
    );
    assert!(
        after[2] > before[2] + 0.1,
        "third draft step {before:?} -> {after:?}"
    );

    // The same training with bfloat16 products (float32 weights) learns as much.
    let mut narrow = fresh();
    let narrow_settings = DraftTrainConfig {
        products: Products::Bf16,
        ..settings.clone()
    };
    train_feature_draft(&mut narrow, &emb, &data, &narrow_settings, None, |_| {}).unwrap();
    let narrow_after = evaluate_feature_draft(&narrow, &emb, &held_data, 48, 3, 64).unwrap();
    eprintln!("bfloat16 products: held-out agreement {narrow_after:?}");
    assert!(
        narrow_after[0] > before[0] + 0.2 && narrow_after[0] > after[0] - 0.1,
        "bfloat16 products: held-out agreement {before:?} -> {narrow_after:?} (float32 {after:?})"
    );

    // Decoding held-out prompts: identical to greedy, and more tokens per call than the fresh
    // draft.
    let prompts: Vec<Vec<i64>> = held.iter().map(|s| s[..4].to_vec()).collect();
    // The same trained draft growing dynamic trees of 12 nodes: at least as many tokens per
    // call as its chain, identical to greedy.
    // Both measured as saved (bfloat16 weights).
    let saved = std::env::temp_dir().join(format!("bw-draft-tree-{}", std::process::id()));
    draft.save(&saved).unwrap();
    let reloaded = FeatureDraft::load(&saved, Device::Cpu).unwrap();
    let tree_accepted = {
        let emb = emb.copy();
        let dir = saved.clone();
        let mut b = BatchBlockwise::builder(&mut model)
            .block_size(5)
            .proposer_factory(false, move || {
                let d = FeatureDraft::load(&dir, Device::Cpu)?;
                Ok(
                    Box::new(FeatureDraftProposer::with_embeddings(d, &emb, 128)?)
                        as Box<dyn Proposer>,
                )
            })
            .dynamic_tree(12)
            .build()
            .unwrap();
        let config = DecodeConfig::new(48);
        let outs = b.decode_batch(&prompts, &config).unwrap();
        drop(b);
        for (p, o) in prompts.iter().zip(&outs) {
            let r = GreedyDecoder::new(&mut model).decode(p, &config).unwrap();
            assert_eq!(o.tokens, r.tokens, "tree decode of {p:?}");
        }
        let tokens: usize = outs.iter().map(|o| o.tokens.len()).sum();
        let iters: usize = outs.iter().map(|o| o.stats.iterations).sum();
        tokens as f64 / iters as f64
    };
    // (This small model's greedy continuations settle into short loops, which even a fresh
    // draft — it starts by repeating the base's own guess — follows; agreement on held-out text
    // above is where training shows.)
    let trained = mean_accepted(&mut model, reloaded, &prompts);
    assert!(trained > 3.0, "mean accepted {trained:.2}");
    assert!(
        tree_accepted >= trained,
        "tree {tree_accepted:.2} < chain {trained:.2}"
    );
    eprintln!("mean accepted: chain {trained:.2}, tree {tree_accepted:.2}");

    // A second layer grown on the trained draft: the same guesses until trained (it passes its
    // input through), then trained with the first (its output projection leaves zero), and
    // still identical to greedy.
    let mut deep = FeatureDraft::load(&saved, Device::Cpu)
        .unwrap()
        .with_layers(2)
        .unwrap();
    let as_saved = FeatureDraft::load(&saved, Device::Cpu).unwrap();
    assert_eq!(
        evaluate_feature_draft(&deep, &emb, &held_data, 48, 3, 64).unwrap(),
        evaluate_feature_draft(&as_saved, &emb, &held_data, 48, 3, 64).unwrap()
    );
    let short = DraftTrainConfig {
        steps: 60,
        ..settings.clone()
    };
    train_feature_draft(&mut deep, &emb, &data, &short, None, |_| {}).unwrap();
    let moved = f64::try_from(
        deep.var_store().variables()["layer1.proj.weight"]
            .abs()
            .max(),
    )
    .unwrap();
    assert!(moved > 0.0, "the second layer did not train");
    let deep_after = evaluate_feature_draft(&deep, &emb, &held_data, 48, 3, 64).unwrap();
    assert!(
        deep_after[0] > before[0] + 0.2,
        "two layers: held-out agreement {before:?} -> {deep_after:?}"
    );
    let deep_accepted = mean_accepted(&mut model, deep, &prompts);
    eprintln!("two layers: agreement {deep_after:?}, mean accepted {deep_accepted:.2}");
    let _ = std::fs::remove_dir_all(&saved);

    // Interrupted after the step-60 checkpoint and resumed by a fresh draft: the same weights
    // as the run without interruption.
    let ckpt = std::env::temp_dir().join(format!("bw-draft-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ckpt);
    let settings = DraftTrainConfig {
        checkpoint_every: 60,
        ..settings
    };
    let mut whole = fresh();
    train_feature_draft(&mut whole, &emb, &data, &settings, None, |_| {}).unwrap();
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut a = fresh();
        let _ = train_feature_draft(&mut a, &emb, &data, &settings, Some(&ckpt), |l| {
            if l.step == 80 {
                panic!("interrupted");
            }
        });
    }));
    assert!(interrupted.is_err());
    let mut resumed = fresh();
    let r = train_feature_draft(&mut resumed, &emb, &data, &settings, Some(&ckpt), |_| {}).unwrap();
    assert_eq!(r.resumed_from, Some(60));
    for (name, w) in whole.var_store().variables() {
        let other = &resumed.var_store().variables()[&name];
        assert!(w.equal(other), "{name} differs after resuming");
    }
    let _ = std::fs::remove_dir_all(&ckpt);
}

#[test]
fn feature_draft_passes_the_conformance_suite() {
    Conformance::new()
        .cases(64)
        .block_sizes(1..=8)
        .max_new_tokens(0..=24)
        .run(&mut fixed_model(2), |seed| {
            let model = fixed_model(2);
            Box::new(draft_for(&model, seed, None, None))
        })
        .unwrap();
}

#[test]
fn mismatched_drafts_and_batches_are_refused() {
    let model = fixed_model(1);
    let wrong = FeatureDraft::new(FeatureDraftConfig::for_base(16, 24), 0, Device::Cpu).unwrap();
    let err = FeatureDraftProposer::new(wrong, &model).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("width 16"), "{err}");
    let other_vocab =
        FeatureDraft::new(FeatureDraftConfig::for_base(32, 30), 0, Device::Cpu).unwrap();
    let err = FeatureDraftProposer::new(other_vocab, &model).unwrap_err();
    assert!(matches!(err, Error::VocabularyMismatch { .. }), "{err}");
    let bad = FeatureDraftConfig {
        n_heads: 5,
        ..FeatureDraftConfig::for_base(32, 24)
    };
    assert!(matches!(
        FeatureDraft::new(bad, 0, Device::Cpu),
        Err(Error::InvalidConfig { .. })
    ));
    // Rotary positions need a frequency base above 1 and an even head width.
    for (d_model, n_heads, theta, says) in [
        (32, 1, 0.5, "rope_theta"),
        (32, 1, f64::NAN, "rope_theta"),
        (30, 2, 1e4, "even head width"),
    ] {
        let bad = FeatureDraftConfig {
            n_heads,
            rope_theta: Some(theta),
            ..FeatureDraftConfig::for_base(d_model, 24)
        };
        let err = FeatureDraft::new(bad, 0, Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
    // A dynamic tree together with a fixed shape, or with another criterion, is refused.
    let mut model = fixed_model(1);
    let err = BatchBlockwise::builder(&mut model)
        .block_size(4)
        .tree("2,1".parse().unwrap())
        .dynamic_tree(8)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("choose one"), "{err}");
    let err = BatchBlockwise::builder(&mut model)
        .block_size(4)
        .dynamic_tree(0)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
}

#[test]
fn draft_data_saves_loads_repeats_and_stops_at_whole_sequences() {
    let mut model = fixed_model(4);
    let seqs = greedy_sequences(&mut model, 6, 10);
    let data = DraftData::teacher_forced(&mut model, &seqs, Kind::Half).unwrap();
    assert_eq!(data.sequences(), 6);
    assert_eq!(data.len(), 6 * 14);
    let twice = data.repeated(2).unwrap();
    assert_eq!(twice.sequences(), 12);
    assert_eq!(twice.offsets[7], 14 + data.len());
    let dir = std::env::temp_dir().join(format!("bw-draft-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    data.save(&dir.join("train-00000.safetensors")).unwrap();
    twice.save(&dir.join("train-00001.safetensors")).unwrap();
    let all = DraftData::load(&dir, "train", None).unwrap();
    assert_eq!(all.len(), 3 * data.len());
    assert!(all
        .hidden
        .narrow(0, 0, data.len() as i64)
        .equal(&data.hidden));
    // A limit keeps whole sequences only.
    let some = DraftData::load(&dir, "train", Some(30)).unwrap();
    assert_eq!((some.sequences(), some.len()), (2, 28));
    assert!(DraftData::load(&dir, "heldout", None).is_err());
    // Weights repeat the shards their prefix names; the limit counts tokens read.
    let weights = [("train-00001".to_string(), 3)].into_iter().collect();
    let weighted = DraftData::load_weighted(&dir, "train", None, &weights).unwrap();
    assert_eq!(weighted.len(), data.len() + 3 * twice.len());
    assert_eq!(weighted.sequences(), 6 + 3 * 12);
    let tail = (weighted.len() - twice.len()) as i64;
    assert!(weighted
        .hidden
        .narrow(0, tail, twice.len() as i64)
        .equal(&twice.hidden));
    let limited = DraftData::load_weighted(&dir, "train", Some(data.len() + 28), &weights).unwrap();
    assert_eq!(limited.len(), data.len() + 3 * 28);
    let zero = [("train-00001".to_string(), 0)].into_iter().collect();
    assert!(DraftData::load_weighted(&dir, "train", None, &zero).is_err());
    let joined =
        DraftData::concat(&[data.repeated(1).unwrap(), twice.repeated(1).unwrap()]).unwrap();
    assert_eq!(joined.offsets, all.offsets);
    assert!(joined.hidden.equal(&all.hidden) && joined.argmax.equal(&all.argmax));
    assert!(DraftData::concat(&[]).is_err());
    let ids = data.shortlist(5, 24).unwrap();
    assert_eq!(ids.len(), 5);
    assert!(
        data.coverage(&ids).unwrap() > 0.0
            && data.coverage(&(0..24).collect::<Vec<_>>()).unwrap() == 1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn answer_agreement_counts_only_the_guesses_decoding_asks_for() {
    let mut model = fixed_model(5);
    let seqs = greedy_sequences(&mut model, 8, 20); // 4 prompt tokens, 20 answer tokens
    let mut data = DraftData::teacher_forced(&mut model, &seqs, Kind::Float).unwrap();
    let emb = model.token_embeddings().unwrap();
    let c = model.config().clone();
    let draft = FeatureDraft::new(
        FeatureDraftConfig::for_base(c.d_model, c.vocab_size),
        4,
        Device::Cpu,
    )
    .unwrap();
    let answers = |d: &DraftData| evaluate_feature_draft_on_answers(&draft, &emb, d, 48, 3, 64);
    // Teacher-forced text does not know its prompts.
    assert!(answers(&data).is_err());
    // Empty prompts: every chain counts, as in evaluate_feature_draft.
    data.prompt_lens = Some(vec![0; 8]);
    let every = evaluate_feature_draft(&draft, &emb, &data, 48, 3, 64).unwrap();
    assert_eq!(answers(&data).unwrap(), every);
    // With 4-token prompts, the targets at prompt positions never count: changing them changes
    // nothing.
    data.prompt_lens = Some(vec![4; 8]);
    let before = answers(&data).unwrap();
    let mut argmax: Vec<i64> = Vec::try_from(&data.argmax).unwrap();
    for w in data.offsets.windows(2) {
        for a in &mut argmax[w[0]..w[0] + 4] {
            *a = (*a + 1) % 24;
        }
    }
    let changed = DraftData {
        tokens: data.tokens.shallow_clone(),
        hidden: data.hidden.shallow_clone(),
        argmax: Tensor::from_slice(&argmax),
        offsets: data.offsets.clone(),
        prompt_lens: data.prompt_lens.clone(),
    };
    assert_eq!(answers(&changed).unwrap(), before);
    // Prompts that fill their sequences leave nothing to measure; a wrong count is refused.
    data.prompt_lens = Some(vec![24; 8]);
    assert!(answers(&data).is_err());
    data.prompt_lens = Some(vec![4; 7]);
    assert!(answers(&data).is_err());
    // Prompt lengths survive saving, loading, weights and joining; a shard without them
    // makes the whole set unknown.
    data.prompt_lens = Some((0..8).map(|i| 1 + i % 4).collect());
    let dir = std::env::temp_dir().join(format!("bw-prompt-lens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    data.save(&dir.join("train-a-00000.safetensors")).unwrap();
    let weights = [("train-a".to_string(), 2)].into_iter().collect();
    let loaded = DraftData::load_weighted(&dir, "train", None, &weights).unwrap();
    let twice = [
        data.prompt_lens.clone().unwrap(),
        data.prompt_lens.clone().unwrap(),
    ]
    .concat();
    assert_eq!(loaded.prompt_lens.as_ref(), Some(&twice));
    assert_eq!(data.repeated(2).unwrap().prompt_lens, Some(twice.clone()));
    let limited = DraftData::load(&dir, "train", Some(50)).unwrap();
    assert_eq!(
        limited.prompt_lens,
        Some(data.prompt_lens.clone().unwrap()[..2].to_vec())
    );
    let text = DraftData::teacher_forced(&mut model, &seqs[..2], Kind::Float).unwrap();
    assert_eq!(
        DraftData::concat(&[loaded, text.repeated(1).unwrap()])
            .unwrap()
            .prompt_lens,
        None
    );
    text.save(&dir.join("train-b-00000.safetensors")).unwrap();
    assert_eq!(
        DraftData::load(&dir, "train", None).unwrap().prompt_lens,
        None
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `{"eagle": {"tree_width": W}}` (`decode --draft-tree-width W`) reaches the draft the
/// configuration builds for every row: with width 1 its dynamic trees are chains (at most k - 1
/// nodes), with width 3 they branch (more nodes per call, under the same budget), and both
/// decode greedy's tokens. Width 0 is refused.
#[test]
fn a_configured_tree_width_shapes_the_drafts_trees() {
    use blockwise::config::ProposerConfig;
    let mut model = fixed_model(2);
    let dir = std::env::temp_dir().join(format!("blockwise-width-{}", std::process::id()));
    new_draft(32, 24, 5, None).unwrap().save(&dir).unwrap();
    let prompts: Vec<Vec<i64>> = (0..3).map(|i| vec![i + 1, 2 * i + 3, 5]).collect();
    let decode = DecodeConfig::new(30);
    let want: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            GreedyDecoder::new(&mut model)
                .decode(p, &decode)
                .unwrap()
                .tokens
        })
        .collect();
    let info = model.info().clone();
    let embeddings = model.token_embeddings();
    let mut per_call = Vec::new();
    for width in [1, 3] {
        let json = format!(
            r#"{{"eagle": {{"draft": "{}", "weights": "f32", "tree_width": {width}}}}}"#,
            dir.display()
        );
        let config: ProposerConfig = serde_json::from_str(&json).unwrap();
        let rows = config.row_proposers(&info, embeddings.as_ref()).unwrap();
        let outs = BatchBlockwise::builder(&mut model)
            .block_size(4)
            .proposer_factory(rows.needs_heads(), rows.factory())
            .dynamic_tree(8)
            .build()
            .unwrap()
            .decode_batch(&prompts, &decode)
            .unwrap();
        let (mut proposed, mut iterations) = (0, 0);
        for (out, want) in outs.iter().zip(&want) {
            assert_eq!(&out.tokens, want, "width {width}");
            proposed += out.stats.proposed;
            iterations += out.stats.iterations;
        }
        per_call.push(proposed as f64 / iterations as f64);
    }
    assert!(
        per_call[0] <= 3.0,
        "width 1 proposed {} nodes per call",
        per_call[0]
    );
    assert!(
        per_call[1] > 3.0,
        "width 3 proposed {} nodes per call",
        per_call[1]
    );
    let zero: ProposerConfig = serde_json::from_str(&format!(
        r#"{{"eagle": {{"draft": "{}", "tree_width": 0}}}}"#,
        dir.display()
    ))
    .unwrap();
    let e = zero.build_for(&model).err().expect("width 0");
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
    std::fs::remove_dir_all(&dir).ok();
}
