//! The TorchScript adapter on fixtures made by `scripts/make_fixtures.py` (`make fixtures`, which
//! `make test` runs): a tiny Llama exported by the export script, and modules that break the
//! calling convention one way each.

use std::path::PathBuf;

use blockwise::testing::{Conformance, OracleProposer, RandomProposer};
use blockwise::torchscript::{F32Matmul, LoadOptions, ModuleForm, ModuleSpec, TorchScriptLm};
use blockwise::{
    Blockwise, BlockwiseDecoder, CausalLm, DType, DecodeConfig, Error, GreedyDecoder, NGram,
    RecomputeVerifier,
};

fn fixtures() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/fixtures"));
    assert!(
        d.join("good.pt").is_file(),
        "{} is missing: run `make fixtures` (make test does)",
        d.display()
    );
    d
}

fn spec(form: ModuleForm, vocab: i64) -> ModuleSpec {
    ModuleSpec {
        prepack: false,
        onednn: false,
        graph_optimizer: false,
        form,
        vocab_size: vocab,
        num_layers: 1,
        num_kv_heads: 1,
        head_dim: 4,
        max_context: 32,
        dtype: DType::F32,
        device: tch::Device::Cpu,
    }
}

fn open(name: &str, form: ModuleForm) -> blockwise::Result<TorchScriptLm> {
    TorchScriptLm::from_file(fixtures().join(name), spec(form, 64))
}

#[test]
fn a_module_that_fits_loads_and_decodes() {
    let mut m = open("good.pt", ModuleForm::Cached).unwrap();
    let out = GreedyDecoder::new(&mut m)
        .decode(&[1, 2, 3], &DecodeConfig::new(5))
        .unwrap();
    assert_eq!(out.tokens.len(), 5);
}

#[test]
fn modules_that_break_the_convention_are_refused_on_load() {
    let cases: &[(&str, ModuleForm, &str)] = &[
        (
            "not_torchscript.pt",
            ModuleForm::Cached,
            "could not load it as TorchScript",
        ),
        (
            "one_input.pt",
            ModuleForm::Cached,
            "calling forward(input_ids, position_ids, attention_mask, k_cache, v_cache) failed",
        ),
        (
            "good.pt",
            ModuleForm::Uncached,
            "calling forward(input_ids) failed",
        ),
        ("last_position_only.pt", ModuleForm::Cached, "[1, 2, 64]"),
        ("wrong_vocab.pt", ModuleForm::Cached, "[1, 2, 64]"),
        (
            "returns_dict.pt",
            ModuleForm::Cached,
            "must return (logits, hidden) or logits, got \"dict\"",
        ),
        (
            "float64.pt",
            ModuleForm::Cached,
            "computes logits in Double, but Float was requested",
        ),
    ];
    for (file, form, needle) in cases {
        match open(file, *form) {
            Ok(_) => panic!("{file} loaded"),
            Err(e @ Error::BadModule { .. }) => {
                assert!(e.to_string().contains(needle), "{file}: {e}")
            }
            Err(e) => panic!("{file}: unexpected error {e}"),
        }
    }
    let e = open("missing.pt", ModuleForm::Cached).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn prepack_runs_once_on_load_when_the_spec_says_so() {
    let mut with = spec(ModuleForm::Cached, 64);
    with.prepack = true;
    // Its logits are NaN until prepack() has run (scripts/make_fixtures.py).
    let mut m = TorchScriptLm::from_file(fixtures().join("prepacked.pt"), with.clone()).unwrap();
    let out = GreedyDecoder::new(&mut m)
        .decode(&[1, 2, 3], &DecodeConfig::new(4))
        .unwrap();
    assert_eq!(out.tokens.len(), 4);
    let mut m = open("prepacked.pt", ModuleForm::Cached).unwrap();
    let e = GreedyDecoder::new(&mut m)
        .decode(&[1, 2], &DecodeConfig::new(3))
        .unwrap_err();
    assert!(matches!(e, Error::NonFiniteLogits { .. }), "{e}");
    // A module without the method, asked to prepack, is refused by name.
    let e = TorchScriptLm::from_file(fixtures().join("good.pt"), with).unwrap_err();
    assert!(
        matches!(e, Error::BadModule { .. }) && e.to_string().contains("prepack() method failed"),
        "{e}"
    );
}

#[test]
fn int8_is_a_weight_form_the_built_in_transformer_refuses() {
    assert_eq!("int8".parse::<DType>().unwrap(), DType::Int8);
    assert_eq!(DType::Int8.to_string(), "int8");
    assert_eq!(DType::Int8.kind(), tch::Kind::BFloat16);
    let mut cfg = blockwise::TransformerConfig::tiny(64, 0);
    cfg.dtype = DType::Int8;
    let e = cfg.validate().unwrap_err();
    assert!(e.to_string().contains("int8 is a weight form"), "{e}");
    let mut t = blockwise::Transformer::new_seeded(
        blockwise::TransformerConfig::tiny(64, 0),
        1,
        tch::Device::Cpu,
    )
    .unwrap();
    assert!(t.set_dtype(DType::Int8).is_err());
    assert_eq!(t.info().kind, tch::Kind::Double);
}

#[test]
fn nan_logits_are_an_error_not_a_token() {
    let mut m = open("nan_logits.pt", ModuleForm::Cached).unwrap();
    let e = GreedyDecoder::new(&mut m)
        .decode(&[1, 2], &DecodeConfig::new(3))
        .unwrap_err();
    assert!(matches!(e, Error::NonFiniteLogits { .. }), "{e}");
}

#[test]
fn bad_input_to_the_adapter() {
    let mut m = open("good.pt", ModuleForm::Cached).unwrap();
    let e = GreedyDecoder::new(&mut m)
        .decode(&[1, 64], &DecodeConfig::new(3))
        .unwrap_err();
    assert!(
        matches!(e, Error::TokenOutOfVocabulary { token: 64, .. }),
        "{e}"
    );
    let e = GreedyDecoder::new(&mut m)
        .decode(&[1; 33], &DecodeConfig::new(3))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::PromptTooLong {
                max_context: 32,
                ..
            }
        ),
        "{e}"
    );
    let t = tch::Tensor::from_slice(&[1i64]).unsqueeze(0);
    let e = m.forward(&t, 5).unwrap_err();
    assert!(matches!(e, Error::CacheGap { .. }), "{e}");
}

