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

    /// Bytes the weights take.
    pub(crate) fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len() * 4,
            Data::Bf16(v) => v.len() * 2,
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
            let out_ptr = out_ptr;
            // SAFETY: threads write disjoint column ranges `lo..hi` of `out`, which outlives
            // the call.
            unsafe { self.product_range(x, m, out_ptr.0, lo, hi) }
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
            for j in t0..t1 {
                dots(xs, g, k, &w[j * k..(j + 1) * k], 1, &mut acc);
                for (r, &v) in acc[0].iter().enumerate().take(g) {
                    *out.add((r0 + r) * n + j) = v;
                }
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

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output ranges to the threads of one scope.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `out[j][r] = x[r] · w[j]` for `nj` weight rows of `w` (`[nj, k]`) and `g` rows of `x`
/// (`[g, k]`), `nj · g <= 4`. (One weight row at a time measured fastest: interleaving the
/// streams of 2 or 4 weight rows made a one-row product 1.5-2x slower on an AMD EPYC.)
fn dots<T: Copy>(x: &[f32], g: usize, k: usize, w: &[T], nj: usize, out: &mut [[f32; 4]; 4])
where
    T: Widen,
{
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
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn simd(x: &[f32], g: usize, k: usize, w: &[f32], nj: usize, out: &mut [[f32; 4]; 4]) {
        simd::dots_f32(x, g, k, w, nj, out)
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
}

/// `a · b` with the products' order of [`Matrix::product`] (attention scores).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = [[0f32; 4]; 4];
    dots(a, 1, a.len(), b, 1, &mut out);
    out[0][0]
}

/// `y += a · x` (attention's weighted sum of values; a multiply and an add, which vectorise on
/// every x86-64, where a fused `mul_add` without FMA in the build's target would be a libm call
/// per element).
pub(crate) fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// The same order of operations as the vector kernels, in plain Rust: 2 accumulators of 8
/// lanes per row over chunks of 16, a last chunk of 8 into the first, the lanes summed in a
/// fixed tree, then the tail of `k % 8` one by one.
mod portable {
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
                debug_assert!(g >= 1 && g <= 4 && x.len() >= g * k && w.len() >= nj * k);
                let (xp, wp) = (x.as_ptr(), w.as_ptr());
                match (nj, g) {
                    (2, 2) => $rows::<2, 2>(xp, k, wp, out),
                    (1, 1) => $rows::<1, 1>(xp, k, wp, out),
                    (1, 2) => $rows::<1, 2>(xp, k, wp, out),
                    (1, 3) => $rows::<1, 3>(xp, k, wp, out),
                    _ => $rows::<1, 4>(xp, k, wp, out),
                }
            }
        };
    }

    dots_kernel!(dots_f32, rows_f32, f32, load_f32, |v: f32| v);
    dots_kernel!(dots_bf16, rows_bf16, u16, load_bf16, |v: u16| {
        f32::from_bits((v as u32) << 16)
    });
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
            for bf in [false, true] {
                let mat = if bf {
                    Matrix::bf16_from_f32(n, k, &w)
                } else {
                    Matrix::f32(n, k, &w)
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
                            "n={n} k={k} m={m} bf16={bf}: [{i},{j}] {got} vs {want}"
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
            for bf in [false, true] {
                let mat = if bf {
                    Matrix::bf16_from_f32(n, k, &w)
                } else {
                    Matrix::f32(n, k, &w)
                };
                for m in [2, 4, 5, 11] {
                    let x = data(m * k, 4 + m as u32);
                    let mut block = vec![0f32; m * n];
                    mat.product(&x, m, &mut block, &pool);
                    for i in 0..m {
                        let mut one = vec![0f32; n];
                        mat.product_here(&x[i * k..(i + 1) * k], 1, &mut one);
                        assert_eq!(&block[i * n..(i + 1) * n], &one[..], "m={m} row {i}");
                    }
                }
            }
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
    #[test]
    #[ignore]
    fn product_speed() {
        for threads in [1, 2] {
            let pool = Pool::new(threads).unwrap();
            let (n, k) = (49152, 576);
            let w = Matrix::f32(n, k, &vec![0.01; n * k]);
            for m in [1, 4, 16] {
                let x = vec![0.5f32; m * k];
                let mut out = vec![0f32; m * n];
                w.product(&x, m, &mut out, &pool);
                let t0 = std::time::Instant::now();
                for _ in 0..10 {
                    w.product(&x, m, &mut out, &pool);
                }
                let s = t0.elapsed().as_secs_f64() / 10.0;
                println!(
                    "threads {threads} m {m}: {:.2} ms, {:.1} GB/s",
                    s * 1e3,
                    w.bytes() as f64 / s / 1e9
                );
            }
        }
    }
}
