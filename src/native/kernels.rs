//! The element-wise and attention kernels of the native decoder (the weight products are in
//! `matrix.rs`): attention's scores and weighted sums, SiLU gates, softmax exponentials, each
//! vectorised with AVX2 and FMA where the CPU has them, with a portable fallback that adds in
//! the same order.
//!
//! **A score is computed the same way whatever the number of query rows**, so that a block's
//! row gets bit-for-bit the number a one-row call would give it.

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

/// `scores[r, s] = q[r] · keys[s]` for the `m` query rows `q` (`[m, k]`) and `n` keys
/// (`[n, k]`; with `slots`, key `s` is row `slots[s]` of `keys`): attention's scores, each in the
/// same order of additions (one query gets the same score whatever the others, and a key the
/// same wherever it lies).
pub(crate) fn scores(
    q: &[f32],
    m: usize,
    keys: &[f32],
    (n, slots): (usize, Option<&[usize]>),
    k: usize,
    out: &mut [f32],
) {
    assert!(q.len() >= m * k && out.len() >= m * n && m <= 4);
    assert!(slots.is_none_or(|l| l.len() == n), "one slot per key");
    let mut acc = [0f32; 4];
    for s in 0..n {
        let at = slots.map_or(s, |l| l[s]);
        let key = &keys[at * k..(at + 1) * k];
        dots(q, m, k, key, &mut acc);
        for (r, &v) in acc.iter().enumerate().take(m) {
            out[r * n + s] = v;
        }
    }
}

/// `out[r] = x[r] · w` for `g <= 4` rows of `x` (`[g, k]`).
fn dots(x: &[f32], g: usize, k: usize, w: &[f32], out: &mut [f32; 4]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX2 and FMA were detected; lengths are checked by the callers.
        unsafe { simd::dots_f32(x, g, k, w, out) };
        return;
    }
    portable::dots(x, g, k, out, |i| w[i]);
}

