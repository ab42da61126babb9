//! The edges users type into: arbitrary strings into every `FromStr` and JSON config, arbitrary
//! settings into decoders built from configuration, arbitrary bytes and ids through the
//! tokenizers. Each must return `Ok` or a typed error, never panic (a panic fails the case).
//! 2,048 cases per property (`PROPTEST_CASES` overrides).

use std::str::FromStr;

use blockwise::decoder::TreeShape;
use blockwise::heads::HeadArch;
use blockwise::policy::PolicyConfig;
use blockwise::proposer::ProposerConfig;
use blockwise::sampling::probabilities;
use blockwise::tokenizer::{ByteTokenizer, HfTokenizer, TextTokenizer};
use blockwise::{
    AcceptanceConfig, Blockwise, BlockwiseConfig, BlockwiseDecoder, DType, DecodeConfig,
    SamplingConfig, Transformer, TransformerConfig,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2048),
    )
}

/// Strings made of the pieces the parsers look for, so that most cases get past the first
/// token: names, separators, numbers of every size and sign, and junk.
fn near_valid() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("ngram".to_string()),
        Just("draft".to_string()),
        Just("heads".to_string()),
        Just("eagle".to_string()),
        Just("chain".to_string()),
        Just("none".to_string()),
        Just("exact".to_string()),
        Just("topk".to_string()),
        Just("distance".to_string()),
        Just("typical".to_string()),
        Just("adaptive".to_string()),
        Just("cost".to_string()),
        Just("fixed".to_string()),
        Just("dynamic".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("=".to_string()),
        Just(" ".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| x.to_string()),
        (0u32..20).prop_map(|n| n.to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-".to_string()),
        "[a-z0-9/._-]{0,8}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![near_valid(), any::<String>()]
}

/// Every parser a user's string reaches.
fn parse_all(s: &str) {
    let _ = ProposerConfig::from_str(s);
    let _ = AcceptanceConfig::from_str(s);
    let _ = TreeShape::from_str(s);
    let _ = PolicyConfig::from_str(s);
    let _ = DType::from_str(s);
    let _ = HeadArch::from_str(s);
    let _ = BlockwiseConfig::from_json(s);
    let _ = serde_json::from_str::<SamplingConfig>(s);
}

/// A JSON value that fits no field: numbers of any size and sign, strings, nulls, objects.
fn junk_json() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |x| x.is_finite())
            .prop_map(|x| x.to_string()),
        near_valid().prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
    ]
    .boxed()
}

/// A field's value: mostly one of its valid shapes (with random numbers), sometimes junk.
fn field(valid: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![3 => valid, 1 => junk_json()].boxed()
}

fn small() -> BoxedStrategy<String> {
    prop_oneof![4 => (0usize..12).prop_map(|n| n.to_string()), 1 => any::<i64>().prop_map(|n| n.to_string())].boxed()
}

fn float() -> BoxedStrategy<String> {
    any::<f64>()
        .prop_filter("JSON numbers are finite", |x| x.is_finite())
        .prop_map(|x| x.to_string())
        .boxed()
}

