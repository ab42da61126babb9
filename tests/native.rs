//! The native CPU decoder (`blockwise::native`) on SmolLM2-135M-Instruct (`make smollm2`):
//! the same numbers as the TorchScript module, transformers' greedy output, and blockwise,
//! tree and batched decoding bit-for-bit equal to its own greedy decoding. A test binary of its
//! own: loading the native backend through a bundle sets libtorch's threads to one.

use std::path::{Path, PathBuf};

use blockwise::bundle::{Backend, BundleOptions, ModelBundle};
use blockwise::feature::{FeatureDraft, FeatureDraftProposer};
use blockwise::native::{Bf16Inputs, NativeLm, NativeOptions};
use blockwise::testing::{Conformance, RandomProposer};
use blockwise::torchscript::{F32Matmul, LoadOptions, Oracle, TorchScriptLm};
use blockwise::{
    BatchBlockwise, Blockwise, BlockwiseDecoder, CausalLm, DType, DecodeConfig, Error,
    GreedyDecoder, NGram,
};
use tch::{Device, Tensor};

fn dir() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/smollm2"));
    assert!(
        d.join("metadata.json").is_file(),
        "{} is missing: run `make smollm2` (make test does)",
        d.display()
    );
    d
}

fn native(dtype: DType, max_context: usize) -> NativeLm {
    NativeLm::load(
        dir(),
        &NativeOptions {
            dtype,
            max_context: Some(max_context),
            threads: Some(2),
            ..NativeOptions::default()
        },
    )
    .expect("load SmolLM2 natively")
}

fn bundle(dtype: DType) -> ModelBundle {
    bundle_with(dtype, Bf16Inputs::F32)
}

fn bundle_with(dtype: DType, bf16_inputs: Bf16Inputs) -> ModelBundle {
    ModelBundle::load(
        dir().to_str().unwrap(),
        &BundleOptions {
            dtype,
            max_context: Some(512),
            backend: Backend::Native,
            bf16_inputs,
            ..BundleOptions::default()
        },
    )
    .expect("load SmolLM2 with the native backend")
}

/// SmolLM2 as `decode` and the server load it by default (`Backend::Auto`).
fn auto_bundle() -> ModelBundle {
    ModelBundle::load(
        dir().to_str().unwrap(),
        &BundleOptions {
            max_context: Some(512),
            backend: Backend::Auto,
            ..BundleOptions::default()
        },
    )
    .expect("load SmolLM2 with the auto backend")
}

/// The weight forms: f32, bf16 times f32 inputs, int8, and bf16 by the CPU's bf16 dot products
/// and by its AMX tiles where it has them.
fn forms() -> Vec<(DType, Bf16Inputs)> {
    let mut forms = vec![
        (DType::F32, Bf16Inputs::F32),
        (DType::Bf16, Bf16Inputs::F32),
        (DType::Int8, Bf16Inputs::F32),
    ];
    if Bf16Inputs::available() {
        forms.push((DType::Bf16, Bf16Inputs::Bf16));
    } else {
        eprintln!("no AVX-512 BF16 here: bf16 dot products not checked");
    }
    if Bf16Inputs::Tiles.is_supported() {
        forms.push((DType::Bf16, Bf16Inputs::Tiles));
    } else {
        eprintln!("no AMX tiles here: bf16 tiles not checked");
    }
    forms
}

fn oracles(b: &ModelBundle) -> Vec<Oracle> {
    let o = b.metadata.as_ref().unwrap().oracles["f32"].clone();
    assert!(o.len() >= 5);
    o
}

