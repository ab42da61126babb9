//! Per-call cost of an exported model against its past length and block width: blocks of 1 and
//! 5 tokens (or the widths given) appended after 64, 512 and 2048 cached positions (or the
//! lengths given), through the crate's TorchScript adapter.
//!
//! ```text
//! cargo run --release --example cache_cost -- models/smollm2 [f32|bf16] [repeats] [PASTS] [WIDTHS] [torchscript|native] [f32|bf16|tiles]
//! cargo run --release --example cache_cost -- models/smollm2 bf16 20 128 1,2,3,4,6,8
//! ```
//!
//! The last argument picks the backend: the TorchScript module (default) or the crate's native
//! decoder (`blockwise::native`); after it, what the native decoder multiplies bf16 weights with
//! ([`Bf16Inputs`](blockwise::native::Bf16Inputs), default f32).
//!
//! Prints one markdown row per past length.

use std::time::Instant;

use blockwise::model::{prefill, token_tensor};
use blockwise::native::{Bf16Inputs, NativeLm, NativeOptions};
use blockwise::torchscript::{LoadOptions, TorchScriptLm};
use blockwise::{CausalLm, DType, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "models/smollm2".into());
    let dtype: DType = args.next().unwrap_or_else(|| "f32".into()).parse()?;
    let repeats: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let list = |arg: Option<String>, default: &[usize]| -> Vec<usize> {
        arg.map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| default.to_vec())
    };
    let pasts = list(args.next(), &[64, 512, 2048]);
    let widths = list(args.next(), &[1, 5]);
    let longest =
        pasts.iter().max().copied().unwrap_or(0) + widths.iter().max().copied().unwrap_or(1);
    let backend = args.next().unwrap_or_else(|| "torchscript".into());
    let bf16_inputs = Bf16Inputs::parse(&args.next().unwrap_or_else(|| "f32".into()))?;
    let mut model: Box<dyn CausalLm> = match backend.as_str() {
        "native" => Box::new(NativeLm::load(
            &dir,
            &NativeOptions {
                dtype,
                max_context: Some(longest),
                bf16_inputs,
                ..NativeOptions::default()
            },
        )?),
        _ => Box::new(TorchScriptLm::load(
            &dir,
            &LoadOptions {
                dtype,
                max_context: Some(longest),
                ..LoadOptions::default()
            },
        )?),
    };
    if backend == "native" {
        // As `Backend::Native` does: libtorch's spinning OpenMP workers would take the cores.
        tch::set_num_threads(1);
    }
    let _guard = tch::no_grad_guard();
    let vocab = model.info().vocab_size;
    let device = model.info().device;
    let header: Vec<String> = widths
        .iter()
        .map(|w| format!("{w}-token call (ms)"))
        .collect();
    println!("| dtype | past length | {} |", header.join(" | "));
    println!("|---|---|{}", "---|".repeat(widths.len()));
    for &past in &pasts {
        let prompt: Vec<i64> = (0..past as i64).map(|i| (i * 7919 + 13) % vocab).collect();
        prefill(model.as_mut(), &prompt, Some(256))?;
        let mut row = Vec::new();
        for &t in &widths {
            let block: Vec<i64> = (0..t as i64).map(|i| (i * 31 + 5) % vocab).collect();
            let ids = token_tensor(&block, device);
            // Warm-up calls, then the timed ones; each call is rolled back to `past`.
            for _ in 0..3 {
                model.forward(&ids, past)?;
            }
            let t0 = Instant::now();
            for _ in 0..repeats {
                model.forward(&ids, past)?;
            }
            row.push(t0.elapsed().as_secs_f64() * 1e3 / repeats as f64);
        }
        let cells: Vec<String> = row.iter().map(|ms| format!("{ms:.2}")).collect();
        println!("| {dtype:?} {backend} | {past} | {} |", cells.join(" | "));
    }
    Ok(())
}
