//! The matrix products of the native decoder: `y = x Wᵀ` for a few rows `x` against a weight
//! matrix `W` (`[out, in]`, one output per row) in float32, bfloat16 or int8.
//!
//! A decode step multiplies one row (a verify block a few) by every weight of the model once, so
//! the products are bound by how fast the weights come from memory, and a block's by how many
//! multiply-adds a core does per weight it loads. The weights are therefore stored **packed**:
//! four output rows interleaved in chunks of 16 columns (`[rows / 4][in / 16][4][16]`), so that
//! one sequential stream from memory (fetched [`FETCH_AHEAD`] groups ahead) feeds four outputs at once, and a
//! block of up to six rows multiplies each 16-wide chunk of four weight rows into up to 24
//! accumulators (4 outputs x 6 rows) held in registers. Blocks of more rows pass over a tile of
//! 64 weight rows again while it is in the L2 cache.
//!
//! Measured on a 2-core AMD EPYC against the unpacked kernels this replaced (every product of a
//! SmolLM2 step, `step_products_speed` below, alternating runs): one row about as fast in f32
//! and bf16 and 1.3x faster with int8 weights; blocks of 4-5 rows 1.1-1.2x (f32), 1.4-1.8x
//! (bf16) and 1.7-2.5x (int8) faster; 16 rows 1.0-1.1x, 1.3x and 1.4x.
//!
//! **Every output is computed the same way whatever the number of rows**: 16 lanes, lane `l`
//! adding the products of columns `l, l + 16, l + 32, ...` in column order, then the lanes summed
//! in a fixed tree. So row `r` of a block gets bit-for-bit the number a one-row call gives it,
//! and a block verified in one call scores exactly as the greedy steps that would have scored
//! its tokens one by one. The AVX-512 kernel (one 16-lane accumulator per output), the AVX2 one
//! (two 8-lane accumulators) and the portable one give identical numbers. Columns are padded to
//! a multiple of 16 with zero weights (and zero inputs), rows to a multiple of 4.

use half::bf16;

use super::kernels::SendPtr;
use super::pairs::{self, PAIR_CHUNK};
use super::pool::Pool;
use super::tiles::{self, TILE_OUT};

/// Weight rows interleaved per group.
pub(super) const GROUP: usize = 4;
/// Columns per chunk: one AVX-512 register of float32.
const CHUNK: usize = 16;
/// Elements of one chunk of a group.
const BLOCK: usize = GROUP * CHUNK;
/// Input rows per pass over the weights: with AVX-512, 4 x 6 accumulators, 4 weight registers
/// and an input one fill 29 of the 32 registers (AVX-512VL lets the final 256-bit sums use
/// registers 16-31; without it LLVM kept accumulators on the stack).
pub(super) const ROWS: usize = 6;
/// Groups ahead of the one being multiplied whose weights the kernels ask into the L2 cache
/// (`prefetcht1`) on a tile's first pass. Measured on a 2-core Intel Xeon (`avx512_bf16`, AMX),
/// every product of a SmolLM2 step (`step_products_speed`, alternating runs): asking one group
/// ahead into the L1 cache (`prefetcht0`, what the kernels did before) made a block of 4 rows
/// cost 1.25-1.27x one row in float32; into the L2 cache 2, 4 or 8 groups ahead, 1.04-1.10x,
/// and one row 5-10% faster. A request into L1 holds one of the core's few line-fill buffers
/// until the line arrives; the L2 has more room for requests in flight. 2, 4 and 8 were alike.
/// On a 2-core AMD EPYC (`avx512_bf16`, no AMX) the same change made one f32 row 7% faster and a
/// block of 4-5 rows 1.08-1.11x one row's cost instead of 1.14-1.21x (docs/benchmarks.md).
pub(super) const FETCH_AHEAD: usize = 4;
/// Groups per tile: every pass of up to [`ROWS`] input rows goes over a tile's weights (from
/// memory the first time, from the L2 cache after: 64 rows of 1,536 float32 columns are 393 KB)
/// while its inputs stay in the L1 cache. Measured: 16 groups beat 4 and 64 on blocks of 8-16
/// rows, and all three are alike below.
const TILE_GROUPS: usize = 16;

/// A weight matrix `[rows, cols]`, stored packed (module docs).
#[derive(Debug, Clone)]
pub(crate) struct Matrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// `cols` rounded up to a multiple of the layout's chunk ([`CHUNK`], [`PAIR_CHUNK`]).
    padded: usize,
    data: Data,
}