/// Logits and hidden states of a prompt and then of a 3-token block after it, against the f32
/// TorchScript module's: within the export's own check (2e-3), identical argmaxes.
#[test]
fn logits_match_the_torchscript_module_in_float32() {
    let _g = tch::no_grad_guard();
    let mut ts = TorchScriptLm::load(
        dir(),
        &LoadOptions {
            max_context: Some(128),
            f32_matmul: F32Matmul::Blas,
            ..Default::default()
        },
    )
    .unwrap();
    let mut nat = native(DType::F32, 128);
    let prompt: Vec<i64> = (0..37).map(|i| (i * 7919 + 11) % 49152).collect();
    let block: Vec<i64> = vec![504, 3575, 282];
    for (ids, start) in [(&prompt, 0usize), (&block, prompt.len())] {
        let t = Tensor::from_slice(ids).unsqueeze(0);
        let a = ts.forward(&t, start).unwrap();
        let b = nat.forward(&t, start).unwrap();
        let d = (&a.logits - &b.logits).abs().max().double_value(&[]);
        assert!(d < 2e-3, "start {start}: largest logit difference {d}");
        let h = (a.hidden.unwrap() - b.hidden.unwrap())
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            h < 2e-3,
            "start {start}: largest hidden-state difference {h}"
        );
        assert!(a
            .logits
            .argmax(-1, false)
            .equal(&b.logits.argmax(-1, false)));
    }
    assert_eq!(nat.cached_len(), prompt.len() + block.len());
}

/// Feature taps: the native model hands over the residual states of the layers asked for after
/// its final states, causal and masked calls alike, its logits and final states unchanged bit
/// for bit; the last layer's, RMS-normalised, is the final state up to the final norm's
/// weights (the same per-dimension ratio at every position). The TorchScript module has none.
#[test]
fn feature_taps_follow_the_final_states() {
    let _g = tch::no_grad_guard();
    let mut nat = native(DType::F32, 128);
    let ids: Vec<i64> = (0..19).map(|i| (i * 7919 + 11) % 49152).collect();
    let t = Tensor::from_slice(&ids).unsqueeze(0);
    let plain = nat.forward(&t, 0).unwrap();
    nat.set_feature_taps(&[29, 1]).unwrap();
    let tapped = nat.forward(&t, 0).unwrap();
    let h = tapped.hidden.unwrap();
    assert_eq!(h.size(), [1, 19, 3 * 576]);
    assert!(tapped.logits.equal(&plain.logits));
    let final_states = h.narrow(-1, 0, 576);
    assert!(final_states.equal(&plain.hidden.unwrap()));
    let last = h.narrow(-1, 576, 576);
    let normed = &last * (last.square().mean_dim(-1, true, tch::Kind::Float) + 1e-5).rsqrt();
    let ratio = &final_states / normed;
    let spread = (&ratio - ratio.narrow(1, 0, 1))
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        spread < 1e-2,
        "final state / normalised last layer varies by {spread}"
    );
    assert!(
        (h.narrow(-1, 1152, 576) - &last)
            .abs()
            .max()
            .double_value(&[])
            > 1.0
    );

    // The masked form (batches, trees) hands over the same.
    use blockwise::MaskedLm;
    nat.begin_batch(1, 32).unwrap();
    let causal = Tensor::ones([19, 19], (tch::Kind::Bool, Device::Cpu))
        .tril(0)
        .unsqueeze(0);
    let positions = Tensor::arange(19, (tch::Kind::Int64, Device::Cpu)).unsqueeze(0);
    let masked = nat.forward_masked(&t, &positions, &causal).unwrap();
    let d = (masked.hidden.unwrap() - &h).abs().max().double_value(&[]);
    assert!(d < 1e-4, "masked and causal taps differ by {d}");
    assert!(matches!(
        nat.set_feature_taps(&[30]).unwrap_err(),
        Error::InvalidConfig { .. }
    ));

    let mut ts = TorchScriptLm::load(dir(), &LoadOptions::default()).unwrap();
    let err = ts.set_feature_taps(&[1]).unwrap_err();
    assert!(matches!(err, Error::MissingCapability { .. }), "{err}");
}

/// transformers' greedy continuations of the export's oracle prompts, token for token.
#[test]
fn greedy_equals_transformers_in_float32() {
    let mut b = bundle(DType::F32);
    for o in oracles(&b) {
        let cfg = DecodeConfig::new(o.greedy_ids.len()).with_eos(b.eos.clone());
        let out = GreedyDecoder::new(&mut b.model)
            .decode(&o.input_ids, &cfg)
            .unwrap();
        assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}", o.prompt);
    }
}