/// `out[r] = Σₛ p[r, s] · values[s]` for `m` rows of weights `p` (`[m, n]`, zeros skipped)
/// over `n` values (`[n, k]`; with `slots`, value `s` is row `slots[s]` of `values`):
/// attention's weighted sums, the values in order.
pub(crate) fn weighted_sums(
    p: &[f32],
    m: usize,
    values: &[f32],
    (n, slots): (usize, Option<&[usize]>),
    k: usize,
    out: &mut [f32],
) {
    assert!(p.len() >= m * n && out.len() >= m * k);
    match slots {
        None => assert!(values.len() >= n * k, "values of the wrong length"),
        Some(l) => assert!(
            l.len() == n && l.iter().all(|&at| (at + 1) * k <= values.len()),
            "one slot per weight, inside `values`"
        ),
    }
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX2 and FMA were detected; lengths and slots are checked above.
        unsafe { simd::weighted_sums(p, m, values, (n, slots), k, out) };
        return;
    }
    portable::weighted_sums(p, m, values, (n, slots), k, out);
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
        (n, slots): (usize, Option<&[usize]>),
        k: usize,
        out: &mut [f32],
    ) {
        out[..m * k].fill(0.0);
        for s in 0..n {
            let at = slots.map_or(s, |l| l[s]);
            let v = &values[at * k..(at + 1) * k];
            for r in 0..m {
                let w = p[r * n + s];
                if w != 0.0 {
                    for (o, &x) in out[r * k..(r + 1) * k].iter_mut().zip(v) {
                        // Fused, as the vector kernels' (a libm call where FMA is not enabled:
                        // this is the fallback).
                        *o = w.mul_add(x, *o);
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
pub(super) mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    /// Whether this CPU has AVX2 and FMA (checked once).
    pub(crate) fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// Whether it also has AVX-512F (checked once).
    pub(crate) fn avx512() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            available()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
        })
    }

    /// The 16 lanes of `v` summed as [`hsum`] sums 8: lane `l` plus lane `l + 8` first.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    pub(crate) unsafe fn hsum16(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        hsum(_mm256_add_ps(lo, hi))
    }

    /// The lanes summed in the portable tree's order: (l, l + 4), then (l, l + 2), then (0, 1).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let s = _mm_add_ss(d, _mm_shuffle_ps(d, d, 1));
        _mm_cvtss_f32(s)
    }

    /// `G` input rows times one row `w`: two 8-lane accumulators per row over chunks of 16, a
    /// last chunk of 8 into the first, the lanes summed by [`hsum`], then the tail one by one.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    unsafe fn rows_f32<const G: usize>(
        xp: *const f32,
        k: usize,
        wp: *const f32,
        out: &mut [f32; 4],
    ) {
        let mut a0 = [_mm256_setzero_ps(); G];
        let mut a1 = [_mm256_setzero_ps(); G];
        let mut i = 0;
        while i + 16 <= k {
            let w0 = _mm256_loadu_ps(wp.add(i));
            let w1 = _mm256_loadu_ps(wp.add(i + 8));
            for r in 0..G {
                let xr = xp.add(r * k + i);
                a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), a0[r]);
                a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), a1[r]);
            }
            i += 16;
        }
        if i + 8 <= k {
            let w0 = _mm256_loadu_ps(wp.add(i));
            for r in 0..G {
                a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(r * k + i)), a0[r]);
            }
            i += 8;
        }
        for r in 0..G {
            let mut total = hsum(_mm256_add_ps(a0[r], a1[r]));
            for c in i..k {
                // A fused multiply-add, as the portable order's `mul_add` (no libm call here).
                total = _mm_cvtss_f32(_mm_fmadd_ss(
                    _mm_set_ss(*wp.add(c)),
                    _mm_set_ss(*xp.add(r * k + c)),
                    _mm_set_ss(total),
                ));
            }
            out[r] = total;
        }
    }

    /// `out[r] = x[r] · w` for `g <= 4` rows of `x` (`[g, k]`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots_f32(x: &[f32], g: usize, k: usize, w: &[f32], out: &mut [f32; 4]) {
        debug_assert!((1..=4).contains(&g) && x.len() >= g * k && w.len() >= k);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        match g {
            1 => rows_f32::<1>(xp, k, wp, out),
            2 => rows_f32::<2>(xp, k, wp, out),
            3 => rows_f32::<3>(xp, k, wp, out),
            _ => rows_f32::<4>(xp, k, wp, out),
        }
    }

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
        (n, slots): (usize, Option<&[usize]>),
        k: usize,
        out: &mut [f32],
    ) {
        if k.is_multiple_of(64) {
            // Widths of whole 64-float chunks (head sizes 64, 128): each chunk of an output row
            // in 8 registers over every slot, instead of loaded and stored per slot. The same
            // fused multiply-adds in the same order, so the same numbers.
            for r in 0..m {
                for c0 in (0..k).step_by(64) {
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for s in 0..n {
                        let w = p[r * n + s];
                        if w == 0.0 {
                            continue;
                        }
                        let wv = _mm256_set1_ps(w);
                        let v = values.as_ptr().add(slots.map_or(s, |l| l[s]) * k + c0);
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.add(8 * j)), *a);
                        }
                    }
                    let o = out.as_mut_ptr().add(r * k + c0);
                    for (j, a) in acc.iter().enumerate() {
                        _mm256_storeu_ps(o.add(8 * j), *a);
                    }
                }
            }
            return;
        }
        out[..m * k].fill(0.0);
        for s in 0..n {
            let v = values.as_ptr().add(slots.map_or(s, |l| l[s]) * k);
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
pub(super) mod tests {
    use super::*;

    /// `n` pseudo-random values in [-0.5, 0.5) from `seed` (the native kernels' tests).
    pub(in crate::native) fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Scores agree with a float64 reference, and a query's scores do not depend on the other
    /// queries of the call.
    #[test]
    fn scores_match_a_reference_and_each_query_alone() {
        for k in [7, 8, 24, 64] {
            let (n, m) = (9, 3);
            let q = data(m * k, 1);
            let keys = data(n * k, 2);
            let mut all = vec![0f32; m * n];
            scores(&q, m, &keys, (n, None), k, &mut all);
            for r in 0..m {
                let mut one = vec![0f32; n];
                scores(&q[r * k..(r + 1) * k], 1, &keys, (n, None), k, &mut one);
                assert_eq!(&all[r * n..(r + 1) * n], &one[..], "k={k} row {r}");
                for s in 0..n {
                    let want: f64 = (0..k)
                        .map(|c| q[r * k + c] as f64 * keys[s * k + c] as f64)
                        .sum();
                    assert!(
                        (all[r * n + s] as f64 - want).abs() < 1e-5,
                        "k={k} [{r},{s}]"
                    );
                }
            }
        }
    }

    /// Keys and values picked by a slot list give bit for bit what the same rows gathered
    /// contiguously give: a tree row's attention over its slots equals a step's over its cache.
    #[test]
    fn slot_lists_equal_gathered_rows() {
        for k in [8, 24, 64, 128] {
            let (m, all) = (3, 13);
            let slots = [0usize, 2, 3, 7, 12];
            let n = slots.len();
            let q = data(m * k, 5);
            let keys = data(all * k, 6);
            let values = data(all * k, 7);
            let gather = |t: &[f32]| -> Vec<f32> {
                slots
                    .iter()
                    .flat_map(|&s| t[s * k..(s + 1) * k].to_vec())
                    .collect()
            };
            let (gk, gv) = (gather(&keys), gather(&values));
            let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
            scores(&q, m, &keys, (n, Some(&slots)), k, &mut a);
            scores(&q, m, &gk, (n, None), k, &mut b);
            assert_eq!(a, b, "scores k={k}");
            let mut p = data(m * n, 8);
            p[1] = 0.0;
            let (mut a, mut b) = (vec![0f32; m * k], vec![0f32; m * k]);
            weighted_sums(&p, m, &values, (n, Some(&slots)), k, &mut a);
            weighted_sums(&p, m, &gv, (n, None), k, &mut b);
            assert_eq!(a, b, "weighted sums k={k}");
            let mut c = vec![0f32; m * k];
            portable::weighted_sums(&p, m, &values, (n, Some(&slots)), k, &mut c);
            assert_eq!(a, c, "portable weighted sums k={k}");
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

    /// Weighted sums: the vector kernels (both widths' paths) equal the portable order exactly,
    /// zero weights skipped.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn weighted_sums_agree_with_the_portable_order() {
        if !simd::available() {
            return;
        }
        for k in [8, 24, 64, 128] {
            let (m, n) = (3, 11);
            let mut p = data(m * n, 3);
            p[4] = 0.0;
            let values = data(n * k, 4);
            let mut a = vec![0f32; m * k];
            let mut b = vec![0f32; m * k];
            unsafe { simd::weighted_sums(&p, m, &values, (n, None), k, &mut a) };
            portable::weighted_sums(&p, m, &values, (n, None), k, &mut b);
            assert_eq!(a, b, "k={k}");
        }
    }

    /// The vector kernel and the portable one add in the same order: identical numbers.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_and_portable_kernels_agree_exactly() {
        if !simd::available() {
            return;
        }
        for k in [7, 8, 16, 24, 576, 1000] {
            let w = data(k, 5);
            let x = data(3 * k, 6);
            let mut a = [0f32; 4];
            let mut b = [0f32; 4];
            unsafe { simd::dots_f32(&x, 3, k, &w, &mut a) };
            portable::dots(&x, 3, k, &mut b, |i| w[i]);
            assert_eq!(a, b, "k={k}");
        }
    }
}
