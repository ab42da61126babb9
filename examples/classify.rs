//! Application case 1, text classification: SmolLM2 names the book of the Bible a King James
//! passage comes from, choosing among the candidate labels listed in the prompt. Accuracy,
//! model calls and wall time per example, for greedy decoding and blockwise decoding with n-gram
//! lookup and with SmolLM2's shipped heads; blockwise must give every example the same answer
//! as greedy decoding.
//!
//! ```text
//! make classify     # exports SmolLM2 and writes the data set first (scripts/make_classify_data.py)
//! cargo run --release --example classify -- --data target/classify/passages.jsonl [--limit N]
//! ```

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::config::{BlockwiseConfig, ProposerConfig};
use blockwise::{
    Blockwise, BlockwiseDecoder, DecodeConfig, DecodeOutput, Error, GreedyDecoder, Result,
};
use serde::Deserialize;

const USAGE: &str = "\
usage: classify [--model DIR] [--data FILE] [--limit N] [--k N] [--prefill-chunk N]

  --model          an exported model folder (default models/smollm2, `make smollm2`)
  --data           JSON lines {\"text\", \"label\"} (default target/classify/passages.jsonl,
                   written by scripts/make_classify_data.py)
  --limit          classify the first N examples only
  --k              block size (default 5)
  --prefill-chunk  feed each prompt in blocks of N tokens (default 32)";

/// The answer is at most a few words; 8 tokens hold any of the labels.
const MAX_NEW_TOKENS: usize = 8;

#[derive(Deserialize)]
struct Example {
    text: String,
    label: String,
}

struct Args {
    model: String,
    data: String,
    limit: Option<usize>,
    k: usize,
    prefill_chunk: usize,
}

fn parse(argv: Vec<String>) -> Result<Args> {
    let mut a = Args {
        model: "models/smollm2".into(),
        data: "target/classify/passages.jsonl".into(),
        limit: None,
        k: 5,
        prefill_chunk: 32,
    };
    let bad = |flag: &'static str, problem: String| Error::InvalidConfig {
        field: flag,
        problem,
    };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |f: &'static str| it.next().ok_or_else(|| bad(f, "needs a value".into()));
        let number = |f: &'static str, v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(f, format!("expects a whole number above 0, got `{v}`")))
        };
        match flag.as_str() {
            "--model" => a.model = value("--model")?,
            "--data" => a.data = value("--data")?,
            "--limit" => a.limit = Some(number("--limit", value("--limit")?)?),
            "--k" => a.k = number("--k", value("--k")?)?,
            "--prefill-chunk" => {
                a.prefill_chunk = number("--prefill-chunk", value("--prefill-chunk")?)?
            }
            other => return Err(bad("arguments", format!("unknown flag `{other}`"))),
        }
    }
    Ok(a)
}

fn read_examples(path: &str, limit: Option<usize>) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        out.push(serde_json::from_str(line).map_err(|source| Error::Json {
            what: format!("an example in {path}"),
            source,
        })?);
    }
    out.truncate(limit.unwrap_or(out.len()));
    Ok(out)
}

/// The request: the passage and the candidate labels.
fn prompt(text: &str, labels: &[String]) -> String {
    format!(
        "Which book of the Bible is this passage from: {}? Answer with the name of the book only.\n\nPassage: {text}",
        labels.join(", ")
    )
}

/// The first candidate label the answer names (case-insensitive), if any.
fn predicted<'a>(answer: &str, labels: &'a [String]) -> Option<&'a str> {
    let lower = answer.to_lowercase();
    labels
        .iter()
        .filter_map(|l| lower.find(&l.to_lowercase()).map(|at| (at, l.as_str())))
        .min()
        .map(|(_, l)| l)
}