/// bf16 weights (with f32 inputs, and with bf16 dot products where the CPU has them) and int8
/// weights: transformers' f32 greedy output, or a divergence where the f32 model's two best
/// logits are within 1.0 (bf16 rounding moves logits by up to ~2.8).
#[test]
fn bf16_and_int8_weights_follow_float32_greedy_or_diverge_at_a_near_tie() {
    for (dtype, inputs) in &forms()[1..] {
        follows_float32_greedy_or_diverges_at_a_near_tie(*dtype, *inputs);
    }
}

fn follows_float32_greedy_or_diverges_at_a_near_tie(dtype: DType, inputs: Bf16Inputs) {
    let mut b = bundle_with(dtype, inputs);
    let mut f = native(DType::F32, 512);
    let mut diverged = 0;
    for o in oracles(&b) {
        let cfg = DecodeConfig::new(o.greedy_ids.len()).with_eos(b.eos.clone());
        let out = GreedyDecoder::new(&mut b.model)
            .decode(&o.input_ids, &cfg)
            .unwrap();
        let Some(i) = out
            .tokens
            .iter()
            .zip(&o.greedy_ids)
            .position(|(a, b)| a != b)
        else {
            assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}", o.prompt);
            continue;
        };
        diverged += 1;
        let context: Vec<i64> = o
            .input_ids
            .iter()
            .chain(&o.greedy_ids[..i])
            .copied()
            .collect();
        let logits = f
            .forward(&Tensor::from_slice(&context).unsqueeze(0), 0)
            .unwrap()
            .logits
            .select(1, -1)
            .squeeze();
        let gap = logits.double_value(&[o.greedy_ids[i]]) - logits.double_value(&[out.tokens[i]]);
        assert!(
            gap < 1.0,
            "prompt {:?}: diverged at {i} with a gap of {gap}",
            o.prompt
        );
    }
    eprintln!(
        "{dtype} weights ({inputs} inputs) diverged from f32 greedy on {diverged} oracle prompts \
         (near-ties)"
    );
}

/// Every row of a block scores bit for bit as the one-token step at its position would, in every
/// weight form: what makes blockwise decoding on this model return its greedy output. (A block
/// row also spans the later slots of its block, masked: the softmax must not let them change
/// the order of its sum.)
#[test]
fn block_rows_score_as_one_token_steps_bit_for_bit() {
    let _g = tch::no_grad_guard();
    for (form, inputs) in forms() {
        let mut b = bundle_with(form, inputs);
        let prompt = b
            .encode_prompt(
                "Write a short story about a robot who learns to paint.",
                true,
            )
            .unwrap();
        let p = prompt.len();
        let m = &mut b.model;
        let last = |o: &blockwise::ModelOutput, r: i64| o.logits.select(1, r).squeeze();
        let mut steps = vec![last(
            &m.forward(&Tensor::from_slice(&prompt).unsqueeze(0), 0)
                .unwrap(),
            -1,
        )];
        let mut tokens = Vec::new();
        for i in 0..24 {
            let t = steps[i].argmax(0, false).int64_value(&[]);
            tokens.push(t);
            let o = m
                .forward(&Tensor::from_slice(&[t]).unsqueeze(0), p + i)
                .unwrap();
            steps.push(last(&o, -1));
        }
        for block in [2, 5] {
            m.truncate(0).unwrap();
            m.forward(&Tensor::from_slice(&prompt).unsqueeze(0), 0)
                .unwrap();
            for start in (0..tokens.len() - block + 1).step_by(block) {
                let o = m
                    .forward(
                        &Tensor::from_slice(&tokens[start..start + block]).unsqueeze(0),
                        p + start,
                    )
                    .unwrap();
                for r in 0..block {
                    let diff = (last(&o, r as i64) - &steps[start + r + 1])
                        .abs()
                        .max()
                        .double_value(&[]);
                    assert_eq!(
                        diff, 0.0,
                        "{form} ({inputs} inputs): row {r} of a block of {block} at {start}"
                    );
                }
            }
        }
    }
}

