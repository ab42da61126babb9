//! The matrix products of the native decoder: `y = x Wᵀ` for a few rows `x` against a weight
//! matrix `W` stored row-major (`[out, in]`, one output per row) in float32 or bfloat16.
//!
//! A decode step multiplies one row (a verify block a few) by every weight of the model once, so
//! the products are bound by how fast the weights come from memory, not by arithmetic. Each
//! weight row is read once and multiplied into up to four input rows at a time; the outputs are
//! split between threads in contiguous ranges; weights of an output tile stay in the cache while
//! every group of input rows passes over them (a prompt of many rows).
//!
//! **Every output is computed the same way whatever the number of rows** (the same lanes, the
//! same order of additions): row `r` of a block gets bit-for-bit the number a one-row call would
//! give it. So a block verified in one call scores exactly as the greedy steps that would have
//! scored its tokens one by one, and blockwise output equals greedy output with no near-tie
//! caveat from the products.

use half::bf16;

use super::pool::Pool;

/// A weight matrix `[rows, cols]`, row-major.
#[derive(Debug, Clone)]
pub(crate) struct Matrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    data: Data,
}

#[derive(Debug, Clone)]
enum Data {
    F32(Vec<f32>),
    /// bfloat16 bit patterns (the upper half of an f32).
    Bf16(Vec<u16>),
    /// int8 with one float32 scale per row: `W[j, k] = q[j, k] · scale[j]`.
    I8 {
        q: Vec<i8>,
        scale: Vec<f32>,
    },
}

/// Output rows computed per weight-tile pass: small enough that a tile of even the widest input
/// (the MLP's down projection) stays in a core's L2 cache.
const TILE: usize = 16;

impl Matrix {
    /// A float32 matrix from row-major data.
    pub(crate) fn f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong length");
        Matrix {
            rows,
            cols,
            data: Data::F32(huge_pages(data.iter().copied(), data.len())),
        }
    }

    /// A bfloat16 matrix rounded (to nearest, ties to even) from row-major float32 data.
    pub(crate) fn bf16_from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong length");
        Matrix {
            rows,
            cols,
            data: Data::Bf16(huge_pages(
                data.iter().map(|&v| bf16::from_f32(v).to_bits()),
                data.len(),
            )),
        }
    }

    /// Symmetric int8 per row, as the export's int8 form quantises (`scale = max |w| / 127`,
    /// `q = round(w / scale)` to nearest, ties to even), the scales kept in float32.
    pub(crate) fn i8_from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong length");
        let scale: Vec<f32> = data
            .chunks_exact(cols)
            .map(|r| (r.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).max(1e-12))
            .collect();
        let q = huge_pages(
            data.iter()
                .enumerate()
                .map(|(i, &v)| (v / scale[i / cols]).round_ties_even().clamp(-127.0, 127.0) as i8),
            data.len(),
        );
        Matrix {
            rows,
            cols,
            data: Data::I8 { q, scale },
        }
    }

    /// Bytes the weights take.
    pub(crate) fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len() * 4,
            Data::Bf16(v) => v.len() * 2,
            Data::I8 { q, scale } => q.len() + scale.len() * 4,
        }
    }

    /// Row `r` as float32 (an embedding lookup from a tied table).
    pub(crate) fn row_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[r * c..(r + 1) * c]),
            Data::Bf16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[r * c..(r + 1) * c]) {
                    *o = f32::from_bits((b as u32) << 16);
                }
            }
            Data::I8 { q, scale } => {
                for (o, &b) in out.iter_mut().zip(&q[r * c..(r + 1) * c]) {
                    *o = b as f32 * scale[r];
                }
            }
        }
    }

    /// `out[i, j] = Σₖ x[i, k] · W[j, k]` for `m` rows of `x` (`[m, cols]`) into `out`
    /// (`[m, rows]`), the outputs split between the pool's threads.
    pub(crate) fn product(&self, x: &[f32], m: usize, out: &mut [f32], pool: &Pool) {
        assert_eq!(x.len(), m * self.cols, "input of the wrong length");
        assert_eq!(out.len(), m * self.rows, "output of the wrong length");
        let parts = pool.threads();
        // Contiguous output ranges of whole tiles, one per thread.
        let tiles = self.rows.div_ceil(TILE);
        let per = tiles.div_ceil(parts) * TILE;
        let out_ptr = SendPtr(out.as_mut_ptr());
        pool.run(&|p| {
            let lo = (p * per).min(self.rows);
            let hi = ((p + 1) * per).min(self.rows);
            // SAFETY: threads write disjoint column ranges `lo..hi` of `out`, which outlives
            // the call.
            unsafe { self.product_range(x, m, out_ptr.get(), lo, hi) }
        });
    }

    /// The same product on the calling thread only.
    #[cfg(test)]
    pub(crate) fn product_here(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "input of the wrong length");
        assert_eq!(out.len(), m * self.rows, "output of the wrong length");
        // SAFETY: `out` has `m * rows` elements, checked above.
        unsafe { self.product_range(x, m, out.as_mut_ptr(), 0, self.rows) }
    }

    /// Outputs `lo..hi` of every row, written through `out` (`[m, rows]`).
    unsafe fn product_range(&self, x: &[f32], m: usize, out: *mut f32, lo: usize, hi: usize) {
        match &self.data {
            Data::F32(w) => range(w, self.rows, self.cols, x, m, out, lo, hi),
            Data::Bf16(w) => range(w, self.rows, self.cols, x, m, out, lo, hi),
            Data::I8 { q, scale } => {
                range(q, self.rows, self.cols, x, m, out, lo, hi);
                // Each dot product of the integers, then its row's scale.
                for r in 0..m {
                    for (j, &sc) in scale.iter().enumerate().take(hi).skip(lo) {
                        *out.add(r * self.rows + j) *= sc;
                    }
                }
            }
        }
    }
}