/// One decoding method's results over the data set.
struct Run {
    name: String,
    outputs: Vec<DecodeOutput>,
    answers: Vec<String>,
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    if let Err(e) = parse(argv).and_then(run) {
        eprintln!("classify: {e}\n\n{USAGE}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> Result<()> {
    let examples = read_examples(&args.data, args.limit)?;
    let mut labels: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let mut bundle = ModelBundle::load(&args.model, &BundleOptions::default())?;
    let prompts = examples
        .iter()
        .map(|e| bundle.encode_prompt(&prompt(&e.text, &labels), true))
        .collect::<Result<Vec<_>>>()?;
    let config = DecodeConfig::new(MAX_NEW_TOKENS)
        .with_eos(bundle.eos.clone())
        .with_prefill_chunk(args.prefill_chunk);

    let mut runs = Vec::new();
    let greedy = prompts
        .iter()
        .map(|p| GreedyDecoder::new(&mut bundle.model).decode(p, &config))
        .collect::<Result<Vec<_>>>()?;
    runs.push(("greedy".to_string(), greedy));
    for proposer in [
        ProposerConfig::Ngram { min: 1, max: 3 },
        ProposerConfig::Heads,
    ] {
        let mut c = BlockwiseConfig::heads(args.k);
        c.proposer = proposer.clone();
        let mut decoder = Blockwise::from_config(&mut bundle.model, &c, None)?;
        let outs = prompts
            .iter()
            .map(|p| decoder.decode(p, &config))
            .collect::<Result<Vec<_>>>()?;
        runs.push((format!("blockwise, {proposer}, k = {}", args.k), outs));
    }
    let runs = runs
        .into_iter()
        .map(|(name, outputs)| {
            let answers = outputs
                .iter()
                .map(|o| bundle.tokenizer.decode(&o.tokens))
                .collect::<Result<Vec<_>>>()?;
            Ok(Run {
                name,
                outputs,
                answers,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let n = examples.len();
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    println!(
        "{n} examples, labels {}, prompts of {:.0} tokens on average, prefilled in chunks of {}\n",
        labels.join(" / "),
        prompt_tokens as f64 / n as f64,
        args.prefill_chunk
    );
    println!("| decoding | accuracy | unanswered | answers equal to greedy | model calls per example | mean accepted | ms per example | speedup |");
    println!("|---|---|---|---|---|---|---|---|");
    let reference = &runs[0];
    let gwall: f64 = reference.outputs.iter().map(|o| o.stats.wall_s).sum();
    for r in &runs {
        let predictions: Vec<Option<&str>> =
            r.answers.iter().map(|a| predicted(a, &labels)).collect();
        let correct = predictions
            .iter()
            .zip(&examples)
            .filter(|(p, e)| **p == Some(e.label.as_str()))
            .count();
        let unanswered = predictions.iter().filter(|p| p.is_none()).count();
        let same = r
            .outputs
            .iter()
            .zip(&reference.outputs)
            .filter(|(a, b)| a.tokens == b.tokens)
            .count();
        let calls: usize = r.outputs.iter().map(|o| o.stats.model_calls).sum();
        let tokens: usize = r.outputs.iter().map(|o| o.tokens.len()).sum();
        let iterations: usize = r.outputs.iter().map(|o| o.stats.iterations).sum();
        let wall: f64 = r.outputs.iter().map(|o| o.stats.wall_s).sum();
        println!(
            "| {} | {:.1}% ({correct}/{n}) | {unanswered} | {same}/{n} | {:.2} | {:.2} | {:.0} | {:.2}x |",
            r.name,
            100.0 * correct as f64 / n as f64,
            calls as f64 / n as f64,
            tokens as f64 / iterations.max(1) as f64,
            1e3 * wall / n as f64,
            gwall / wall
        );
    }
    let differing = runs
        .iter()
        .filter(|r| r.answers != reference.answers)
        .count();
    if differing > 0 {
        return Err(Error::Contract {
            component: "classify",
            problem: format!(
                "{differing} blockwise runs answered differently from greedy decoding"
            ),
        });
    }
    Ok(())
}
