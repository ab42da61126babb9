//! `--batch N` / `--tree SHAPE|dynamic:NODES`: the prompts decoded N at a time by
//! `BatchBlockwise`, built from the run's `BlockwiseConfig` (its tree included).

use blockwise::compare::Comparison;
use blockwise::config::BlockwiseConfig;
use blockwise::decoder::BatchBlockwise;
use blockwise::{BlockwiseDecoder, CausalLm, DecodeConfig, DecodeOutput, GreedyDecoder, Result};

use crate::args::Args;

/// One output per prompt, in order, each with its comparison when `--compare-greedy` asks.
/// Every prompt of a batch reports the batch's wall time; its speedup is the greedy time of the
/// batch's prompts, decoded one after another, over the batch's.
pub fn run_batched(
    model: &mut dyn CausalLm,
    config: &BlockwiseConfig,
    args: &Args,
    prompts: &[Vec<i64>],
    decode: &DecodeConfig,
    mut emit: impl FnMut(usize, &DecodeOutput, Option<&Comparison>) -> Result<()>,
) -> Result<()> {
    let info = model.info().clone();
    let embeddings = model.token_embeddings();
    // One proposer built, then a fork of it per row (a feature draft shares its weights).
    let rows = config.proposer.row_proposers(&info, embeddings.as_ref())?;
    let per_batch = args.batch.unwrap_or(1);
    for (g, group) in prompts.chunks(per_batch).enumerate() {
        let greedy = if args.compare_greedy {
            let mut g = GreedyDecoder::new(&mut *model);
            Some(
                group
                    .iter()
                    .map(|p| g.decode(p, decode))
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        let mut builder = BatchBlockwise::builder(&mut *model)
            .proposer_factory(rows.needs_heads(), rows.factory())
            .config(config, embeddings.as_ref())?;
        if let Some(rows) = args.speculate_up_to {
            builder = builder.speculate_up_to(rows);
        }
        let outs = builder.build()?.decode_batch(group, decode)?;
        let first = g * per_batch;
        match greedy {
            Some(greedy) => {
                let greedy_s: f64 = greedy.iter().map(|g| g.stats.wall_s).sum();
                for (j, (out, g)) in outs.into_iter().zip(greedy).enumerate() {
                    let mut cmp = Comparison::new(out.clone(), g);
                    cmp.speedup = greedy_s / out.stats.wall_s.max(1e-12);
                    emit(first + j, &out, Some(&cmp))?;
                }
            }
            None => {
                for (j, out) in outs.iter().enumerate() {
                    emit(first + j, out, None)?;
                }
            }
        }
    }
    Ok(())
}