/// [`Matrix::product_range`] for one weight type.
#[allow(clippy::too_many_arguments)]
unsafe fn range<T: Widen>(
    w: &[T],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: *mut f32,
    lo: usize,
    hi: usize,
) {
    let mut acc = [[0f32; 4]; 4];
    let mut t0 = lo;
    while t0 < hi {
        let t1 = (t0 + TILE).min(hi);
        let mut r0 = 0;
        while r0 < m {
            let g = (m - r0).min(4);
            let xs = &x[r0 * k..(r0 + g) * k];
            // The first group of rows streams the tile from memory (one weight row at a time);
            // the others find it in the cache.
            let step = if r0 == 0 { 1 } else { outputs_per_call(m) };
            let mut j = t0;
            while j < t1 {
                let nj = if j + step <= t1 { step } else { 1 };
                dots(xs, g, k, &w[j * k..(j + nj) * k], nj, &mut acc);
                for (jj, row) in acc.iter().enumerate().take(nj) {
                    for (r, &v) in row.iter().enumerate().take(g) {
                        *out.add((r0 + r) * n + j + jj) = v;
                    }
                }
                j += nj;
            }
            r0 += g;
        }
        t0 = t1;
    }
}

/// A vector of `items` whose memory the kernel is asked to back with 2 MB pages (Linux's
/// transparent huge pages, where enabled for `madvise`): a product streams every weight once,
/// and with 4 KB pages the hardware prefetcher stops at every page boundary. Measured on a
/// 2-core AMD EPYC: a one-row product of SmolLM2's LM head at 28 GB/s with 2 MB pages against
/// 22 GB/s without.
fn huge_pages<T: Copy>(items: impl Iterator<Item = T>, len: usize) -> Vec<T> {
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
    v
}

