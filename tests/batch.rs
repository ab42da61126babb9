//! Batched and tree decoding: every row of a batch decodes exactly what it decodes alone, and a
//! tree of candidates keeps exactly greedy's tokens. Random float64 models, prompts of different
//! lengths, block sizes, EOS ids, proposers and tree shapes; at least 256 cases each.

use std::cell::Cell;
use std::rc::Rc;

use blockwise::decoder::{BatchBlockwise, RowId, TreeShape};
use blockwise::proposer::{Chain, CorpusIndex, CorpusLookup};
use blockwise::testing::strategies::{model_case, prompt, ModelCase};
use blockwise::testing::{check_loop_invariants, OracleProposer};
use blockwise::{
    Blockwise, BlockwiseDecoder, DecodeConfig, DecodeOutput, Error, GreedyDecoder, HeadsProposer,
    Lookahead, MaskedLm, NGram, Proposer, SamplingConfig, StopReason, TopK, Transformer,
    TransformerConfig,
};
use proptest::prelude::*;

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

/// A batch: the case's model and settings, 1 to 5 prompts of 1 to 12 tokens.
fn batch_case() -> impl Strategy<Value = (ModelCase, Vec<Vec<i64>>)> {
    model_case().prop_flat_map(|case| {
        let vocab = case.config.vocab_size;
        let max_prompt = case.config.max_context.min(12);
        let prompts = proptest::collection::vec(prompt(vocab, max_prompt), 0..=4);
        (Just(case), prompts).prop_map(|(case, mut more)| {
            more.insert(0, case.prompt.clone());
            (case, more)
        })
    })
}

fn greedy_alone(
    model: &mut Transformer,
    prompts: &[Vec<i64>],
    decode: &DecodeConfig,
) -> Vec<DecodeOutput> {
    prompts
        .iter()
        .map(|p| {
            GreedyDecoder::new(&mut *model)
                .decode(p, decode)
                .expect("greedy")
        })
        .collect()
}

/// `prompts` decoded as one batch with a dynamic tree of `nodes` nodes (and `slots` cache slots
/// per row where given), each row's proposer from `factory`.
fn dynamic_tree_rows(
    model: &mut Transformer,
    prompts: &[Vec<i64>],
    decode: &DecodeConfig,
    k: usize,
    nodes: usize,
    slots: Option<usize>,
    factory: impl FnMut() -> blockwise::Result<Box<dyn Proposer>> + 'static,
) -> Vec<DecodeOutput> {
    let mut b = BatchBlockwise::builder(model)
        .block_size(k)
        .dynamic_tree(nodes)
        .proposer_factory(false, factory);
    if let Some(s) = slots {
        b = b.slots(s);
    }
    b.build()
        .expect("build")
        .decode_batch(prompts, decode)
        .expect("batch")
}

