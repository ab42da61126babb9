//! `decode`: blockwise decoding from the command line, optionally side by side with greedy.
//!
//! ```text
//! cargo run --release --example decode -- --prompt "In the beginning" --k 4 --compare-greedy
//! ```
//!
//! With `--json`, one object per prompt per line on stdout (a stable interface that tools and
//! benchmarks read).

mod args;

use args::{Args, USAGE};
use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::compare::{compare_with_greedy, Comparison};
use blockwise::config::BlockwiseConfig;
use blockwise::{Blockwise, BlockwiseDecoder, CausalLm, DecodeConfig, DecodeOutput, Error, Result};
use serde_json::json;

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
    model: &'a mut Box<dyn CausalLm>,
    config: &BlockwiseConfig,
    embeddings: Option<&tch::Tensor>,
) -> Result<Box<dyn BlockwiseDecoder + 'a>> {
    Ok(Box::new(Blockwise::from_config(model, config, embeddings)?))
}

fn run(args: Args) -> Result<()> {
    let options = BundleOptions {
        dtype: args.dtype,
        device: args.device,
        max_context: None,
    };
    let mut bundle = ModelBundle::load(&args.model, &options)?;
    let config = BlockwiseConfig {
        block_size: args.k,
        acceptance: args.accept.clone(),
        min_block: args.min_block,
        proposer: args.proposer,
        verifier: args.verifier,
        tie_guard: args.tie_guard,
    };
    let embeddings = bundle.model.token_embeddings();
    let mut decode = DecodeConfig::new(args.max_new_tokens).with_eos(bundle.eos.clone());
    decode.prefill_chunk = args.prefill_chunk;
    if args.model == "embedded" && !args.json {
        println!(
            "note: the embedded model is a seeded, untrained placeholder that repeats itself, so its \
             proposals are easy to accept; its speedups say nothing about real models.\n"
        );
    }
    for prompt in &args.prompts {
        let ids = bundle.encode_prompt(prompt, args.chat)?;
        let (out, cmp) = if args.compare_greedy {
            let c = compare_with_greedy(
                &mut bundle.model,
                |m| build(m, &config, embeddings.as_ref()),
                &ids,
                &decode,
            )?;
            (c.candidate.clone(), Some(c))
        } else {
            let out =
                build(&mut bundle.model, &config, embeddings.as_ref())?.decode(&ids, &decode)?;
            (out, None)
        };
        let text = bundle.tokenizer.decode(&out.tokens)?;
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