#[derive(Debug, Clone)]
enum Data {
    F32(Vec<f32>),
    /// bfloat16 bit patterns (the upper half of an f32).
    Bf16(Vec<u16>),
    /// bfloat16 bit patterns packed in chunks of [`PAIR_CHUNK`] for bfloat16 dot products
    /// (inputs rounded to bfloat16; [`pairs`]).
    Bf16Pairs(Vec<u16>),
    /// bfloat16 bit patterns packed for AMX tiles (inputs rounded to bfloat16; [`tiles`]).
    Bf16Tiles(Vec<u16>),
    /// int8 with one float32 scale per row: `W[j, k] = q[j, k] · scale[j]`.
    I8 {
        q: Vec<i8>,
        scale: Vec<f32>,
    },
}

impl Matrix {
    /// A float32 matrix from row-major data.
    pub(crate) fn f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        Self::packed(rows, cols, data, Data::F32, |v| v)
    }

    /// A bfloat16 matrix rounded (to nearest, ties to even) from row-major float32 data,
    /// multiplied with float32 inputs.
    pub(crate) fn bf16_from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        Self::packed(rows, cols, data, Data::Bf16, |v| {
            bf16::from_f32(v).to_bits()
        })
    }

    /// The same weights multiplied with inputs rounded to bfloat16, by the CPU's bfloat16 dot
    /// products ([`pairs`]; plain Rust, far slower, where it has none: see
    /// [`pairs::available`]).
    pub(crate) fn bf16_pairs_from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong length");
        let padded = cols.div_ceil(PAIR_CHUNK) * PAIR_CHUNK;
        let w = pack(rows, cols, padded, PAIR_CHUNK, |j, c| {
            bf16::from_f32(data[j * cols + c]).to_bits()
        });
        Matrix {
            rows,
            cols,
            padded,
            data: Data::Bf16Pairs(w),
        }
    }

    /// The same weights multiplied with inputs rounded to bfloat16 on the CPU's AMX tiles
    /// ([`tiles`]; only where [`tiles::available`]: there is no portable form).
    pub(crate) fn bf16_tiles_from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong length");
        // Callers check first (`Bf16Inputs::packing`): without tiles the product would be an
        // illegal instruction.
        assert!(tiles::available(), "AMX tiles are not available here");
        let padded = cols.div_ceil(PAIR_CHUNK) * PAIR_CHUNK;
        let w = tiles::pack(rows, cols, padded, |j, c| {
            bf16::from_f32(data[j * cols + c]).to_bits()
        });
        Matrix {
            rows,
            cols,
            padded,
            data: Data::Bf16Tiles(w),
        }
    }

    /// Symmetric int8 per row, as the export's int8 form quantises (`scale = max |w| / 127`,
    /// `q = round(w / scale)` to nearest, ties to even), the scales kept in float32.
    pub(crate) fn i8_from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong length");
        let scale: Vec<f32> = data
            .chunks_exact(cols.max(1))
            .map(|r| (r.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).max(1e-12))
            .collect();
        let padded = cols.div_ceil(CHUNK) * CHUNK;
        let q = pack(rows, cols, padded, CHUNK, |j, c| {
            (data[j * cols + c] / scale[j])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        });
        Matrix {
            rows,
            cols,
            padded,
            data: Data::I8 { q, scale },
        }
    }

    fn packed<T: Copy + Default>(
        rows: usize,
        cols: usize,
        data: &[f32],
        wrap: impl Fn(Vec<T>) -> Data,
        convert: impl Fn(f32) -> T,
    ) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong length");
        let padded = cols.div_ceil(CHUNK) * CHUNK;
        Matrix {
            rows,
            cols,
            padded,
            data: wrap(pack(rows, cols, padded, CHUNK, |j, c| {
                convert(data[j * cols + c])
            })),
        }
    }

    /// Bytes the weights take (padding included).
    pub(crate) fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len() * 4,
            Data::Bf16(v) | Data::Bf16Pairs(v) | Data::Bf16Tiles(v) => v.len() * 2,
            Data::I8 { q, scale } => q.len() + scale.len() * 4,
        }
    }

    /// Where element `(r, c)` lies in the packed data.
    fn at(&self, r: usize, c: usize) -> usize {
        let chunk = match self.data {
            Data::Bf16Pairs(_) => PAIR_CHUNK,
            Data::Bf16Tiles(_) => return tiles::at(r, c, self.padded),
            _ => CHUNK,
        };
        (r / GROUP) * GROUP * self.padded
            + (c / chunk) * GROUP * chunk
            + (r % GROUP) * chunk
            + c % chunk
    }

    /// Row `r` as float32 (an embedding lookup from a tied table).
    pub(crate) fn row_f32(&self, r: usize, out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            let i = self.at(r, c);
            *o = match &self.data {
                Data::F32(v) => v[i],
                Data::Bf16(v) | Data::Bf16Pairs(v) | Data::Bf16Tiles(v) => {
                    f32::from_bits((v[i] as u32) << 16)
                }
                Data::I8 { q, scale } => q[i] as f32 * scale[r],
            };
        }
    }

    /// `out[i, j] = Σₖ x[i, k] · W[j, k]` for `m` rows of `x` (`[m, cols]`) into `out`
    /// (`[m, rows]`), the outputs split between the pool's threads.
    pub(crate) fn product(&self, x: &[f32], m: usize, out: &mut [f32], pool: &Pool) {
        assert_eq!(x.len(), m * self.cols, "input of the wrong length");
        assert_eq!(out.len(), m * self.rows, "output of the wrong length");
        let xs = self.input(x, m);
        let groups = self.rows.div_ceil(GROUP);
        // Tiles split the outputs in whole groups of TILE_OUT.
        let unit = match self.data {
            Data::Bf16Tiles(_) => TILE_OUT / GROUP,
            _ => 1,
        };
        let per = groups.div_ceil(pool.threads()).div_ceil(unit) * unit;
        let out_ptr = SendPtr(out.as_mut_ptr());
        pool.run(&|p| {
            let lo = (p * per).min(groups);
            let hi = ((p + 1) * per).min(groups);
            // SAFETY: threads write disjoint column ranges (groups `lo..hi`) of `out`, which
            // outlives the call; `xs` holds `m` rows of `padded` columns.
            unsafe { self.product_groups(&xs, m, out_ptr.get(), lo, hi) }
        });
    }

    /// The same product on the calling thread only.
    #[cfg(test)]
    pub(crate) fn product_here(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "input of the wrong length");
        assert_eq!(out.len(), m * self.rows, "output of the wrong length");
        let xs = self.input(x, m);
        // SAFETY: `out` has `m * rows` elements, checked above.
        unsafe { self.product_groups(&xs, m, out.as_mut_ptr(), 0, self.rows.div_ceil(GROUP)) }
    }

    /// `x` as the kernels read it: rounded to bfloat16 for dot products, padded with zeros to
    /// `padded` columns.
    fn input<'a>(&self, x: &'a [f32], m: usize) -> Input<'a> {
        match self.data {
            Data::Bf16Pairs(_) | Data::Bf16Tiles(_) => {
                Input::Bf16(pairs::round_inputs(x, m, self.cols, self.padded))
            }
            _ => Input::F32(self.padded_input(x, m)),
        }
    }

    /// `x` with its rows padded with zeros to `padded` columns (borrowed when no padding is
    /// needed).
    fn padded_input<'a>(&self, x: &'a [f32], m: usize) -> std::borrow::Cow<'a, [f32]> {
        if self.padded == self.cols {
            return x.into();
        }
        let mut xs = vec![0f32; m * self.padded];
        for (dst, src) in xs
            .chunks_exact_mut(self.padded)
            .zip(x.chunks_exact(self.cols.max(1)))
        {
            dst[..self.cols].copy_from_slice(src);
        }
        xs.into()
    }

    /// Outputs of row groups `lo..hi` for every input row, written through `out` (`[m, rows]`).
    unsafe fn product_groups(&self, x: &Input, m: usize, out: *mut f32, lo: usize, hi: usize) {
        let (n, kp) = (self.rows, self.padded);
        match (&self.data, x) {
            (Data::F32(w), Input::F32(x)) => groups(w, n, kp, x, m, out, lo, hi, None, dots),
            (Data::Bf16(w), Input::F32(x)) => groups(w, n, kp, x, m, out, lo, hi, None, dots),
            (Data::I8 { q, scale }, Input::F32(x)) => {
                groups(q, n, kp, x, m, out, lo, hi, Some(scale), dots)
            }
            (Data::Bf16Pairs(w), Input::Bf16(x)) => {
                groups(w, n, kp, x, m, out, lo, hi, None, pairs::dots)
            }
            (Data::Bf16Tiles(w), Input::Bf16(x)) => {
                // Group bounds in whole tile groups (`product` splits on them).
                let unit = TILE_OUT / GROUP;
                tiles::product(w, n, kp, x, m, out, lo / unit, hi.div_ceil(unit))
            }
            _ => unreachable!("Matrix::input gives each form its inputs"),
        }
    }
}

