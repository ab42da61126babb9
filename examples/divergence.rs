//! Where low precision breaks "lossless": blockwise vs greedy decoding of the same model in the
//! same dtype, over a prompt file, with and without the tie guard. For every prompt whose outputs
//! differ it reports the first differing token and the top-2 logit margin there.
//!
//! ```text
//! cargo run --release --example divergence -- models/smollm2 bf16 examples/prompts/chat24.txt [k] [guard...]
//! ```

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::model::{prefill, CausalLm};
use blockwise::verifier::top2_margins;
use blockwise::{Blockwise, BlockwiseDecoder, DType, DecodeConfig, GreedyDecoder, NGram, Result};

const MAX_NEW: usize = 64;

fn margin_after(model: &mut dyn CausalLm, context: &[i64]) -> Result<f64> {
    let _g = tch::no_grad_guard();
    let out = prefill(model, context, None)?;
    Ok(top2_margins(&out.logits, 1)?[0])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().map(String::as_str).unwrap_or("models/smollm2");
    let dtype: DType = args.get(1).map(String::as_str).unwrap_or("bf16").parse()?;
    let file = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("examples/prompts/chat24.txt");
    let k: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let guards: Vec<Option<f64>> = std::iter::once(None)
        .chain(args.iter().skip(4).filter_map(|s| s.parse().ok()).map(Some))
        .collect();
    let text = std::fs::read_to_string(file).map_err(|source| blockwise::Error::Io {
        action: "reading",
        path: file.into(),
        source,
    })?;
    let prompts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut b = ModelBundle::load(
        dir,
        &BundleOptions {
            dtype,
            max_context: Some(512),
            ..BundleOptions::default()
        },
    )?;
    let cfg = DecodeConfig::new(MAX_NEW).with_eos(b.eos.clone());
    println!("| tie guard | prompts | diverged | first differing token (index: greedy margin) | mean accepted | model calls (blockwise / greedy) |");
    println!("|---|---|---|---|---|---|");
    let mut greedy = Vec::new();
    for p in &prompts {
        let ids = b.encode_prompt(p, true)?;
        let g = GreedyDecoder::new(&mut b.model).decode(&ids, &cfg)?;
        greedy.push((ids, g));
    }
    for guard in guards {
        let (mut diverged, mut where_, mut calls, mut gcalls, mut toks, mut iters) =
            (0, Vec::new(), 0, 0, 0, 0);
        for (ids, g) in &greedy {
            let mut builder = Blockwise::builder(&mut b.model)
                .block_size(k)
                .proposer(NGram::new(1, 3)?);
            if let Some(m) = guard {
                builder = builder.tie_guard(m);
            }
            let out = builder.build()?.decode(ids, &cfg)?;
            calls += out.stats.model_calls;
            gcalls += g.stats.model_calls;
            toks += out.stats.new_tokens;
            iters += out.stats.iterations;
            if out.tokens != g.tokens {
                diverged += 1;
                let i = out
                    .tokens
                    .iter()
                    .zip(&g.tokens)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let mut ctx = ids.clone();
                ctx.extend_from_slice(&g.tokens[..i]);
                let m = margin_after(&mut b.model, &ctx)?;
                where_.push(format!("{i}: {m:.3}"));
            }
        }
        println!(
            "| {} | {} | {} | {} | {:.2} | {} / {} |",
            guard.map_or("off".to_string(), |m| format!("{m}")),
            greedy.len(),
            diverged,
            if where_.is_empty() {
                "-".into()
            } else {
                where_.join(", ")
            },
            toks as f64 / iters.max(1) as f64,
            calls,
            gcalls
        );
    }
    Ok(())
}
