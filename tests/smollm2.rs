//! SmolLM2-135M-Instruct end to end, through the TorchScript export (`make smollm2` writes
//! `models/smollm2`; `make test` runs it first). Oracles are transformers' own greedy
//! continuations, saved by the export script.

use std::path::PathBuf;

use blockwise::bundle::{shipped_heads_dir, BundleOptions, HeadsChoice, ModelBundle};
use blockwise::heads::{HeadsConfig, WithHeads};
use blockwise::testing::{Conformance, RandomProposer};
use blockwise::torchscript::{F32Matmul, LoadOptions, Oracle, TorchScriptLm};
use blockwise::{
    BatchBlockwise, Blockwise, BlockwiseDecoder, CausalLm, DType, DecodeConfig, GreedyDecoder,
    HeadsProposer, NGram, NoProposer, StopReason,
};
use tch::{Kind, Tensor};

/// bf16 (and int8, which computes in bf16) divergences must happen where the top-2 logits are
/// this close: bf16 rounding moves SmolLM2's logits by up to ~2.8 (the export's check), so a
/// smaller gap can flip an argmax.
const BF16_NEAR_TIE: f64 = 1.0;

fn dir() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/smollm2"));
    assert!(
        d.join("metadata.json").is_file(),
        "{} is missing: run `make smollm2` (make test does)",
        d.display()
    );
    d
}

fn bundle(dtype: DType) -> ModelBundle {
    bundle_with(dtype, F32Matmul::Auto)
}

fn bundle_with(dtype: DType, f32_matmul: F32Matmul) -> ModelBundle {
    ModelBundle::load(
        dir().to_str().unwrap(),
        &BundleOptions {
            dtype,
            max_context: Some(512),
            f32_matmul,
            ..BundleOptions::default()
        },
    )
    .expect("load SmolLM2")
}

fn oracles(b: &ModelBundle, dtype: &str) -> Vec<Oracle> {
    let o = b.metadata.as_ref().unwrap().oracles[dtype].clone();
    assert!(o.len() >= 5);
    o
}

fn config(b: &ModelBundle, o: &Oracle) -> DecodeConfig {
    DecodeConfig::new(o.greedy_ids.len()).with_eos(b.eos.clone())
}

#[test]
fn tokenizer_and_chat_template_match_transformers() {
    let b = bundle(DType::F32);
    for o in oracles(&b, "f32") {
        let ids = b.encode_prompt(&o.prompt, o.chat).unwrap();
        assert_eq!(ids, o.input_ids, "prompt {:?} (chat: {})", o.prompt, o.chat);
    }
}

#[test]
fn greedy_equals_transformers_in_float32() {
    // Every oracle with the library auto picks on this CPU, the first two with the other, so
    // both are checked on every CPU.
    let other = match F32Matmul::auto_choice() {
        F32Matmul::OneDnn => F32Matmul::Blas,
        _ => F32Matmul::OneDnn,
    };
    for (matmul, count) in [(F32Matmul::Auto, usize::MAX), (other, 2)] {
        let mut b = bundle_with(DType::F32, matmul);
        for o in oracles(&b, "f32").into_iter().take(count) {
            let cfg = config(&b, &o);
            let out = GreedyDecoder::new(&mut b.model)
                .decode(&o.input_ids, &cfg)
                .unwrap();
            assert_eq!(
                out.tokens, o.greedy_ids,
                "{matmul:?}, prompt {:?}",
                o.prompt
            );
        }
    }
}

/// The gap between two tokens' logits after `context`, under the export of `dtype`.
fn gap(dtype: DType, context: &[i64], a: i64, b: i64) -> f64 {
    let mut m = TorchScriptLm::load(
        dir(),
        &LoadOptions {
            dtype,
            max_context: Some(512),
            ..Default::default()
        },
    )
    .unwrap();
    let _g = tch::no_grad_guard();
    let logits = m
        .forward(&Tensor::from_slice(context).unsqueeze(0), 0)
        .unwrap()
        .logits
        .select(1, context.len() as i64 - 1)
        .to_kind(Kind::Double);
    let va = logits.double_value(&[0, a]);
    let vb = logits.double_value(&[0, b]);
    (va - vb).abs()
}