/// A product's inputs as its form's kernels read them.
enum Input<'a> {
    F32(std::borrow::Cow<'a, [f32]>),
    Bf16(Vec<u16>),
}

/// The packed layout (module docs) of a `[rows, cols]` matrix in chunks of `width` columns,
/// whose element `(j, c)` is `value(j, c)`, zeros in the padding, in memory backed by 2 MB pages where the system allows.
fn pack<T: Copy + Default>(
    rows: usize,
    cols: usize,
    padded: usize,
    width: usize,
    value: impl Fn(usize, usize) -> T,
) -> Vec<T> {
    let groups = rows.div_ceil(GROUP);
    let items = (0..groups).flat_map(move |q| {
        (0..padded / width).flat_map(move |chunk| {
            (0..GROUP * width).map(move |e| (q * GROUP + e / width, chunk * width + e % width))
        })
    });
    huge_pages(
        items.map(|(j, c)| {
            if j < rows && c < cols {
                value(j, c)
            } else {
                T::default()
            }
        }),
        groups * GROUP * padded,
    )
}

/// A vector of `items` whose memory the kernel is asked to back with 2 MB pages (Linux's
/// transparent huge pages, where enabled for `madvise`): a product streams every weight once,
/// and with 4 KB pages the hardware prefetcher stops at every page boundary. Measured on a
/// 2-core AMD EPYC: a one-row product of SmolLM2's LM head at 28 GB/s with 2 MB pages against
/// 22 GB/s without.
pub(super) fn huge_pages<T: Copy>(items: impl Iterator<Item = T>, len: usize) -> Vec<T> {
    const HUGE: usize = 1 << 21;
    let size = std::mem::size_of::<T>();
    let mut v: Vec<T> = Vec::with_capacity(len + HUGE / size);
    #[cfg(target_os = "linux")]
    {
        let start = v.as_ptr() as usize;
        let first = start.div_ceil(HUGE) * HUGE;
        let end = start + v.capacity() * size;
        if end > first + HUGE {
            let bytes = (end - first) / HUGE * HUGE;
            // SAFETY: the range lies inside the vector's allocation; the advice changes how
            // pages are backed, not what they hold. A refusal only costs speed.
            unsafe { libc::madvise(first as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
        }
    }
    v.extend(items);
    debug_assert_eq!(v.len(), len);
    v
}

/// Row groups `lo..hi` of packed weights `w` (`n` outputs, `kp` padded columns) times the `m`
/// rows of `x` (`[m, kp]`): for each tile of [`TILE_GROUPS`] groups, the input rows in passes
/// of up to [`ROWS`] (the first pass reads the tile from memory, the others from the cache),
/// each group's outputs computed by `dots` (inputs, rows, padded columns, the group's weights,
/// outputs, whether to fetch the next group).
#[allow(clippy::too_many_arguments)]
unsafe fn groups<X, T>(
    w: &[T],
    n: usize,
    kp: usize,
    x: &[X],
    m: usize,
    out: *mut f32,
    lo: usize,
    hi: usize,
    scale: Option<&[f32]>,
    dots: impl Fn(&[X], usize, usize, &[T], &mut [[f32; ROWS]; GROUP], bool),
) {
    let mut acc = [[0f32; ROWS]; GROUP];
    let mut q0 = lo;
    while q0 < hi {
        let q1 = (q0 + TILE_GROUPS).min(hi);
        // Passes of at most ROWS rows, as even as can be (8 rows: 4 + 4, 9: 5 + 4).
        let passes = m.div_ceil(ROWS);
        let mut r0 = 0;
        for p in 0..passes {
            let g = m / passes + usize::from(p < m % passes);
            let xs = &x[r0 * kp..(r0 + g) * kp];
            for q in q0..q1 {
                let wq = &w[q * GROUP * kp..(q + 1) * GROUP * kp];
                // The first pass over a tile streams it from memory: later groups are fetched
                // ahead.
                dots(xs, g, kp, wq, &mut acc, r0 == 0);
                for (j, row) in acc.iter().enumerate() {
                    let col = q * GROUP + j;
                    if col >= n {
                        break;
                    }
                    // int8: each dot product of the integers, then its row's scale.
                    let s = scale.map(|s| s[col]);
                    for (r, &v) in row.iter().enumerate().take(g) {
                        *out.add((r0 + r) * n + col) = match s {
                            Some(s) => v * s,
                            None => v,
                        };
                    }
                }
            }
            r0 += g;
        }
        q0 = q1;
    }
}

/// `out[j][r] = x[r] · w[j]` for the four packed weight rows `w` (`[kp / 16][4][16]`) and `g`
/// rows of `x` (`[g, kp]`), `1 <= g <= ROWS`.
fn dots<T: Weight>(
    x: &[f32],
    g: usize,
    kp: usize,
    w: &[T],
    out: &mut [[f32; ROWS]; GROUP],
    fetch: bool,
) {
    debug_assert!((1..=ROWS).contains(&g) && x.len() >= g * kp && w.len() >= GROUP * kp);
    #[cfg(target_arch = "x86_64")]
    {
        use super::kernels::simd;
        if simd::avx512() {
            // SAFETY: AVX-512F, AVX2 and FMA were detected; lengths are checked above.
            unsafe { T::dots512(x.as_ptr(), g, kp, w.as_ptr(), out, fetch) };
            return;
        }
        if simd::available() {
            // SAFETY: AVX2 and FMA were detected; lengths are checked above.
            unsafe { T::dots256(x.as_ptr(), g, kp, w.as_ptr(), out) };
            return;
        }
    }
    portable_dots(x, g, kp, w, out);
}

/// The order of operations every kernel follows, in plain Rust: 16 lanes, lane `l` adding the
/// products of columns `l, l + 16, ...` in order (fused multiply-adds), then lane `l` plus lane
/// `l + 8`, then the [`hsum`](super::kernels::simd) tree: `(l, l + 4)`, `(l, l + 2)`, `(0, 1)`.
fn portable_dots<T: Weight>(
    x: &[f32],
    g: usize,
    kp: usize,
    w: &[T],
    out: &mut [[f32; ROWS]; GROUP],
) {
    for (j, out_j) in out.iter_mut().enumerate() {
        for (r, o) in out_j.iter_mut().enumerate().take(g) {
            let mut a = [0f32; CHUNK];
            for chunk in 0..kp / CHUNK {
                for (l, a) in a.iter_mut().enumerate() {
                    let wv = w[chunk * BLOCK + j * CHUNK + l].widen();
                    *a = wv.mul_add(x[r * kp + chunk * CHUNK + l], *a);
                }
            }
            *o = lane_sum(&a);
        }
    }
}

/// The 16 lanes of an accumulator summed in the kernels' fixed tree: lane `l` plus lane
/// `l + 8`, then the [`hsum`](super::kernels::simd) tree: `(l, l + 4)`, `(l, l + 2)`, `(0, 1)`.
pub(super) fn lane_sum(a: &[f32; CHUNK]) -> f32 {
    let s: [f32; 8] = std::array::from_fn(|l| a[l] + a[l + 8]);
    let q = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    (q[0] + q[2]) + (q[1] + q[3])
}

/// Weight element types: float32, bfloat16 bit patterns and int8, each widened exactly to
/// float32 as it is used.
trait Weight: Copy {
    fn widen(self) -> f32;
    /// [`dots`] with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dots512(
        x: *const f32,
        g: usize,
        kp: usize,
        w: *const Self,
        out: &mut [[f32; ROWS]; GROUP],
        fetch: bool,
    );
    /// [`dots`] with AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dots256(
        x: *const f32,
        g: usize,
        kp: usize,
        w: *const Self,
        out: &mut [[f32; ROWS]; GROUP],
    );
}