fn tiny(dtype: DType, form: ModuleForm) -> TorchScriptLm {
    tiny_with(dtype, form, F32Matmul::Auto)
}

fn tiny_with(dtype: DType, form: ModuleForm, f32_matmul: F32Matmul) -> TorchScriptLm {
    TorchScriptLm::load(
        fixtures().join("tiny-llama"),
        &LoadOptions {
            dtype,
            form,
            f32_matmul,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn exported_tiny_llama_matches_transformers_greedy() {
    let meta =
        blockwise::torchscript::ExportMetadata::read(&fixtures().join("tiny-llama")).unwrap();
    assert_eq!(meta.num_layers, 2);
    assert!(
        meta.dtypes["f32"].onednn,
        "the f32 export offers the oneDNN packing"
    );
    for (form, recompute, matmul) in [
        (ModuleForm::Cached, false, F32Matmul::Blas),
        (ModuleForm::Cached, false, F32Matmul::OneDnn),
        (ModuleForm::Uncached, true, F32Matmul::Auto),
    ] {
        let mut m = tiny_with(DType::F32, form, matmul);
        for o in &meta.oracles["f32"] {
            let cfg = DecodeConfig::new(o.greedy_ids.len()).with_eos(meta.eos_token_ids.clone());
            let g = GreedyDecoder::new(&mut m)
                .decode(&o.input_ids, &cfg)
                .unwrap();
            assert_eq!(g.tokens, o.greedy_ids, "{form:?} {matmul:?} {:?}", o.prompt);
            let b = Blockwise::builder(&mut m)
                .block_size(4)
                .proposer(NGram::new(1, 2).unwrap());
            let b = if recompute {
                b.verifier(RecomputeVerifier::new())
            } else {
                b
            };
            let out = b.build().unwrap().decode(&o.input_ids, &cfg).unwrap();
            assert_eq!(
                out.tokens, o.greedy_ids,
                "{form:?} {matmul:?} blockwise {:?}",
                o.prompt
            );
        }
    }
}

#[test]
fn exported_tiny_llama_passes_the_conformance_suite() {
    let mut cached = tiny(DType::F32, ModuleForm::Cached);
    let vocab = cached.info().vocab_size;
    Conformance::new()
        .cases(48)
        .run(&mut cached, |seed| {
            Box::new(RandomProposer::new(vocab, seed))
        })
        .unwrap();
    Conformance::new()
        .cases(48)
        .run(&mut cached, |seed| {
            Box::new(OracleProposer::new(Vec::new(), vocab, 1.0, seed))
        })
        .unwrap();
    let mut uncached = tiny(DType::F32, ModuleForm::Uncached);
    assert!(!uncached.info().has_cache);
    Conformance::new()
        .cases(24)
        .run(&mut uncached, |seed| {
            Box::new(RandomProposer::new(vocab, seed))
        })
        .unwrap();
}

#[test]
fn dtype_and_form_must_have_been_exported() {
    let e = TorchScriptLm::load(
        fixtures().join("tiny-llama"),
        &LoadOptions {
            dtype: DType::F16,
            ..LoadOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("`f16` was not exported"), "{e}");
    let bf16 = tiny(DType::Bf16, ModuleForm::Cached);
    assert_eq!(bf16.info().kind, tch::Kind::BFloat16);
    let e = TorchScriptLm::load(
        fixtures().join("tiny-llama"),
        &LoadOptions {
            max_context: Some(100_000),
            ..LoadOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "max_context",
                ..
            }
        ),
        "{e}"
    );
}

/// An export written for another version of the calling convention is refused at load, naming
/// both versions, before any module is read.
#[test]
fn f32_matmul_choices_that_cannot_apply_are_refused() {
    let e = F32Matmul::parse("mkl").unwrap_err();
    assert!(e.to_string().contains("auto, blas or onednn"), "{e}");
    // A library for float32 products, asked of a bf16 load.
    let load = |dir: &std::path::Path, dtype, f32_matmul| {
        TorchScriptLm::load(
            dir,
            &LoadOptions {
                dtype,
                f32_matmul,
                ..LoadOptions::default()
            },
        )
    };
    let tiny = fixtures().join("tiny-llama");
    for choice in [F32Matmul::Blas, F32Matmul::OneDnn] {
        let e = load(&tiny, DType::Bf16, choice).err().expect("refused");
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "f32_matmul",
                    ..
                }
            ),
            "{e}"
        );
    }
    assert!(load(&tiny, DType::Bf16, F32Matmul::Auto).is_ok());
    // oneDNN asked of an export that has no oneDNN packing.
    let dir = std::env::temp_dir().join(format!("bw-onednn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(tiny.join("metadata.json")).unwrap();
    let other = text.replace("\"onednn\": true", "\"onednn\": false");
    assert_ne!(text, other);
    std::fs::write(dir.join("metadata.json"), other).unwrap();
    let e = load(&dir, DType::F32, F32Matmul::OneDnn)
        .err()
        .expect("refused");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "f32_matmul",
                ..
            }
        ) && e.to_string().contains("no oneDNN packing"),
        "{e}"
    );
}