/// The first index where two token lists differ.
fn first_difference(a: &[i64], b: &[i64]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Greedy decoding of the `dtype` export against the export's oracles for it: equal, or
/// diverging where the two choices' logits (under `gap_dtype`'s export) are a near-tie.
fn greedy_equals_oracles_or_diverges_at_a_near_tie(dtype: DType, gap_dtype: DType) {
    let mut b = bundle(dtype);
    for o in oracles(&b, &dtype.to_string()) {
        let cfg = config(&b, &o);
        let out = GreedyDecoder::new(&mut b.model)
            .decode(&o.input_ids, &cfg)
            .unwrap();
        if out.tokens == o.greedy_ids {
            continue;
        }
        let i = first_difference(&out.tokens, &o.greedy_ids).unwrap();
        let mut context = o.input_ids.clone();
        context.extend_from_slice(&o.greedy_ids[..i]);
        let gap = gap(gap_dtype, &context, out.tokens[i], o.greedy_ids[i]);
        assert!(
            gap < BF16_NEAR_TIE,
            "prompt {:?}: {dtype} output diverges from transformers at token {i} where the \
             {gap_dtype} gap between the two choices is {gap:.3} (not a near-tie)",
            o.prompt
        );
        eprintln!(
            "{dtype} {:?}: diverges at token {i}, near-tie gap {gap:.3}",
            o.prompt
        );
    }
}

#[test]
fn greedy_equals_transformers_in_bf16_or_diverges_at_a_near_tie() {
    greedy_equals_oracles_or_diverges_at_a_near_tie(DType::Bf16, DType::F32);
}

/// The int8 weight form's oracles are transformers' greedy output on exactly the dequantized
/// weights the export computes with (in bfloat16), so this checks the quantised model against
/// itself; near-ties are measured by the int8 export's own logits.
#[test]
fn greedy_equals_transformers_in_int8_or_diverges_at_a_near_tie() {
    greedy_equals_oracles_or_diverges_at_a_near_tie(DType::Int8, DType::Int8);
}

/// Blockwise decoding of the int8 form against its own greedy output: identical, or diverging
/// only where greedy's own top-2 margin is a near-tie (bfloat16 compute rounds a block and a
/// one-token step differently).
#[test]
fn blockwise_equals_greedy_in_int8_or_diverges_at_a_near_tie() {
    let mut b = bundle(DType::Int8);
    let mut identical = 0;
    let os = oracles(&b, "int8");
    for o in &os {
        let cfg = config(&b, o);
        let greedy = GreedyDecoder::new(&mut b.model)
            .decode(&o.input_ids, &cfg)
            .unwrap();
        let out = Blockwise::builder(&mut b.model)
            .block_size(6)
            .proposer(NGram::new(1, 3).unwrap())
            .build()
            .unwrap()
            .decode(&o.input_ids, &cfg)
            .unwrap();
        let Some(i) = first_difference(&out.tokens, &greedy.tokens) else {
            assert_eq!(out.tokens.len(), greedy.tokens.len());
            identical += 1;
            continue;
        };
        let mut context = o.input_ids.clone();
        context.extend_from_slice(&greedy.tokens[..i]);
        let gap = gap(DType::Int8, &context, out.tokens[i], greedy.tokens[i]);
        assert!(
            gap < BF16_NEAR_TIE,
            "prompt {:?}: int8 blockwise output diverges from int8 greedy at token {i}, where \
             greedy's gap between the two choices is {gap:.3} (not a near-tie)",
            o.prompt
        );
    }
    eprintln!(
        "int8 blockwise identical to int8 greedy on {identical}/{}",
        os.len()
    );
}

#[test]
fn blockwise_equals_greedy_in_float32() {
    let mut b = bundle(DType::F32);
    for o in oracles(&b, "f32") {
        let cfg = config(&b, &o).with_prefill_chunk(7);
        for k in [1usize, 3, 6] {
            let out = Blockwise::builder(&mut b.model)
                .block_size(k)
                .proposer(NGram::new(1, 3).unwrap())
                .build()
                .unwrap()
                .decode(&o.input_ids, &cfg)
                .unwrap();
            assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}, k = {k}", o.prompt);
        }
        let out = Blockwise::builder(&mut b.model)
            .block_size(1)
            .proposer(NoProposer)
            .build()
            .unwrap()
            .decode(&o.input_ids, &cfg)
            .unwrap();
        assert_eq!(out.tokens, o.greedy_ids);
        assert_eq!(
            out.stats.model_calls + out.stats.skipped_calls,
            out.stats.iterations + 1
        );
    }
}

