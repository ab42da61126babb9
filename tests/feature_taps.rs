//! Feature taps: a model hands over the residual states of chosen inner layers after its final
//! states (`CausalLm::set_feature_taps`), in every kind of call, without changing its logits or
//! final states; a feature draft that reads them (`FeatureDraftConfig::taps`) is built,
//! saved, configured, trained and refused where the model does not hand them over. Output
//! equals greedy with such drafts in tests/feature_draft.rs's properties.

use blockwise::config::{BlockwiseConfig, ProposerConfig};
use blockwise::feature::{FeatureDraft, FeatureDraftConfig, FeatureDraftProposer};
use blockwise::train::{train_feature_draft, DraftData, DraftTrainConfig};
use blockwise::{
    Blockwise, BlockwiseDecoder, CausalLm, DecodeConfig, Error, GreedyDecoder, MaskedLm, ModelInfo,
    ModelOutput, ProposalContext, Proposer, Transformer, TransformerConfig,
};
use tch::{Device, Kind, Tensor};

fn model(seed: u64) -> Transformer {
    let mut c = TransformerConfig::tiny(24, 0);
    c.d_model = 32;
    c.n_heads = 4;
    c.d_ff = 64;
    c.n_layers = 3;
    c.max_context = 64;
    c.dtype = blockwise::DType::F64;
    Transformer::new_seeded(c, seed, Device::Cpu).unwrap()
}

fn tokens(ids: &[i64]) -> Tensor {
    Tensor::from_slice(ids).view([1, -1])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The model's final layer norm applied to `x` (from its own weights), in float64.
fn final_norm(model: &Transformer, x: &Tensor) -> Tensor {
    let vars = model.var_store().variables();
    let (w, b) = (&vars["ln_f.weight"], &vars["ln_f.bias"]);
    let eps = model.config().layer_norm_eps;
    let mean = x.mean_dim(-1, true, Kind::Double);
    let var = (x - &mean).square().mean_dim(-1, true, Kind::Double);
    (x - mean) / (var + eps).sqrt() * w + b
}

#[test]
fn taps_follow_the_final_states_in_every_kind_of_call() {
    let mut m = model(3);
    let d = m.config().d_model;
    let ids = [1i64, 5, 7, 2, 9, 4];
    let plain = m.forward(&tokens(&ids), 0).unwrap();
    m.set_feature_taps(&[2, 0]).unwrap();
    let tapped = m.forward(&tokens(&ids), 0).unwrap();
    let hidden = tapped.hidden.as_ref().unwrap();
    assert_eq!(hidden.size(), [1, 6, 3 * d]);
    // Logits and final states are untouched.
    assert_eq!(max_diff(&tapped.logits, &plain.logits), 0.0);
    let final_states = hidden.narrow(-1, 0, d);
    assert_eq!(max_diff(&final_states, plain.hidden.as_ref().unwrap()), 0.0);
    // The first tap is the last layer's residual state: the final norm of it is the final state.
    let last = hidden.narrow(-1, d, d);
    assert!(max_diff(&final_norm(&m, &last), &final_states) < 1e-9);
    // The second is the first layer's: it differs from the last's.
    assert!(max_diff(&hidden.narrow(-1, 2 * d, d), &last) > 1e-3);

    // A block appended to the cache hands over what one pass over the whole sequence does.
    m.forward(&tokens(&ids[..4]), 0).unwrap();
    let tail = m.forward(&tokens(&ids[4..]), 4).unwrap();
    assert!(max_diff(tail.hidden.as_ref().unwrap(), &hidden.narrow(1, 4, 2)) < 1e-9);

    // Whole sequences (training) and masked calls (batches, trees) hand over the same.
    let seqs = m.forward_sequences(&tokens(&ids)).unwrap();
    assert!(max_diff(seqs.hidden.as_ref().unwrap(), hidden) < 1e-9);
    m.begin_batch(1, 16).unwrap();
    let causal = Tensor::ones([6, 6], (Kind::Bool, Device::Cpu))
        .tril(0)
        .unsqueeze(0);
    let masked = m
        .forward_masked(
            &tokens(&ids),
            &Tensor::arange(6, (Kind::Int64, Device::Cpu)).view([1, 6]),
            &causal,
        )
        .unwrap();
    assert!(max_diff(masked.hidden.as_ref().unwrap(), hidden) < 1e-9);

    // No layers: the final states alone again.
    m.set_feature_taps(&[]).unwrap();
    let again = m.forward(&tokens(&ids), 0).unwrap();
    assert_eq!(again.hidden.unwrap().size(), [1, 6, d]);
}

#[test]
fn taps_past_the_model_or_on_a_model_without_them_are_refused() {
    let mut m = model(3);
    let err = m.set_feature_taps(&[0, 3]).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("layer 3"), "{err}");

    // A user's model that implements only the required methods refuses any layer (and
    // accepts none).
    struct Uniform(ModelInfo);
    impl CausalLm for Uniform {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn forward(&mut self, t: &Tensor, _start: usize) -> blockwise::Result<ModelOutput> {
            let n = t.size()[1];
            Ok(ModelOutput::logits(Tensor::zeros(
                [1, n, 24],
                (Kind::Float, Device::Cpu),
            )))
        }
        fn cached_len(&self) -> usize {
            0
        }
        fn truncate(&mut self, _len: usize) -> blockwise::Result<()> {
            Ok(())
        }
    }
    let mut user = Uniform(ModelInfo::new(24, 16));
    user.set_feature_taps(&[]).unwrap();
    let err = user.set_feature_taps(&[1]).unwrap_err();
    assert!(matches!(err, Error::MissingCapability { .. }), "{err}");
}

