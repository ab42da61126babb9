//! What a block costs through the masked calling convention (batches and trees) against the
//! plain causal one, on the native decoder: one row of `T` tokens after `PAST` kept ones, as a
//! chain and as a tree, with the kept slots in one run from slot 0 (a compacted cache) and
//! scattered among dead ones (rejected slots not yet compacted away: 6 for every 10 kept).
//! Every call is timed in turn, round after round, and the median and least are printed.
//!
//! ```text
//! cargo run --release --example masked_cost -- [DIR] [f32|bf16|int8] [PAST] [T] [ROUNDS]
//! cargo run --release --example masked_cost -- models/smollm2 bf16 200 4 40
//! ```

use std::time::Instant;

use blockwise::model::{prefill, token_tensor};
use blockwise::native::{NativeLm, NativeOptions};
use blockwise::{CausalLm, DType, Error, MaskedLm, Result};
use tch::{Device, Tensor};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "models/smollm2".into());
    let dtype: DType = args.next().unwrap_or_else(|| "f32".into()).parse()?;
    let number = |arg: Option<String>, default: usize| -> Result<usize> {
        arg.map_or(Ok(default), |s| {
            s.parse()
                .map_err(|_| Error::config("masked_cost", format!("{s:?} is not a count")))
        })
    };
    let past = number(args.next(), 200)?.max(1);
    let t = number(args.next(), 4)?.max(1);
    let rounds = number(args.next(), 30)?.max(1);
    let dead = past * 6 / 10;
    let used = past + dead;
    let mut model = NativeLm::load(
        &dir,
        &NativeOptions {
            dtype,
            max_context: Some(used + t + 1),
            ..NativeOptions::default()
        },
    )?;
    // As `Backend::Native` does: libtorch's spinning OpenMP workers would take the cores.
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let vocab = model.info().vocab_size;
    let token = |i: usize| (i as i64 * 7919 + 13) % vocab;

    // The causal cache holds `past` tokens; the masked one `used` slots, read in one call.
    prefill(
        &mut model,
        &(0..past).map(token).collect::<Vec<_>>(),
        Some(256),
    )?;
    model.begin_batch(1, used + t)?;
    let mut causal = vec![false; used * used];
    for i in 0..used {
        causal[i * used..=i * used + i].fill(true);
    }
    let row = |v: Vec<i64>| Tensor::from_slice(&v).view([1, -1]);
    model.forward_masked(
        &row((0..used).map(token).collect()),
        &row((0..used as i64).collect()),
        &Tensor::from_slice(&causal).view([1, used as i64, used as i64]),
    )?;

    let one_run: Vec<usize> = (0..past).collect();
    // Every third slot dead until `dead` are: rejected slots among the kept ones.
    let scattered: Vec<usize> = (0..used)
        .scan(0, |dropped, s| {
            let drop = s % 3 == 1 && *dropped < dead;
            *dropped += usize::from(drop);
            Some((!drop).then_some(s))
        })
        .flatten()
        .collect();
    // A tree: node 0 the root, 1 and 2 under it, then each node under the one two before it.
    let parent = |i: usize| i.saturating_sub(2);
    let mask = |kept: &[usize], tree: bool| {
        let keys = used + t;
        let mut m = vec![false; t * keys];
        for i in 0..t {
            let q = i * keys;
            for &s in kept {
                m[q + s] = true;
            }
            m[q + used + i] = true;
            let mut a = i;
            while a > 0 {
                a = if tree { parent(a) } else { a - 1 };
                m[q + used + a] = true;
            }
        }
        Tensor::from_slice(&m).view([1, t as i64, keys as i64])
    };
    let cases = [
        ("masked chain, kept slots in one run", mask(&one_run, false)),
        ("masked tree, kept slots in one run", mask(&one_run, true)),
        (
            "masked chain, kept slots scattered",
            mask(&scattered, false),
        ),
        ("masked tree, kept slots scattered", mask(&scattered, true)),
    ];
    let block: Vec<i64> = (0..t).map(|i| token(past + i)).collect();
    let ids = token_tensor(&block, Device::Cpu);
    let tokens = row(block);
    let positions = row((past as i64..(past + t) as i64).collect());
    // Forgets each timed call's slots again (no copy: every slot stays in place).
    let back = row((0..used as i64).collect());
    let mut times = vec![Vec::with_capacity(rounds); cases.len() + 1];
    for _ in 0..rounds {
        let t0 = Instant::now();
        model.forward(&ids, past)?;
        times[0].push(t0.elapsed().as_secs_f64() * 1e3);
        for (c, (_, m)) in cases.iter().enumerate() {
            let t0 = Instant::now();
            model.forward_masked(&tokens, &positions, m)?;
            times[c + 1].push(t0.elapsed().as_secs_f64() * 1e3);
            model.compact(&back)?;
        }
    }
    println!("| {dtype:?}, {t} tokens after {past} kept | median ms | least ms |");
    println!("|---|---|---|");
    let names = std::iter::once("causal block").chain(cases.iter().map(|c| c.0));
    for (name, mut ts) in names.zip(times) {
        ts.sort_by(f64::total_cmp);
        println!("| {name} | {:.2} | {:.2} |", ts[ts.len() / 2], ts[0]);
    }
    Ok(())
}
