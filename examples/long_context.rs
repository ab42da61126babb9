//! Long contexts with bounded memory: an exported model decoded at 1k, 2k, 4k and 8k positions
//! (the prompt fed in chunks), greedily and blockwise, with the resident memory and the cost per
//! new token at each; then many decodes in a loop on the same model, to show that memory does
//! not grow with the number of decodes; then a prompt that does not fit.
//!
//! ```text
//! make smollm2
//! cargo run --release --features testing --example long_context -- --json target/long.json
//! ```
//!
//! The long prompts are the crate's own documentation (README.md and docs/*.md), tokenised and
//! cut to length: ordinary prose, tables and code, which nothing in the decode has seen.

use std::path::PathBuf;
use std::time::Instant;

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::config::{BlockwiseConfig, ProposerConfig};
use blockwise::{
    Blockwise, BlockwiseDecoder, DType, DecodeConfig, DecodeOutput, Error, GreedyDecoder, Result,
};
use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "long_context",
    about = "Decode at long positions with bounded memory"
)]
struct Args {
    /// An exported model folder.
    #[arg(long, default_value = "models/smollm2")]
    model: String,
    /// f32, bf16 or int8.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// The context the model's cache is allocated for (SmolLM2 was trained for 8192).
    #[arg(long, default_value_t = 8192)]
    max_context: usize,
    /// Positions at which decoding is measured: each prompt ends `new-tokens` before one.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,8192")]
    positions: Vec<usize>,
    /// Tokens decoded at each position.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// The prompt is fed in chunks of this many tokens.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// The blockwise decoder's proposer (the same syntax as `decode --proposer`).
    #[arg(long, default_value = "ngram")]
    proposer: String,
    /// Block size of the blockwise decoder.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Decodes in the memory loop (greedy and blockwise alternately, one model).
    #[arg(long, default_value_t = 100)]
    loop_decodes: usize,
    /// Prompt length of the memory loop's decodes.
    #[arg(long, default_value_t = 128)]
    loop_prompt: usize,
    /// New tokens of each of the memory loop's decodes.
    #[arg(long, default_value_t = 16)]
    loop_new_tokens: usize,
    /// Also write the measurements here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Resident and peak resident memory of this process, MiB (Linux `/proc/self/status`).
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One decode, timed: seconds to the first emitted block (the prompt's chunks and the first
/// call) and milliseconds per token after it.
struct Timed {
    out: DecodeOutput,
    first_s: f64,
    ms_per_token: f64,
}

fn timed(
    decoder: &mut dyn BlockwiseDecoder,
    prompt: &[i64],
    config: &DecodeConfig,
) -> Result<Timed> {
    let t0 = Instant::now();
    let mut first: Option<(f64, usize)> = None;
    let out = decoder.decode_streaming(prompt, config, &mut |tokens| {
        first.get_or_insert((t0.elapsed().as_secs_f64(), tokens.len()));
    })?;
    let total = t0.elapsed().as_secs_f64();
    let (first_s, first_len) = first.unwrap_or((total, 0));
    let rest = out.tokens.len().saturating_sub(first_len).max(1);
    Ok(Timed {
        out,
        first_s,
        ms_per_token: (total - first_s) * 1e3 / rest as f64,
    })
}

/// The documentation, tokenised: README.md, then docs/*.md in name order.
fn long_text(bundle: &ModelBundle) -> Result<Vec<i64>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map_err(|e| Error::config("docs", format!("cannot read docs/: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    let mut text = String::new();
    for f in files {
        text.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        text.push('\n');
    }
    bundle.tokenizer.encode(&text)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("long_context: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let dtype: DType = args.dtype.parse()?;
    let options = BundleOptions {
        dtype,
        max_context: Some(args.max_context),
        ..BundleOptions::default()
    };
    let (rss0, _) = memory_mib();
    let mut bundle = ModelBundle::load(&args.model, &options)?;
    let (rss_loaded, _) = memory_mib();
    let text = long_text(&bundle)?;
    let config = BlockwiseConfig {
        proposer: args.proposer.parse::<ProposerConfig>()?,
        ..BlockwiseConfig::heads(args.k)
    };
    let decode = DecodeConfig::new(args.new_tokens).with_prefill_chunk(args.prefill_chunk);
    // One short decode of each kind first, so the first row does not pay libtorch's warm-up.
    let warm = DecodeConfig::new(8);
    GreedyDecoder::new(&mut bundle.model).decode(&text[..64.min(text.len())], &warm)?;
    Blockwise::from_config(&mut bundle.model, &config, None)?
        .decode(&text[..64.min(text.len())], &warm)?;
    let cpu = cpu_flags();
    println!(
        "{} {}, cache for {} positions; {} MiB resident before loading, {} after; CPU: {cpu}",
        args.model, args.dtype, args.max_context, rss0 as i64, rss_loaded as i64
    );
    println!();
    println!("| position | decoder | prompt s | ms/token | accepted/call | resident MiB | peak MiB | identical |");
    println!("|---:|---|---:|---:|---:|---:|---:|:--:|");
    let mut rows = Vec::new();
    for &position in &args.positions {
        let len = position.saturating_sub(args.new_tokens).max(1);
        if len > text.len() {
            return Err(Error::config(
                "positions",
                format!(
                    "{position} needs a {len}-token prompt; the documentation has {}",
                    text.len()
                ),
            ));
        }
        let prompt = &text[..len];
        let greedy = timed(&mut GreedyDecoder::new(&mut bundle.model), prompt, &decode)?;
        let (g_rss, g_peak) = memory_mib();
        let mut blockwise = Blockwise::from_config(&mut bundle.model, &config, None)?;
        let block = timed(&mut blockwise, prompt, &decode)?;
        let (b_rss, b_peak) = memory_mib();
        let identical = greedy.out.tokens == block.out.tokens && greedy.out.stop == block.out.stop;
        for (name, t, rss, peak) in [
            ("greedy", &greedy, g_rss, g_peak),
            (args.proposer.as_str(), &block, b_rss, b_peak),
        ] {
            println!(
                "| {position} | {name} | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} | {} |",
                t.first_s,
                t.ms_per_token,
                t.out.stats.mean_accepted,
                rss,
                peak,
                if identical { "yes" } else { "**no**" }
            );
            rows.push(json!({
                "position": position, "prompt_tokens": len, "decoder": name,
                "new_tokens": t.out.tokens.len(), "prompt_s": t.first_s,
                "ms_per_token": t.ms_per_token, "mean_accepted": t.out.stats.mean_accepted,
                "model_calls": t.out.stats.model_calls, "rss_mib": rss, "peak_mib": peak,
                "identical": identical,
            }));
        }
    }

    // Memory over many decodes on one model.
    let prompt = &text[..args.loop_prompt.min(text.len())];
    let short = DecodeConfig::new(args.loop_new_tokens).with_prefill_chunk(args.prefill_chunk);
    let mut samples = Vec::new();
    let mut all_identical = true;
    for i in 1..=args.loop_decodes {
        let g = GreedyDecoder::new(&mut bundle.model).decode(prompt, &short)?;
        let b = Blockwise::from_config(&mut bundle.model, &config, None)?.decode(prompt, &short)?;
        all_identical &= g.tokens == b.tokens;
        if i == 1 || i % 10 == 0 {
            samples.push((i, memory_mib().0));
        }
    }
    println!();
    println!(
        "Memory over {} decode pairs (greedy + {}, {}-token prompt, {} new tokens) on one model; identical every time: {}",
        args.loop_decodes,
        args.proposer,
        prompt.len(),
        args.loop_new_tokens,
        if all_identical { "yes" } else { "**no**" }
    );
    println!();
    println!("| after decode pair | resident MiB |");
    println!("|---:|---:|");
    for (i, rss) in &samples {
        println!("| {i} | {rss:.0} |");
    }

    // A prompt that does not fit is an error, not a crash.
    let too_long = vec![text[0]; args.max_context + 1];
    let refused = GreedyDecoder::new(&mut bundle.model).decode(&too_long, &short);
    let refusal = match refused {
        Err(e) => e.to_string(),
        Ok(_) => {
            return Err(Error::config(
                "max_context",
                "a prompt longer than the context decoded",
            ))
        }
    };
    println!();
    println!("A {}-token prompt: {refusal}", too_long.len());

    if let Some(path) = &args.json {
        let doc = json!({
            "model": args.model, "dtype": args.dtype, "max_context": args.max_context,
            "cpu": cpu, "rss_before_load_mib": rss0, "rss_loaded_mib": rss_loaded,
            "rows": rows, "loop": samples.iter().map(|(i, r)| json!({"decodes": i, "rss_mib": r})).collect::<Vec<_>>(),
            "loop_identical": all_identical, "too_long": refusal,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
            .map_err(|e| Error::config("json", format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The CPU's vector extensions that matter for the tables (`avx2`, `avx512_bf16`).
fn cpu_flags() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown", str::trim)
        .to_string();
    let flags: Vec<&str> = ["avx2", "avx512_bf16"]
        .into_iter()
        .filter(|f| info.split_whitespace().any(|w| w == *f))
        .collect();
    format!("{name}, {}", flags.join(" "))
}
