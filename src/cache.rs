//! A key/value cache that is a preallocated buffer plus a length cursor.
//!
//! Appending writes into the buffer at the cursor; [`KvCache::truncate`] moves the cursor back,
//! so rolling back a rejected block is O(1) and never copies the cache.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Per-layer key and value buffers `[B, kv_heads, capacity, head_dim]` with one shared length.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

/// The shape of a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    /// Number of layers.
    pub layers: usize,
    /// Batch rows.
    pub batch: i64,
    /// Key/value heads per layer.
    pub heads: i64,
    /// Positions the buffer holds.
    pub capacity: usize,
    /// Width of one head.
    pub head_dim: i64,
}

impl KvCache {
    /// Allocates zeroed buffers of the given shape.
    pub fn new(shape: CacheShape, kind: Kind, device: Device) -> Result<Self> {
        let dims = [
            shape.batch,
            shape.heads,
            shape.capacity as i64,
            shape.head_dim,
        ];
        let mut keys = Vec::with_capacity(shape.layers);
        let mut values = Vec::with_capacity(shape.layers);
        for _ in 0..shape.layers {
            keys.push(Tensor::f_zeros(dims, (kind, device))?);
            values.push(Tensor::f_zeros(dims, (kind, device))?);
        }
        Ok(KvCache {
            keys,
            values,
            len: 0,
            capacity: shape.capacity,
        })
    }

    /// Positions currently cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Batch rows.
    pub fn rows(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[0])
    }

    /// Positions the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions `>= len` (O(1): only the cursor moves).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes keys and values `[B, heads, T, head_dim]` of `layer` at positions
    /// `start..start + T` and returns views of all keys and values up to `start + T`.
    ///
    /// Call it for every layer with the same `start`, then [`KvCache::set_len`].
    pub fn write(
        &mut self,
        layer: usize,
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2] as usize;
        if start + t > self.capacity {
            return Err(Error::BlockBeyondContext {
                start,
                block_len: t,
                max_context: self.capacity,
            });
        }
        if start > self.len {
            return Err(Error::CacheGap {
                start,
                cached: self.len,
            });
        }
        let (kb, vb) = match (self.keys.get(layer), self.values.get(layer)) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => {
                return Err(Error::Contract {
                    component: "KvCache",
                    problem: format!("layer {layer} written, cache has {}", self.keys.len()),
                })
            }
        };
        kb.f_narrow(2, start as i64, t as i64)?.f_copy_(k)?;
        vb.f_narrow(2, start as i64, t as i64)?.f_copy_(v)?;
        let end = (start + t) as i64;
        Ok((kb.f_narrow(2, 0, end)?, vb.f_narrow(2, 0, end)?))
    }

    /// Keeps, in every row `b`, the cached slots `index[b]` (`[B, n]` int64, in that order) as
    /// slots `0..n`, and sets the length to `n`. One gather per layer, of the slots from the
    /// first one some row moves ([`in_place_prefix`](crate::masked::in_place_prefix)) on: for
    /// compacting a cache whose rows hold positions they no longer attend (rejected tree
    /// branches, the rejected tails of batched blocks).
    pub fn compact(&mut self, index: &Tensor) -> Result<()> {
        let size = index.size();
        let n = size.get(1).copied().unwrap_or(0);
        let bad = size.len() != 2
            || n as usize > self.len
            || self.keys.first().is_some_and(|k| k.size()[0] != size[0]);
        if bad {
            return Err(Error::Contract {
                component: "KvCache::compact",
                problem: format!(
                    "index of shape {size:?} for a cache of {} slots per row",
                    self.len
                ),
            });
        }
        // Slots every row keeps in place are not copied: only `p..n` is gathered.
        let p = crate::masked::in_place_prefix(index)? as i64;
        if p < n {
            let tail = index.f_narrow(1, p, n - p)?;
            for buffer in self.keys.iter_mut().chain(self.values.iter_mut()) {
                let [b, h, _, d] = buffer.size()[..] else {
                    continue;
                };
                let idx = tail
                    .f_view([b, 1, n - p, 1])?
                    .f_expand([b, h, n - p, d], false)?;
                let kept = buffer.f_gather(2, &idx, false)?;
                buffer.f_narrow(2, p, n - p)?.f_copy_(&kept)?;
            }
        }
        self.len = n as usize;
        Ok(())
    }

    /// Sets the cursor after a forward pass wrote `len` positions into every layer.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity);
    }
}
