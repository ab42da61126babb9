//! The built-in transformer: weights round-trip, dtypes, heads, and configs round-trip.

mod common;

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::config::{
    AcceptanceConfig, BlockwiseConfig, MetricConfig, ProposerConfig, VerifierConfig,
};
use blockwise::decoder::BatchBlockwise;
use blockwise::testing::check_combined_calls;
use blockwise::{
    Blockwise, BlockwiseDecoder, CausalLm, DType, DecodeConfig, GreedyDecoder, HeadsProposer,
    Transformer, TransformerConfig,
};
use common::{max_diff, tiny};
use tch::{Device, Kind, Tensor};

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).unsqueeze(0)
}

#[test]
fn save_then_load_gives_the_same_logits() {
    let mut m = tiny(50, 3, 9);
    let dir = std::env::temp_dir().join(format!("blockwise-rt-{}", std::process::id()));
    m.save(&dir).unwrap();
    let mut back = Transformer::load(&dir, Device::Cpu).unwrap();
    assert_eq!(back.config(), m.config());
    let x = ids(&[1, 7, 3, 44, 2]);
    let a = m.forward(&x, 0).unwrap();
    let b = back.forward(&x, 0).unwrap();
    assert_eq!(max_diff(&a.logits, &b.logits), 0.0);
    let h = a.hidden.unwrap().select(1, 4);
    let ha = m.head_logits(&h).unwrap().unwrap();
    let hb = back.head_logits(&h).unwrap().unwrap();
    assert_eq!(ha.size(), vec![1, 3, 50]);
    assert_eq!(max_diff(&ha, &hb), 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn seeded_weights_are_reproducible_and_seed_dependent() {
    let x = ids(&[3, 1, 4, 1, 5]);
    let a = tiny(40, 0, 1).forward(&x, 0).unwrap().logits;
    let b = tiny(40, 0, 1).forward(&x, 0).unwrap().logits;
    let c = tiny(40, 0, 2).forward(&x, 0).unwrap().logits;
    assert_eq!(max_diff(&a, &b), 0.0);
    assert!(max_diff(&a, &c) > 1e-3);
}

#[test]
fn every_dtype_runs_and_agrees_with_float64() {
    let x = ids(&[3, 1, 4, 1, 5, 9, 2, 6]);
    let mut reference = tiny(40, 2, 5);
    let want = reference.forward(&x, 0).unwrap().logits;
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::Bf16, 0.6), (DType::F16, 0.1)] {
        let mut m = tiny(40, 2, 5);
        m.set_dtype(dtype).unwrap();
        assert_eq!(m.info().kind, dtype.kind());
        let got = m.forward(&x, 0).unwrap().logits;
        assert_eq!(got.kind(), dtype.kind());
        let d = max_diff(&want, &got);
        assert!(d < tol, "{dtype:?}: largest logit difference {d}");
        // Decoding works in every dtype.
        let out = Blockwise::builder(&mut m)
            .block_size(3)
            .proposer(HeadsProposer)
            .build()
            .unwrap()
            .decode(&[1, 2, 3], &DecodeConfig::new(10))
            .unwrap();
        assert_eq!(out.tokens.len(), 10);
    }
}