#[test]
fn an_export_of_another_convention_version_is_refused() {
    let src = fixtures().join("tiny-llama");
    let dir = std::env::temp_dir().join(format!("bw-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(src.join("metadata.json")).unwrap();
    let other = text.replace(blockwise::torchscript::FORMAT, "blockwise-torchscript/2");
    assert_ne!(text, other);
    std::fs::write(dir.join("metadata.json"), other).unwrap();
    let e = TorchScriptLm::load(&dir, &LoadOptions::default()).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "format",
                ..
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("blockwise-torchscript/2") && text.contains(blockwise::torchscript::FORMAT),
        "{text}"
    );
}

/// A truncated TorchScript file: the error is libtorch's first line, without its C++ stack
/// trace, and the whole text stays reachable as the error's source.
#[test]
fn libtorch_errors_keep_one_line_and_their_source() {
    let bytes = std::fs::read(fixtures().join("good.pt")).unwrap();
    let path = std::env::temp_dir().join(format!("bw-truncated-{}.pt", std::process::id()));
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = TorchScriptLm::from_file(&path, spec(ModuleForm::Cached, 64)).unwrap_err();
    std::fs::remove_file(&path).ok();
    let text = e.to_string();
    assert!(matches!(e, Error::BadModule { .. }), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.contains("frame #"), "{text}");
    let source = std::error::Error::source(&e)
        .expect("libtorch's error as the source")
        .to_string();
    assert!(source.len() > text.len(), "{source}");
}
