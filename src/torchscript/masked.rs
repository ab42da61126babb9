//! The masked calling convention of TorchScript exports: [`MaskedLm`] for [`TorchScriptLm`].

use std::path::Path;

use tch::{CModule, IValue, Tensor};

use super::module::{ModuleSpec, TorchScriptLm};
use crate::error::{Error, Result};
use crate::masked::{check_batch, check_masked_input, MaskedLm};
use crate::model::{CausalLm, ModelOutput};

const SIGNATURE: &str =
    "forward(input_ids, position_ids, attention_mask [B, T, S + T], k_cache, v_cache)";

/// The masked module of an export and its batched slot cache.
pub(super) struct MaskedModule {
    module: CModule,
    /// Layers, key/value heads, head width.
    dims: (i64, i64, i64),
    caches: Option<(Tensor, Tensor)>,
    len: usize,
}

impl MaskedModule {
    pub(super) fn load(path: &Path, spec: &ModuleSpec) -> Result<Self> {
        let mut module = super::module::load_module(path, spec)?;
        super::module::prepare_module(&mut module, &path.display().to_string(), spec)?;
        Ok(MaskedModule {
            module,
            dims: (
                spec.num_layers as i64,
                spec.num_kv_heads as i64,
                spec.head_dim as i64,
            ),
            caches: None,
            len: 0,
        })
    }
}

impl TorchScriptLm {
    fn masked_part(&self) -> Result<&MaskedModule> {
        self.masked.as_ref().ok_or(Error::MissingCapability {
            component: "batched and tree decoding",
            capability: "the masked TorchScript form (model.<dtype>.masked.pt, written by \
                         scripts/export_hf.py; re-export the model)",
        })
    }

    fn masked_mut(&mut self) -> Result<&mut MaskedModule> {
        self.masked_part()?;
        Ok(self.masked.as_mut().expect("checked above"))
    }
}

impl MaskedLm for TorchScriptLm {
    fn begin_batch(&mut self, batch: usize, slots: usize) -> Result<()> {
        check_batch(batch, slots)?;
        let (kind, device) = (self.info().kind, self.info().device);
        let m = self.masked_mut()?;
        let (layers, heads, dim) = m.dims;
        let shape = [layers, batch as i64, heads, slots as i64, dim];
        // Not zeroed: every call writes the new slots of every row (padding rows included) and
        // reads only slots below its end, and compaction keeps written slots only, so a slot is
        // written before any call reads it. Zeroing a server's batch cache (SmolLM2, 16 rows of
        // 2,050 slots: 1.5 GB) took 0.4-2.8 s at every batch opened (scripts/batch_costs.py),
        // touching pages never used.
        let (k, v) = (
            Tensor::f_empty(shape, (kind, device))?,
            Tensor::f_empty(shape, (kind, device))?,
        );
        // The test kit's builds poison the first slots, so that a call reading a slot before
        // it is written gives non-finite logits (refused) in the tests, not a silent change.
        #[cfg(feature = "testing")]
        for t in [&k, &v] {
            let _poisoned = t
                .f_narrow(3, 0, (slots as i64).min(64))?
                .f_fill_(f64::NAN)?;
        }
        m.caches = Some((k, v));
        m.len = 0;
        Ok(())
    }

    fn slots_used(&self) -> usize {
        self.masked.as_ref().map_or(0, |m| m.len)
    }

    fn slot_capacity(&self) -> usize {
        self.masked
            .as_ref()
            .and_then(|m| m.caches.as_ref())
            .map_or(0, |(k, _)| k.size()[3] as usize)
    }

    fn forward_masked(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<ModelOutput> {
        let m = self.masked_part()?;
        let (k, v) = m.caches.as_ref().ok_or(Error::Contract {
            component: "TorchScriptLm::forward_masked",
            problem: "no batched cache: call MaskedLm::begin_batch first".into(),
        })?;
        let start = m.len;
        let (b, t) = check_masked_input(
            tokens,
            positions,
            mask,
            start,
            self.info().vocab_size,
            self.info().max_context,
        )?;
        let (rows, capacity) = (k.size()[1] as usize, k.size()[3] as usize);
        if b != rows || start + t > capacity {
            return Err(Error::Contract {
                component: "TorchScriptLm::forward_masked",
                problem: format!(
                    "{b} rows of {t} tokens after {start} slots, for a cache of {rows} rows of \
                     {capacity} slots"
                ),
            });
        }
        let inputs = [
            IValue::Tensor(tokens.shallow_clone()),
            IValue::Tensor(positions.shallow_clone()),
            IValue::Tensor(mask.shallow_clone()),
            IValue::Tensor(k.shallow_clone()),
            IValue::Tensor(v.shallow_clone()),
        ];
        let out = self.call_module(&m.module, SIGNATURE, &inputs)?;
        let vocab = self.info().vocab_size;
        if out.logits.size() != [b as i64, t as i64, vocab] {
            return Err(self.bad(format!(
                "{SIGNATURE} returned logits of shape {:?}, expected [{b}, {t}, {vocab}]",
                out.logits.size()
            )));
        }
        self.masked_mut()?.len = start + t;
        Ok(out)
    }

    fn compact(&mut self, index: &Tensor) -> Result<()> {
        let m = self.masked_mut()?;
        let size = index.size();
        let Some((k, v)) = m.caches.as_ref() else {
            return Err(Error::Contract {
                component: "TorchScriptLm::compact",
                problem: "no batched cache: call MaskedLm::begin_batch first".into(),
            });
        };
        let [l, b, h, _, d] = k.size()[..] else {
            unreachable!("caches are made 5-dimensional")
        };
        if size.len() != 2 || size[0] != b || size[1] as usize > m.len {
            return Err(Error::Contract {
                component: "TorchScriptLm::compact",
                problem: format!("index of shape {size:?} for {b} rows of {} slots", m.len),
            });
        }
        let n = size[1];
        // Slots every row keeps in place are not copied: only `p..n` is gathered.
        let p = crate::masked::in_place_prefix(index)? as i64;
        if p < n {
            let idx = index
                .f_narrow(1, p, n - p)?
                .f_view([1, b, 1, n - p, 1])?
                .f_expand([l, b, h, n - p, d], false)?;
            for buffer in [k, v] {
                let kept = buffer.f_gather(3, &idx, false)?;
                buffer.f_narrow(3, p, n - p)?.f_copy_(&kept)?;
            }
        }
        m.len = n as usize;
        Ok(())
    }
}