#[test]
fn bf16_model_saved_and_loaded_stays_bf16() {
    let mut c = TransformerConfig::tiny(30, 1);
    c.dtype = DType::Bf16;
    let m = Transformer::new_seeded(c, 3, Device::Cpu).unwrap();
    assert_eq!(m.embedding_matrix().kind(), Kind::BFloat16);
    let dir = std::env::temp_dir().join(format!("blockwise-bf16-{}", std::process::id()));
    m.save(&dir).unwrap();
    let back = Transformer::load(&dir, Device::Cpu).unwrap();
    assert_eq!(back.embedding_matrix().kind(), Kind::BFloat16);
    assert_eq!(max_diff(m.embedding_matrix(), back.embedding_matrix()), 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_embedded_model_decodes_like_greedy() {
    let mut b = ModelBundle::load("embedded", &BundleOptions::default()).unwrap();
    assert_eq!(b.model.info().vocab_size, b.tokenizer.vocab_size());
    assert_eq!(b.model.info().num_heads, 9);
    let prompt = b
        .tokenizer
        .encode("And the LORD spake unto Moses, saying")
        .unwrap();
    let cfg = DecodeConfig::new(48).with_eos(b.eos.clone());
    let g = GreedyDecoder::new(&mut b.model)
        .decode(&prompt, &cfg)
        .unwrap();
    for k in [1, 2, 4, 8, 10] {
        let out = Blockwise::builder(&mut b.model)
            .block_size(k)
            .proposer(HeadsProposer)
            .build()
            .unwrap()
            .decode(&prompt, &cfg)
            .unwrap();
        assert_eq!(out.tokens, g.tokens, "k = {k}");
        assert_eq!(
            out.stats.model_calls + out.stats.skipped_calls,
            out.stats.iterations + 1
        );
        if k == 8 {
            // Trained heads: well over one token per call on the corpus's own style.
            assert!(out.stats.mean_accepted > 2.0, "{}", out.stats.mean_accepted);
        }
    }
}

#[test]
fn configs_round_trip_through_json() {
    let c = TransformerConfig::tiny(12, 3);
    let back: TransformerConfig =
        serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    for acceptance in [
        AcceptanceConfig::Exact,
        AcceptanceConfig::TopK { n: 3 },
        AcceptanceConfig::Distance {
            epsilon: 0.5,
            metric: MetricConfig::EmbeddingL2,
        },
    ] {
        let b = BlockwiseConfig {
            block_size: 5,
            acceptance,
            min_block: Some(2),
            proposer: ProposerConfig::None,
            policy: Default::default(),
            verifier: VerifierConfig::Recompute,
            tie_guard: Some(0.5),
            tree: None,
        };
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(BlockwiseConfig::from_json(&json).unwrap(), b, "{json}");
    }
    let d = DecodeConfig::new(9).with_eos([1, 2]);
    let back: DecodeConfig = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(back, d);
}

#[test]
fn stats_serialise() {
    let mut m = tiny(30, 3, 4);
    let out = Blockwise::builder(&mut m)
        .block_size(4)
        .proposer(HeadsProposer)
        .build()
        .unwrap()
        .decode(&[1, 2], &DecodeConfig::new(12))
        .unwrap();
    let json = serde_json::to_value(&out.stats).unwrap();
    assert_eq!(json["new_tokens"], 12);
    assert_eq!(
        json["model_calls"].as_u64().unwrap() + json["skipped_calls"].as_u64().unwrap(),
        out.stats.iterations as u64 + 1
    );
    assert!(json["wall_s"].as_f64().unwrap() >= json["model_s"].as_f64().unwrap());
    let back: blockwise::DecodeStats = serde_json::from_value(json).unwrap();
    assert_eq!(back, out.stats);
}

#[test]
fn a_last_block_the_previous_call_decided_costs_no_call() {
    // Without proposals every block is one token, so blockwise makes greedy's calls exactly:
    // the last token, decided by the call before it, needs no verify call of its own. The same
    // holds when the last token is end-of-sequence, and for every row of a batch.
    let mut m = tiny(30, 3, 4);
    let prompt = [1, 2, 3];
    for n in [1, 2, 5] {
        let config = DecodeConfig::new(n);
        let greedy = GreedyDecoder::new(&mut m).decode(&prompt, &config).unwrap();
        assert_eq!(greedy.stats.model_calls, n);
        let eos = DecodeConfig::new(20).with_eos(vec![*greedy.tokens.last().unwrap()]);
        let greedy_eos = GreedyDecoder::new(&mut m).decode(&prompt, &eos).unwrap();
        for config in [&config, &eos] {
            let want = if config.max_new_tokens == n {
                &greedy
            } else {
                &greedy_eos
            };
            let out = Blockwise::builder(&mut m)
                .block_size(1)
                .build()
                .unwrap()
                .decode(&prompt, config)
                .unwrap();
            assert_eq!(out.tokens, want.tokens);
            assert_eq!(out.stop, want.stop);
            assert_eq!(
                out.stats.model_calls, want.stats.model_calls,
                "max_new_tokens {n}"
            );
            assert_eq!(out.stats.skipped_calls, 1);
            check_combined_calls(&out).unwrap();
            let rows = BatchBlockwise::builder(&mut m)
                .block_size(1)
                .build()
                .unwrap()
                .decode_batch(&[prompt.to_vec(), prompt.to_vec()], config)
                .unwrap();
            for row in rows {
                assert_eq!(row.tokens, want.tokens);
                assert_eq!(row.stats.model_calls, want.stats.model_calls);
                assert_eq!(row.stats.skipped_calls, 1);
            }
        }
    }
}
