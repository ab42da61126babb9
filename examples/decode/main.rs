//! `decode`: blockwise decoding from the command line, optionally side by side with greedy.
//!
//! ```text
//! cargo run --release --example decode -- --prompt "In the beginning" --k 4 --compare-greedy
//! ```
//!
//! With `--json`, one object per prompt per line on stdout (a stable interface that tools and
//! benchmarks read).

mod args;
mod batched;

use args::{Args, Parsed, USAGE};
use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::compare::Comparison;
use blockwise::config::BlockwiseConfig;
use blockwise::{
    Blockwise, BlockwiseDecoder, CausalLm, DecodeConfig, DecodeOutput, Error, GreedyDecoder, Result,
};
use serde_json::json;

fn stats_json(out: &DecodeOutput) -> serde_json::Value {
    json!({
        "model_calls": out.stats.model_calls,
        "iterations": out.stats.iterations,
        "skipped_calls": out.stats.skipped_calls,
        "rescored": out.stats.rescored,
        "proposed": out.stats.proposed,
        "mean_accepted": out.stats.mean_accepted,
        "accepted_hist": out.stats.accepted_hist,
        "wall_s": out.stats.wall_s,
        "model_s": out.stats.model_s,
        "proposer_s": out.stats.proposer_s,
    })
}

/// How the run decodes: `reference` names what `--compare-greedy` runs (plain greedy decoding,
/// or plain sampling one token per call under `--temperature`).
struct Mode {
    sampled: bool,
    json: bool,
    /// Prompts per batch (1 without `--batch`); with more, `wall_s` is the batch's.
    batch: usize,
}

impl Mode {
    fn reference(&self) -> &'static str {
        if self.sampled {
            "sampling"
        } else {
            "greedy"
        }
    }
}

fn report(prompt: &str, text: &str, out: &DecodeOutput, cmp: Option<&Comparison>, mode: &Mode) {
    if mode.json {
        let mut obj = json!({
            "prompt": prompt,
            "text": text,
            "tokens": out.tokens,
            "stats": stats_json(out),
            "stop": out.stop,
            "sampled": mode.sampled,
            "batch": mode.batch,
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
            "{:<10} {} tokens, {} model calls, {:.1} ms | identical: {} | speedup: {:.2}x",
            format!("{}:", mode.reference()),
            c.greedy.stats.new_tokens,
            c.greedy.stats.model_calls,
            c.greedy.stats.wall_s * 1e3,
            c.identical,
            c.speedup
        );
    }
    println!();
}

fn run(args: Args) -> Result<()> {
    let options = BundleOptions {
        dtype: args.dtype,
        device: args.device,
        max_context: args.max_context,
        heads: args.heads.clone(),
        f32_matmul: args.f32_matmul,
        backend: args.backend,
        bf16_inputs: args.bf16_inputs,
    };
    let mut bundle = ModelBundle::load(&args.model, &options)?;
    let config = BlockwiseConfig {
        block_size: args.k,
        acceptance: args.accept.clone(),
        min_block: args.min_block,
        proposer: args
            .proposer
            .clone()
            .with_shipped_draft(bundle.draft.as_deref()),
        verifier: args.verifier,
        policy: args.policy,
        tie_guard: args.tie_guard,
        tree: args.tree.clone(),
    };
    // A feature draft that reads inner layers needs the model to hand them over.
    bundle
        .model
        .set_feature_taps(&config.proposer.feature_taps()?)?;
    let embeddings = bundle.model.token_embeddings();
    let mut decode = DecodeConfig::new(args.max_new_tokens).with_eos(bundle.eos.clone());
    decode.prefill_chunk = args.prefill_chunk;
    decode.sampling = args.sampling.clone();
    let prompts = args
        .prompts
        .iter()
        .map(|p| bundle.encode_prompt(p, args.chat))
        .collect::<Result<Vec<_>>>()?;
    if !args.json {
        // What the defaults chose (auto), before the first result.
        let backend = bundle
            .backend
            .map_or("built-in transformer".into(), |b| format!("{b} backend"));
        eprintln!(
            "decode: {} ({backend}, {}), proposer {}, k {}",
            args.model,
            args.dtype,
            config.proposer.clone().without_auto(bundle.model.info()),
            config.block_size
        );
    }
    let mode = Mode {
        sampled: args.sampling.is_some(),
        json: args.json,
        batch: args.batch.unwrap_or(1),
    };
    // Each prompt's result is printed as soon as it is decoded (a batch's once the batch is),
    // so a long run's output can be followed and survives an interruption.
    let tokenizer = &bundle.tokenizer;
    let emit = |i: usize, out: &DecodeOutput, cmp: Option<&Comparison>| -> Result<()> {
        let text = tokenizer.decode(&out.tokens)?;
        report(&args.prompts[i], &text, out, cmp, &mode);
        Ok(())
    };
    if args.batch.is_some() || args.tree.is_some() {
        return batched::run_batched(&mut bundle.model, &config, &args, &prompts, &decode, emit);
    }
    // One decoder for every prompt: a draft model loads once, a cost-aware policy keeps the
    // costs it measured.
    let mut decoder = Blockwise::from_config(&mut bundle.model, &config, embeddings.as_ref())?;
    for (i, ids) in prompts.iter().enumerate() {
        let greedy = if args.compare_greedy {
            Some(GreedyDecoder::new(decoder.model_mut()).decode(ids, &decode)?)
        } else {
            None
        };
        let out = decoder.decode(ids, &decode)?;
        let cmp = greedy.map(|g| Comparison::new(out.clone(), g));
        emit(i, &out, cmp.as_ref())?;
    }
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match Args::parse(argv) {
        // Help is printed to stdout with exit code 0; a flag clap refuses (unknown, missing its
        // value, not a number, or conflicting with another) is one line plus usage, exit code 2.
        Ok(Parsed::Clap(e)) => e.exit(),
        Ok(Parsed::Run(args)) => run(*args),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("decode: {e}");
        if matches!(e, Error::InvalidConfig { .. }) {
            eprintln!("\n{USAGE}");
        }
        std::process::exit(2);
    }
}