fn assert_rows_equal(
    reference: &[DecodeOutput],
    outs: &[DecodeOutput],
    decode: &DecodeConfig,
    k: usize,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(reference.len(), outs.len());
    for (r, (want, got)) in reference.iter().zip(outs).enumerate() {
        prop_assert_eq!(&want.tokens, &got.tokens, "row {} differs", r);
        prop_assert_eq!(want.stop, got.stop, "row {} stopped differently", r);
        // A last block of just the token the previous call chose costs no call, so a row
        // never takes more calls than greedy decoding of it.
        prop_assert!(
            got.stats.model_calls <= want.stats.model_calls,
            "row {} took {} calls, greedy {}",
            r,
            got.stats.model_calls,
            want.stats.model_calls
        );
        check_loop_invariants(got, decode, k).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    Ok(())
}

/// Which proposer each row gets.
#[derive(Debug, Clone, Copy)]
enum Which {
    Heads,
    NGram,
    /// Each row its own oracle (its greedy continuation, corrupted at the case's rate): blocks
    /// of very different accepted lengths side by side.
    Oracle,
}

proptest! {
    #![proptest_config(config())]

    /// Every row of a batch equals that row decoded alone, whatever the others do: different
    /// prompt lengths, accepted lengths and stopping points, with and without cache compaction
    /// and chunked prefill.
    #[test]
    fn batch_rows_equal_rows_alone(
        (case, prompts) in batch_case(),
        which in prop_oneof![Just(Which::Heads), Just(Which::NGram), Just(Which::Oracle)],
        tight_slots in any::<bool>(),
        chunk in prop_oneof![Just(None), Just(Some(1usize)), Just(Some(3))],
        speculate in prop_oneof![Just(None), Just(Some(0usize)), Just(Some(1)), Just(Some(2))],
    ) {
        let mut model = case.model().expect("model");
        let mut decode = case.decode.clone();
        decode.prefill_chunk = chunk;
        let reference = greedy_alone(&mut model, &prompts, &decode);
        let k = case.block_size;
        let mut b = BatchBlockwise::builder(&mut model).block_size(k);
        if let Some(rows) = speculate {
            b = b.speculate_up_to(rows); // proposals only while few rows are busy
        }
        b = match which {
            Which::Heads => b.proposer(HeadsProposer),
            Which::NGram => b.proposer(NGram::new(1, 3).expect("ngram")),
            Which::Oracle => {
                let vocab = case.config.vocab_size;
                let truths: Vec<Vec<i64>> = prompts
                    .iter()
                    .zip(&reference)
                    .map(|(p, o)| [p.as_slice(), &o.tokens].concat())
                    .collect();
                let row = Rc::new(Cell::new(0usize));
                let (corrupt, seed) = (case.corrupt, case.proposer_seed);
                b.proposer_factory(false, move || {
                    let i = row.get();
                    row.set(i + 1);
                    Ok(Box::new(OracleProposer::new(truths[i].clone(), vocab, corrupt, seed + i as u64))
                        as Box<dyn Proposer>)
                })
            }
        };
        if tight_slots {
            b = b.slots(1); // the least the decoder allows: compacts often
        }
        let outs = b.build().expect("build").decode_batch(&prompts, &decode).expect("batch");
        assert_rows_equal(&reference, &outs, &decode, k)?;
    }

    /// A dynamic-tree decoder whose proposer builds no tree verifies its chain of up to `k`
    /// tokens, more than the tree's nodes: the batch's cache has room for it (near the end of
    /// the context too, with the fewest slots), and every row equals greedy decoding of it alone.
    #[test]
    fn chains_in_a_dynamic_tree_decoder_equal_rows_alone(
        (case, prompts) in batch_case(),
        nodes in 1usize..4,
    ) {
        let mut model = case.model().expect("model");
        let reference = greedy_alone(&mut model, &prompts, &case.decode);
        let k = case.block_size;
        let outs = dynamic_tree_rows(&mut model, &prompts, &case.decode, k, nodes, Some(1), || {
            Ok(Box::new(NGram::new(1, 3)?) as Box<dyn Proposer>)
        });
        assert_rows_equal(&reference, &outs, &case.decode, k.max(nodes + 1))?;
    }

    /// Corpus lookup and prompt lookup merged into one dynamic tree per row (neither builds
    /// trees: their chains share what prefix they share), over a corpus of every row's greedy
    /// text beside another row's: every row equals greedy decoding of it alone.
    #[test]
    fn corpus_and_prompt_lookup_trees_equal_rows_alone(
        (case, prompts) in batch_case(),
        nodes in 1usize..12,
        max_n in 1usize..5,
    ) {
        let mut model = case.model().expect("model");
        let reference = greedy_alone(&mut model, &prompts, &case.decode);
        let k = case.block_size;
        // Each row's text, then the next row's continuation after this row's prompt: right
        // and wrong continuations of the same n-grams.
        let mut texts: Vec<Vec<i64>> = Vec::new();
        for (i, (p, o)) in prompts.iter().zip(&reference).enumerate() {
            texts.push([p.as_slice(), &o.tokens].concat());
            let other = &reference[(i + 1) % reference.len()].tokens;
            texts.push([p.as_slice(), other].concat());
        }
        let index = std::sync::Arc::new(CorpusIndex::new(&texts, 1, max_n).expect("index"));
        let outs = dynamic_tree_rows(&mut model, &prompts, &case.decode, k, nodes, None, move || {
            let members: Vec<Box<dyn Proposer>> = vec![
                Box::new(NGram::new(2, 3)?),
                Box::new(CorpusLookup::new(std::sync::Arc::clone(&index))),
            ];
            Ok(Box::new(Chain::new(members)) as Box<dyn Proposer>)
        });
        assert_rows_equal(&reference, &outs, &case.decode, k.max(nodes + 1))?;
    }

    /// Lookahead decoding in its one-call form: the Jacobi window and the pool's candidates in
    /// one dynamic tree per row, every row equal to greedy decoding of it alone.
    #[test]
    fn lookahead_trees_equal_rows_alone(
        (case, prompts) in batch_case(),
        window in 1usize..6,
        ngram in 2usize..5,
        candidates in 1usize..5,
        nodes in 1usize..24,
    ) {
        let mut model = case.model().expect("model");
        let reference = greedy_alone(&mut model, &prompts, &case.decode);
        let k = case.block_size;
        let outs = dynamic_tree_rows(&mut model, &prompts, &case.decode, k, nodes, None, move || {
            Ok(Box::new(Lookahead::new(window, ngram, candidates)?) as Box<dyn Proposer>)
        });
        assert_rows_equal(&reference, &outs, &case.decode, k)?;
    }

    /// Under an approximate criterion (top-2) the output is no longer greedy's, but every row
    /// still equals that prompt decoded alone by `Blockwise` with the same proposer and
    /// criterion.
    #[test]
    fn batch_rows_equal_blockwise_alone_under_top_k(
        (case, prompts) in batch_case(),
        heads in any::<bool>(),
        tight_slots in any::<bool>(),
    ) {
        let mut model = case.model().expect("model");
        let k = case.block_size;
        let mut reference = Vec::new();
        for p in &prompts {
            let b = Blockwise::builder(&mut model).block_size(k).criterion(TopK::new(2).expect("top-2"));
            let b = if heads { b.proposer(HeadsProposer) } else { b.proposer(NGram::new(1, 3).expect("ngram")) };
            reference.push(b.build().expect("build").decode(p, &case.decode).expect("alone"));
        }
        let mut b = BatchBlockwise::builder(&mut model)
            .block_size(k)
            .criterion(TopK::new(2).expect("top-2"));
        b = if heads { b.proposer(HeadsProposer) } else { b.proposer(NGram::new(1, 3).expect("ngram")) };
        if tight_slots {
            b = b.slots(1);
        }
        let outs = b.build().expect("build").decode_batch(&prompts, &case.decode).expect("batch");
        assert_rows_equal(&reference, &outs, &case.decode, k)?;
    }

    /// A tree of the heads' top candidates keeps exactly greedy's tokens, in batches too; and it
    /// never accepts less than the chain of the heads' first choices would (the chain is one of
    /// its branches).
    #[test]
    fn tree_equals_greedy(
        (case, prompts) in batch_case(),
        widths in proptest::collection::vec(1usize..=3, 1..=4),
        tight_slots in any::<bool>(),
    ) {
        let k = case.block_size.max(widths.len() + 1);
        let shape = TreeShape::new(widths.clone()).expect("shape");
        let mut model = case.model().expect("model");
        let reference = greedy_alone(&mut model, &prompts, &case.decode);
        let mut b = BatchBlockwise::builder(&mut model).block_size(k).tree(shape);
        if tight_slots {
            b = b.slots(1);
        }
        let outs = b.build().expect("build").decode_batch(&prompts, &case.decode).expect("tree");
        assert_rows_equal(&reference, &outs, &case.decode, k)?;
        // The same tree for one prompt through the single-prompt interface.
        let mut one = BatchBlockwise::builder(&mut model)
            .block_size(k)
            .tree(TreeShape::new(widths).expect("shape"))
            .build()
            .expect("build");
        let alone = one.decode(&prompts[0], &case.decode).expect("tree alone");
        prop_assert_eq!(&alone.tokens, &reference[0].tokens);
    }
}

fn tiny() -> Transformer {
    Transformer::new_seeded(TransformerConfig::tiny(12, 4), 3, tch::Device::Cpu).expect("model")
}

#[test]
fn trees_are_walked_past_their_root() {
    // A walk that stopped at the root would still reproduce greedy output, one token per call;
    // random heads over a 12-token vocabulary put the right token among their top 4 often
    // enough that a correct walk keeps more than one token per call.
    let mut model = tiny();
    let prompts: Vec<Vec<i64>> = (0..6).map(|i| vec![i, i + 1, i + 2]).collect();
    let outs = BatchBlockwise::builder(&mut model)
        .block_size(5)
        .tree("4,3,2,1".parse().expect("shape"))
        .build()
        .expect("build")
        .decode_batch(&prompts, &DecodeConfig::new(40))
        .expect("decode");
    let (tokens, iterations) = outs.iter().fold((0, 0), |(t, i), o| {
        (t + o.stats.new_tokens, i + o.stats.iterations)
    });
    let mean = tokens as f64 / iterations as f64;
    assert!(mean > 1.2, "the tree kept {mean} tokens per call");
}

#[test]
fn bad_settings_are_errors() {
    let mut model = tiny();
    let d = DecodeConfig::new(5);
    // Deeper than the block allows.
    let e = BatchBlockwise::builder(&mut model)
        .block_size(3)
        .tree("2,2,2".parse().expect("shape"))
        .build()
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidConfig { field: "tree", .. }),
        "{e}"
    );
    // More heads than the model has.
    let heads = model.config().num_proposal_heads;
    let e = BatchBlockwise::builder(&mut model)
        .block_size(heads + 3)
        .tree(TreeShape::chain(heads + 1).expect("shape"))
        .build()
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidConfig { field: "tree", .. }),
        "{e}"
    );
    // A tree with a criterion other than the default.
    let e = BatchBlockwise::builder(&mut model)
        .tree("2".parse().expect("shape"))
        .criterion(blockwise::TopK::new(2).expect("top-k"))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "acceptance",
                ..
            }
        ),
        "{e}"
    );
    let mut dec = BatchBlockwise::builder(&mut model).build().expect("build");
    // Empty prompt, id out of vocabulary, sampling.
    assert!(matches!(
        dec.decode_batch(&[vec![1], vec![]], &d),
        Err(Error::EmptyPrompt)
    ));
    assert!(matches!(
        dec.decode_batch(&[vec![1], vec![12]], &d),
        Err(Error::TokenOutOfVocabulary { .. })
    ));
    let sampled = DecodeConfig::new(5).with_sampling(SamplingConfig::default());
    assert!(matches!(
        dec.decode_batch(&[vec![1]], &sampled),
        Err(Error::InvalidConfig {
            field: "sampling",
            ..
        })
    ));
    assert!(dec.decode_batch(&[], &d).expect("empty batch").is_empty());
    // k = 0.
    assert!(BatchBlockwise::builder(&mut model)
        .block_size(0)
        .build()
        .is_err());
    // The model refuses inputs that break the calling convention.
    model.begin_batch(2, 8).expect("batch");
    let tokens = tch::Tensor::from_slice(&[1i64, 2]).view([2, 1]);
    let positions = tch::Tensor::from_slice(&[0i64, 0]).view([2, 1]);
    let wrong_mask = tch::Tensor::ones([2, 1, 2], (tch::Kind::Bool, tch::Device::Cpu));
    assert!(matches!(
        model.forward_masked(&tokens, &positions, &wrong_mask),
        Err(Error::Contract { .. })
    ));
    let far = tch::Tensor::from_slice(&[0i64, 10_000]).view([2, 1]);
    let mask = tch::Tensor::ones([2, 1, 1], (tch::Kind::Bool, tch::Device::Cpu));
    assert!(matches!(
        model.forward_masked(&tokens, &far, &mask),
        Err(Error::BlockBeyondContext { .. })
    ));
    let three = tch::Tensor::from_slice(&[1i64, 2, 3]).view([3, 1]);
    let three_pos = tch::Tensor::from_slice(&[0i64, 0, 0]).view([3, 1]);
    let three_mask = tch::Tensor::ones([3, 1, 1], (tch::Kind::Bool, tch::Device::Cpu));
    assert!(matches!(
        model.forward_masked(&three, &three_pos, &three_mask),
        Err(Error::Contract { .. })
    ));
}