macro_rules! weight {
    ($t:ty, $widen:expr, $k512:ident, $k256:ident) => {
        impl Weight for $t {
            fn widen(self) -> f32 {
                $widen(self)
            }
            #[cfg(target_arch = "x86_64")]
            unsafe fn dots512(
                x: *const f32,
                g: usize,
                kp: usize,
                w: *const Self,
                out: &mut [[f32; ROWS]; GROUP],
                fetch: bool,
            ) {
                match (g, fetch) {
                    (1, true) => simd::$k512::<1, true>(x, kp, w, out),
                    (2, true) => simd::$k512::<2, true>(x, kp, w, out),
                    (3, true) => simd::$k512::<3, true>(x, kp, w, out),
                    (4, true) => simd::$k512::<4, true>(x, kp, w, out),
                    (5, true) => simd::$k512::<5, true>(x, kp, w, out),
                    (_, true) => simd::$k512::<6, true>(x, kp, w, out),
                    (1, false) => simd::$k512::<1, false>(x, kp, w, out),
                    (2, false) => simd::$k512::<2, false>(x, kp, w, out),
                    (3, false) => simd::$k512::<3, false>(x, kp, w, out),
                    (4, false) => simd::$k512::<4, false>(x, kp, w, out),
                    (5, false) => simd::$k512::<5, false>(x, kp, w, out),
                    (_, false) => simd::$k512::<6, false>(x, kp, w, out),
                }
            }
            #[cfg(target_arch = "x86_64")]
            unsafe fn dots256(
                x: *const f32,
                g: usize,
                kp: usize,
                w: *const Self,
                out: &mut [[f32; ROWS]; GROUP],
            ) {
                for (j, o) in out.iter_mut().enumerate() {
                    let wj = w.add(j * CHUNK);
                    match g {
                        1 => simd::$k256::<1>(x, kp, wj, o),
                        2 => simd::$k256::<2>(x, kp, wj, o),
                        3 => simd::$k256::<3>(x, kp, wj, o),
                        4 => simd::$k256::<4>(x, kp, wj, o),
                        5 => simd::$k256::<5>(x, kp, wj, o),
                        _ => simd::$k256::<6>(x, kp, wj, o),
                    }
                }
            }
        }
    };
}