/// Blockwise chains (feature draft, n-gram), dynamic trees and batched rows on the native
/// model return its own greedy output exactly: every row of a block is computed as a one-token
/// step would compute it, in f32 and with bf16 (both inputs) and int8 weights.
#[test]
fn blockwise_trees_and_batches_equal_native_greedy() {
    let _g = tch::no_grad_guard();
    for (form, inputs) in forms() {
        let dtype = format!("{form} ({inputs} inputs)");
        let mut b = bundle_with(form, inputs);
        let draft = b.draft.clone().expect("the shipped SmolLM2 draft");
        let prompts: Vec<Vec<i64>> = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prompts/chat24.txt"),
        )
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .map(|l| b.encode_prompt(l, true).unwrap())
        .collect();
        let cfg = DecodeConfig::new(40).with_eos(b.eos.clone());
        let greedy: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| {
                GreedyDecoder::new(&mut b.model)
                    .decode(p, &cfg)
                    .unwrap()
                    .tokens
            })
            .collect();
        let proposer =
            FeatureDraftProposer::new(FeatureDraft::load(&draft, Device::Cpu).unwrap(), &*b.model)
                .unwrap();
        let mut chain = Blockwise::builder(&mut b.model)
            .block_size(5)
            .proposer(proposer)
            .build()
            .unwrap();
        let mut accepted = (0, 0);
        for (p, g) in prompts.iter().zip(&greedy) {
            let out = chain.decode(p, &cfg).unwrap();
            assert_eq!(&out.tokens, g, "{dtype}: draft chain");
            accepted = (
                accepted.0 + out.tokens.len(),
                accepted.1 + out.stats.iterations,
            );
        }
        assert!(
            accepted.0 > accepted.1,
            "the draft never got a token accepted"
        );
        let mut ngram = Blockwise::builder(&mut b.model)
            .block_size(4)
            .proposer(NGram::new(1, 3).unwrap())
            .build()
            .unwrap();
        for (p, g) in prompts.iter().zip(&greedy) {
            assert_eq!(&ngram.decode(p, &cfg).unwrap().tokens, g, "{dtype}: n-gram");
        }
        let emb = b.model.token_embeddings().unwrap();
        let dir = draft.clone();
        let mut tree = BatchBlockwise::builder(&mut b.model)
            .block_size(5)
            .proposer_factory(false, move || {
                let d = FeatureDraft::load(&dir, Device::Cpu)?;
                Ok(
                    Box::new(FeatureDraftProposer::with_embeddings(d, &emb, 512)?)
                        as Box<dyn blockwise::Proposer>,
                )
            })
            .dynamic_tree(12)
            .slots(1) // compacts every few iterations
            .build()
            .unwrap();
        let outs = tree.decode_batch(&prompts, &cfg).unwrap();
        for (out, g) in outs.iter().zip(&greedy) {
            assert_eq!(&out.tokens, g, "{dtype}: dynamic trees, 3 rows");
        }
    }
}

