//! Every architecture family of the export, through the crate: small randomly initialised
//! transformers models of each family (Llama with Llama 3 rotary scaling, Mistral and Qwen 2
//! with sliding windows, Qwen 3, Gemma 1/2/3, Phi 3), exported by `scripts/check_families.py`
//! into `target/families` with transformers' own greedy continuations as oracles (`make
//! families`; `make test` runs it first). The prompts and continuations run past the sliding
//! windows (6-7 positions), so the cached and masked forms' windows are exercised by every
//! decoder here; GPT-2 stands for an architecture with the uncached form only.

use std::path::PathBuf;

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::heads::{HeadArch, HeadsConfig, WithHeads};
use blockwise::testing::{Conformance, RandomProposer};
use blockwise::torchscript::{ExportMetadata, LoadOptions, ModuleForm, Oracle, TorchScriptLm};
use blockwise::{
    BatchBlockwise, Blockwise, BlockwiseDecoder, CausalLm, DecodeConfig, GreedyDecoder, NGram,
    RecomputeVerifier,
};

/// The families with cached and masked forms (and the uncached one).
const CACHED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
];
/// Families with sliding-window layers.
const SLIDING: &[&str] = &["mistral", "qwen2", "gemma2", "gemma3_text", "phi3"];

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/families")).join(name);
    assert!(
        d.join("metadata.json").is_file(),
        "{} is missing: run `make families` (make test does)",
        d.display()
    );
    d
}