#[test]
fn shipped_heads_attach_by_default_and_stay_exact() {
    let mut b = bundle(DType::F32);
    assert_eq!(
        b.model.info().num_heads,
        4,
        "assets/heads/smollm2 did not attach"
    );
    let (mut tokens, mut iterations) = (0, 0);
    for o in oracles(&b, "f32") {
        let cfg = config(&b, &o);
        let out = Blockwise::builder(&mut b.model)
            .block_size(5)
            .proposer(HeadsProposer)
            .build()
            .unwrap()
            .decode(&o.input_ids, &cfg)
            .unwrap();
        assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}", o.prompt);
        assert_eq!(
            out.stats.model_calls + out.stats.skipped_calls,
            out.stats.iterations + 1
        );
        tokens += out.stats.new_tokens;
        iterations += out.stats.iterations;
    }
    let trained = tokens as f64 / iterations as f64;
    // Without them, the heads proposer is a clear error.
    let mut plain = ModelBundle::load(
        dir().to_str().unwrap(),
        &BundleOptions {
            heads: HeadsChoice::None,
            max_context: Some(512),
            ..BundleOptions::default()
        },
    )
    .unwrap();
    assert_eq!(plain.model.info().num_heads, 0);
    assert!(Blockwise::builder(&mut plain.model)
        .block_size(3)
        .proposer(HeadsProposer)
        .build()
        .and_then(|mut d| d.decode(&[1, 2, 3], &DecodeConfig::new(4)))
        .is_err());
    // Fresh heads of the same shape (each repeats the next-token guess) accept less.
    let shipped: HeadsConfig =
        blockwise::Error::read_json(shipped_heads_dir().join("smollm2").join("heads.json"))
            .unwrap();
    let mut fresh = WithHeads::new(plain.model, shipped, 1).unwrap();
    let (mut tokens, mut iterations) = (0, 0);
    for o in oracles(&b, "f32") {
        let out = Blockwise::builder(&mut fresh)
            .block_size(5)
            .proposer(HeadsProposer)
            .build()
            .unwrap()
            .decode(&o.input_ids, &config(&b, &o))
            .unwrap();
        assert_eq!(out.tokens, o.greedy_ids);
        tokens += out.stats.new_tokens;
        iterations += out.stats.iterations;
    }
    let untrained = tokens as f64 / iterations as f64;
    eprintln!("mean accepted at k = 5: shipped heads {trained:.3}, fresh heads {untrained:.3}");
    assert!(
        trained > untrained + 0.05,
        "shipped heads {trained:.3} vs fresh heads {untrained:.3}"
    );
}

