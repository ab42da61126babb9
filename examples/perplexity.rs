//! Perplexity of an exported model's forms on the same text, side by side in one run: what a
//! weight form or a backend costs in quality (`scripts/perplexity.py` does the same for the
//! TorchScript modules from Python).
//!
//! ```text
//! cargo run --release --features testing --example perplexity -- [--model models/smollm2]
//!     [--forms torchscript:f32,native:f32,native:bf16,native:int8] [--text FILE ...]
//!     [--tokens 8192] [--window 512]
//! ```
//!
//! The text (default: this repository's docs/guide.md and docs/training.md, prose the model
//! never saw) is cut into non-overlapping windows, each scored in one call from an empty cache;
//! prints the mean next-token negative log-likelihood, the perplexity and the argmax agreement
//! with the first form listed.

use blockwise::bundle::{Backend, BundleOptions, HeadsChoice, ModelBundle};
use blockwise::model::token_tensor;
use blockwise::{DType, Error, Result};
use tch::{Kind, Tensor};

fn main() -> Result<()> {
    let mut model = "models/smollm2".to_string();
    let mut forms = "torchscript:f32,native:f32,native:bf16,native:int8".to_string();
    let mut texts: Vec<String> = Vec::new();
    let (mut tokens, mut window) = (8192usize, 512usize);
    let bad = |what: &str| Error::config("arguments", format!("{what}; see the file's header"));
    let mut it = std::env::args().skip(1).peekable();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| bad(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--model" => model = value()?,
            "--forms" => forms = value()?,
            "--text" => texts.push(value()?),
            "--tokens" => tokens = value()?.parse().map_err(|_| bad("--tokens N"))?,
            "--window" => window = value()?.parse().map_err(|_| bad("--window N"))?,
            other => return Err(bad(&format!("unknown flag {other}"))),
        }
    }
    if texts.is_empty() {
        texts = vec!["docs/guide.md".into(), "docs/training.md".into()];
    }
    let text = texts
        .iter()
        .map(Error::read_text)
        .collect::<Result<Vec<_>>>()?
        .join("\n\n");
    let _guard = tch::no_grad_guard();
    let mut first: Option<Vec<i64>> = None;
    println!("| backend | weights | mean NLL (nats/token) | perplexity | argmax agreement with the first row |");
    println!("|---|---|---|---|---|");
    for form in forms.split(',') {
        let (backend, dtype) = form
            .split_once(':')
            .ok_or_else(|| bad("--forms BACKEND:DTYPE,..."))?;
        let dtype: DType = dtype.parse()?;
        let mut b = ModelBundle::load(
            &model,
            &BundleOptions {
                dtype,
                backend: Backend::parse(backend)?,
                max_context: Some(window),
                heads: HeadsChoice::None,
                ..BundleOptions::default()
            },
        )?;
        let ids: Vec<i64> = b
            .tokenizer
            .encode(&text)?
            .into_iter()
            .take(tokens)
            .collect();
        let n = ids.len() / window * window;
        if n == 0 {
            return Err(bad("the text is shorter than one window"));
        }
        let (mut nll, mut preds) = (0f64, Vec::new());
        for w in ids[..n].chunks(window) {
            let logits = b
                .model
                .forward(&token_tensor(w, b.model.info().device), 0)?
                .logits
                .f_squeeze_dim(0)?
                .f_narrow(0, 0, window as i64 - 1)?
                .f_to_kind(Kind::Float)?;
            let next = Tensor::from_slice(&w[1..]).unsqueeze(1);
            let lp = logits
                .f_log_softmax(-1, Kind::Float)?
                .f_gather(1, &next, false)?;
            nll -= lp.f_sum(Kind::Double)?.double_value(&[]);
            preds.extend(Vec::<i64>::try_from(&logits.f_argmax(-1, false)?)?);
        }
        let count = (n / window * (window - 1)) as f64;
        let agree = match &first {
            None => "-".to_string(),
            Some(f) => {
                let same = f.iter().zip(&preds).filter(|(a, b)| a == b).count();
                format!("{:.3}", same as f64 / f.len() as f64)
            }
        };
        if first.is_none() {
            first = Some(preds);
        }
        println!(
            "| {backend} | {dtype} | {:.4} | {:.3} | {agree} |",
            nll / count,
            (nll / count).exp()
        );
    }
    Ok(())
}
