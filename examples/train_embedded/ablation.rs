//! The optimisation ablation: the distilled regime's heads (frozen base, the base's own greedy
//! continuations) trained once per optimisation setting and seed, each measured by its mean
//! accepted block size on the held-out prompts. Shows what warm-up, gradient clipping, weight
//! decay and dropout change, next to the spread between seeds.

use serde::{Deserialize, Serialize};

use blockwise::acceptance::Exact;
use blockwise::train::{train_heads, HeadsTrainConfig, ProgressBar, Regime};
use blockwise::{Error, Result, Transformer};

use super::{head_settings, measure, with_heads_config, Settings};

/// One optimisation setting, a change from the recipe behind the shipped heads.
struct Variant {
    name: &'static str,
    /// What it changes, for the table.
    change: &'static str,
    apply: fn(&mut HeadsTrainConfig),
}

const VARIANTS: [Variant; 8] = [
    Variant {
        name: "recipe",
        change: "warm-up 10%, clipping at 1.0, weight decay 0.01, dropout 0.1, peak 2e-3",
        apply: |_| {},
    },
    Variant {
        name: "no-warmup",
        change: "no warm-up",
        apply: |c| c.lr.warmup_steps = 0,
    },
    Variant {
        name: "no-clipping",
        change: "no gradient clipping",
        apply: |c| c.optim.clip_norm = None,
    },
    Variant {
        name: "no-weight-decay",
        change: "no weight decay",
        apply: |c| c.optim.weight_decay = 0.0,
    },
    Variant {
        name: "no-dropout",
        change: "no dropout",
        apply: |c| c.dropout = 0.0,
    },
    Variant {
        name: "none",
        change: "none of the four",
        apply: |c| {
            c.lr.warmup_steps = 0;
            c.optim.clip_norm = None;
            c.optim.weight_decay = 0.0;
            c.dropout = 0.0;
        },
    },
    Variant {
        name: "high-lr",
        change: "peak 1e-2 (five times higher), with warm-up and clipping",
        apply: |c| c.lr.peak = 1e-2,
    },
    Variant {
        name: "high-lr-bare",
        change: "peak 1e-2, no warm-up, no clipping",
        apply: |c| {
            c.lr.peak = 1e-2;
            c.lr.warmup_steps = 0;
            c.optim.clip_norm = None;
        },
    },
];

/// What one trained variant measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    variant: String,
    change: String,
    seed: u64,
    /// Mean heads loss over the last tenth of the steps.
    final_loss: f64,
    /// Steps whose gradient norm (before clipping) exceeded 1.0.
    steps_over_one: usize,
    max_grad_norm: f64,
    mean_accepted_k4: f64,
    mean_accepted_k8: f64,
    train_s: f64,
}

/// Trains (or reuses) one variant for one seed and measures it.
fn run(
    s: &Settings,
    v: &Variant,
    seed: u64,
    distilled: &[Vec<i64>],
    held: &[Vec<i64>],
) -> Result<Row> {
    let dir = s
        .work
        .join("ablation")
        .join(format!("{}-seed{seed}", v.name));
    let report_path = dir.join("row.json");
    if report_path.is_file() {
        return Error::read_json(&report_path);
    }
    let mut settings = head_settings(s, Regime::Distilled);
    settings.seed = seed;
    settings.log_every = 1;
    settings.validate_every = 0;
    settings.checkpoint_every = 0;
    (v.apply)(&mut settings);
    let mut model = Transformer::new_seeded(with_heads_config(), 1, tch::Device::Cpu)?;
    model.load_partial(s.work.join("base"))?;
    model.reset_heads(seed)?;
    let label = format!("{} seed {seed}", v.name);
    let mut bar = ProgressBar::new(&label);
    let report = train_heads(&mut model, distilled, None, &settings, None, |l| {
        if l.step % 10 == 0 || l.step == l.steps {
            bar.update(l.step, l.steps, l.loss, l.elapsed_s, "")
        }
    })?;
    let _guard = tch::no_grad_guard();
    let mut mean = |k| -> Result<f64> {
        let (tokens, iterations) = measure(&mut model, held, k, Exact)?;
        Ok(tokens as f64 / iterations as f64)
    };
    let (mean_accepted_k4, mean_accepted_k8) = (mean(4)?, mean(8)?);
    let row = Row {
        variant: v.name.into(),
        change: v.change.into(),
        seed,
        final_loss: {
            let tail = &report.logs[report.logs.len() - (report.logs.len() / 10).max(1)..];
            tail.iter().map(|l| l.loss).sum::<f64>() / tail.len() as f64
        },
        steps_over_one: report.logs.iter().filter(|l| l.grad_norm > 1.0).count(),
        max_grad_norm: report.logs.iter().map(|l| l.grad_norm).fold(0.0, f64::max),
        mean_accepted_k4,
        mean_accepted_k8,
        train_s: report.wall_s,
    };
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let json = serde_json::to_string_pretty(&row).expect("rows serialise");
    std::fs::write(&report_path, json).map_err(Error::io("writing", &report_path))?;
    eprintln!(
        "ablation: {label}: loss {:.3}, accepted {mean_accepted_k4:.2} (k=4) {mean_accepted_k8:.2} (k=8)",
        row.final_loss
    );
    Ok(row)
}

/// Runs the variants named in `only` (all when empty) for every seed, then, when every cell is
/// there, writes `ablation.json` in the work folder and prints the table.
pub fn ablation(
    s: &Settings,
    only: &[String],
    seeds: &[u64],
    distilled: &[Vec<i64>],
    held: &[Vec<i64>],
) -> Result<()> {
    if let Some(unknown) = only.iter().find(|n| VARIANTS.iter().all(|v| v.name != *n)) {
        let names: Vec<_> = VARIANTS.iter().map(|v| v.name).collect();
        return Err(Error::config(
            "--ablation-only",
            format!("no variant `{unknown}`; the variants are {names:?}"),
        ));
    }
    let mut rows = Vec::new();
    for v in VARIANTS.iter() {
        if only.is_empty() || only.iter().any(|n| n == v.name) {
            for &seed in seeds {
                rows.push(run(s, v, seed, distilled, held)?);
            }
        }
    }
    if !only.is_empty() {
        return Ok(());
    }
    let path = s.work.join("ablation.json");
    let json = serde_json::to_string_pretty(&rows).expect("rows serialise");
    std::fs::write(&path, json + "\n").map_err(Error::io("writing", &path))?;
    println!("| setting | change | seeds | loss | steps with gradient norm > 1 | mean accepted k=4 | k=8 |");
    println!("|---|---|---|---|---|---|---|");
    for v in VARIANTS.iter() {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.variant == v.name).collect();
        let join =
            |f: &dyn Fn(&Row) -> String| mine.iter().map(|r| f(r)).collect::<Vec<_>>().join(" / ");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            v.name,
            v.change,
            join(&|r| r.seed.to_string()),
            join(&|r| format!("{:.3}", r.final_loss)),
            join(&|r| r.steps_over_one.to_string()),
            join(&|r| format!("{:.2}", r.mean_accepted_k4)),
            join(&|r| format!("{:.2}", r.mean_accepted_k8)),
        );
    }
    println!("table in {}", path.display());
    Ok(())
}