/// Two native models decoding on two threads at once share the process's thread pool (their
/// products take turns on it) and still give each its own greedy output: what a server that
/// decodes requests side by side does.
#[test]
fn two_models_decoding_at_once_equal_greedy() {
    let _g = tch::no_grad_guard();
    let prompts: [Vec<i64>; 2] = [vec![1, 504, 3575, 282, 4649, 314], vec![1, 2683, 253, 1125]];
    let cfg = DecodeConfig::new(24);
    let mut models = [native(DType::F32, 128), native(DType::F32, 128)];
    let greedy: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            GreedyDecoder::new(&mut models[0])
                .decode(p, &cfg)
                .unwrap()
                .tokens
        })
        .collect();
    let outs: Vec<Vec<Vec<i64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter_mut()
            .map(|m| {
                let (prompts, cfg) = (&prompts, &cfg);
                s.spawn(move || {
                    let mut outs = Vec::new();
                    for round in 0..3 {
                        for p in prompts {
                            let out = if round % 2 == 0 {
                                GreedyDecoder::new(&mut *m).decode(p, cfg).unwrap()
                            } else {
                                Blockwise::builder(&mut *m)
                                    .block_size(4)
                                    .proposer(NGram::new(1, 3).unwrap())
                                    .build()
                                    .unwrap()
                                    .decode(p, cfg)
                                    .unwrap()
                            };
                            outs.push(out.tokens);
                        }
                    }
                    outs
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, outs) in outs.iter().enumerate() {
        for (i, out) in outs.iter().enumerate() {
            assert_eq!(out, &greedy[i % 2], "thread {t}, decode {i}");
        }
    }
}

#[test]
fn conformance_suite_passes_on_the_native_model() {
    let mut m = native(DType::F32, 64);
    let vocab = m.info().vocab_size;
    Conformance::new()
        .cases(8)
        .block_sizes(1..=6)
        .max_new_tokens(0..=10)
        .max_prompt_len(8)
        .run(&mut m, |seed| Box::new(RandomProposer::new(vocab, seed)))
        .unwrap();
}

/// Compaction moves only the slots out of place, and a query scores bit for bit the same over
/// its kept slots compacted as over them scattered, in every weight form.
#[test]
fn compaction_keeps_what_attention_sees_bit_for_bit() {
    for dtype in [DType::F32, DType::Bf16, DType::Int8] {
        let mut m = native(dtype, 64);
        blockwise::testing::check_compaction(&mut m, 0.0)
            .unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
    }
}

/// `Backend::Auto` (what `decode` and the server use by default) is the native decoder where it
/// can honour every option, else the TorchScript module, and says which it took; the default
/// proposer finds the draft shipped for the model before the model loads.
#[test]
fn auto_backend_is_native_where_it_can_be_else_torchscript() {
    let mut b = auto_bundle();
    let vectorised = blockwise::native::vectorised();
    let native = if vectorised {
        Backend::Native
    } else {
        Backend::TorchScript
    };
    assert_eq!(b.backend, Some(native));
    let o = &oracles(&b)[0];
    let cfg = DecodeConfig::new(o.greedy_ids.len()).with_eos(b.eos.clone());
    let out = GreedyDecoder::new(&mut b.model)
        .decode(&o.input_ids, &cfg)
        .unwrap();
    assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}", o.prompt);
    let meta = b.metadata.clone().unwrap();
    let resolve = |options: BundleOptions| Backend::Auto.resolve(&meta, &options);
    for dtype in [DType::F32, DType::Bf16, DType::Int8] {
        let options = BundleOptions {
            dtype,
            ..Default::default()
        };
        assert_eq!(resolve(options), native, "{dtype}");
    }
    for options in [
        BundleOptions {
            dtype: DType::F16,
            ..Default::default()
        },
        BundleOptions {
            f32_matmul: F32Matmul::OneDnn,
            ..Default::default()
        },
        BundleOptions {
            device: Device::Cuda(0),
            ..Default::default()
        },
    ] {
        assert_eq!(
            resolve(options.clone()),
            Backend::TorchScript,
            "{options:?}"
        );
    }
    let mut other_shape = meta.clone();
    other_shape.native = None;
    assert_eq!(
        Backend::Auto.resolve(&other_shape, &BundleOptions::default()),
        Backend::TorchScript
    );
    // The named backends are what they say.
    for named in [Backend::TorchScript, Backend::Native] {
        assert_eq!(
            named.resolve(&other_shape, &BundleOptions::default()),
            named
        );
        assert_eq!(Backend::parse(&named.to_string()).unwrap(), named);
    }
    assert_eq!(Backend::parse("auto").unwrap(), Backend::Auto);
    assert!(Backend::parse("fast").is_err());
    // A built-in transformer has no backend to choose.
    let embedded = ModelBundle::load(
        "embedded",
        &BundleOptions {
            backend: Backend::Auto,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(embedded.backend, None);
    // The draft a load attaches, found before loading.
    let shipped = blockwise::bundle::draft_for(dir().to_str().unwrap()).unwrap();
    assert_eq!(shipped, b.draft);
    assert!(shipped.unwrap().ends_with("assets/drafts/smollm2"));
    assert_eq!(blockwise::bundle::draft_for("embedded").unwrap(), None);
    assert_eq!(blockwise::bundle::draft_for("no/such/model").unwrap(), None);
}

/// What a library user gets from the defaults: a config that names no proposer is `auto`, which
/// the shipped draft fills in as prompt lookup then the draft; decoded natively it proposes,
/// and its output is transformers' greedy output.
#[test]
fn the_default_config_decodes_with_the_shipped_draft_equal_to_greedy() {
    let mut b = auto_bundle();
    let mut config = blockwise::BlockwiseConfig::from_json(r#"{"block_size": 4}"#).unwrap();
    config.proposer = config.proposer.with_shipped_draft(b.draft.as_deref());
    let draft = b.draft.clone().expect("SmolLM2's shipped draft");
    assert_eq!(
        config.proposer,
        blockwise::config::ProposerConfig::recommended(&draft)
    );
    let oracles = oracles(&b);
    let embeddings = b.model.token_embeddings();
    let mut decoder = Blockwise::from_config(&mut b.model, &config, embeddings.as_ref()).unwrap();
    let mut proposed = 0;
    for o in &oracles {
        let cfg = DecodeConfig::new(o.greedy_ids.len()).with_eos(b.eos.clone());
        let out = decoder.decode(&o.input_ids, &cfg).unwrap();
        assert_eq!(out.tokens, o.greedy_ids, "prompt {:?}", o.prompt);
        proposed += out.stats.proposed;
    }
    assert!(proposed > 0, "the draft proposed nothing");
}

/// What the native backend cannot do is refused with a typed error naming the option.
#[test]
fn options_it_cannot_honour_are_refused() {
    let field = |e: Error| match e {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("expected InvalidConfig, got {other}"),
    };
    let load = |options: BundleOptions| {
        ModelBundle::load(
            dir().to_str().unwrap(),
            &BundleOptions {
                backend: Backend::Native,
                ..options
            },
        )
        .map(|_| ())
        .unwrap_err()
    };
    assert_eq!(
        field(load(BundleOptions {
            dtype: DType::F16,
            ..Default::default()
        })),
        "dtype"
    );
    assert_eq!(
        field(load(BundleOptions {
            f32_matmul: F32Matmul::OneDnn,
            ..Default::default()
        })),
        "f32_matmul"
    );
    assert_eq!(
        field(load(BundleOptions {
            device: Device::Cuda(0),
            ..Default::default()
        })),
        "backend"
    );
    // A choice of bf16 products' inputs with f32 weights, with the TorchScript backend, and
    // on a machine without the instructions.
    for choice in [Bf16Inputs::Bf16, Bf16Inputs::Tiles] {
        assert_eq!(
            field(load(BundleOptions {
                bf16_inputs: choice,
                ..Default::default()
            })),
            "bf16_inputs"
        );
        let torchscript = ModelBundle::load(
            dir().to_str().unwrap(),
            &BundleOptions {
                dtype: DType::Bf16,
                bf16_inputs: choice,
                ..Default::default()
            },
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(field(torchscript), "bf16_inputs");
        if !choice.is_supported() {
            assert_eq!(
                field(load(BundleOptions {
                    dtype: DType::Bf16,
                    bf16_inputs: choice,
                    ..Default::default()
                })),
                "bf16_inputs"
            );
        }
    }
    let builtin = ModelBundle::load(
        "embedded",
        &BundleOptions {
            backend: Backend::Native,
            ..Default::default()
        },
    )
    .map(|_| ())
    .unwrap_err();
    assert_eq!(field(builtin), "backend");
    // An export without a native description (another shape): a copy of the metadata without
    // it, beside links to the modules.
    let tmp = std::env::temp_dir().join(format!("blockwise-native-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("metadata.json")).unwrap())
            .unwrap();
    meta.as_object_mut().unwrap().remove("native");
    std::fs::write(tmp.join("metadata.json"), meta.to_string()).unwrap();
    let err = NativeLm::load(&tmp, &NativeOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no `native` description"), "{err}");
    assert_eq!(field(err), "backend");
    std::fs::remove_dir_all(&tmp).unwrap();
    // A block past the allocated context and a gap in the cache are refused too.
    let mut m = native(DType::F32, 16);
    let long = Tensor::from_slice(&[1i64; 17]).unsqueeze(0);
    assert!(matches!(
        m.forward(&long, 0),
        Err(Error::BlockBeyondContext { .. })
    ));
    let one = Tensor::from_slice(&[1i64]).unsqueeze(0);
    assert!(matches!(m.forward(&one, 3), Err(Error::CacheGap { .. })));
    let bad = Tensor::from_slice(&[49152i64]).unsqueeze(0);
    assert!(matches!(
        m.forward(&bad, 0),
        Err(Error::TokenOutOfVocabulary { .. })
    ));
}