/// JSON documents shaped like a `BlockwiseConfig`, with random values in their fields (and now
/// and then an unknown field).
fn config_json() -> impl Strategy<Value = String> {
    let acceptance = prop_oneof![
        Just(r#"{"type": "exact"}"#.to_string()),
        Just(r#"{"type": "lossless"}"#.to_string()),
        small().prop_map(|n| format!(r#"{{"type": "top-k", "n": {n}}}"#)),
        float().prop_map(|e| format!(r#"{{"type": "distance", "epsilon": {e}}}"#)),
        (float(), float())
            .prop_map(|(e, d)| format!(r#"{{"type": "typical", "epsilon": {e}, "delta": {d}}}"#)),
    ]
    .boxed();
    let ngram =
        (small(), small()).prop_map(|(a, b)| format!(r#"{{"ngram": {{"min": {a}, "max": {b}}}}}"#));
    let proposer = prop_oneof![
        Just(r#""heads""#.to_string()),
        Just(r#""none""#.to_string()),
        ngram.clone(),
        ngram.prop_map(|n| format!(r#"{{"chain": [{n}, "heads"]}}"#)),
        near_valid().prop_map(|d| format!(
            r#"{{"draft": {{"dir": {}}}}}"#,
            serde_json::to_string(&d).unwrap()
        )),
    ]
    .boxed();
    let verifier = prop_oneof![
        Just(r#""cached""#.to_string()),
        Just(r#""recompute""#.to_string())
    ]
    .boxed();
    let policy = prop_oneof![
        Just(r#""fixed""#.to_string()),
        Just(r#""adaptive""#.to_string()),
        Just(r#"{"cost-aware": {}}"#.to_string()),
        float().prop_map(|c| format!(r#"{{"cost-aware": {{"per_token": {c}}}}}"#)),
    ]
    .boxed();
    (
        field(small()),
        prop::option::weighted(0.5, field(acceptance)),
        prop::option::weighted(0.3, field(small())),
        prop::option::weighted(0.5, field(proposer)),
        prop::option::weighted(0.3, field(verifier)),
        prop::option::weighted(0.3, field(policy)),
        prop::option::weighted(0.3, field(float())),
        prop::option::weighted(0.05, junk_json()),
    )
        .prop_map(|(k, acc, min, prop, ver, pol, tie, extra)| {
            let mut body = vec![format!(r#""block_size": {k}"#)];
            for (name, v) in [
                ("acceptance", acc),
                ("min_block", min),
                ("proposer", prop),
                ("verifier", ver),
                ("policy", pol),
                ("tie_guard", tie),
                ("colour", extra),
            ] {
                if let Some(v) = v {
                    body.push(format!(r#""{name}": {v}"#));
                }
            }
            format!("{{{}}}", body.join(", "))
        })
}

/// Sampling settings as JSON documents, with random values.
fn sampling_json() -> impl Strategy<Value = String> {
    (
        field(float()),
        prop::option::weighted(0.5, field(small())),
        prop::option::weighted(0.5, field(float())),
        prop::option::weighted(0.3, field(small())),
    )
        .prop_map(|(t, k, p, seed)| {
            let mut body = vec![format!(r#""temperature": {t}"#)];
            for (name, v) in [("top_k", k), ("top_p", p), ("seed", seed)] {
                if let Some(v) = v {
                    body.push(format!(r#""{name}": {v}"#));
                }
            }
            format!("{{{}}}", body.join(", "))
        })
}

fn tiny_model() -> Transformer {
    Transformer::new_seeded(TransformerConfig::tiny(16, 2), 3, tch::Device::Cpu).unwrap()
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn parsers_never_panic(s in any_text()) {
        parse_all(&s);
    }

    /// A config that parses builds a decoder or says why not, and the decoder then decodes or
    /// says why not (a short decode on a tiny model).
    #[test]
    fn configs_that_parse_build_or_refuse(doc in config_json(), sampling in sampling_json()) {
        if let Ok(config) = BlockwiseConfig::from_json(&doc) {
            let mut model = tiny_model();
            if let Ok(mut d) = Blockwise::from_config(&mut model, &config, None) {
                let _ = d.decode(&[1, 2, 3], &DecodeConfig::new(4));
            }
        }
        if let Ok(s) = serde_json::from_str::<SamplingConfig>(&sampling) {
            if s.check().is_ok() {
                let logits: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 2.0).collect();
                prop_assert!(probabilities(&logits, &s, 0).is_ok(), "{s:?}");
            }
        }
    }

    /// Sampling settings and logits of any value: probabilities or a typed error.
    #[test]
    fn sampling_settings_and_logits_never_panic(
        temperature in any::<f64>(),
        top_k in proptest::option::of(any::<usize>()),
        top_p in proptest::option::of(any::<f64>()),
        logits in prop::collection::vec(any::<f32>(), 0..24),
    ) {
        let mut s = SamplingConfig::new(temperature);
        s.top_k = top_k;
        s.top_p = top_p;
        if s.check().is_ok() {
            if let Ok(p) = probabilities(&logits, &s, 0) {
                let total: f64 = p.iter().sum();
                prop_assert!((total - 1.0).abs() < 1e-6, "{total}");
            }
        }
    }

    /// Bytes into the byte tokenizer and the real model's tokenizer (when exported), and
    /// arbitrary ids back out of both.
    #[test]
    fn tokenizers_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        ids in prop::collection::vec(any::<i64>(), 0..16),
    ) {
        let text = String::from_utf8_lossy(&bytes);
        let byte = ByteTokenizer;
        let enc = byte.encode(&text).unwrap();
        prop_assert_eq!(byte.decode(&enc).unwrap(), text.to_string());
        let _ = byte.decode(&ids);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/smollm2/tokenizer.json");
        if let Ok(hf) = hf() {
            let enc = hf.encode(&text).unwrap();
            let _ = hf.encode_prompt(&text).unwrap();
            let _ = hf.decode(&enc).unwrap();
            let _ = hf.decode(&ids);
        } else {
            prop_assert!(!std::path::Path::new(path).exists());
        }
    }
}

fn hf() -> blockwise::Result<&'static HfTokenizer> {
    use std::sync::OnceLock;
    static TOK: OnceLock<Option<HfTokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        HfTokenizer::from_file(
            concat!(env!("CARGO_MANIFEST_DIR"), "/models/smollm2/tokenizer.json"),
            vec![2],
        )
        .ok()
    })
    .as_ref()
    .ok_or_else(|| blockwise::Error::Tokenizer("models/smollm2 is not exported".into()))
}

/// The JSON strategy reaches the decoders: documents of its shape parse and decode, and a run
/// of the strategy parses a share of its documents.
#[test]
fn valid_documents_of_the_strategy_shape_parse() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = config_json();
    let parsed = (0..2048)
        .filter(|_| {
            let doc = strategy.new_tree(&mut runner).unwrap().current();
            BlockwiseConfig::from_json(&doc).is_ok()
        })
        .count();
    eprintln!("{parsed} of 2048 generated config documents parse");
    assert!(parsed >= 200, "{parsed}");
    for doc in [
        r#"{"block_size": 3}"#,
        r#"{"block_size": 4, "proposer": {"ngram": {"min": 1, "max": 3}}}"#,
        r#"{"block_size": 2, "acceptance": {"type": "top-k", "n": 2}, "tie_guard": 0.5}"#,
    ] {
        let config = BlockwiseConfig::from_json(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        let mut model = tiny_model();
        let mut d = Blockwise::from_config(&mut model, &config, None)
            .unwrap_or_else(|e| panic!("{doc}: {e}"));
        d.decode(&[1, 2, 3], &DecodeConfig::new(4)).unwrap();
    }
}
