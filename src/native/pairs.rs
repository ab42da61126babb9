//! bfloat16 dot products for bf16 weights on CPUs with AVX-512 BF16 (`vdpbf16ps`): the inputs
//! of a product are rounded to bfloat16 once, and one instruction multiplies 32 weight-input
//! pairs into 16 float32 lanes, where the widening kernels of [`super::matrix`] spend a
//! conversion and a multiply-add per 16 weights. A step reads the same bytes either way, so a
//! one-row product gains little; a block of rows does half the arithmetic per weight it loads,
//! which is what bounds a verify block's cost (docs/benchmarks.md, "bf16 dot products").
//!
//! The weights are packed as the widening kernels pack them but in chunks of 32 columns
//! (`[rows / 4][in / 32][4][32]`, columns padded to a multiple of 32 with zeros).
//!
//! **Every output is computed the same way whatever the number of rows**: lane `l` of an
//! output's accumulator adds, chunk by chunk, the product of column `2l + 1` and then that of
//! column `2l` (as the instruction does: each product of two bfloat16 exact in float32, each
//! addition rounded to nearest even, subnormal inputs and results flushed to zero), then the 16
//! lanes are summed in the widening kernels' tree. So a verified block scores exactly as the
//! greedy steps would, as with every other form. [`portable_dots`] is that order in plain Rust
//! (the tests hold the instruction to it); decoding only takes this path where the
//! instruction exists.

use super::matrix::{lane_sum, GROUP, ROWS};

/// Columns per chunk: one AVX-512 register of bfloat16 pairs.
pub(super) const PAIR_CHUNK: usize = 32;
/// Elements of one chunk of a group.
pub(super) const PAIR_BLOCK: usize = GROUP * PAIR_CHUNK;

/// Whether this CPU has AVX-512 BF16 dot products (and the AVX-512F/VL the kernel also uses).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            super::kernels::simd::avx512() && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `m` rows of `x` (`[m, cols]`) rounded to bfloat16 (to nearest, ties to even), each padded
/// with zeros to `kp` columns.
pub(super) fn round_inputs(x: &[f32], m: usize, cols: usize, kp: usize) -> Vec<u16> {
    let mut xs = vec![0u16; m * kp];
    for (dst, src) in xs.chunks_exact_mut(kp).zip(x.chunks_exact(cols.max(1))) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = round(v);
        }
    }
    xs
}