/// A draft for `m` with every weight drawn at random (so that a taps' map is not zero), each
/// a bfloat16 value (what `save` stores), so that a saved and loaded copy guesses the same.
fn noisy_draft(m: &Transformer, taps: Option<Vec<usize>>, seed: u64) -> FeatureDraft {
    let c = m.config();
    let config = FeatureDraftConfig {
        taps,
        ..FeatureDraftConfig::for_base(c.d_model, c.vocab_size)
    };
    let draft = FeatureDraft::new(config, seed, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in draft.var_store().variables() {
            let noise = Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.2;
            v.copy_(&(&v + noise).to_kind(Kind::BFloat16).to_kind(Kind::Float));
        }
    });
    draft
}

/// The tokens a proposer drafts after being handed `hidden` for the sequence `seq`.
fn drafted(p: &mut FeatureDraftProposer, seq: &[i64], hidden: &Tensor) -> Vec<i64> {
    p.begin(&seq[..1]).unwrap();
    p.observe_hidden(&hidden.squeeze_dim(0)).unwrap();
    let (tokens, next) = (&seq[..seq.len() - 1], seq[seq.len() - 1]);
    p.propose(&ProposalContext::new(tokens, next, 4)).unwrap()
}

#[test]
fn a_draft_with_taps_reads_them_and_refuses_states_without() {
    let mut m = model(4);
    let d = m.config().d_model;
    let seq = [3i64, 8, 1, 6, 2];
    m.set_feature_taps(&[1, 0]).unwrap();
    let wide = m
        .forward(&tokens(&seq[..4]), 0)
        .unwrap()
        .hidden
        .unwrap()
        .to_kind(Kind::Float);

    // Added to a draft that reads the final states alone, taps start at zero: the same guesses.
    let plain = noisy_draft(&m, None, 5);
    let c = plain.config().clone();
    let dir = std::env::temp_dir().join(format!("blockwise-taps-{}", std::process::id()));
    plain.save(&dir).unwrap();
    let reload = || FeatureDraft::load(&dir, Device::Cpu).unwrap();
    let mut narrow_p = FeatureDraftProposer::new(reload(), &m).unwrap();
    let mut grown_p =
        FeatureDraftProposer::new(reload().with_taps(vec![1, 0]).unwrap(), &m).unwrap();
    let narrow_guess = drafted(&mut narrow_p, &seq, &wide.narrow(-1, 0, d));
    assert_eq!(narrow_guess.len(), 4);
    assert_eq!(drafted(&mut grown_p, &seq, &wide), narrow_guess);

    // A draft whose taps' map is not zero guesses from the inner layers: saved and loaded, it
    // keeps them and guesses the same.
    let draft = noisy_draft(&m, Some(vec![1, 0]), 6);
    draft.save(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("draft.json")).unwrap();
    assert!(text.contains("\"taps\""), "{text}");
    let mut p = FeatureDraftProposer::new(draft, &m).unwrap();
    let guess = drafted(&mut p, &seq, &wide);
    let mut loaded = FeatureDraftProposer::new(reload(), &m).unwrap();
    assert_eq!(drafted(&mut loaded, &seq, &wide), guess);

    // The final states alone are refused, naming the call that hands the taps over.
    loaded.begin(&seq[..1]).unwrap();
    let err = loaded
        .observe_hidden(&wide.narrow(-1, 0, d).squeeze_dim(0))
        .unwrap_err();
    assert!(err.to_string().contains("set_feature_taps"), "{err}");

    // An empty list of taps, and taps added twice, are refused.
    let empty = FeatureDraftConfig {
        taps: Some(vec![]),
        ..c.clone()
    };
    let err = FeatureDraft::new(empty, 0, Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    let err = reload().with_taps(vec![0]).unwrap_err();
    assert!(err.to_string().contains("already reads"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_configured_draft_with_taps_sets_them_and_decodes_greedys_tokens() {
    let mut m = model(7);
    let dir = std::env::temp_dir().join(format!("blockwise-taps-config-{}", std::process::id()));
    noisy_draft(&m, Some(vec![2, 1]), 8).save(&dir).unwrap();
    let eagle: ProposerConfig = serde_json::from_value(serde_json::json!(
        {"eagle": {"draft": dir.display().to_string()}}
    ))
    .unwrap();
    assert_eq!(eagle.feature_taps().unwrap(), vec![2, 1]);
    let decode = DecodeConfig::new(24);
    let prompt = vec![2i64, 9, 4];
    let want = GreedyDecoder::new(&mut m).decode(&prompt, &decode).unwrap();
    let config = BlockwiseConfig {
        proposer: eagle.clone(),
        ..BlockwiseConfig::heads(4)
    };
    let emb = m.token_embeddings();
    let out = Blockwise::from_config(&mut m, &config, emb.as_ref())
        .unwrap()
        .decode(&prompt, &decode)
        .unwrap();
    assert_eq!(out.tokens, want.tokens);
    // The model hands the taps over from now on.
    let h = m.forward(&tokens(&prompt), 0).unwrap().hidden.unwrap();
    assert_eq!(h.size()[2], 3 * m.config().d_model);

    // Two drafts that read different layers cannot share one model.
    let other = std::env::temp_dir().join(format!("blockwise-taps-other-{}", std::process::id()));
    noisy_draft(&m, Some(vec![0]), 9).save(&other).unwrap();
    let both: ProposerConfig = serde_json::from_value(serde_json::json!({"chain": [
        {"eagle": {"draft": dir.display().to_string()}},
        {"eagle": {"draft": other.display().to_string()}}
    ]}))
    .unwrap();
    let err = both.feature_taps().unwrap_err();
    assert!(err.to_string().contains("different layers"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&other).ok();
}

#[test]
fn a_draft_trains_on_the_taps_it_reads() {
    let mut m = model(11);
    let d = m.config().d_model;
    let seqs: Vec<Vec<i64>> = (0..24)
        .map(|i| {
            (0..40)
                .map(|j| ((i * 5 + j * j + i * j) % 24) as i64)
                .collect()
        })
        .collect();
    let narrow = DraftData::teacher_forced(&mut m, &seqs, Kind::Float).unwrap();
    m.set_feature_taps(&[0, 2]).unwrap();
    let data = DraftData::teacher_forced(&mut m, &seqs, Kind::Float).unwrap();
    assert_eq!(data.width(), 3 * d);
    let emb = m.token_embeddings().unwrap();
    let c = m.config().clone();
    let fresh = FeatureDraftConfig {
        taps: Some(vec![0, 2]),
        ..FeatureDraftConfig::for_base(c.d_model, c.vocab_size)
    };
    let mut draft = FeatureDraft::new(fresh, 1, Device::Cpu).unwrap();
    let settings = DraftTrainConfig {
        steps: 30,
        batch_size: 4,
        seq_len: 32,
        log_every: 10,
        ..DraftTrainConfig::default()
    };
    // States without the taps are refused, naming the layers.
    let err = train_feature_draft(&mut draft, &emb, &narrow, &settings, None, |_| {}).unwrap_err();
    assert!(err.to_string().contains("[0, 2]"), "{err}");
    let report = train_feature_draft(&mut draft, &emb, &data, &settings, None, |_| {}).unwrap();
    assert!(report.final_loss.is_finite());
    // The taps' map started at zero; training moved it.
    let map = &draft.var_store().variables()["taps.weight"];
    assert!(map.abs().max().double_value(&[]) > 0.0);
}