/// `speculate_up_to(n)`: while more than `n` rows are busy every row takes plain greedy steps
/// (nothing proposed, one token a call), and proposals resume once few enough rows are left;
/// the output is greedy decoding's either way.
#[test]
fn proposals_stop_while_many_rows_are_busy() {
    let mut model = tiny();
    // Repetitive prompts, so that prompt lookup has something to propose; different budgets,
    // so that rows leave the batch one after another.
    let prompts: Vec<Vec<i64>> = (0..3)
        .map(|i| [1, 2, 3, 1, 2, 3, 1, 2].repeat(i + 1))
        .collect();
    let decode = DecodeConfig::new(12);
    let reference = greedy_alone(&mut model, &prompts, &decode);
    let run = |model: &mut Transformer, limit: Option<usize>| {
        let mut b = BatchBlockwise::builder(model)
            .block_size(4)
            .proposer(NGram::new(1, 3).expect("ngram"));
        if let Some(n) = limit {
            b = b.speculate_up_to(n);
        }
        b.build()
            .expect("build")
            .decode_batch(&prompts, &decode)
            .expect("batch")
    };
    let free = run(&mut model, None);
    let never = run(&mut model, Some(0));
    let all = run(&mut model, Some(3));
    for (i, r) in reference.iter().enumerate() {
        for outs in [&free, &never, &all] {
            assert_eq!(outs[i].tokens, r.tokens, "row {i}");
        }
        assert_eq!(
            never[i].stats.proposed, 0,
            "row {i} proposed above the limit"
        );
        assert_eq!(all[i].stats.proposed, free[i].stats.proposed, "row {i}");
    }
    assert!(free.iter().map(|o| o.stats.proposed).sum::<usize>() > 0);
    // Each row gets exactly one token a call while the limit holds.
    for o in &never {
        assert_eq!(o.stats.iterations, o.tokens.len(), "{:?}", o.stats);
    }
}

