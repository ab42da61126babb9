//! Trains a feature-level draft (EAGLE's idea) for a model the crate loads, from teacher-forced
//! data (`make draft-data`), with every setting from a serde JSON file; saves it where `decode
//! --proposer eagle` finds it and measures it on held-out chat prompts against greedy decoding.
//!
//! ```text
//! cargo run --release --example train_draft -- examples/configs/smollm2-draft.json
//!     [--max-train-tokens N] [--split NAME[,NAME..]] [--out DIR] [--checkpoint DIR] [--report FILE]
//!     [--eval-only]
//! ```
//!
//! `--max-train-tokens` trains on the first N tokens of the data only (the learning curve of
//! `scripts/draft_curve.sh`); `--split NAME` on the shards `NAME-*.safetensors` only (default
//! `train`; `train-answers`: SmolLM2's own answers alone; `train-wide,train-more`: the shards of
//! both, the config's `weights` applied to each); `--eval-only` measures the draft already in
//! `out`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use blockwise::bundle::{Backend, BundleOptions, HeadsChoice, ModelBundle};
use blockwise::feature::{FeatureDraft, FeatureDraftConfig, FeatureDraftProposer};
use blockwise::train::{
    evaluate_feature_draft, evaluate_feature_draft_on_answers, train_feature_draft, DraftData,
    DraftTrainConfig, ProgressBar,
};
use blockwise::{
    Blockwise, BlockwiseDecoder, CausalLm, DType, DecodeConfig, Error, GreedyDecoder, Result,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Evaluation {
    /// Held-out chat prompts, one per line (no training sequence uses them).
    prompts: PathBuf,
    /// How many of them to decode.
    count: usize,
    /// Block size of the measurement.
    block_size: usize,
    max_new_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// An export folder (or a built-in transformer folder) whose hidden states the data holds.
    model: String,
    /// The folder of `train-*.safetensors` and `heldout-*.safetensors` shards.
    data: PathBuf,
    /// Training shards whose file name starts with a key are repeated that many times
    /// (`{"train-answers": 4}`: the model's own answers weigh four times their share).
    #[serde(default)]
    weights: BTreeMap<String, usize>,
    /// Score only this many of the base's most frequent greedy tokens of the training data.
    #[serde(default)]
    shortlist: Option<usize>,
    /// Feed-forward width of the draft layer (default `8/3 · D`).
    #[serde(default)]
    d_ff: Option<i64>,
    /// Transformer layers of the draft (default 1). Beside `init`, grows the saved draft to
    /// this many: fresh layers on top that pass their input through until trained.
    #[serde(default)]
    layers: Option<i64>,
    /// Rotary positions in the draft's attention, with this frequency base (a fresh draft
    /// only; a draft loaded by `init` keeps what it has).
    #[serde(default)]
    rope_theta: Option<f64>,
    /// Inner layers of the base whose residual states the draft reads besides the final
    /// states (`FeatureDraftConfig::taps`); the data must hold them (`draft_answers --taps`).
    /// Beside `init`, adds them to a saved draft that reads the final states alone, their map
    /// at zero.
    #[serde(default)]
    taps: Option<Vec<usize>>,
    /// How the base runs for the decoding measurement: `torchscript` (the default) or
    /// `native` (the crate's CPU kernels; the backend that hands over inner layers' states).
    #[serde(default)]
    backend: Option<String>,
    /// Start from the draft saved in this folder instead of a fresh one (fine-tuning on new
    /// data): its width, feed-forward size and shortlist are kept, so `shortlist` and `d_ff`
    /// are refused beside it.
    #[serde(default)]
    init: Option<PathBuf>,
    train: DraftTrainConfig,
    evaluation: Evaluation,
    out: PathBuf,
    #[serde(default)]
    checkpoint: Option<PathBuf>,
    #[serde(default)]
    seed: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    /// The shards trained on (`SPLIT-*.safetensors`) and the weights they were repeated with.
    split: String,
    weights: BTreeMap<String, usize>,
    train_tokens: usize,
    train_sequences: usize,
    shortlist: Option<usize>,
    shortlist_coverage_heldout: Option<f64>,
    train_s: f64,
    final_loss: f64,
    /// Top-1 agreement per draft step on the held-out text (`heldout-*` shards), when the data
    /// has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    heldout_agreement: Option<Vec<f64>>,
    /// The draft this one was fine-tuned from (`init`).
    #[serde(skip_serializing_if = "Option::is_none")]
    init: Option<PathBuf>,
    /// The same on SmolLM2's own answers to held-out requests (`chat-heldout-*` shards), when
    /// the data has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    heldout_chat_agreement: Option<Vec<f64>>,
    /// The same counting only the guesses decoding asks for (chains that start at the
    /// prompt's last token or later), when the shards record their prompt lengths.
    #[serde(skip_serializing_if = "Option::is_none")]
    heldout_chat_answer_agreement: Option<Vec<f64>>,
    prompts: usize,
    block_size: usize,
    mean_accepted: f64,
    model_calls: usize,
    greedy_calls: usize,
    ms_per_token: f64,
    greedy_ms_per_token: f64,
    speedup: f64,
    identical: usize,
    draft_ms_per_iteration: f64,
}

struct Args {
    config: PathBuf,
    max_train_tokens: Option<usize>,
    split: String,
    out: Option<PathBuf>,
    checkpoint: Option<PathBuf>,
    report: Option<PathBuf>,
    eval_only: bool,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        config: PathBuf::new(),
        max_train_tokens: None,
        split: "train".into(),
        out: None,
        checkpoint: None,
        report: None,
        eval_only: false,
    };
    let usage = || {
        Error::config(
            "arguments",
            "usage: train_draft CONFIG [--max-train-tokens N] [--split NAME[,NAME..]] [--out DIR] \
             [--checkpoint DIR] [--report FILE] [--eval-only]",
        )
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--max-train-tokens" => {
                let v = it.next().ok_or_else(usage)?;
                args.max_train_tokens = Some(v.replace('_', "").parse().map_err(|_| usage())?);
            }
            "--split" => args.split = it.next().ok_or_else(usage)?,
            "--out" => args.out = Some(it.next().ok_or_else(usage)?.into()),
            "--checkpoint" => args.checkpoint = Some(it.next().ok_or_else(usage)?.into()),
            "--report" => args.report = Some(it.next().ok_or_else(usage)?.into()),
            "--eval-only" => args.eval_only = true,
            _ if a.starts_with("--") => return Err(usage()),
            _ => args.config = a.into(),
        }
    }
    if args.config.as_os_str().is_empty() {
        return Err(usage());
    }
    if args.split.contains(',') && args.max_train_tokens.is_some() {
        return Err(Error::config(
            "train_draft",
            "--max-train-tokens takes one --split, not a list: which part would it cut?",
        ));
    }
    Ok(args)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("train_draft: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let config: Config = Error::read_json(&args.config)?;
    let out = args.out.clone().unwrap_or_else(|| config.out.clone());
    let checkpoint = args
        .checkpoint
        .clone()
        .or_else(|| config.checkpoint.clone());
    let options = BundleOptions {
        dtype: DType::F32,
        heads: HeadsChoice::None,
        f32_matmul: Default::default(),
        backend: match &config.backend {
            Some(b) => Backend::parse(b)?,
            None => Backend::default(),
        },
        ..BundleOptions::default()
    };
    let mut bundle = ModelBundle::load(&config.model, &options)?;
    let embeddings = bundle
        .model
        .token_embeddings()
        .ok_or(Error::MissingCapability {
            component: "train_draft",
            capability: "the model's token embeddings",
        })?;
    let info = bundle.model.info().clone();
    // Held-out text is optional: a folder of answers alone has none.
    let held = DraftData::load(&config.data, "heldout", None).ok();
    let mut report_train = (0usize, 0usize, 0.0f64, f64::NAN, None);
    let draft = if args.eval_only {
        FeatureDraft::load(&out, info.device)?
    } else {
        let parts = args
            .split
            .split(',')
            .map(|split| {
                DraftData::load_weighted(
                    &config.data,
                    split.trim(),
                    args.max_train_tokens,
                    &config.weights,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let data = match parts.len() {
            1 => parts.into_iter().next().expect("one part"),
            _ => DraftData::concat(&parts)?,
        };
        eprintln!(
            "train_draft: {} training tokens in {} sequences, {} held-out text tokens",
            data.len(),
            data.sequences(),
            held.as_ref().map_or(0, DraftData::len)
        );
        let mut draft = match &config.init {
            Some(dir) => {
                if config.shortlist.is_some()
                    || config.d_ff.is_some()
                    || config.rope_theta.is_some()
                {
                    return Err(Error::config(
                        "train_draft config",
                        "`init` keeps the saved draft's shortlist, feed-forward size and \
                         positions: drop `shortlist`, `d_ff` and `rope_theta`",
                    ));
                }
                eprintln!("train_draft: starting from the draft in {}", dir.display());
                let draft = FeatureDraft::load(dir, info.device)?;
                let draft = match config.layers {
                    Some(n) => draft.with_layers(n)?,
                    None => draft,
                };
                match (&config.taps, &draft.config().taps) {
                    (Some(t), None) => draft.with_taps(t.clone())?,
                    (Some(t), Some(own)) if t != own => {
                        return Err(Error::config(
                            "train_draft config",
                            format!("`taps` {t:?}, but the draft in `init` reads layers {own:?}"),
                        ))
                    }
                    _ => draft,
                }
            }
            None => {
                let width = embeddings.size()[1];
                let mut draft_config = FeatureDraftConfig::for_base(width, info.vocab_size);
                draft_config.taps = config.taps.clone();
                if let Some(f) = config.d_ff {
                    draft_config.d_ff = f;
                }
                if let Some(n) = config.layers {
                    draft_config.n_layers = n;
                }
                draft_config.rope_theta = config.rope_theta;
                FeatureDraft::new(draft_config, config.seed, info.device)?
            }
        };
        if let Some(n) = config.shortlist {
            let ids = data.shortlist(n, info.vocab_size)?;
            eprintln!(
                "train_draft: shortlist of {n} ids covers {:.1}% of the training greedy tokens",
                100.0 * data.coverage(&ids)?,
            );
            draft = draft.with_shortlist(ids)?;
        }
        let source = bundle
            .metadata
            .as_ref()
            .and_then(|m| m.source.get("gguf"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        draft.set_base(source);
        let mut bar = ProgressBar::new("draft");
        let t0 = Instant::now();
        let r = train_feature_draft(
            &mut draft,
            &embeddings,
            &data,
            &config.train,
            checkpoint.as_deref(),
            |l| {
                let acc: Vec<String> = l.accuracy.iter().map(|a| format!("{a:.2}")).collect();
                bar.update(
                    l.step,
                    l.steps,
                    l.loss,
                    l.elapsed_s,
                    &format!("agree {}", acc.join("/")),
                )
            },
        )?;
        eprintln!();
        draft.save(&out)?;
        eprintln!("train_draft: saved {}", out.display());
        // Measured as shipped: read back (bfloat16 weights).
        let draft = FeatureDraft::load(&out, info.device)?;
        report_train = (
            data.len(),
            data.sequences(),
            t0.elapsed().as_secs_f64(),
            r.final_loss,
            Some(()),
        );
        draft
    };
    let agreement = match &held {
        Some(held) => Some(evaluate_feature_draft(
            &draft,
            &embeddings,
            held,
            256,
            config.train.unroll.max(4),
            64,
        )?),
        None => None,
    };
    if let Some(a) = &agreement {
        eprintln!("train_draft: held-out text agreement per draft step {a:?}");
    }
    let (mut chat_agreement, mut answer_agreement) = (None, None);
    if let Ok(chat) = DraftData::load(&config.data, "chat-heldout", None) {
        let unroll = config.train.unroll.max(4);
        // 128 windows of 256 positions, spread over every held-out answer set present.
        let a = evaluate_feature_draft(&draft, &embeddings, &chat, 256, unroll, 128)?;
        eprintln!("train_draft: held-out chat agreement per draft step {a:?}");
        chat_agreement = Some(a);
        if chat.prompt_lens.is_some() {
            let a =
                evaluate_feature_draft_on_answers(&draft, &embeddings, &chat, 256, unroll, 128)?;
            eprintln!("train_draft: the same on answer positions only {a:?}");
            answer_agreement = Some(a);
        }
    }
    let shortlist = draft.shortlist().map(|s| s.len());
    let coverage = match (draft.shortlist(), &held) {
        (Some(ids), Some(held)) => Some(held.coverage(ids)?),
        _ => None,
    };

    // Held-out chat prompts, decoded with the draft and greedily, side by side.
    let ev = &config.evaluation;
    let text = std::fs::read_to_string(&ev.prompts).map_err(Error::io("reading", &ev.prompts))?;
    let prompts: Vec<Vec<i64>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(ev.count)
        .map(|l| bundle.encode_prompt(l.trim(), true))
        .collect::<Result<_>>()?;
    let decode = DecodeConfig::new(ev.max_new_tokens).with_eos(bundle.eos.clone());
    let mut greedy = Vec::new();
    let t = Instant::now();
    for p in &prompts {
        greedy.push(GreedyDecoder::new(&mut bundle.model).decode(p, &decode)?);
    }
    let greedy_s = t.elapsed().as_secs_f64();
    bundle
        .model
        .set_feature_taps(draft.config().taps.as_deref().unwrap_or(&[]))?;
    let proposer = FeatureDraftProposer::new(draft, &*bundle.model)?;
    let mut decoder = Blockwise::builder(&mut bundle.model)
        .block_size(ev.block_size)
        .proposer(proposer)
        .build()?;
    let (mut calls, mut iters, mut tokens, mut identical, mut draft_s) = (0, 0, 0, 0, 0.0);
    let t = Instant::now();
    for (p, g) in prompts.iter().zip(&greedy) {
        let o = decoder.decode(p, &decode)?;
        calls += o.stats.model_calls;
        iters += o.stats.iterations;
        tokens += o.tokens.len();
        draft_s += o.stats.proposer_s;
        identical += usize::from(o.tokens == g.tokens);
    }
    let blockwise_s = t.elapsed().as_secs_f64();
    let greedy_tokens: usize = greedy.iter().map(|g| g.tokens.len()).sum();
    let report = Report {
        split: args.split.clone(),
        weights: config.weights.clone(),
        train_tokens: report_train.0,
        train_sequences: report_train.1,
        shortlist,
        shortlist_coverage_heldout: coverage,
        train_s: report_train.2,
        final_loss: report_train.3,
        heldout_agreement: agreement,
        init: config.init.clone().filter(|_| !args.eval_only),
        heldout_chat_agreement: chat_agreement,
        heldout_chat_answer_agreement: answer_agreement,
        prompts: prompts.len(),
        block_size: ev.block_size,
        mean_accepted: tokens as f64 / iters.max(1) as f64,
        model_calls: calls,
        greedy_calls: greedy.iter().map(|g| g.stats.model_calls).sum(),
        ms_per_token: 1e3 * blockwise_s / tokens.max(1) as f64,
        greedy_ms_per_token: 1e3 * greedy_s / greedy_tokens.max(1) as f64,
        speedup: greedy_s / blockwise_s,
        identical,
        draft_ms_per_iteration: 1e3 * draft_s / iters.max(1) as f64,
    };
    let json = serde_json::to_string(&report).expect("a report serialises");
    println!("{json}");
    if let Some(path) = &args.report {
        std::fs::write(path, json + "\n").map_err(Error::io("writing", path))?;
    }
    Ok(())
}