/// `v` rounded to bfloat16, to nearest, ties to even (a NaN stays a NaN): `half`'s rounding in
/// a form the compiler vectorises.
#[inline]
fn round(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if v.is_nan() {
        ((b >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

/// `out[j][r] = x[r] · w[j]` for the four packed weight rows `w` (`[kp / 32][4][32]`) and `g`
/// rows of `x` (`[g, kp]`, bfloat16), `1 <= g <= ROWS`; `fetch` asks for later groups'
/// weights ahead (the first pass over a tile).
pub(super) fn dots(
    x: &[u16],
    g: usize,
    kp: usize,
    w: &[u16],
    out: &mut [[f32; ROWS]; GROUP],
    fetch: bool,
) {
    debug_assert!((1..=ROWS).contains(&g) && x.len() >= g * kp && w.len() >= GROUP * kp);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX-512F/VL and AVX-512 BF16 were detected; lengths are checked above.
        unsafe { simd::dots(x.as_ptr(), g, kp, w.as_ptr(), out, fetch) };
        return;
    }
    let _ = fetch;
    portable_dots(x, g, kp, w, out);
}

/// A bfloat16 bit pattern as float32, a subnormal one as zero.
fn widen_daz(v: u16) -> f32 {
    let f = f32::from_bits((v as u32) << 16);
    if f.is_subnormal() {
        0.0
    } else {
        f
    }
}

/// `v`, or zero when it is subnormal.
fn ftz(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0
    } else {
        v
    }
}

/// The order of operations of the AVX-512 BF16 kernel, in plain Rust (module docs).
pub(super) fn portable_dots(
    x: &[u16],
    g: usize,
    kp: usize,
    w: &[u16],
    out: &mut [[f32; ROWS]; GROUP],
) {
    for (j, out_j) in out.iter_mut().enumerate() {
        for (r, o) in out_j.iter_mut().enumerate().take(g) {
            let mut a = [0f32; 16];
            for chunk in 0..kp / PAIR_CHUNK {
                let wc = &w[chunk * PAIR_BLOCK + j * PAIR_CHUNK..][..PAIR_CHUNK];
                let xc = &x[r * kp + chunk * PAIR_CHUNK..][..PAIR_CHUNK];
                for (l, a) in a.iter_mut().enumerate() {
                    for e in [2 * l + 1, 2 * l] {
                        *a = ftz(*a + ftz(widen_daz(wc[e]) * widen_daz(xc[e])));
                    }
                }
            }
            *o = lane_sum(&a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{PAIR_BLOCK, PAIR_CHUNK};
    use crate::native::kernels::simd::hsum16;
    use crate::native::matrix::{FETCH_AHEAD, GROUP, ROWS};

    /// Dispatches on the row count (see [`group`]).
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,avx512bf16")]
    pub(super) unsafe fn dots(
        x: *const u16,
        g: usize,
        kp: usize,
        w: *const u16,
        out: &mut [[f32; ROWS]; GROUP],
        fetch: bool,
    ) {
        match (g, fetch) {
            (1, true) => group::<1, true>(x, kp, w, out),
            (2, true) => group::<2, true>(x, kp, w, out),
            (3, true) => group::<3, true>(x, kp, w, out),
            (4, true) => group::<4, true>(x, kp, w, out),
            (5, true) => group::<5, true>(x, kp, w, out),
            (_, true) => group::<6, true>(x, kp, w, out),
            (1, false) => group::<1, false>(x, kp, w, out),
            (2, false) => group::<2, false>(x, kp, w, out),
            (3, false) => group::<3, false>(x, kp, w, out),
            (4, false) => group::<4, false>(x, kp, w, out),
            (5, false) => group::<5, false>(x, kp, w, out),
            (_, false) => group::<6, false>(x, kp, w, out),
        }
    }

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,avx512bf16")]
    #[inline]
    unsafe fn load(p: *const u16) -> __m512bh {
        // SAFETY (of the transmute): both are 512 bits of plain data.
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
    }

    /// The four weight rows of a packed group times `G` input rows: one 16-lane accumulator
    /// per output (4 x G of them in registers), one sequential stream of weights.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,avx512bf16")]
    #[inline]
    unsafe fn group<const G: usize, const FETCH: bool>(
        x: *const u16,
        kp: usize,
        w: *const u16,
        out: &mut [[f32; ROWS]; GROUP],
    ) {
        let mut a0 = [_mm512_setzero_ps(); G];
        let mut a1 = [_mm512_setzero_ps(); G];
        let mut a2 = [_mm512_setzero_ps(); G];
        let mut a3 = [_mm512_setzero_ps(); G];
        // Weights FETCH_AHEAD groups on, asked into the L2 cache while this group computes
        // (past the last group the lines are not the weights': a prefetch never faults).
        let next = w.wrapping_add(FETCH_AHEAD * GROUP * kp);
        let lines = PAIR_BLOCK * 2 / 64;
        let mut c = 0;
        while c < kp {
            if FETCH {
                let pf = next.wrapping_add(c * GROUP) as *const i8;
                for l in 0..lines {
                    _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(l * 64));
                }
            }
            let wc = w.add(c * GROUP);
            let w0 = load(wc);
            let w1 = load(wc.add(PAIR_CHUNK));
            let w2 = load(wc.add(2 * PAIR_CHUNK));
            let w3 = load(wc.add(3 * PAIR_CHUNK));
            for r in 0..G {
                let xv = load(x.add(r * kp + c));
                a0[r] = _mm512_dpbf16_ps(a0[r], w0, xv);
                a1[r] = _mm512_dpbf16_ps(a1[r], w1, xv);
                a2[r] = _mm512_dpbf16_ps(a2[r], w2, xv);
                a3[r] = _mm512_dpbf16_ps(a3[r], w3, xv);
            }
            c += PAIR_CHUNK;
        }
        for (j, a) in [a0, a1, a2, a3].iter().enumerate() {
            for r in 0..G {
                out[j][r] = hsum16(a[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::kernels::tests::data;

    /// The rounding equals `half`'s (to nearest, ties to even), NaN and infinities included.
    #[test]
    fn inputs_round_as_half_rounds() {
        let mut values = data(4096, 15);
        values.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
        ]);
        values.extend([
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -(1.0 + 1.0 / 256.0),
            1e-40,
        ]);
        for v in values {
            assert_eq!(round(v), half::bf16::from_f32(v).to_bits(), "{v:e}");
        }
        assert!(f32::from_bits((round(f32::NAN) as u32) << 16).is_nan());
    }

    fn bits(v: &[f32]) -> Vec<u16> {
        v.iter()
            .map(|&f| half::bf16::from_f32(f).to_bits())
            .collect()
    }

    /// The instruction adds in the order the portable code writes down: identical numbers.
    #[test]
    fn the_avx512_bf16_kernel_adds_in_the_documented_order() {
        if !available() {
            eprintln!("no AVX-512 BF16 here: only the portable order is checked");
        }
        for kp in [32, 64, 576, 1536] {
            let w = bits(&data(GROUP * kp, 11));
            let x = bits(&data(ROWS * kp, 12));
            for g in 1..=ROWS {
                let mut plain = [[0f32; ROWS]; GROUP];
                portable_dots(&x, g, kp, &w, &mut plain);
                let mut fast = [[0f32; ROWS]; GROUP];
                dots(&x, g, kp, &w, &mut fast, g % 2 == 0);
                assert_eq!(fast, plain, "kp={kp} g={g}");
                // And near the float64 dot product of the rounded values.
                for (j, row) in plain.iter().enumerate() {
                    for (r, &got) in row.iter().enumerate().take(g) {
                        let want: f64 = (0..kp / PAIR_CHUNK)
                            .flat_map(|c| (0..PAIR_CHUNK).map(move |e| (c, e)))
                            .map(|(c, e)| {
                                let wv = widen_daz(w[c * PAIR_BLOCK + j * PAIR_CHUNK + e]);
                                wv as f64 * widen_daz(x[r * kp + c * PAIR_CHUNK + e]) as f64
                            })
                            .sum();
                        assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()));
                    }
                }
            }
        }
    }

    /// Subnormal inputs count as zero, as the instruction reads them.
    #[test]
    fn subnormal_inputs_count_as_zero() {
        let kp = PAIR_CHUNK;
        let mut w = bits(&data(GROUP * kp, 13));
        let x = bits(&data(kp, 14));
        let mut plain = [[0f32; ROWS]; GROUP];
        portable_dots(&x, 1, kp, &w, &mut plain);
        // A subnormal weight in row 0 (bfloat16 0x0001): the same sums.
        w[3] = 0x0001;
        let mut sub = [[0f32; ROWS]; GROUP];
        portable_dots(&x, 1, kp, &w, &mut sub);
        let zero = {
            w[3] = 0;
            let mut z = [[0f32; ROWS]; GROUP];
            portable_dots(&x, 1, kp, &w, &mut z);
            z
        };
        assert_eq!(sub, zero);
        assert_ne!(plain, zero);
        let mut fast = [[0f32; ROWS]; GROUP];
        w[3] = 0x0001;
        dots(&x, 1, kp, &w, &mut fast, true);
        assert_eq!(fast, sub);
    }
}