#[test]
fn rows_finish_on_their_own() {
    // One row's EOS does not stop the others; every row reports its own stop.
    let mut model = tiny();
    let prompts = vec![vec![1, 2, 3], vec![7], vec![4, 4, 4, 4, 4, 4]];
    let reference = greedy_alone(&mut model, &prompts, &DecodeConfig::new(30));
    // Make the first row's third token an EOS id.
    let eos = reference[0].tokens[2];
    let decode = DecodeConfig::new(30).with_eos(vec![eos]);
    let reference = greedy_alone(&mut model, &prompts, &decode);
    assert_eq!(reference[0].stop, StopReason::Eos);
    let outs = BatchBlockwise::builder(&mut model)
        .block_size(4)
        .proposer(NGram::new(1, 2).expect("ngram"))
        .build()
        .expect("build")
        .decode_batch(&prompts, &decode)
        .expect("batch");
    for (want, got) in reference.iter().zip(&outs) {
        assert_eq!(want.tokens, got.tokens);
        assert_eq!(want.stop, got.stop);
    }
}

/// A model that only has the plain calling convention.
struct Plain(Transformer);

impl blockwise::CausalLm for Plain {
    fn info(&self) -> &blockwise::ModelInfo {
        self.0.info()
    }
    fn forward(
        &mut self,
        tokens: &tch::Tensor,
        start: usize,
    ) -> blockwise::Result<blockwise::ModelOutput> {
        self.0.forward(tokens, start)
    }
    fn cached_len(&self) -> usize {
        self.0.cached_len()
    }
    fn truncate(&mut self, len: usize) -> blockwise::Result<()> {
        self.0.truncate(len)
    }
}

