//! Every input a caller can get wrong returns a typed error that says what was wrong (the table
//! in docs/errors.md lists these cases).

mod common;

use blockwise::acceptance::{from_fn, BlockView};
use blockwise::config::{AcceptanceConfig, BlockwiseConfig};
use blockwise::proposer::{self, ProposalContext};
use blockwise::{
    Blockwise, BlockwiseDecoder, CachedVerifier, CausalLm, ContextPolicy, DecodeConfig, Distance,
    DistanceMetric, Error, Exact, GreedyDecoder, HeadsProposer, MinBlock, NGram, TopK, Transformer,
    TransformerConfig,
};
use common::{tiny, Fault, Faulty};

fn blockwise_with_heads(model: &mut Transformer, k: usize) -> Blockwise<&mut Transformer> {
    Blockwise::builder(model)
        .block_size(k)
        .proposer(HeadsProposer)
        .build()
        .unwrap()
}

#[test]
fn empty_prompt() {
    let mut m = tiny(20, 3, 1);
    let e = blockwise_with_heads(&mut m, 4)
        .decode(&[], &DecodeConfig::new(5))
        .unwrap_err();
    assert!(matches!(e, Error::EmptyPrompt), "{e}");
    let e = GreedyDecoder::new(&mut m)
        .decode(&[], &DecodeConfig::new(5))
        .unwrap_err();
    assert!(matches!(e, Error::EmptyPrompt), "{e}");
}

#[test]
fn prompt_token_outside_vocabulary() {
    let mut m = tiny(20, 3, 1);
    for bad in [20, -1, i64::MAX] {
        let e = blockwise_with_heads(&mut m, 4)
            .decode(&[1, bad, 2], &DecodeConfig::new(5))
            .unwrap_err();
        match e {
            Error::TokenOutOfVocabulary {
                what: "prompt",
                position: 1,
                token,
                vocab_size: 20,
            } => {
                assert_eq!(token, bad)
            }
            other => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn eos_outside_vocabulary() {
    let mut m = tiny(20, 3, 1);
    let e = blockwise_with_heads(&mut m, 4)
        .decode(&[1], &DecodeConfig::new(5).with_eos([3, 99]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfVocabulary {
                what: "EOS set",
                position: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn block_size_zero_and_too_large() {
    let mut m = tiny(20, 3, 1);
    let e = Blockwise::builder(&mut m)
        .block_size(0)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "block_size",
                ..
            }
        ),
        "{e}"
    );
    // A block longer than the context (it once sized the stats for it and aborted on a huge k).
    let e = Blockwise::builder(&mut m)
        .block_size(usize::MAX / 2)
        .proposer(NGram::new(1, 2).unwrap())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "block_size",
                ..
            }
        ) && e.to_string().contains("context"),
        "{e}"
    );
    // 3 heads serve k <= 4.
    let e = Blockwise::builder(&mut m)
        .block_size(5)
        .proposer(HeadsProposer)
        .build()
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("needs 4 proposal heads; the model has 3"),
        "{e}"
    );
}

#[test]
fn heads_proposer_on_a_model_without_heads() {
    let mut m = tiny(20, 0, 1);
    let e = Blockwise::builder(&mut m)
        .block_size(2)
        .proposer(HeadsProposer)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "block_size",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn prompt_longer_than_context() {
    let mut m = tiny(20, 3, 1); // context 128
    let prompt = vec![1; 129];
    let e = blockwise_with_heads(&mut m, 4)
        .decode(&prompt, &DecodeConfig::new(5))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::PromptTooLong {
                prompt_len: 129,
                max_context: 128
            }
        ),
        "{e}"
    );
}

#[test]
fn context_exhausted_when_asked_for_an_error() {
    let mut m = tiny(20, 3, 1);
    let cfg = DecodeConfig::new(500).with_context_policy(ContextPolicy::Error);
    let e = blockwise_with_heads(&mut m, 4)
        .decode(&[1; 120], &cfg)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ContextExhausted {
                max_context: 128,
                generated: 8
            }
        ),
        "{e}"
    );
    // The default policy stops instead.
    let out = blockwise_with_heads(&mut m, 4)
        .decode(&[1; 120], &DecodeConfig::new(500))
        .unwrap();
    assert_eq!(out.tokens.len(), 8);
    assert_eq!(out.stop, blockwise::StopReason::ContextFull);
    // A prompt that fills the context leaves no room at all.
    let e = blockwise_with_heads(&mut m, 4)
        .decode(&[1; 128], &cfg)
        .unwrap_err();
    assert!(
        matches!(e, Error::ContextExhausted { generated: 0, .. }),
        "{e}"
    );
}

