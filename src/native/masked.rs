//! [`MaskedLm`] for [`NativeLm`]: batched rows and candidate trees over a slot cache.

use tch::{Device, Kind, Tensor};

use super::model::{output, Cache, Mask, NativeLm};
use crate::error::{Error, Result};
use crate::masked::{check_batch, check_masked_input, MaskedLm};
use crate::model::{CausalLm, ModelOutput};

fn no_batch(component: &'static str) -> Error {
    Error::Contract {
        component,
        problem: "no batched cache: call MaskedLm::begin_batch first".into(),
    }
}

impl MaskedLm for NativeLm {
    fn begin_batch(&mut self, batch: usize, slots: usize) -> Result<()> {
        check_batch(batch, slots)?;
        self.batch = None; // free the old cache before allocating the new one
        self.batch = Some(Cache::new(&self.w.dims, batch, slots));
        self.batch_len = 0;
        Ok(())
    }

    fn slots_used(&self) -> usize {
        self.batch_len
    }

    fn slot_capacity(&self) -> usize {
        self.batch.as_ref().map_or(0, |c| c.slots)
    }

    fn forward_masked(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<ModelOutput> {
        let start = self.batch_len;
        let (vocab, max_context) = (self.info().vocab_size, self.info().max_context);
        let cache = self
            .batch
            .as_mut()
            .ok_or_else(|| no_batch("NativeLm::forward_masked"))?;
        let (b, t) = check_masked_input(tokens, positions, mask, start, vocab, max_context)?;
        if b != cache.rows || start + t > cache.slots {
            return Err(Error::Contract {
                component: "NativeLm::forward_masked",
                problem: format!(
                    "{b} rows of {t} tokens after {start} slots, for a cache of {} rows of {} \
                     slots",
                    cache.rows, cache.slots
                ),
            });
        }
        let host =
            |x: &Tensor, kind: Kind| x.f_to_device(Device::Cpu)?.f_to_kind(kind)?.f_view([-1]);
        let ids: Vec<i64> = Vec::try_from(&host(tokens, Kind::Int64)?)?;
        let pos: Vec<i64> = Vec::try_from(&host(positions, Kind::Int64)?)?;
        let allowed: Vec<u8> = Vec::try_from(&host(mask, Kind::Uint8)?)?;
        let allowed: Vec<bool> = allowed.into_iter().map(|v| v != 0).collect();
        let out = output(
            &self.w,
            cache,
            &ids,
            &pos,
            (b, t),
            start,
            Mask::Explicit(&allowed),
            &self.taps,
        )?;
        self.batch_len = start + t;
        Ok(out)
    }

    fn compact(&mut self, index: &Tensor) -> Result<()> {
        let used = self.batch_len;
        let d = self.w.dims;
        let cache = self
            .batch
            .as_mut()
            .ok_or_else(|| no_batch("NativeLm::compact"))?;
        let size = index.size();
        if size.len() != 2 || size[0] as usize != cache.rows || size[1] as usize > used {
            return Err(Error::Contract {
                component: "NativeLm::compact",
                problem: format!(
                    "index of shape {size:?} for {} rows of {used} slots",
                    cache.rows
                ),
            });
        }
        let n = size[1] as usize;
        let idx: Vec<i64> = Vec::try_from(
            &index
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Int64)?
                .f_view([-1])?,
        )?;
        if let Some(&bad) = idx.iter().find(|&&s| s < 0 || s as usize >= used) {
            return Err(Error::Contract {
                component: "NativeLm::compact",
                problem: format!("slot {bad} is not one of the {used} slots used"),
            });
        }
        // Only the slots that change place are copied (all read before any is written): a row
        // already at the front, or whose new slots are its only ones out of place, costs
        // nothing or a few slots, so a decoder may compact after every call.
        let moves: Vec<Vec<(usize, usize)>> = idx
            .chunks(n.max(1))
            .take(cache.rows)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .filter(|&(to, &from)| from as usize != to)
                    .map(|(to, &from)| (to, from as usize))
                    .collect()
            })
            .collect();
        let dh = d.head_dim;
        let most = moves.iter().map(Vec::len).max().unwrap_or(0);
        let mut kept = vec![0f32; most * dh];
        for l in 0..d.layers {
            for (b, row) in moves.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
                for g in 0..d.kv_heads {
                    let base = cache.base(&d, l, b, g);
                    for buf in [&mut cache.k, &mut cache.v] {
                        for (j, &(_, from)) in row.iter().enumerate() {
                            let from = base + from * dh;
                            kept[j * dh..(j + 1) * dh].copy_from_slice(&buf[from..from + dh]);
                        }
                        for (j, &(to, _)) in row.iter().enumerate() {
                            let to = base + to * dh;
                            buf[to..to + dh].copy_from_slice(&kept[j * dh..(j + 1) * dh]);
                        }
                    }
                }
            }
        }
        self.batch_len = n;
        Ok(())
    }
}