weight!(f32, |v: f32| v, group512_f32, row256_f32);
weight!(
    u16,
    |v: u16| f32::from_bits((v as u32) << 16),
    group512_bf16,
    row256_bf16
);
weight!(i8, |v: i8| v as f32, group512_i8, row256_i8);

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{BLOCK, CHUNK, FETCH_AHEAD, GROUP, ROWS};
    use crate::native::kernels::simd::{hsum, hsum16};

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    unsafe fn load16_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    unsafe fn load16_bf16(p: *const u16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    unsafe fn load16_i8(p: *const i8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load8_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load8_bf16(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load8_i8(p: *const i8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// The four weight rows of a packed group times `G` input rows: one 16-lane accumulator
    /// per output (4 x G of them in registers), one sequential stream of weights.
    macro_rules! group512 {
        ($name:ident, $t:ty, $load:ident) => {
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            pub(super) unsafe fn $name<const G: usize, const FETCH: bool>(
                x: *const f32,
                kp: usize,
                w: *const $t,
                out: &mut [[f32; ROWS]; GROUP],
            ) {
                // One array of accumulators per weight row (a two-dimensional array made LLVM
                // keep some of them on the stack).
                let mut a0 = [_mm512_setzero_ps(); G];
                let mut a1 = [_mm512_setzero_ps(); G];
                let mut a2 = [_mm512_setzero_ps(); G];
                let mut a3 = [_mm512_setzero_ps(); G];
                let mut c = 0;
                // Weights FETCH_AHEAD groups on, asked into the L2 cache while this group
                // computes. (Past the last group the lines are not the weights': a prefetch never
                // faults.)
                let next = w.wrapping_add(FETCH_AHEAD * GROUP * kp);
                let lines = BLOCK * size_of::<$t>() / 64;
                while c < kp {
                    if FETCH {
                        let pf = next.wrapping_add(c * GROUP) as *const i8;
                        for l in 0..lines {
                            _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(l * 64));
                        }
                    }
                    let wc = w.add(c * GROUP);
                    let w0 = $load(wc);
                    let w1 = $load(wc.add(CHUNK));
                    let w2 = $load(wc.add(2 * CHUNK));
                    let w3 = $load(wc.add(3 * CHUNK));
                    for r in 0..G {
                        let xv = _mm512_loadu_ps(x.add(r * kp + c));
                        a0[r] = _mm512_fmadd_ps(w0, xv, a0[r]);
                        a1[r] = _mm512_fmadd_ps(w1, xv, a1[r]);
                        a2[r] = _mm512_fmadd_ps(w2, xv, a2[r]);
                        a3[r] = _mm512_fmadd_ps(w3, xv, a3[r]);
                    }
                    c += CHUNK;
                }
                for (j, a) in [a0, a1, a2, a3].iter().enumerate() {
                    for r in 0..G {
                        out[j][r] = hsum16(a[r]);
                    }
                }
            }
        };
    }

    group512!(group512_f32, f32, load16_f32);
    group512!(group512_bf16, u16, load16_bf16);
    group512!(group512_i8, i8, load16_i8);

    /// One weight row of a packed group (`w` at its first chunk, chunks `BLOCK` apart) times
    /// `G` input rows: two 8-lane accumulators per output (lanes 0-7 and 8-15 of the 16).
    macro_rules! row256 {
        ($name:ident, $t:ty, $load:ident) => {
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name<const G: usize>(
                x: *const f32,
                kp: usize,
                w: *const $t,
                out: &mut [f32; ROWS],
            ) {
                let mut a0 = [_mm256_setzero_ps(); G];
                let mut a1 = [_mm256_setzero_ps(); G];
                let mut c = 0;
                while c < kp {
                    let wc = w.add(c / CHUNK * BLOCK);
                    let (w0, w1) = ($load(wc), $load(wc.add(8)));
                    for r in 0..G {
                        let xr = x.add(r * kp + c);
                        a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), a0[r]);
                        a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), a1[r]);
                    }
                    c += CHUNK;
                }
                for r in 0..G {
                    out[r] = hsum(_mm256_add_ps(a0[r], a1[r]));
                }
            }
        };
    }

    row256!(row256_f32, f32, load8_f32);
    row256!(row256_bf16, u16, load8_bf16);
    row256!(row256_i8, i8, load8_i8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::kernels::tests::data;

    fn pool() -> Pool {
        Pool::new(2).unwrap()
    }

    /// Weight forms: f32, bf16, int8, bf16 with bf16 dot products, and bf16 on AMX tiles
    /// where this machine has them (tiles have no portable form).
    const FORMS: usize = 5;

    /// The forms this machine computes.
    fn forms() -> std::ops::Range<usize> {
        0..if tiles::available() { FORMS } else { FORMS - 1 }
    }

    fn form(form: usize, n: usize, k: usize, w: &[f32]) -> Matrix {
        match form {
            0 => Matrix::f32(n, k, w),
            1 => Matrix::bf16_from_f32(n, k, w),
            2 => Matrix::i8_from_f32(n, k, w),
            3 => Matrix::bf16_pairs_from_f32(n, k, w),
            _ => Matrix::bf16_tiles_from_f32(n, k, w),
        }
    }

    /// Products agree with a float64 reference, for shapes with and without padding.
    #[test]
    fn products_match_a_float64_reference() {
        let pool = pool();
        for &(n, k, m) in &[
            (37, 576, 1),
            (50, 100, 3),
            (33, 7, 6),
            (16, 1536, 9),
            (5, 24, 2),
            (130, 70, 17),
            (64, 64, 33),
        ] {
            let w = data(n * k, 1);
            let x = data(m * k, 2);
            for f in forms() {
                let mat = form(f, n, k, &w);
                let mut out = vec![0f32; m * n];
                mat.product(&x, m, &mut out, &pool);
                let mut row = vec![0f32; k];
                // The dot-product and tile forms multiply the inputs rounded to bfloat16.
                let xf: Vec<f32> = match f {
                    3 | 4 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
                    _ => x.clone(),
                };
                for j in 0..n {
                    mat.row_f32(j, &mut row);
                    for i in 0..m {
                        let want: f64 = (0..k).map(|c| xf[i * k + c] as f64 * row[c] as f64).sum();
                        let got = out[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "n={n} k={k} m={m} form {f}: [{i},{j}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Packing keeps every weight where `row_f32` finds it (and rounds as documented).
    #[test]
    fn packed_rows_read_back() {
        let (n, k) = (7, 40);
        let w = data(n * k, 9);
        let mut row = vec![0f32; k];
        for f in forms() {
            let mat = form(f, n, k, &w);
            for j in 0..n {
                mat.row_f32(j, &mut row);
                for c in 0..k {
                    let v = w[j * k + c];
                    let want = match f {
                        0 => v,
                        1 | 3 | 4 => bf16::from_f32(v).to_f32(),
                        _ => row[c],
                    };
                    assert_eq!(row[c], want, "form {f} [{j},{c}]");
                    assert!((row[c] - v).abs() <= 0.5f32 / 127.0 + 1e-6, "form {f}");
                }
            }
        }
    }

    /// Row `r` of a block is bit-for-bit the one-row product of that row: what makes a verified
    /// block score as the greedy steps would.
    #[test]
    fn a_row_of_a_block_equals_its_one_row_product() {
        let pool = pool();
        for &(n, k) in &[(40, 576), (19, 1536), (9, 45), (130, 64)] {
            let w = data(n * k, 3);
            for f in forms() {
                let mat = form(f, n, k, &w);
                for m in [2, 4, 5, 11, 16, 17, 40] {
                    let x = data(m * k, 4 + m as u32);
                    let mut block = vec![0f32; m * n];
                    mat.product(&x, m, &mut block, &pool);
                    for i in 0..m {
                        let mut one = vec![0f32; n];
                        mat.product_here(&x[i * k..(i + 1) * k], 1, &mut one);
                        assert_eq!(
                            &block[i * n..(i + 1) * n],
                            &one[..],
                            "form {f} m={m} row {i}"
                        );
                    }
                }
            }
        }
    }

    /// The AVX-512 kernel, the AVX2 one and the portable one add in the same order: identical
    /// numbers, for every weight form.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_avx2_and_portable_kernels_agree_exactly() {
        use crate::native::kernels::simd as has;
        fn check<T: Weight + std::fmt::Debug>(name: &str, kp: usize, w: &[T], x: &[f32]) {
            for g in 1..=ROWS {
                let mut plain = [[0f32; ROWS]; GROUP];
                portable_dots(x, g, kp, w, &mut plain);
                if has::available() {
                    let mut narrow = [[0f32; ROWS]; GROUP];
                    unsafe { T::dots256(x.as_ptr(), g, kp, w.as_ptr(), &mut narrow) };
                    assert_eq!(narrow, plain, "{name} AVX2 kp={kp} g={g}");
                }
                if has::avx512() {
                    let mut wide = [[0f32; ROWS]; GROUP];
                    unsafe { T::dots512(x.as_ptr(), g, kp, w.as_ptr(), &mut wide, true) };
                    assert_eq!(wide, plain, "{name} AVX-512 kp={kp} g={g}");
                }
            }
        }
        for kp in [16, 48, 576, 1024] {
            let w = data(GROUP * kp, 7);
            let x = data(ROWS * kp, 8);
            check("f32", kp, &w, &x);
            let wb: Vec<u16> = w.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            check("bf16", kp, &wb, &x);
            let wq: Vec<i8> = w.iter().map(|&v| (v * 254.0) as i8).collect();
            check("int8", kp, &wq, &x);
        }
    }

    /// Speed of one product of SmolLM2's LM head (`cargo test --release --lib product_speed --
    /// --ignored --nocapture`).
    #[test]
    #[ignore]
    fn product_speed() {
        let pool = Pool::new(2).unwrap();
        let (n, k) = (49152, 576);
        let data: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
        for f in forms() {
            let w = form(f, n, k, &data);
            for m in [1, 2, 4, 8, 16, 32] {
                let x = vec![0.5f32; m * k];
                let mut out = vec![0f32; m * n];
                let mut best = f64::MAX;
                for _ in 0..15 {
                    let t0 = std::time::Instant::now();
                    w.product(&x, m, &mut out, &pool);
                    best = best.min(t0.elapsed().as_secs_f64());
                }
                println!(
                    "form {f} m {m}: {:.2} ms, {:.1} GB/s",
                    best * 1e3,
                    w.bytes() as f64 / best / 1e9
                );
            }
        }
    }

    /// Every product of one SmolLM2-shaped step (30 layers of queries/keys/values, output,
    /// gate/up and down projections, then the LM head), weights from memory, for blocks of a
    /// few rows (`cargo test --release --lib step_products_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn step_products_speed() {
        let pool = Pool::new(2).unwrap();
        let shapes = [
            (960, 576),
            (576, 576),
            (3072, 576),
            (576, 1536),
            (49152, 576),
        ];
        for (f, name) in ["f32", "bf16", "int8", "bf16 dot products", "bf16 tiles"]
            .into_iter()
            .enumerate()
            .take(forms().end)
        {
            let mats: Vec<Matrix> = (0..30 * 4 + 1)
                .map(|i| {
                    let (n, k) = if i == 120 { shapes[4] } else { shapes[i % 4] };
                    let w: Vec<f32> = (0..n * k)
                        .map(|e| ((e + i) % 13) as f32 * 0.01 - 0.06)
                        .collect();
                    form(f, n, k, &w)
                })
                .collect();
            for m in [1, 2, 4, 5, 8, 16] {
                let xs: Vec<Vec<f32>> = mats.iter().map(|w| vec![0.5f32; m * w.cols]).collect();
                let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| vec![0f32; m * w.rows]).collect();
                let mut best = f64::MAX;
                for _ in 0..7 {
                    let t0 = std::time::Instant::now();
                    for ((w, x), out) in mats.iter().zip(&xs).zip(&mut outs) {
                        w.product(x, m, out, &pool);
                    }
                    best = best.min(t0.elapsed().as_secs_f64());
                }
                println!("{name} m {m}: {:.2} ms", best * 1e3);
            }
        }
    }
}
