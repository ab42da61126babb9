//! The model's own greedy answers as feature-draft training data: decodes chat prompts with the
//! batched decoder (greedy, rows of different lengths in one call), then runs the model once
//! over each prompt-and-answer sequence (teacher forcing) for its hidden states and argmaxes,
//! and writes one shard that `DraftData::load` reads with the teacher-forced text.
//!
//! ```text
//! cargo run --release --example draft_answers -- --prompts target/heads/smollm2-prompts.txt \
//!     --out target/draft-data/train-chat-00000.safetensors [--model models/smollm2] \
//!     [--limit N] [--new-tokens 64] [--batch 16] [--repeat 1]
//! ```
//!
//! `--repeat R` writes every sequence R times (weighting the answers in training).

use std::path::PathBuf;
use std::time::Instant;

use blockwise::bundle::{BundleOptions, HeadsChoice, ModelBundle};
use blockwise::decoder::BatchBlockwise;
use blockwise::train::DraftData;
use blockwise::{DType, DecodeConfig, Error, Result};
use tch::Kind;

fn main() {
    if let Err(e) = run() {
        eprintln!("draft_answers: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let (mut model, mut prompts_file, mut out) = ("models/smollm2".to_string(), None, None);
    let (mut limit, mut new_tokens, mut batch, mut repeat) = (usize::MAX, 64usize, 16usize, 1usize);
    let bad = |m: &str| Error::config("arguments", m.to_string());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| bad(&format!("{flag} needs a value")))
        };
        let number = |v: String| v.parse::<usize>().map_err(|_| bad("expected a number"));
        match flag.as_str() {
            "--model" => model = value()?,
            "--prompts" => prompts_file = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--limit" => limit = number(value()?)?,
            "--new-tokens" => new_tokens = number(value()?)?,
            "--batch" => batch = number(value()?)?.max(1),
            "--repeat" => repeat = number(value()?)?.max(1),
            other => return Err(bad(&format!("unknown flag {other}; see the file's header"))),
        }
    }
    let prompts_file = prompts_file.ok_or_else(|| bad("--prompts FILE is needed"))?;
    let out = out.ok_or_else(|| bad("--out FILE is needed"))?;
    let options = BundleOptions {
        dtype: DType::F32,
        heads: HeadsChoice::None,
        ..BundleOptions::default()
    };
    let mut bundle = ModelBundle::load(&model, &options)?;
    let text = Error::read_text(&prompts_file)?;
    let prompts: Vec<Vec<i64>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(limit)
        .map(|l| bundle.encode_prompt(&l.replace("\\n", "\n"), true))
        .collect::<Result<_>>()?;
    let config = DecodeConfig::new(new_tokens).with_eos(bundle.eos.clone());
    let t0 = Instant::now();
    let mut seqs = Vec::with_capacity(prompts.len());
    let mut decoder = BatchBlockwise::builder(&mut bundle.model)
        .block_size(1)
        .build()?;
    let mut answer_tokens = 0;
    for group in prompts.chunks(batch) {
        for (p, o) in group.iter().zip(decoder.decode_batch(group, &config)?) {
            answer_tokens += o.tokens.len();
            seqs.push([p.as_slice(), &o.tokens].concat());
        }
        eprint!(
            "\rdraft_answers: {} of {} prompts, {:.1} answer tokens/s",
            seqs.len(),
            prompts.len(),
            answer_tokens as f64 / t0.elapsed().as_secs_f64()
        );
    }
    let decode_s = t0.elapsed().as_secs_f64();
    drop(decoder);
    let t1 = Instant::now();
    let data = DraftData::teacher_forced(&mut bundle.model, &seqs, Kind::Half)?.repeated(repeat)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    data.save(&out)?;
    eprintln!();
    println!(
        "draft_answers: {} prompts, {answer_tokens} answer tokens decoded in {decode_s:.0} s \
         ({:.1} tokens/s at batch {batch}); {} tokens teacher-forced in {:.0} s; wrote {} \
         ({} sequences, repeated {repeat}x)",
        seqs.len(),
        answer_tokens as f64 / decode_s,
        data.len(),
        t1.elapsed().as_secs_f64(),
        out.display(),
        data.sequences()
    );
    Ok(())
}
