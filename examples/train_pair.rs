//! Trains two built-in transformers of different sizes on the same byte-level corpus — a target
//! model and a small draft that shares its tokenizer — for speculative decoding with
//! `DraftModel`, and saves them (`config.json` + `model.safetensors` each).
//!
//! ```text
//! make corpus
//! cargo run --release --features testing --example train_pair -- \
//!     [--corpus target/corpus] [--out assets/pair] [--steps N] [--draft-steps N]
//! ```
//!
//! Then decode with the draft (`make pair-demo` runs this):
//!
//! ```text
//! cargo run --release --features testing --example decode -- --model assets/pair/target \
//!     --proposer draft:assets/pair/draft --k 4 --prompt-file examples/prompts/kjv.txt --compare-greedy
//! ```

use std::path::PathBuf;

use blockwise::train::{evaluate_lm, train_lm, LmTrainConfig, StepLog};
use blockwise::{DType, Error, Result, Transformer, TransformerConfig};

fn bad(field: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field,
        problem: problem.into(),
    }
}

fn byte_tokens(path: &PathBuf) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    Ok(bytes.into_iter().map(i64::from).collect())
}

fn shape(d_model: i64, n_layers: usize, n_heads: i64) -> TransformerConfig {
    TransformerConfig {
        vocab_size: 257, // bytes and EOS: the byte tokenizer
        d_model,
        n_layers,
        n_heads,
        d_ff: 4 * d_model,
        max_context: 256,
        num_proposal_heads: 0,
        head_d_ff: 64,
        head_arch: blockwise::heads::HeadArch::Stern,
        dtype: DType::F32,
        layer_norm_eps: 1e-5,
    }
}

fn train(
    name: &str,
    config: TransformerConfig,
    seed: u64,
    steps: usize,
    train_text: &[i64],
    held: &[i64],
    out: &PathBuf,
) -> Result<()> {
    let mut model = Transformer::new_for_training(config, seed, tch::Device::Cpu)?;
    let mut settings = LmTrainConfig {
        steps,
        batch_size: 8,
        seq_len: 256,
        seed,
        log_every: (steps / 10).max(1),
        ..LmTrainConfig::default()
    };
    settings.lr.peak = 2e-3;
    settings.lr.warmup_steps = steps / 20;
    settings.optim.weight_decay = 0.01;
    let params: i64 = model
        .var_store()
        .variables()
        .values()
        .map(|t| t.numel() as i64)
        .sum();
    eprintln!("{name}: {params} parameters, {steps} steps");
    let report = train_lm(&mut model, train_text, &settings, |l: &StepLog| {
        eprintln!(
            "{name}: step {:>5}/{} loss {:.3} lr {:.2e} |g| {:.2} {:.0}s (eta {:.0}s)",
            l.step, l.steps, l.loss, l.lr, l.grad_norm, l.elapsed_s, l.eta_s
        )
    })?;
    // Shipped in bfloat16 (half the bytes); measured as shipped: rounded to bf16, run in f32.
    model.set_dtype(DType::Bf16)?;
    model.set_dtype(DType::F32)?;
    let held_loss = evaluate_lm(&model, held, 256, 200)?;
    println!(
        "{name}: {params} parameters, {steps} steps in {:.0} s; held-out loss {:.3} nats/byte \
         ({:.2} bits/byte)",
        report.wall_s,
        held_loss,
        held_loss / std::f64::consts::LN_2
    );
    model.set_dtype(DType::Bf16)?;
    model.save(out.join(name))
}

fn main() -> Result<()> {
    let mut corpus = PathBuf::from("target/corpus");
    let mut out = PathBuf::from("assets/pair");
    let (mut steps, mut draft_steps) = (1500usize, 1500usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| bad("arguments", format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--corpus" => corpus = value()?.into(),
            "--out" => out = value()?.into(),
            "--steps" => {
                steps = value()?
                    .parse()
                    .map_err(|_| bad("--steps", "not a number"))?
            }
            "--draft-steps" => {
                draft_steps = value()?
                    .parse()
                    .map_err(|_| bad("--draft-steps", "not a number"))?
            }
            other => return Err(bad("arguments", format!("unknown flag `{other}`"))),
        }
    }
    tch::manual_seed(0);
    let train_text = byte_tokens(&corpus.join("kjv-train.txt"))?;
    let held = byte_tokens(&corpus.join("kjv-heldout.txt"))?;
    train(
        "target",
        shape(256, 4, 8),
        2018,
        steps,
        &train_text,
        &held,
        &out,
    )?;
    train(
        "draft",
        shape(128, 1, 4),
        2019,
        draft_steps,
        &train_text,
        &held,
        &out,
    )?;
    Ok(())
}
