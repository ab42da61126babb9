//! `decode`: blockwise decoding from the command line, optionally side by side with greedy.
//!
//! ```text
//! cargo run --release --example decode -- --prompt "In the beginning" --k 4 --compare-greedy
//! ```
//!
//! With `--json`, one object per prompt per line on stdout (a stable interface that tools and
//! benchmarks read).

mod args;

use std::path::PathBuf;

use args::{Args, USAGE};
use blockwise::compare::{compare_with_greedy, Comparison};
use blockwise::config::BlockwiseConfig;
use blockwise::tokenizer::{ByteTokenizer, TextTokenizer};
use blockwise::{
    Blockwise, BlockwiseDecoder, DecodeConfig, DecodeOutput, Error, Result, Transformer,
};
use serde_json::json;

fn model_dir(name: &str) -> PathBuf {
    if name == "embedded" {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/embedded"))
    } else {
        PathBuf::from(name)
    }
}

fn stats_json(out: &DecodeOutput) -> serde_json::Value {
    json!({
        "model_calls": out.stats.model_calls,
        "iterations": out.stats.iterations,
        "mean_accepted": out.stats.mean_accepted,
        "accepted_hist": out.stats.accepted_hist,
        "wall_s": out.stats.wall_s,
    })
}

fn report(prompt: &str, text: &str, out: &DecodeOutput, cmp: Option<&Comparison>, as_json: bool) {
    if as_json {
        let mut obj = json!({
            "prompt": prompt,
            "text": text,
            "tokens": out.tokens,
            "stats": stats_json(out),
            "stop": out.stop,
        });
        if let Some(c) = cmp {
            obj["greedy"] = json!({
                "tokens": c.greedy.tokens,
                "model_calls": c.greedy.stats.model_calls,
                "wall_s": c.greedy.stats.wall_s,
            });
            obj["identical"] = json!(c.identical);
            obj["speedup"] = json!(c.speedup);
        }
        println!("{obj}");
        return;
    }
    println!("prompt: {prompt:?}");
    println!("output: {text:?}");
    let s = &out.stats;
    println!(
        "blockwise: {} tokens, {} model calls, {} iterations, mean accepted block {:.2}, {:.1} ms",
        s.new_tokens,
        s.model_calls,
        s.iterations,
        s.mean_accepted,
        s.wall_s * 1e3
    );
    if let Some(c) = cmp {
        println!(
            "greedy:    {} tokens, {} model calls, {:.1} ms | identical: {} | speedup: {:.2}x",
            c.greedy.stats.new_tokens,
            c.greedy.stats.model_calls,
            c.greedy.stats.wall_s * 1e3,
            c.identical,
            c.speedup
        );
    }
    println!();
}

fn build<'a>(
    model: &'a mut Transformer,
    config: &BlockwiseConfig,
    embeddings: &tch::Tensor,
) -> Result<Box<dyn BlockwiseDecoder + 'a>> {
    Ok(Box::new(Blockwise::from_config(
        model,
        config,
        Some(embeddings),
    )?))
}

fn run(args: Args) -> Result<()> {
    let mut model = Transformer::load(model_dir(&args.model), tch::Device::Cpu)?;
    let tokenizer = ByteTokenizer;
    if model.config().vocab_size != tokenizer.vocab_size() {
        return Err(Error::VocabularyMismatch {
            left: "model",
            left_size: model.config().vocab_size,
            right: "byte tokenizer",
            right_size: tokenizer.vocab_size(),
        });
    }
    let config = BlockwiseConfig {
        block_size: args.k,
        acceptance: args.accept.clone(),
        min_block: args.min_block,
        proposer: args.proposer,
        verifier: args.verifier,
    };
    let embeddings = model.embedding_matrix().shallow_clone();
    let decode = DecodeConfig::new(args.max_new_tokens).with_eos(tokenizer.eos_ids());
    if args.model == "embedded" && !args.json {
        println!(
            "note: the embedded model is a seeded, untrained placeholder that repeats itself, so its \
             proposals are easy to accept; its speedups say nothing about real models.\n"
        );
    }
    for prompt in &args.prompts {
        let ids = tokenizer.encode(prompt)?;
        let (out, cmp) = if args.compare_greedy {
            let c = compare_with_greedy(
                &mut model,
                |m| build(m, &config, &embeddings),
                &ids,
                &decode,
            )?;
            (c.candidate.clone(), Some(c))
        } else {
            (
                build(&mut model, &config, &embeddings)?.decode(&ids, &decode)?,
                None,
            )
        };
        let text = tokenizer.decode(&out.tokens)?;
        report(prompt, &text, &out, cmp.as_ref(), args.json);
    }
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let result = Args::parse(argv).and_then(run);
    if let Err(e) = result {
        eprintln!("decode: {e}");
        if matches!(e, Error::InvalidConfig { .. }) {
            eprintln!("\n{USAGE}");
        }
        std::process::exit(2);
    }
}
