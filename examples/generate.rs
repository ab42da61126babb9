//! Application case 2, text generation: long-form answers streamed as blocks are accepted, and a
//! table of speed and mean accepted block size for each proposer.
//!
//! ```text
//! # stream one answer (SmolLM2 with its shipped heads; `make smollm2` exports the model)
//! cargo run --release --example generate -- --prompt "Write a story about a lighthouse keeper."
//! # the table: greedy, n-gram, heads and a layer-truncated draft on examples/prompts/longform.txt
//! cargo run --release --example generate -- --table
//! ```

use std::io::Write;

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::config::{BlockwiseConfig, ProposerConfig};
use blockwise::tokenizer::TextStream;
use blockwise::{
    Blockwise, BlockwiseDecoder, DecodeConfig, DecodeOutput, Error, GreedyDecoder, Result,
};

const USAGE: &str = "\
usage: generate [--model DIR] [--prompt TEXT] [--proposer P] [--k N] [--max-new-tokens N]
       generate --table [--model DIR] [--prompt-file FILE] [--k N] [--max-new-tokens N]

  --model           an exported model folder (default models/smollm2, `make smollm2`)
  --prompt          the request, sent in the model's chat template (streaming mode)
  --proposer        heads (default), ngram, none, draft:DIR, chain:A,B
  --k               block size (default 5)
  --max-new-tokens  tokens to generate (default 256)
  --table           decode every prompt of --prompt-file (default examples/prompts/longform.txt)
                    greedily and with each proposer, and print a markdown table";

struct Args {
    model: String,
    prompt: String,
    prompt_file: String,
    proposer: ProposerConfig,
    k: usize,
    max_new_tokens: usize,
    table: bool,
}

fn parse(argv: Vec<String>) -> Result<Args> {
    let mut a = Args {
        model: "models/smollm2".into(),
        prompt: "Write a short story, about 300 words, about a lighthouse keeper who finds a \
                 message in a bottle."
            .into(),
        prompt_file: "examples/prompts/longform.txt".into(),
        proposer: ProposerConfig::Heads,
        k: 5,
        max_new_tokens: 256,
        table: false,
    };
    let mut it = argv.into_iter();
    let bad = |flag: &'static str, problem: String| Error::InvalidConfig {
        field: flag,
        problem,
    };
    while let Some(flag) = it.next() {
        let mut value = |f: &'static str| it.next().ok_or_else(|| bad(f, "needs a value".into()));
        let number = |f: &'static str, v: String| {
            v.parse::<usize>()
                .map_err(|_| bad(f, format!("expects a whole number, got `{v}`")))
        };
        match flag.as_str() {
            "--model" => a.model = value("--model")?,
            "--prompt" => a.prompt = value("--prompt")?,
            "--prompt-file" => a.prompt_file = value("--prompt-file")?,
            "--proposer" => a.proposer = value("--proposer")?.parse()?,
            "--k" => a.k = number("--k", value("--k")?)?,
            "--max-new-tokens" => {
                a.max_new_tokens = number("--max-new-tokens", value("--max-new-tokens")?)?
            }
            "--table" => a.table = true,
            other => return Err(bad("arguments", format!("unknown flag `{other}`"))),
        }
    }
    Ok(a)
}

/// Streams one answer to stdout as its blocks are accepted, then prints what it cost.
fn stream(bundle: &mut ModelBundle, args: &Args) -> Result<()> {
    let prompt = bundle.encode_prompt(&args.prompt, true)?;
    let config = DecodeConfig::new(args.max_new_tokens).with_eos(bundle.eos.clone());
    let mut decoder = Blockwise::from_config(
        &mut bundle.model,
        &blockwise_config(args, args.proposer.clone()),
        None,
    )?;
    let mut text = TextStream::new();
    let tokenizer = &*bundle.tokenizer;
    let mut failed = None;
    let out = decoder.decode_streaming(&prompt, &config, &mut |tokens| match text
        .push(tokenizer, tokens)
    {
        Ok(piece) => {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        }
        Err(e) => failed = Some(e),
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let s = &out.stats;
    println!(
        "\n\n[{} tokens in {} model calls, mean accepted block {:.2}, {:.1} ms per token]",
        s.new_tokens,
        s.model_calls,
        s.mean_accepted,
        1e3 * s.wall_s / s.new_tokens.max(1) as f64
    );
    Ok(())
}

fn blockwise_config(args: &Args, proposer: ProposerConfig) -> BlockwiseConfig {
    let mut c = BlockwiseConfig::heads(args.k);
    c.proposer = proposer;
    c
}

/// Decodes every prompt greedily and with each proposer; one markdown row per proposer.
fn table(bundle: &mut ModelBundle, args: &Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.prompt_file)
        .map_err(Error::io("reading", &args.prompt_file))?;
    let prompts = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| bundle.encode_prompt(l, true))
        .collect::<Result<Vec<_>>>()?;
    let config = DecodeConfig::new(args.max_new_tokens).with_eos(bundle.eos.clone());
    let greedy: Vec<DecodeOutput> = prompts
        .iter()
        .map(|p| GreedyDecoder::new(&mut bundle.model).decode(p, &config))
        .collect::<Result<_>>()?;
    let mut proposers = vec![
        ProposerConfig::Ngram { min: 1, max: 3 },
        ProposerConfig::Heads,
    ];
    let draft = format!("{}-draft", args.model.trim_end_matches('/'));
    if std::path::Path::new(&draft).join("metadata.json").exists() {
        proposers.push(ProposerConfig::Draft { model: draft });
    }
    let (gtokens, gcalls, gwall) = totals(&greedy);
    println!(
        "| proposer | prompts | new tokens | model calls | mean accepted | ms per token | speedup | identical |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| none (greedy) | {} | {gtokens} | {gcalls} | 1.00 | {:.1} | 1.00x | - |",
        prompts.len(),
        1e3 * gwall / gtokens as f64
    );
    for proposer in proposers {
        let mut decoder = Blockwise::from_config(
            &mut bundle.model,
            &blockwise_config(args, proposer.clone()),
            None,
        )?;
        let outs = prompts
            .iter()
            .map(|p| decoder.decode(p, &config))
            .collect::<Result<Vec<_>>>()?;
        let (tokens, calls, wall) = totals(&outs);
        let iterations: usize = outs.iter().map(|o| o.stats.iterations).sum();
        let same = outs
            .iter()
            .zip(&greedy)
            .filter(|(o, g)| o.tokens == g.tokens)
            .count();
        println!(
            "| {proposer} | {} | {tokens} | {calls} | {:.2} | {:.1} | {:.2}x | {same}/{} |",
            prompts.len(),
            tokens as f64 / iterations.max(1) as f64,
            1e3 * wall / tokens as f64,
            (gwall / gtokens as f64) / (wall / tokens as f64),
            prompts.len()
        );
    }
    Ok(())
}

/// New tokens, model calls and wall seconds over `outs`.
fn totals(outs: &[DecodeOutput]) -> (usize, usize, f64) {
    outs.iter().fold((0, 0, 0.0), |(t, c, w), o| {
        (
            t + o.tokens.len(),
            c + o.stats.model_calls,
            w + o.stats.wall_s,
        )
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let run = || -> Result<()> {
        let args = parse(argv)?;
        let mut bundle = ModelBundle::load(&args.model, &BundleOptions::default())?;
        if args.table {
            table(&mut bundle, &args)
        } else {
            stream(&mut bundle, &args)
        }
    };
    if let Err(e) = run() {
        eprintln!("generate: {e}\n\n{USAGE}");
        std::process::exit(2);
    }
}