#[test]
fn proposal_outside_vocabulary() {
    let mut m = tiny(20, 3, 1);
    let bad = proposer::from_fn(|_: &ProposalContext<'_>| vec![3, 77]);
    let e = Blockwise::builder(&mut m)
        .block_size(4)
        .proposer(bad)
        .build()
        .unwrap()
        .decode(&[1, 2], &DecodeConfig::new(5))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfVocabulary {
                what: "proposal",
                position: 1,
                token: 77,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn criterion_that_accepts_too_much() {
    let mut m = tiny(20, 3, 1);
    let greedy_all = from_fn(|v: &BlockView<'_>| v.len() + 1);
    let e = Blockwise::builder(&mut m)
        .block_size(4)
        .proposer(HeadsProposer)
        .criterion(greedy_all)
        .build()
        .unwrap()
        .decode(&[1, 2], &DecodeConfig::new(5))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Contract {
                component: "acceptance criterion",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn nan_logits() {
    let mut m = Faulty::new(tiny(20, 3, 1), Fault::NanFromCall(3));
    let e = Blockwise::builder(&mut m)
        .block_size(4)
        .proposer(HeadsProposer)
        .build()
        .unwrap()
        .decode(&[1, 2], &DecodeConfig::new(30))
        .unwrap_err();
    // The block position, and where that block stands in the sequence: the third call follows
    // the 2-token prompt and at least one token accepted by the second.
    match e {
        Error::NonFiniteLogits {
            position: 0,
            sequence_position: Some(p),
        } => assert!(p >= 3, "{p}"),
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("sequence position"), "{e}");
    let mut m = Faulty::new(tiny(20, 3, 1), Fault::NanFromCall(1));
    let e = GreedyDecoder::new(&mut m)
        .decode(&[1, 2], &DecodeConfig::new(30))
        .unwrap_err();
    // The first call (the prompt's) is the bad one: its last row follows the prompt's last
    // token, at sequence position 1.
    assert!(
        matches!(
            e,
            Error::NonFiniteLogits {
                position: 0,
                sequence_position: Some(1)
            }
        ),
        "{e}"
    );
    // Under sampling too, for both decoders.
    let sampled = DecodeConfig::new(30).with_sampling(blockwise::SamplingConfig::new(0.8));
    let mut m = Faulty::new(tiny(20, 3, 1), Fault::NanFromCall(3));
    let e = Blockwise::builder(&mut m)
        .block_size(4)
        .proposer(HeadsProposer)
        .build()
        .unwrap()
        .decode(&[1, 2], &sampled)
        .unwrap_err();
    assert!(matches!(e, Error::NonFiniteLogits { .. }), "{e}");
    let mut m = Faulty::new(tiny(20, 3, 1), Fault::NanFromCall(2));
    let e = GreedyDecoder::new(&mut m)
        .decode(&[1, 2], &sampled)
        .unwrap_err();
    assert!(matches!(e, Error::NonFiniteLogits { .. }), "{e}");
}

#[test]
fn model_returning_only_the_last_position() {
    let mut m = Faulty::new(tiny(20, 0, 1), Fault::LastPositionOnly);
    let e = Blockwise::builder(&mut m)
        .block_size(1)
        .build()
        .unwrap()
        .decode(&[1, 2, 3], &DecodeConfig::new(3))
        .unwrap_err();
    match e {
        Error::BadOutputShape {
            output: "logits",
            actual,
            ..
        } => assert_eq!(actual, vec![1, 1, 20]),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn model_with_the_wrong_vocabulary() {
    let mut m = Faulty::new(tiny(20, 0, 1), Fault::WrongVocab);
    let e = GreedyDecoder::new(&mut m)
        .decode(&[1, 2, 3], &DecodeConfig::new(3))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadOutputShape {
                output: "logits",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn cached_verifier_on_a_model_without_cache() {
    let mut m = Faulty::new(tiny(20, 0, 1), Fault::NoCache);
    let e = Blockwise::builder(&mut m)
        .block_size(1)
        .verifier(CachedVerifier::new())
        .build()
        .unwrap()
        .decode(&[1, 2, 3], &DecodeConfig::new(3))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::MissingCapability {
                component: "CachedVerifier",
                ..
            }
        ),
        "{e}"
    );
    // The way out, for library and command-line users alike.
    let text = e.to_string();
    assert!(
        text.contains("RecomputeVerifier") && text.contains("--verifier recompute"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn cache_gap_and_block_beyond_context() {
    let mut m = tiny(20, 0, 1);
    let t = tch::Tensor::from_slice(&[1i64, 2]).unsqueeze(0);
    let e = m.forward(&t, 5).unwrap_err();
    assert!(
        matches!(
            e,
            Error::CacheGap {
                start: 5,
                cached: 0
            }
        ),
        "{e}"
    );
    let long = tch::Tensor::from_slice(&vec![1i64; 129]).unsqueeze(0);
    let e = m.forward(&long, 0).unwrap_err();
    assert!(
        matches!(e, Error::BlockBeyondContext { block_len: 129, .. }),
        "{e}"
    );
    let bad = tch::Tensor::from_slice(&[1i64, 25]).unsqueeze(0);
    let e = m.forward(&bad, 0).unwrap_err();
    assert!(
        matches!(e, Error::TokenOutOfVocabulary { token: 25, .. }),
        "{e}"
    );
}

#[test]
fn bad_criterion_parameters() {
    assert!(matches!(
        TopK::new(0),
        Err(Error::InvalidConfig { field: "top_k", .. })
    ));
    assert!(matches!(
        MinBlock::new(0, Exact),
        Err(Error::InvalidConfig {
            field: "min_block",
            ..
        })
    ));
    for eps in [-0.5, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            Distance::new(eps, DistanceMetric::Ordinal),
            Err(Error::InvalidConfig {
                field: "epsilon",
                ..
            })
        ));
    }
    for s in [
        "top-k",
        "top-k:x",
        "distance",
        "distance:1:manhattan",
        "exactly",
        "typical:0.1",
        "typical:x:0.3",
        "lossless:1",
    ] {
        let e = s.parse::<AcceptanceConfig>().unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "accept",
                    ..
                }
            ),
            "{s}: {e}"
        );
    }
    let e = AcceptanceConfig::Distance {
        epsilon: 0.1,
        metric: blockwise::config::MetricConfig::EmbeddingCosine,
    }
    .build(None, None)
    .err()
    .unwrap();
    assert!(matches!(e, Error::MissingCapability { .. }), "{e}");
}

#[test]
fn config_documents_are_checked() {
    let e = BlockwiseConfig::from_json(r#"{"block_size": 4, "speed": "max"}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `speed`"), "{e}");
    let e = BlockwiseConfig::from_json(r#"{"block_size": 4, "acceptance": {"type": "top-k"}}"#)
        .unwrap_err();
    assert!(e.to_string().contains("missing field `n`"), "{e}");
    let e =
        BlockwiseConfig::from_json(r#"{"block_size": 4, "acceptance": {"type": "exact", "n": 3}}"#)
            .unwrap_err();
    assert!(e.to_string().contains("unknown field `n`"), "{e}");
    let ok = BlockwiseConfig::from_json(
        r#"{"block_size": 6, "acceptance": {"type": "distance", "epsilon": 2.0}, "min_block": 2}"#,
    )
    .unwrap();
    assert_eq!(ok.block_size, 6);
    let e =
        serde_json::from_str::<DecodeConfig>(r#"{"max_new_tokens": 3, "eos": [1]}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `eos`"), "{e}");
    // Sampling settings and the sampling criteria, as documents and as `--accept` strings.
    let d: DecodeConfig =
        serde_json::from_str(r#"{"sampling": {"temperature": 0.7, "top_p": 0.9, "seed": 3}}"#)
            .unwrap();
    let s = d.sampling.unwrap();
    assert_eq!((s.temperature, s.top_p, s.seed), (0.7, Some(0.9), Some(3)));
    let e =
        serde_json::from_str::<DecodeConfig>(r#"{"sampling": {"temprature": 0.7}}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `temprature`"), "{e}");
    let typical = BlockwiseConfig::from_json(
        r#"{"block_size": 4, "acceptance": {"type": "typical", "epsilon": 0.2, "delta": 0.5}}"#,
    )
    .unwrap();
    assert_eq!(
        typical.acceptance,
        "typical:0.2:0.5".parse::<AcceptanceConfig>().unwrap()
    );
    assert_eq!(
        "lossless".parse::<AcceptanceConfig>().unwrap(),
        AcceptanceConfig::Lossless
    );
    let Err(e) = AcceptanceConfig::Typical {
        epsilon: 0.0,
        delta: 0.3,
    }
    .build(None, None) else {
        panic!("typical acceptance with epsilon 0 was accepted");
    };
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "epsilon",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_transformer_configs() {
    let mut c = TransformerConfig::tiny(20, 1);
    c.n_heads = 5;
    let e = Transformer::new_seeded(c, 1, tch::Device::Cpu).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "n_heads",
                ..
            }
        ),
        "{e}"
    );
    let mut c = TransformerConfig::tiny(20, 1);
    c.vocab_size = 0;
    let e = Transformer::new_seeded(c, 1, tch::Device::Cpu).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "vocab_size",
                ..
            }
        ),
        "{e}"
    );
    let mut c = TransformerConfig::tiny(20, 1);
    c.max_context = 0;
    assert!(Transformer::new_seeded(c, 1, tch::Device::Cpu).is_err());
}

#[test]
fn missing_or_broken_model_folder() {
    let e = Transformer::load("/nonexistent/model", tch::Device::Cpu).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                action: "reading",
                ..
            }
        ),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("blockwise-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"vocab_size": 10, "colour": 1}"#,
    )
    .unwrap();
    let e = Transformer::load(&dir, tch::Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Json { .. }), "{e}");
    // Valid config, weights of another shape.
    tiny(30, 0, 1).save(&dir).unwrap();
    let mut c = TransformerConfig::tiny(20, 0);
    c.d_model = 32;
    std::fs::write(dir.join("config.json"), serde_json::to_string(&c).unwrap()).unwrap();
    let e = Transformer::load(&dir, tch::Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Torch(_)), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A user verifier that scores one row too few.
struct ShortVerifier(CachedVerifier);

impl blockwise::Verifier for ShortVerifier {
    fn start(
        &mut self,
        model: &mut dyn CausalLm,
        prompt: &[i64],
        req: blockwise::verifier::ScoreRequest,
    ) -> blockwise::Result<blockwise::verifier::Step> {
        self.0.start(model, prompt, req)
    }
    fn verify(
        &mut self,
        model: &mut dyn CausalLm,
        block: &[i64],
        req: blockwise::verifier::ScoreRequest,
    ) -> blockwise::Result<blockwise::verifier::BlockScores> {
        let s = self.0.verify(model, block, req)?;
        let rows = s.ranked()[..s.ranked().len() - s.width()].to_vec();
        Ok(blockwise::verifier::BlockScores::new(rows, s.width()).unwrap())
    }
    fn commit(
        &mut self,
        model: &mut dyn CausalLm,
        keep: usize,
        req: blockwise::verifier::ScoreRequest,
    ) -> blockwise::Result<Option<blockwise::verifier::HeadOutputs>> {
        self.0.commit(model, keep, req)
    }
}

#[test]
fn verifier_returning_too_few_rows() {
    let mut m = tiny(20, 3, 1);
    let e = Blockwise::builder(&mut m)
        .block_size(4)
        .proposer(HeadsProposer)
        .verifier(ShortVerifier(CachedVerifier::new()))
        .build()
        .unwrap()
        .decode(&[1, 2], &DecodeConfig::new(5))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Contract {
                component: "verifier",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn draft_model_with_another_vocabulary() {
    let draft = tiny(21, 0, 2);
    let e = blockwise::proposer::DraftModel::new(draft, 20).unwrap_err();
    assert!(
        matches!(
            e,
            Error::VocabularyMismatch {
                left_size: 21,
                right_size: 20,
                ..
            }
        ),
        "{e}"
    );
    let no_cache = Faulty::new(tiny(20, 0, 2), Fault::NoCache);
    let e = blockwise::proposer::DraftModel::new(no_cache, 20).unwrap_err();
    assert!(
        matches!(
            e,
            Error::MissingCapability {
                component: "DraftModel",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_proposer_and_policy_configs() {
    use blockwise::config::ProposerConfig;
    use blockwise::policy::{Adaptive, CostModel, PolicyConfig};
    for bad in [
        "draft:",
        "chain:ngram,chain:heads",
        "chain:ngram,bogus",
        "ngram:a:b",
        "lookahead:4:3",
        "lookahead:a:3:4",
        "medusa",
        "eagle@int4",
        "eagle:",
        "eagle:@int8",
        "eagles",
    ] {
        let e = bad.parse::<ProposerConfig>().err().expect("an error");
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "proposer",
                    ..
                }
            ),
            "{bad}: {e}"
        );
    }
    for bad in ["sometimes", "cost:x", "adaptive:3"] {
        let e = bad.parse::<PolicyConfig>().err().expect("an error");
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "policy",
                    ..
                }
            ),
            "{bad}: {e}"
        );
    }
    let e = PolicyConfig::CostAware {
        per_token: Some(-0.5),
    }
    .build()
    .err()
    .expect("an error");
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
    assert!(CostModel::linear(f64::INFINITY).is_err());
    assert!(Adaptive::new(1, 0, 1).is_err());

    // A draft whose vocabulary differs (the embedded model has 4,096 tokens).
    let target = tiny(20, 3, 1);
    let e = ProposerConfig::Draft {
        model: "embedded".into(),
    }
    .build(target.info())
    .err()
    .expect("an error");
    assert!(
        matches!(
            e,
            Error::VocabularyMismatch {
                left: "draft model",
                left_size: 4096,
                right_size: 20,
                ..
            }
        ),
        "{e}"
    );
    // A draft folder that is not there.
    let e = ProposerConfig::Draft {
        model: "no/such/folder".into(),
    }
    .build(target.info())
    .err()
    .expect("an error");
    assert!(matches!(e, Error::Io { .. }), "{e}");
    // An empty chain.
    let e = ProposerConfig::Chain(vec![])
        .build(target.info())
        .err()
        .expect("an error");
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "proposer",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn lookahead_settings_out_of_range_are_config_errors() {
    use blockwise::config::ProposerConfig;
    let info = tiny(20, 0, 1).info().clone();
    for bad in ["lookahead:0:3:4", "lookahead:4:1:4", "lookahead:4:3:0"] {
        let config: ProposerConfig = bad.parse().unwrap();
        let e = config.build(&info).err().expect("an error");
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "lookahead",
                    ..
                }
            ),
            "{bad}: {e}"
        );
    }
    let default: ProposerConfig = "lookahead".parse().unwrap();
    assert_eq!(default.to_string(), "lookahead:4:3:4");
}

#[test]
fn a_draft_confidence_outside_zero_to_one_is_refused_when_built() {
    use blockwise::config::ProposerConfig;
    let model =
        Transformer::new_seeded(TransformerConfig::tiny(20, 1), 1, tch::Device::Cpu).unwrap();
    for bad in ["eagle:x~1", "eagle:x~-0.5", "eagle:x~NaN"] {
        let p: ProposerConfig = bad.parse().unwrap();
        let Err(e) = p.build_for(&model) else {
            panic!("{bad} was built");
        };
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "draft min_confidence",
                    ..
                }
            ),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("below 1"), "{bad}: {e}");
    }
}

#[test]
fn proposer_configs_round_trip() {
    use blockwise::config::ProposerConfig;
    for s in [
        "heads",
        "none",
        "ngram:2:4",
        "lookahead:7:4:5",
        "draft:models/smollm2-draft",
        "chain:lookahead:4:3:4,ngram:1:3,heads",
        "eagle",
        "eagle@int8",
        "eagle:assets/drafts/smollm2@f32",
        "eagle@native-int8",
        "eagle:assets/drafts/smollm2@native-bf16",
        "eagle:a@b/draft",
        "chain:ngram:1:3,eagle@f32",
        "eagle~0.2",
        "eagle@native-int8~0.05",
        "eagle:a~b/draft@int8~0.5",
        "chain:ngram:1:3,eagle~0.3",
    ] {
        let p: ProposerConfig = s.parse().unwrap();
        assert_eq!(p.to_string(), s);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            serde_json::from_str::<ProposerConfig>(&json).unwrap(),
            p,
            "{json}"
        );
    }
}