/// SmolLM2's float32 export with a context of 64.
fn adapter_of_64() -> TorchScriptLm {
    TorchScriptLm::load(
        dir(),
        &LoadOptions {
            max_context: Some(64),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn conformance_suite_passes_on_the_adapter() {
    let mut m = adapter_of_64();
    let vocab = m.info().vocab_size;
    Conformance::new()
        .cases(8)
        .block_sizes(1..=6)
        .max_new_tokens(0..=10)
        .max_prompt_len(8)
        .run(&mut m, |seed| Box::new(RandomProposer::new(vocab, seed)))
        .unwrap();
}

#[test]
fn chunked_prefill_gives_the_same_logits() {
    let mut m = TorchScriptLm::load(
        dir(),
        &LoadOptions {
            max_context: Some(128),
            ..Default::default()
        },
    )
    .unwrap();
    let _g = tch::no_grad_guard();
    let prompt: Vec<i64> = (0..40).map(|i| (i * 977 + 3) % 49152).collect();
    let whole = blockwise::model::prefill(&mut m, &prompt, None)
        .unwrap()
        .logits
        .select(1, -1);
    for chunk in [1usize, 7, 16] {
        let part = blockwise::model::prefill(&mut m, &prompt, Some(chunk))
            .unwrap()
            .logits
            .select(1, -1);
        let d = (&whole - &part).abs().max().double_value(&[]);
        assert!(d < 1e-3, "chunk {chunk}: largest logit difference {d}");
        assert_eq!(m.cached_len(), prompt.len());
    }
}

/// The masked export's compaction: a query scores the same over its kept slots compacted to the
/// front as over them scattered among dead ones (float32, up to the masked softmax's rounding).
#[test]
fn compaction_keeps_what_attention_sees() {
    let mut m = adapter_of_64();
    let masked = m.as_masked().expect("the masked export");
    blockwise::testing::check_compaction(masked, 1e-3).unwrap();
}

/// The oracle prompts (different lengths) as one batch through the masked export, with the
/// shipped heads as chains and as a tree: every row is transformers' greedy continuation.
#[test]
fn batched_rows_and_trees_equal_transformers_in_float32() {
    let mut b = bundle(DType::F32);
    let os = oracles(&b, "f32");
    let prompts: Vec<Vec<i64>> = os.iter().map(|o| o.input_ids.clone()).collect();
    let longest = os.iter().map(|o| o.greedy_ids.len()).max().unwrap();
    let cfg = DecodeConfig::new(longest)
        .with_eos(b.eos.clone())
        .with_prefill_chunk(16);
    let chain = BatchBlockwise::builder(&mut b.model)
        .block_size(5)
        .proposer(HeadsProposer)
        .build()
        .unwrap()
        .decode_batch(&prompts, &cfg)
        .unwrap();
    let tree = BatchBlockwise::builder(&mut b.model)
        .block_size(5)
        .tree("3,2,2,1".parse().unwrap())
        .slots(1) // the fewest slots: compacts every few iterations
        .build()
        .unwrap()
        .decode_batch(&prompts, &cfg)
        .unwrap();
    for ((o, c), t) in os.iter().zip(&chain).zip(&tree) {
        let n = o.greedy_ids.len();
        assert_eq!(
            &c.tokens[..n.min(c.tokens.len())],
            &o.greedy_ids[..n.min(c.tokens.len())]
        );
        assert!(
            c.tokens.len() >= n || c.stop == StopReason::Eos,
            "{:?}",
            o.prompt
        );
        assert_eq!(
            &t.tokens[..n.min(t.tokens.len())],
            &o.greedy_ids[..n.min(t.tokens.len())]
        );
        assert_eq!(
            c.tokens, t.tokens,
            "chain and tree differ on {:?}",
            o.prompt
        );
    }
    // Trees are really walked past their root (a walk that stopped at the root would still
    // reproduce greedy output, one token per call).
    let mean = |outs: &[blockwise::DecodeOutput]| {
        let (t, i) = outs.iter().fold((0, 0), |(t, i), o| {
            (t + o.stats.new_tokens, i + o.stats.iterations)
        });
        t as f64 / i as f64
    };
    let (c, t) = (mean(&chain), mean(&tree));
    eprintln!("mean accepted on the oracle prompts: chain {c:.2}, tree 3,2,2,1 {t:.2}");
    assert!(t > 1.0 && c > 1.0, "chain {c}, tree {t}");
}

/// Decodes the oracles' prompts two at a time with `batch` (a dynamic-tree decoder), to the
/// longest oracle's length with no EOS, and checks each row starts with its oracle's greedy
/// continuation.
fn trees_keep_the_oracles<M: CausalLm>(batch: &mut BatchBlockwise<M>, os: &[Oracle]) {
    let max_new = os.iter().map(|o| o.greedy_ids.len()).max().unwrap();
    for pair in os.chunks(2) {
        let prompts: Vec<Vec<i64>> = pair.iter().map(|o| o.input_ids.clone()).collect();
        let cfg = DecodeConfig::new(max_new).with_eos(vec![]);
        let outs = batch.decode_batch(&prompts, &cfg).unwrap();
        for (o, out) in pair.iter().zip(&outs) {
            let n = o.greedy_ids.len();
            assert_eq!(
                &out.tokens[..n.min(out.tokens.len())],
                &o.greedy_ids[..],
                "tree, prompt {:?}",
                o.prompt
            );
        }
    }
}

/// The shipped feature-level draft (assets/drafts/smollm2, `make smollm2-eagle`) is found for
/// the export, drafts chains and dynamic trees that keep transformers' greedy output exactly in
/// float32, and accepts more per call than a fresh draft of the same shape.
#[test]
fn shipped_feature_draft_stays_exact_and_beats_a_fresh_one() {
    use blockwise::feature::{FeatureDraft, FeatureDraftConfig, FeatureDraftProposer};
    let mut b = bundle(DType::F32);
    let shipped = b
        .draft
        .clone()
        .expect("assets/drafts/smollm2 was not found for SmolLM2");
    let mean_accepted = |b: &mut ModelBundle, draft: FeatureDraft| -> f64 {
        let proposer = FeatureDraftProposer::new(draft, &*b.model).unwrap();
        let os = oracles(b, "f32");
        let cfgs: Vec<DecodeConfig> = os.iter().map(|o| config(b, o)).collect();
        let mut d = Blockwise::builder(&mut b.model)
            .block_size(6)
            .proposer(proposer)
            .build()
            .unwrap();
        let (mut tokens, mut iters) = (0, 0);
        for (o, cfg) in os.iter().zip(&cfgs) {
            let out = d.decode(&o.input_ids, cfg).unwrap();
            assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}", o.prompt);
            tokens += out.tokens.len();
            iters += out.stats.iterations;
        }
        tokens as f64 / iters as f64
    };
    let trained = mean_accepted(
        &mut b,
        FeatureDraft::load(&shipped, tch::Device::Cpu).unwrap(),
    );
    let c = FeatureDraft::load(&shipped, tch::Device::Cpu)
        .unwrap()
        .config()
        .clone();
    let fresh =
        FeatureDraft::new(FeatureDraftConfig { base: None, ..c }, 1, tch::Device::Cpu).unwrap();
    let untrained = mean_accepted(&mut b, fresh);
    eprintln!("mean accepted at k = 6: shipped draft {trained:.3}, fresh draft {untrained:.3}");
    assert!(
        trained > untrained,
        "shipped draft {trained:.3} vs fresh draft {untrained:.3}"
    );

    // Dynamic trees of 12 nodes, two rows at a time.
    let os = oracles(&b, "f32");
    let emb = b.model.token_embeddings().unwrap();
    let dir = shipped.clone();
    let mut batch = BatchBlockwise::builder(&mut b.model)
        .block_size(6)
        .proposer_factory(false, move || {
            let d = FeatureDraft::load(&dir, tch::Device::Cpu)?;
            Ok(
                Box::new(FeatureDraftProposer::with_embeddings(d, &emb, 512)?)
                    as Box<dyn blockwise::Proposer>,
            )
        })
        .dynamic_tree(12)
        .build()
        .unwrap();
    trees_keep_the_oracles(&mut batch, &os);
}

/// The corpus shipped for SmolLM2 (assets/drafts/smollm2/corpus.safetensors, `make
/// smollm2-corpus`: its own answers to everyday requests) is found by `corpus`, keeps
/// transformers' greedy output exactly in float32, alone and merged into dynamic trees with
/// prompt lookup, and its guesses are accepted (fewer iterations than tokens).
#[test]
fn shipped_corpus_stays_exact_and_is_accepted() {
    use blockwise::proposer::ProposerConfig;
    let mut b = bundle(DType::F32);
    let corpus: ProposerConfig = "corpus".parse().unwrap();
    let corpus = corpus.with_shipped_draft(b.draft.as_deref());
    assert!(
        matches!(&corpus, ProposerConfig::Corpus { path: Some(p), .. } if p.ends_with("corpus.safetensors")),
        "{corpus:?}"
    );
    let os = oracles(&b, "f32");
    let (mut tokens, mut iterations) = (0, 0);
    for o in &os {
        let proposer = corpus.build_for(&*b.model).unwrap();
        let cfg = config(&b, o);
        let out = Blockwise::builder(&mut b.model)
            .block_size(5)
            .proposer(proposer)
            .build()
            .unwrap()
            .decode(&o.input_ids, &cfg)
            .unwrap();
        assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}", o.prompt);
        tokens += out.tokens.len();
        iterations += out.stats.iterations;
    }
    eprintln!("corpus lookup at k = 5: {tokens} tokens in {iterations} iterations");
    assert!(
        iterations < tokens,
        "{iterations} iterations for {tokens} tokens"
    );

    // Prompt lookup and corpus lookup merged into 6-node trees, two rows at a time.
    let trees: ProposerConfig = "chain:ngram:3:3,corpus".parse().unwrap();
    let rows = trees
        .with_shipped_draft(b.draft.as_deref())
        .row_proposers(b.model.info(), None)
        .unwrap();
    let mut batch = BatchBlockwise::builder(&mut b.model)
        .block_size(5)
        .proposer_factory(false, rows.factory())
        .dynamic_tree(6)
        .build()
        .unwrap();
    trees_keep_the_oracles(&mut batch, &os);
}

/// SmolLM2's whole trained context: a cache for 8192 positions, a prompt that ends 12 tokens
/// before it fed in chunks, greedy and blockwise decoding to the last position (identical, stopped
/// by the full context), and a prompt one token too long refused with a typed error.
#[test]
fn decodes_to_the_full_trained_context() {
    let load = |max_context| {
        ModelBundle::load(
            dir().to_str().unwrap(),
            &BundleOptions {
                max_context: Some(max_context),
                ..BundleOptions::default()
            },
        )
    };
    let trained = 8192;
    match load(trained + 1) {
        Err(blockwise::Error::InvalidConfig { field, .. }) => assert_eq!(field, "max_context"),
        other => panic!("a context past the trained one: {:?}", other.map(|_| ())),
    }
    let mut b = load(trained).expect("load with the full context");
    assert_eq!(b.model.info().max_context, trained);
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/guide.md")).unwrap();
    let mut tokens = b.tokenizer.encode(&text).unwrap();
    while tokens.len() < trained {
        tokens.extend_from_within(..);
    }
    let prompt = &tokens[..trained - 12];
    let config = DecodeConfig::new(32).with_prefill_chunk(512);
    let greedy = GreedyDecoder::new(&mut b.model)
        .decode(prompt, &config)
        .unwrap();
    assert_eq!(greedy.tokens.len(), 12);
    assert_eq!(greedy.stop, StopReason::ContextFull);
    let blockwise = Blockwise::builder(&mut b.model)
        .block_size(5)
        .proposer(NGram::new(1, 3).unwrap())
        .build()
        .unwrap()
        .decode(prompt, &config)
        .unwrap();
    assert_eq!(blockwise.tokens, greedy.tokens);
    assert_eq!(blockwise.stop, StopReason::ContextFull);
    let too_long = &tokens[..trained + 1];
    match GreedyDecoder::new(&mut b.model).decode(too_long, &config) {
        Err(blockwise::Error::PromptTooLong {
            prompt_len,
            max_context,
        }) => assert_eq!((prompt_len, max_context), (trained + 1, trained)),
        other => panic!("a prompt past the context: {:?}", other.map(|o| o.tokens)),
    }
}