#[test]
fn a_model_without_masks_is_refused_with_a_reason() {
    let e = BatchBlockwise::builder(Plain(tiny())).build().unwrap_err();
    assert!(
        matches!(e, Error::MissingCapability { .. }) && e.to_string().contains("attention masks"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(config())]

    /// A batch that stays open (a server's): prompts are admitted between steps as rows free
    /// up, fewer rows than prompts, each with its own budget; one row may be cancelled midway.
    /// Every finished row equals greedy decoding of its prompt alone under its own config, the
    /// blocks streamed for it concatenate to its output, a freed row serves the next prompt,
    /// and a cancelled row is never heard of again.
    #[test]
    fn rows_admitted_between_steps_equal_rows_alone(
        (case, prompts) in batch_case(),
        rows in 1usize..=3,
        budgets in proptest::collection::vec(1usize..=40, 5),
        heads in any::<bool>(),
        tight_slots in any::<bool>(),
        chunk in prop_oneof![Just(None), Just(Some(1usize)), Just(Some(4))],
        cancel in proptest::option::of((0usize..5, 0usize..4)),
    ) {
        let mut model = case.model().expect("model");
        let k = case.block_size;
        let configs: Vec<DecodeConfig> = prompts
            .iter()
            .zip(&budgets)
            .map(|(_, &n)| {
                let mut d = case.decode.clone();
                d.max_new_tokens = n.min(case.decode.max_new_tokens.max(1));
                d.prefill_chunk = chunk;
                d
            })
            .collect();
        let reference: Vec<DecodeOutput> = prompts
            .iter()
            .zip(&configs)
            .map(|(p, d)| GreedyDecoder::new(&mut model).decode(p, d).expect("greedy"))
            .collect();
        let max_context = case.config.max_context;
        let least = prompts
            .iter()
            .zip(&configs)
            .map(|(p, d)| (p.len() + d.max_new_tokens).min(max_context) + k)
            .max()
            .unwrap_or(1);
        let mut b = BatchBlockwise::builder(&mut model).block_size(k);
        b = if heads { b.proposer(HeadsProposer) } else { b.proposer(NGram::new(1, 3).expect("ngram")) };
        let mut decoder = b.build().expect("build");
        decoder.open(rows, if tight_slots { least } else { 2 * least }).expect("open");
        prop_assert_eq!(decoder.capacity(), rows);

        let mut ids: Vec<Option<RowId>> = vec![None; prompts.len()];
        let mut streamed: Vec<Vec<i64>> = vec![Vec::new(); prompts.len()];
        let mut outs: Vec<Option<DecodeOutput>> = vec![None; prompts.len()];
        let mut cancelled: Option<usize> = None;
        let mut next = 0;
        let mut steps = 0;
        loop {
            // One admission per step at most, so prompts join a batch already under way.
            if next < prompts.len() && decoder.busy_rows() < rows {
                ids[next] = Some(decoder.admit(&prompts[next], &configs[next]).expect("admit"));
                next += 1;
            }
            if next < prompts.len() && decoder.busy_rows() == rows {
                let err = decoder.admit(&prompts[next], &configs[next]).unwrap_err();
                prop_assert!(err.to_string().contains("busy"), "{}", err);
            }
            if let Some((who, at)) = cancel {
                if steps == at && cancelled.is_none() && who < next && outs[who].is_none() {
                    let so_far = decoder.cancel(ids[who].unwrap()).expect("a busy row");
                    prop_assert_eq!(so_far.new_tokens, streamed[who].len());
                    prop_assert!(decoder.cancel(ids[who].unwrap()).is_none(), "cancelled twice");
                    cancelled = Some(who);
                }
            }
            if decoder.busy_rows() == 0 {
                if next == prompts.len() {
                    break;
                }
                continue;
            }
            for update in decoder.step().expect("step") {
                let i = ids.iter().position(|&id| id == Some(update.row)).expect("known row");
                prop_assert!(Some(i) != cancelled, "an update for cancelled row {}", i);
                prop_assert!(outs[i].is_none(), "row {} updated after it finished", i);
                streamed[i].extend_from_slice(&update.tokens);
                if let Some(out) = update.finished {
                    outs[i] = Some(out.expect("row output"));
                }
            }
            steps += 1;
            prop_assert!(steps < 10_000, "the batch never finished");
        }
        prop_assert_eq!(decoder.busy_rows(), 0);
        for (i, want) in reference.iter().enumerate() {
            if Some(i) == cancelled {
                prop_assert!(outs[i].is_none());
                prop_assert!(want.tokens.starts_with(&streamed[i]), "cancelled row {} streamed other tokens", i);
                continue;
            }
            let got = outs[i].as_ref().expect("every row finishes");
            prop_assert_eq!(&want.tokens, &got.tokens, "row {} differs", i);
            prop_assert_eq!(want.stop, got.stop, "row {} stopped differently", i);
            prop_assert_eq!(&streamed[i], &got.tokens, "row {}: streamed blocks", i);
            prop_assert!(got.stats.model_calls <= want.stats.model_calls);
            check_loop_invariants(got, &configs[i], k).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
}

/// The session refuses what it cannot do, in words: admitting with no batch open, a request
/// longer than the batch's slots, sampling, opening over busy rows.
#[test]
fn a_batch_session_refuses_misuse() {
    let model =
        Transformer::new_seeded(TransformerConfig::tiny(50, 2), 3, tch::Device::Cpu).unwrap();
    let mut d = BatchBlockwise::builder(model)
        .block_size(3)
        .build()
        .unwrap();
    let decode = DecodeConfig::new(8);
    let e = d.admit(&[1, 2], &decode).unwrap_err().to_string();
    assert!(e.contains("no batch is open"), "{e}");
    assert!(d
        .step()
        .unwrap_err()
        .to_string()
        .contains("no batch is open"));
    d.open(1, 16).unwrap();
    let e = d
        .admit(&[1, 2], &DecodeConfig::new(20))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needs 25 cache slots") && e.contains("has 16"),
        "{e}"
    );
    let mut sampled = decode.clone();
    sampled.sampling = Some(SamplingConfig::default());
    assert!(d
        .admit(&[1, 2], &sampled)
        .unwrap_err()
        .to_string()
        .contains("greedy"));
    let id = d.admit(&[1, 2], &decode).unwrap();
    let e = d.open(2, 16).unwrap_err().to_string();
    assert!(e.contains("still decoding"), "{e}");
    assert!(d.cancel(id).is_some());
    d.open(2, 16).unwrap();
    assert_eq!((d.capacity(), d.busy_rows()), (2, 0));
}

/// Rejected slots do not pile up: before each call, the last call's accepted slots are moved
/// over its rejected ones (a copy of a few slots), so a row is attended as one run of slots and
/// the slots used never exceed the sequence plus one block. Chains of random guesses (mostly
/// rejected) and trees of random heads, batches of one and of three.
#[test]
fn rejected_slots_are_compacted_away_before_the_next_call() {
    for (tree, rows) in [(None, 1), (Some("3,2,1"), 1), (None, 3), (Some("2,2"), 3)] {
        let mut model =
            Transformer::new_seeded(TransformerConfig::tiny(40, 4), 6, tch::Device::Cpu)
                .expect("model");
        let mut b = BatchBlockwise::builder(&mut model)
            .block_size(4)
            .proposer(blockwise::testing::RandomProposer::new(40, 5));
        if let Some(shape) = tree {
            b = b.tree(shape.parse().expect("shape"));
        }
        let mut d = b.build().expect("build");
        d.open(rows, 120).expect("open");
        let prompts: Vec<Vec<i64>> = (0..rows as i64).map(|r| vec![1, 2, r + 3]).collect();
        let config = DecodeConfig::new(40);
        let ids: Vec<RowId> = prompts
            .iter()
            .map(|p| d.admit(p, &config).expect("admit"))
            .collect();
        let mut emitted = vec![0usize; rows];
        let (mut calls, mut rejected) = (0, false);
        while d.busy_rows() > 0 {
            for update in d.step().expect("step") {
                let r = ids.iter().position(|&id| id == update.row).expect("a row");
                emitted[r] += update.tokens.len();
            }
            calls += 1;
            let used = MaskedLm::slots_used(&**d.model());
            let longest = (0..rows)
                .map(|r| prompts[r].len() + emitted[r])
                .max()
                .unwrap();
            rejected |= used > longest + 1;
            // Every row's block spans at most the tree's nodes (16 for 3,2,1).
            assert!(
                used <= longest + 16,
                "{tree:?}, {rows} rows, call {calls}: {used} slots used for at most {longest} \
                 kept"
            );
        }
        assert!(
            rejected,
            "{tree:?}, {rows} rows: no call left a rejected slot"
        );
    }
}

/// A model whose compaction keeps the first slots whatever the index says.
struct Truncating(Transformer);

impl blockwise::CausalLm for Truncating {
    fn info(&self) -> &blockwise::ModelInfo {
        self.0.info()
    }
    fn forward(
        &mut self,
        tokens: &tch::Tensor,
        start: usize,
    ) -> blockwise::Result<blockwise::ModelOutput> {
        self.0.forward(tokens, start)
    }
    fn cached_len(&self) -> usize {
        self.0.cached_len()
    }
    fn truncate(&mut self, len: usize) -> blockwise::Result<()> {
        self.0.truncate(len)
    }
}

impl MaskedLm for Truncating {
    fn begin_batch(&mut self, batch: usize, slots: usize) -> blockwise::Result<()> {
        self.0.begin_batch(batch, slots)
    }
    fn slots_used(&self) -> usize {
        self.0.slots_used()
    }
    fn slot_capacity(&self) -> usize {
        self.0.slot_capacity()
    }
    fn forward_masked(
        &mut self,
        tokens: &tch::Tensor,
        positions: &tch::Tensor,
        mask: &tch::Tensor,
    ) -> blockwise::Result<blockwise::ModelOutput> {
        self.0.forward_masked(tokens, positions, mask)
    }
    fn compact(&mut self, index: &tch::Tensor) -> blockwise::Result<()> {
        let [rows, n] = index.size()[..] else {
            unreachable!("a 2-d index")
        };
        let first = tch::Tensor::arange(n, (tch::Kind::Int64, tch::Device::Cpu))
            .unsqueeze(0)
            .repeat([rows, 1]);
        self.0.compact(&first)
    }
}

/// The test kit's compaction check passes on the built-in transformer (float64, several
/// shapes and seeds) and catches a compaction that ignores its index.
#[test]
fn compaction_keeps_what_attention_sees() {
    for (vocab, heads, seed) in [(16, 0, 1), (40, 3, 2), (97, 1, 3)] {
        let mut m = Transformer::new_seeded(
            TransformerConfig::tiny(vocab, heads),
            seed,
            tch::Device::Cpu,
        )
        .expect("model");
        blockwise::testing::check_compaction(&mut m, 1e-9).expect("compaction");
    }
    let e = blockwise::testing::check_compaction(&mut Truncating(tiny_with_vocab(16)), 1e-9)
        .unwrap_err();
    assert_eq!(
        e.invariant,
        blockwise::testing::invariants::COMPACTION,
        "{e}"
    );
    assert!(e.detail.contains("logits moved"), "{e}");
    let e = blockwise::testing::check_compaction(&mut tiny(), 1e-9).unwrap_err();
    assert!(e.detail.contains("vocabulary of 16"), "{e}");
}

fn tiny_with_vocab(vocab: i64) -> Transformer {
    Transformer::new_seeded(TransformerConfig::tiny(vocab, 0), 4, tch::Device::Cpu).expect("model")
}

/// A `BlockwiseConfig` with a tree, from JSON: the batch decoder it configures verifies that
/// tree (a shape over the heads, or the proposer's dynamic trees) and decodes greedy's tokens,
/// exactly what the builder's own calls give; what a batch cannot do is refused, naming the
/// field; and `Blockwise::from_config` refuses a tree.
#[test]
fn a_config_with_a_tree_builds_the_batch_decoder_it_names() {
    use blockwise::config::{BlockwiseConfig, VerifierConfig};
    use blockwise::decoder::TreeConfig;
    use blockwise::policy::PolicyConfig;

    let prompts: Vec<Vec<i64>> = (0..3).map(|i| vec![i, i + 2, 7]).collect();
    let decode = DecodeConfig::new(24);
    let mut plain = tiny();
    let want: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            GreedyDecoder::new(&mut plain)
                .decode(p, &decode)
                .unwrap()
                .tokens
        })
        .collect();
    for (json, tree) in [
        (
            r#"{"block_size": 4, "tree": {"shape": [3, 2, 1]}}"#,
            TreeConfig::Shape("3,2,1".parse().unwrap()),
        ),
        (
            r#"{"block_size": 4, "proposer": {"ngram": {"min": 1, "max": 2}}, "tree": {"dynamic": 6}}"#,
            TreeConfig::Dynamic(6),
        ),
    ] {
        let config = BlockwiseConfig::from_json(json).unwrap();
        assert_eq!(config.tree.as_ref(), Some(&tree), "{json}");
        let back = BlockwiseConfig::from_json(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert_eq!(tree.to_string().parse::<TreeConfig>().unwrap(), tree);
        let mut model = tiny();
        let info = blockwise::CausalLm::info(&model).clone();
        let rows = config.proposer.row_proposers(&info, None).unwrap();
        let outs = BatchBlockwise::builder(&mut model)
            .proposer_factory(rows.needs_heads(), rows.factory())
            .config(&config, None)
            .unwrap()
            .build()
            .unwrap()
            .decode_batch(&prompts, &decode)
            .unwrap();
        for (out, want) in outs.iter().zip(&want) {
            assert_eq!(&out.tokens, want, "{json}");
        }
        // The same decoder from the builder's own calls takes as many calls: the tree was used.
        let by_hand = BatchBlockwise::builder(&mut model)
            .block_size(4)
            .proposer_factory(rows.needs_heads(), rows.factory());
        let by_hand = match &tree {
            TreeConfig::Shape(s) => by_hand.tree(s.clone()),
            TreeConfig::Dynamic(n) => by_hand.dynamic_tree(*n),
        };
        let again = by_hand
            .build()
            .unwrap()
            .decode_batch(&prompts, &decode)
            .unwrap();
        for (a, b) in outs.iter().zip(&again) {
            assert_eq!(a.stats.model_calls, b.stats.model_calls, "{json}");
        }
        let e = Blockwise::from_config(&mut model, &config, None).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { field: "tree", .. })
                && e.to_string().contains("BatchBlockwise"),
            "{e}"
        );
    }
    let tree = || BlockwiseConfig {
        tree: Some(TreeConfig::Dynamic(4)),
        proposer: blockwise::config::ProposerConfig::Ngram { min: 1, max: 2 },
        ..BlockwiseConfig::heads(4)
    };
    let refused: Vec<(BlockwiseConfig, &str)> = vec![
        (
            BlockwiseConfig {
                policy: PolicyConfig::CostAware { per_token: None },
                ..tree()
            },
            "policy",
        ),
        (
            BlockwiseConfig {
                tie_guard: Some(0.5),
                ..tree()
            },
            "tie_guard",
        ),
        (
            BlockwiseConfig {
                verifier: VerifierConfig::Recompute,
                ..BlockwiseConfig::heads(4)
            },
            "verifier",
        ),
        (
            BlockwiseConfig {
                min_block: Some(2),
                ..tree()
            },
            "acceptance",
        ),
        (
            BlockwiseConfig {
                tree: Some(TreeConfig::Shape("2,2".parse().unwrap())),
                ..tree()
            },
            "tree",
        ),
    ];
    for (config, field) in refused {
        let e = BatchBlockwise::builder(tiny())
            .config(&config, None)
            .err()
            .expect("refused");
        assert!(
            matches!(&e, Error::InvalidConfig { field: f, .. } if *f == field),
            "{field}: {e}"
        );
    }
    for bad in ["dynamic:", "dynamic:x", "3,0", ""] {
        let e = bad.parse::<TreeConfig>().unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { field: "tree", .. }),
            "{bad}: {e}"
        );
    }
    assert!(BlockwiseConfig::from_json(r#"{"block_size": 4, "tree": {"wide": 3}}"#).is_err());
}