/// A pointer into one output buffer, handed to the threads of one `Pool::run`, each writing
/// its own part.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only to hand disjoint output ranges to the threads of one scope.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Outputs per kernel call for the groups of rows after a tile's first: four with AVX-512 (its
/// 32 registers hold 4 x 4 accumulators), as these find the tile in the cache. While weights
/// stream from memory, one weight row at a time is faster: interleaving the streams of 4 weight
/// rows made a one-row product 2x slower, and the first group of an 8-row product 2.4x slower,
/// on an AMD EPYC.
fn outputs_per_call(m: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if m > 4 && simd::avx512() {
        return 4;
    }
    let _ = m;
    1
}

/// `out[j][r] = x[r] · w[j]` for `nj` weight rows of `w` (`[nj, k]`) and `g` rows of `x`
/// (`[g, k]`), `g <= 4`, `nj` 1 or [`outputs_per_call`]'s.
fn dots<T: Widen>(x: &[f32], g: usize, k: usize, w: &[T], nj: usize, out: &mut [[f32; 4]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if simd::avx512() {
        // SAFETY: AVX-512F, AVX2 and FMA were detected; lengths are checked by the callers.
        unsafe { T::simd512(x, g, k, w, nj, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX2 and FMA were detected; slice lengths are checked by the callers.
        unsafe { T::simd(x, g, k, w, nj, out) };
        return;
    }
    for j in 0..nj {
        let mut acc = [0f32; 4];
        portable::dots(x, g, k, &mut acc, |i| w[j * k + i].widen());
        out[j] = acc;
    }
}

/// Weight element types: float32, and bfloat16 bit patterns widened exactly to float32.
trait Widen: Copy {
    fn widen(self) -> f32;
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd(x: &[f32], g: usize, k: usize, w: &[Self], nj: usize, out: &mut [[f32; 4]; 4]);
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd512(
        x: &[f32],
        g: usize,
        k: usize,
        w: &[Self],
        nj: usize,
        out: &mut [[f32; 4]; 4],
    );
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd(x: &[f32], g: usize, k: usize, w: &[f32], nj: usize, out: &mut [[f32; 4]; 4]) {
        simd::dots_f32(x, g, k, w, nj, out)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd512(
        x: &[f32],
        g: usize,
        k: usize,
        w: &[f32],
        nj: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        simd::dots512_f32(x, g, k, w, nj, out)
    }
}

impl Widen for i8 {
    fn widen(self) -> f32 {
        self as f32
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd(x: &[f32], g: usize, k: usize, w: &[i8], nj: usize, out: &mut [[f32; 4]; 4]) {
        simd::dots_i8(x, g, k, w, nj, out)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd512(x: &[f32], g: usize, k: usize, w: &[i8], nj: usize, out: &mut [[f32; 4]; 4]) {
        simd::dots512_i8(x, g, k, w, nj, out)
    }
}

impl Widen for u16 {
    fn widen(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd(x: &[f32], g: usize, k: usize, w: &[u16], nj: usize, out: &mut [[f32; 4]; 4]) {
        simd::dots_bf16(x, g, k, w, nj, out)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd512(
        x: &[f32],
        g: usize,
        k: usize,
        w: &[u16],
        nj: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        simd::dots512_bf16(x, g, k, w, nj, out)
    }
}

/// `scores[r, s] = q[r] · keys[s]` for the `m` query rows `q` (`[m, k]`) and `n` keys
/// (`[n, k]`): attention's scores, each with the products' order of additions (one query gets
/// the same score whatever the others).
pub(crate) fn scores(q: &[f32], m: usize, keys: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert!(q.len() >= m * k && keys.len() >= n * k && out.len() >= m * n && m <= 4);
    // SAFETY: `out` holds `m * n` values, checked above.
    unsafe { range(keys, n, k, q, m, out.as_mut_ptr(), 0, n) }
}

/// `out[r] = Σₛ p[r, s] · values[s]` for `m` rows of weights `p` (`[m, n]`, zeros skipped)
/// over `n` values (`[n, k]`): attention's weighted sums, the values in slot order.
pub(crate) fn weighted_sums(
    p: &[f32],
    m: usize,
    values: &[f32],
    n: usize,
    k: usize,
    out: &mut [f32],
) {
    assert!(p.len() >= m * n && values.len() >= n * k && out.len() >= m * k);
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX2 and FMA were detected; lengths are checked above.
        unsafe { simd::weighted_sums(p, m, values, n, k, out) };
        return;
    }
    portable::weighted_sums(p, m, values, n, k, out);
}

/// `out[i] = gate[i] · σ(gate[i]) · up[i]` (SiLU-gated MLP), the exponential vectorised.
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX2 and FMA were detected; lengths are checked above.
        unsafe { simd::silu_mul(gate, up, out) };
        return;
    }
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// `row[i] = exp(row[i] - max)` in place, returning their sum (a softmax's numerators; slots
/// at `-inf` become 0), the exponential vectorised and the sum taken in a fixed order.
pub(crate) fn exp_shifted(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { simd::exp_shifted(row, max) };
    }
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

/// The same order of operations as the vector kernels, in plain Rust: 2 accumulators of 8
/// lanes per row over chunks of 16, a last chunk of 8 into the first, the lanes summed in a
/// fixed tree, then the tail of `k % 8` one by one.
mod portable {
    pub(super) fn weighted_sums(
        p: &[f32],
        m: usize,
        values: &[f32],
        n: usize,
        k: usize,
        out: &mut [f32],
    ) {
        out[..m * k].fill(0.0);
        for s in 0..n {
            let v = &values[s * k..(s + 1) * k];
            for r in 0..m {
                let w = p[r * n + s];
                if w != 0.0 {
                    for (o, &x) in out[r * k..(r + 1) * k].iter_mut().zip(v) {
                        *o += w * x;
                    }
                }
            }
        }
    }

    pub(super) fn dots(
        x: &[f32],
        g: usize,
        k: usize,
        acc: &mut [f32; 4],
        w: impl Fn(usize) -> f32,
    ) {
        for r in 0..g {
            let xr = &x[r * k..(r + 1) * k];
            let mut a = [[0f32; 8]; 2];
            let mut i = 0;
            while i + 16 <= k {
                for h in 0..2 {
                    for l in 0..8 {
                        a[h][l] = w(i + 8 * h + l).mul_add(xr[i + 8 * h + l], a[h][l]);
                    }
                }
                i += 16;
            }
            if i + 8 <= k {
                for l in 0..8 {
                    a[0][l] = w(i + l).mul_add(xr[i + l], a[0][l]);
                }
                i += 8;
            }
            let mut s = [0f32; 8];
            for l in 0..8 {
                s[l] = a[0][l] + a[1][l];
            }
            let q = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
            let d = [q[0] + q[2], q[1] + q[3]];
            let mut total = d[0] + d[1];
            while i < k {
                total = w(i).mul_add(xr[i], total);
                i += 1;
            }
            acc[r] = total;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    /// Whether this CPU has AVX2 and FMA (checked once).
    pub(super) fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// Whether it also has AVX-512F (checked once).
    pub(super) fn avx512() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| available() && is_x86_feature_detected!("avx512f"))
    }

    /// The lanes summed in the portable tree's order: (l, l + 4), then (l, l + 2), then (0, 1).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let s = _mm_add_ss(d, _mm_shuffle_ps(d, d, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_i8(p: *const i8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    macro_rules! dots_kernel {
        ($name:ident, $rows:ident, $t:ty, $load:ident, $widen:expr) => {
            /// `J` outputs (weight rows `j0..j0 + J`, `k` apart) times `G` input rows at once:
            /// `2 J G` independent accumulators, in registers. Each output's arithmetic is the
            /// same whatever `J` and `G`.
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            unsafe fn $rows<const J: usize, const G: usize>(
                xp: *const f32,
                k: usize,
                wp: *const $t,
                out: &mut [[f32; 4]; 4],
            ) {
                let mut a0 = [[_mm256_setzero_ps(); G]; J];
                let mut a1 = [[_mm256_setzero_ps(); G]; J];
                let mut i = 0;
                while i + 16 <= k {
                    for j in 0..J {
                        let w0 = $load(wp.add(j * k + i));
                        let w1 = $load(wp.add(j * k + i + 8));
                        for r in 0..G {
                            let xr = xp.add(r * k + i);
                            a0[j][r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), a0[j][r]);
                            a1[j][r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), a1[j][r]);
                        }
                    }
                    i += 16;
                }
                if i + 8 <= k {
                    for j in 0..J {
                        let w0 = $load(wp.add(j * k + i));
                        for r in 0..G {
                            a0[j][r] =
                                _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(r * k + i)), a0[j][r]);
                        }
                    }
                    i += 8;
                }
                for j in 0..J {
                    for r in 0..G {
                        let mut total = hsum(_mm256_add_ps(a0[j][r], a1[j][r]));
                        let (xr, wr) = (xp.add(r * k), wp.add(j * k));
                        for c in i..k {
                            let wc: f32 = $widen(*wr.add(c));
                            total = wc.mul_add(*xr.add(c), total);
                        }
                        out[j][r] = total;
                    }
                }
            }

            /// `out[j][r] = x[r] · w[j]` for `J = out_j` weight rows and `g` input rows, with
            /// `J · g <= 4`.
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name(
                x: &[f32],
                g: usize,
                k: usize,
                w: &[$t],
                nj: usize,
                out: &mut [[f32; 4]; 4],
            ) {
                debug_assert!((1..=4).contains(&g) && x.len() >= g * k && w.len() >= nj * k);
                let (xp, wp) = (x.as_ptr(), w.as_ptr());
                debug_assert_eq!(nj, 1);
                match g {
                    1 => $rows::<1, 1>(xp, k, wp, out),
                    2 => $rows::<1, 2>(xp, k, wp, out),
                    3 => $rows::<1, 3>(xp, k, wp, out),
                    _ => $rows::<1, 4>(xp, k, wp, out),
                }
            }
        };
    }

    dots_kernel!(dots_f32, rows_f32, f32, load_f32, |v: f32| v);
    dots_kernel!(dots_bf16, rows_bf16, u16, load_bf16, |v: u16| {
        f32::from_bits((v as u32) << 16)
    });
    dots_kernel!(dots_i8, rows_i8, i8, load_i8, |v: i8| v as f32);

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn load16_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn load16_i8(p: *const i8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn load16_bf16(p: *const u16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }

    /// The AVX-512 form of `dots_kernel`'s, with the same numbers: one 16-lane accumulator
    /// holds the two 8-lane ones (lanes 0-7 the first half of each chunk of 16, lanes 8-15
    /// the second), each lane adding the same products in the same order. Its 32 registers
    /// take 4 outputs x 4 rows at once, for blocks whose weights come from the cache.
    macro_rules! dots_kernel_512 {
        ($name:ident, $rows:ident, $t:ty, $load16:ident, $load8:ident, $widen:expr) => {
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[inline]
            unsafe fn $rows<const J: usize, const G: usize>(
                xp: *const f32,
                k: usize,
                wp: *const $t,
                out: &mut [[f32; 4]; 4],
            ) {
                let mut a = [[_mm512_setzero_ps(); G]; J];
                let mut i = 0;
                while i + 16 <= k {
                    for j in 0..J {
                        let w = $load16(wp.add(j * k + i));
                        for r in 0..G {
                            a[j][r] =
                                _mm512_fmadd_ps(w, _mm512_loadu_ps(xp.add(r * k + i)), a[j][r]);
                        }
                    }
                    i += 16;
                }
                let tail8 = i + 8 <= k;
                for j in 0..J {
                    for r in 0..G {
                        let v = a[j][r];
                        let mut a0 = _mm512_castps512_ps256(v);
                        let a1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
                        let (xr, wr) = (xp.add(r * k), wp.add(j * k));
                        if tail8 {
                            a0 = _mm256_fmadd_ps($load8(wr.add(i)), _mm256_loadu_ps(xr.add(i)), a0);
                        }
                        let mut total = hsum(_mm256_add_ps(a0, a1));
                        for c in (if tail8 { i + 8 } else { i })..k {
                            let wc: f32 = $widen(*wr.add(c));
                            total = wc.mul_add(*xr.add(c), total);
                        }
                        out[j][r] = total;
                    }
                }
            }

            /// `out[j][r] = x[r] · w[j]` for `nj` (1 or 4) weight rows and `g <= 4` input rows.
            #[target_feature(enable = "avx512f,avx2,fma")]
            pub(super) unsafe fn $name(
                x: &[f32],
                g: usize,
                k: usize,
                w: &[$t],
                nj: usize,
                out: &mut [[f32; 4]; 4],
            ) {
                debug_assert!((1..=4).contains(&g) && x.len() >= g * k && w.len() >= nj * k);
                let (xp, wp) = (x.as_ptr(), w.as_ptr());
                match (nj, g) {
                    (1, 1) => $rows::<1, 1>(xp, k, wp, out),
                    (1, 2) => $rows::<1, 2>(xp, k, wp, out),
                    (1, 3) => $rows::<1, 3>(xp, k, wp, out),
                    (1, _) => $rows::<1, 4>(xp, k, wp, out),
                    (_, 1) => $rows::<4, 1>(xp, k, wp, out),
                    (_, 2) => $rows::<4, 2>(xp, k, wp, out),
                    (_, 3) => $rows::<4, 3>(xp, k, wp, out),
                    _ => $rows::<4, 4>(xp, k, wp, out),
                }
            }
        };
    }

    dots_kernel_512!(
        dots512_f32,
        rows512_f32,
        f32,
        load16_f32,
        load_f32,
        |v: f32| v
    );
    dots_kernel_512!(
        dots512_bf16,
        rows512_bf16,
        u16,
        load16_bf16,
        load_bf16,
        |v: u16| f32::from_bits((v as u32) << 16)
    );
    dots_kernel_512!(dots512_i8, rows512_i8, i8, load16_i8, load_i8, |v: i8| v
        as f32);

    /// `exp(x)` for 8 lanes: `x = n ln 2 + r` with `|r| <= ln 2 / 2` (ln 2 split in two parts for
    /// an exact reduction), `exp(r)` by its degree-6 Taylor polynomial in Horner form (relative
    /// error below 2e-7 on that interval, about 1-2 ulp after rounding), times `2^n` built in
    /// the exponent bits. Below -87.3 the result is 0 (`-inf` included), above 88.7 `+inf`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn exp8(x: __m256) -> __m256 {
        let hi = _mm256_set1_ps(88.722_83);
        let lo = _mm256_set1_ps(-87.336_54);
        let xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
        let n = _mm256_round_ps(
            _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        // 2^n: n + 127 in the exponent field; n is in [-126, 128] after the clamp.
        let e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        let y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
        // Past the clamps: exactly 0 below, +inf above (2^128 does not fit the exponent).
        let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
        _mm256_blendv_ps(
            y,
            _mm256_set1_ps(f32::INFINITY),
            _mm256_cmp_ps(x, hi, _CMP_GT_OQ),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len();
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i))),
            );
            i += 8;
        }
        while i < n {
            let g = gate[i];
            out[i] = g / (1.0 + (-g).exp()) * up[i];
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted(row: &mut [f32], max: f32) -> f32 {
        let n = row.len();
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let v = exp8(_mm256_sub_ps(_mm256_loadu_ps(row.as_ptr().add(i)), m));
            _mm256_storeu_ps(row.as_mut_ptr().add(i), v);
            acc = _mm256_add_ps(acc, v);
            i += 8;
        }
        let mut sum = hsum(acc);
        while i < n {
            row[i] = (row[i] - max).exp();
            sum += row[i];
            i += 1;
        }
        sum
    }

    /// [`super::weighted_sums`] with AVX2 and FMA (the same order of additions per output).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_sums(
        p: &[f32],
        m: usize,
        values: &[f32],
        n: usize,
        k: usize,
        out: &mut [f32],
    ) {
        out[..m * k].fill(0.0);
        for s in 0..n {
            let v = values.as_ptr().add(s * k);
            for r in 0..m {
                let w = p[r * n + s];
                if w == 0.0 {
                    continue;
                }
                let o = out.as_mut_ptr().add(r * k);
                let wv = _mm256_set1_ps(w);
                let mut i = 0;
                while i + 8 <= k {
                    _mm256_storeu_ps(
                        o.add(i),
                        _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.add(i)), _mm256_loadu_ps(o.add(i))),
                    );
                    i += 8;
                }
                while i < k {
                    *o.add(i) = w.mul_add(*v.add(i), *o.add(i));
                    i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::new(2).unwrap()
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Products agree with a float64 reference, for shapes with and without tails of 8/16.
    #[test]
    fn products_match_a_float64_reference() {
        let pool = pool();
        for &(n, k, m) in &[
            (37, 576, 1),
            (50, 100, 3),
            (33, 7, 6),
            (16, 1536, 9),
            (5, 24, 2),
        ] {
            let w = data(n * k, 1);
            let x = data(m * k, 2);
            for form in 0..3 {
                let bf = form;
                let mat = match form {
                    0 => Matrix::f32(n, k, &w),
                    1 => Matrix::bf16_from_f32(n, k, &w),
                    _ => Matrix::i8_from_f32(n, k, &w),
                };
                let mut out = vec![0f32; m * n];
                mat.product(&x, m, &mut out, &pool);
                let mut row = vec![0f32; k];
                for j in 0..n {
                    mat.row_f32(j, &mut row);
                    for i in 0..m {
                        let want: f64 = (0..k).map(|c| x[i * k + c] as f64 * row[c] as f64).sum();
                        let got = out[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "n={n} k={k} m={m} form {bf}: [{i},{j}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Row `r` of a block is bit-for-bit the one-row product of that row: what makes a verified
    /// block score as the greedy steps would.
    #[test]
    fn a_row_of_a_block_equals_its_one_row_product() {
        let pool = pool();
        for &(n, k) in &[(40, 576), (19, 1536), (9, 45)] {
            let w = data(n * k, 3);
            for form in 0..3 {
                let mat = match form {
                    0 => Matrix::f32(n, k, &w),
                    1 => Matrix::bf16_from_f32(n, k, &w),
                    _ => Matrix::i8_from_f32(n, k, &w),
                };
                for m in [2, 4, 5, 11] {
                    let x = data(m * k, 4 + m as u32);
                    let mut block = vec![0f32; m * n];
                    mat.product(&x, m, &mut block, &pool);
                    for i in 0..m {
                        let mut one = vec![0f32; n];
                        mat.product_here(&x[i * k..(i + 1) * k], 1, &mut one);
                        assert_eq!(
                            &block[i * n..(i + 1) * n],
                            &one[..],
                            "form {form} m={m} row {i}"
                        );
                    }
                }
            }
        }
    }

    /// The AVX-512 kernel (4 outputs x 4 rows), the AVX2 one and the portable one add in the
    /// same order: identical numbers.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_avx2_and_portable_kernels_agree_exactly() {
        if !simd::avx512() {
            eprintln!("no AVX-512F on this CPU: nothing to compare");
            return;
        }
        for k in [7, 8, 16, 24, 40, 576, 1000] {
            let w = data(4 * k, 7);
            let wb: Vec<u16> = w.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let x = data(4 * k, 8);
            for g in 1..=4 {
                let mut wide = [[0f32; 4]; 4];
                let mut narrow = [[0f32; 4]; 4];
                unsafe { simd::dots512_f32(&x, g, k, &w, 4, &mut wide) };
                for j in 0..4 {
                    unsafe { simd::dots_f32(&x, g, k, &w[j * k..], 1, &mut narrow) };
                    let mut plain = [0f32; 4];
                    portable::dots(&x, g, k, &mut plain, |i| w[j * k + i]);
                    assert_eq!(wide[j][..g], narrow[0][..g], "f32 k={k} g={g} j={j}");
                    assert_eq!(wide[j][..g], plain[..g], "f32 k={k} g={g} j={j}");
                }
                unsafe { simd::dots512_bf16(&x, g, k, &wb, 4, &mut wide) };
                for j in 0..4 {
                    unsafe { simd::dots_bf16(&x, g, k, &wb[j * k..], 1, &mut narrow) };
                    assert_eq!(wide[j][..g], narrow[0][..g], "bf16 k={k} g={g} j={j}");
                }
            }
        }
    }

    /// The vectorised exponential is within 2 ulp-ish (4e-7 relative) of libm's over the range
    /// softmax and SiLU use, exactly 0 for `-inf` and far below, `+inf` far above.
    #[test]
    fn the_vector_exponential_is_accurate() {
        let mut xs: Vec<f32> = (-8800..=8800).map(|i| i as f32 * 0.01).collect();
        xs.extend([f32::NEG_INFINITY, -1e4, -100.0, -87.0, 88.0, 100.0]);
        let mut row = xs.clone();
        exp_shifted(&mut row, 0.0);
        for (&x, &y) in xs.iter().zip(&row) {
            let want = (x as f64).exp();
            if want < 1e-37 {
                assert!(y.abs() < 1e-37, "exp({x}) = {y}");
            } else if want > 3.4e38 {
                assert!(y == f32::INFINITY, "exp({x}) = {y}");
            } else {
                assert!(
                    ((y as f64 - want) / want).abs() < 4e-7,
                    "exp({x}) = {y}, want {want}"
                );
            }
        }
        let g: Vec<f32> = (-200..200).map(|i| i as f32 * 0.1).collect();
        let u = vec![1.5f32; g.len()];
        let mut out = vec![0f32; g.len()];
        silu_mul(&g, &u, &mut out);
        for ((&gi, &o), &ui) in g.iter().zip(&out).zip(&u) {
            let want = gi as f64 / (1.0 + (-gi as f64).exp()) * ui as f64;
            assert!(
                (o as f64 - want).abs() < 1e-6 * (1.0 + want.abs()),
                "silu({gi})"
            );
        }
    }

    /// The vector kernel and the portable one add in the same order: identical numbers.
    #[test]
    fn vector_and_portable_kernels_agree_exactly() {
        for k in [7, 8, 16, 24, 576, 1000] {
            let w = data(k, 5);
            let x = data(3 * k, 6);
            let mut a = [[0f32; 4]; 4];
            let mut b = [0f32; 4];
            dots(&x, 3, k, &w, 1, &mut a);
            portable::dots(&x, 3, k, &mut b, |i| w[i]);
            assert_eq!(a[0], b, "k={k}");
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    /// Not a check: prints the LM head's product time by rows (`cargo test --release --lib
    /// product_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn product_speed() {
        let pool = Pool::new(2).unwrap();
        let (n, k) = (49152, 576);
        let data: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
        for bf in [false, true] {
            let w = if bf {
                Matrix::bf16_from_f32(n, k, &data)
            } else {
                Matrix::f32(n, k, &data)
            };
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
                    "bf16 {bf} m {m}: {:.2} ms, {:.1} GB/s",
                    best * 1e3,
                    w.bytes() as f64 / best / 1e9
                );
            }
        }
    }
}