fn load(name: &str, form: ModuleForm) -> TorchScriptLm {
    TorchScriptLm::load(
        dir(name),
        &LoadOptions {
            form,
            max_context: Some(64),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn meta(name: &str) -> ExportMetadata {
    ExportMetadata::read(&dir(name)).unwrap()
}

fn oracles(name: &str) -> Vec<Oracle> {
    let o = meta(name).oracles["f32"].clone();
    assert_eq!(o.len(), 3, "{name}");
    o
}

fn config(name: &str, o: &Oracle) -> DecodeConfig {
    DecodeConfig::new(o.greedy_ids.len()).with_eos(meta(name).eos_token_ids)
}

#[test]
fn the_exports_say_where_their_windows_are() {
    for name in CACHED {
        let w = meta(name).sliding_window;
        assert_eq!(w.is_some(), SLIDING.contains(name), "{name}: {w:?}");
    }
    for name in SLIDING {
        // Prompt plus continuation run past the window, so the window matters to the oracles.
        let w = meta(name).sliding_window.unwrap();
        let longest = oracles(name)
            .iter()
            .map(|o| o.input_ids.len() + o.greedy_ids.len())
            .max()
            .unwrap();
        assert!(longest > 2 * w, "{name}: {longest} tokens, window {w}");
    }
}

#[test]
fn greedy_equals_transformers_for_every_family() {
    for name in CACHED {
        let mut m = load(name, ModuleForm::Cached);
        for o in oracles(name) {
            let out = GreedyDecoder::new(&mut m)
                .decode(&o.input_ids, &config(name, &o))
                .unwrap();
            assert_eq!(out.tokens, o.greedy_ids, "{name}, prompt {:?}", o.input_ids);
        }
    }
}

#[test]
fn the_uncached_form_equals_transformers_for_every_architecture() {
    for name in CACHED.iter().chain(&["gpt2"]) {
        let mut m = load(name, ModuleForm::Uncached);
        for o in oracles(name) {
            let out = GreedyDecoder::new(&mut m)
                .decode(&o.input_ids, &config(name, &o))
                .unwrap();
            assert_eq!(out.tokens, o.greedy_ids, "{name}, prompt {:?}", o.input_ids);
        }
    }
}

#[test]
fn an_architecture_without_the_cached_form_says_so_at_load() {
    let err = TorchScriptLm::load(dir("gpt2"), &LoadOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("Cached") && text.contains("not exported") && text.contains("has: Uncached"),
        "{text}"
    );
}

/// An export with the uncached form only loads as a bundle like any other (the bundle takes the
/// form that exists) and decodes with `RecomputeVerifier`; the default cached verifier says
/// what to use instead.
#[test]
fn a_bundle_of_an_uncached_only_architecture_decodes_with_recompute() {
    let mut b =
        ModelBundle::load(dir("gpt2").to_str().unwrap(), &BundleOptions::default()).unwrap();
    assert!(!b.model.info().has_cache);
    for o in oracles("gpt2") {
        let cfg = config("gpt2", &o);
        let out = Blockwise::builder(&mut b.model)
            .block_size(3)
            .proposer(NGram::new(1, 3).unwrap())
            .verifier(RecomputeVerifier::new())
            .build()
            .unwrap()
            .decode(&o.input_ids, &cfg)
            .unwrap();
        assert_eq!(out.tokens, o.greedy_ids);
    }
    let o = &oracles("gpt2")[0];
    let e = Blockwise::builder(&mut b.model)
        .block_size(3)
        .proposer(NGram::new(1, 3).unwrap())
        .build()
        .and_then(|mut d| d.decode(&o.input_ids, &config("gpt2", o)))
        .unwrap_err();
    assert!(e.to_string().contains("RecomputeVerifier"), "{e}");
}

#[test]
fn blockwise_equals_greedy_for_every_family() {
    for name in CACHED {
        let mut m = load(name, ModuleForm::Cached);
        let vocab = m.info().vocab_size;
        for o in oracles(name) {
            let cfg = config(name, &o).with_prefill_chunk(5);
            for k in [1usize, 3, 6] {
                let out = Blockwise::builder(&mut m)
                    .block_size(k)
                    .proposer(NGram::new(1, 3).unwrap())
                    .build()
                    .unwrap()
                    .decode(&o.input_ids, &cfg)
                    .unwrap();
                assert_eq!(out.tokens, o.greedy_ids, "{name}, n-gram, k = {k}");
                let out = Blockwise::builder(&mut m)
                    .block_size(k)
                    .proposer(RandomProposer::new(vocab, k as u64))
                    .build()
                    .unwrap()
                    .decode(&o.input_ids, &cfg)
                    .unwrap();
                assert_eq!(out.tokens, o.greedy_ids, "{name}, random guesses, k = {k}");
            }
        }
    }
}

/// All oracle prompts as one batch (rows of different lengths), as n-gram chains and as trees
/// of fresh proposal heads' guesses, with few slots so that rows are compacted: through the
/// masked form, every row is transformers' greedy continuation.
#[test]
fn batched_rows_and_trees_equal_transformers_for_every_family() {
    for name in CACHED {
        let os = oracles(name);
        let prompts: Vec<Vec<i64>> = os.iter().map(|o| o.input_ids.clone()).collect();
        let max_new = os.iter().map(|o| o.greedy_ids.len()).max().unwrap();
        let cfg = DecodeConfig::new(max_new).with_eos(meta(name).eos_token_ids);
        let m = load(name, ModuleForm::Cached);
        let heads = HeadsConfig {
            arch: HeadArch::Medusa,
            num_heads: 3,
            d_model: meta(name).hidden_size as i64,
            d_ff: 16,
            vocab_size: m.info().vocab_size,
            base: None,
        };
        let mut m = WithHeads::new(m, heads, 7).unwrap();
        let chain = BatchBlockwise::builder(&mut m)
            .block_size(4)
            .proposer(NGram::new(1, 3).unwrap())
            .slots(1)
            .build()
            .unwrap()
            .decode_batch(&prompts, &cfg)
            .unwrap();
        let tree = BatchBlockwise::builder(&mut m)
            .block_size(4)
            .tree("2,2,1".parse().unwrap())
            .slots(1)
            .build()
            .unwrap()
            .decode_batch(&prompts, &cfg)
            .unwrap();
        for ((o, c), t) in os.iter().zip(&chain).zip(&tree) {
            let n = o.greedy_ids.len();
            assert_eq!(&c.tokens[..n], &o.greedy_ids[..], "{name}, chain");
            assert_eq!(&t.tokens[..n], &o.greedy_ids[..], "{name}, tree");
        }
    }
}

#[test]
fn conformance_suite_passes_on_sliding_window_families() {
    for name in ["gemma3_text", "phi3"] {
        let mut m = load(name, ModuleForm::Cached);
        let vocab = m.info().vocab_size;
        Conformance::new()
            .cases(6)
            .block_sizes(1..=6)
            .max_new_tokens(0..=16)
            .max_prompt_len(12)
            .run(&mut m, |seed| Box::new(RandomProposer::new(vocab, seed)))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
