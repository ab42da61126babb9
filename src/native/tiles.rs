//! bfloat16 products on the tile unit of Intel CPUs with AMX (`amx_bf16`, `amx_tile`): the
//! inputs of a product are rounded to bfloat16 once, as for the dot products of [`super::pairs`],
//! and one `tdpbf16ps` multiplies up to 16 input rows by a 32-column, 16-output slice of the
//! weights. One weight slice loaded into a tile serves every row of a block at no extra cost up
//! to 16 rows, so a verify block of 16 tokens costs what one token does: the products of a
//! one-token step read the same bytes as the vector kernels, the arithmetic of a block is no
//! longer what bounds it (docs/benchmarks.md, "AMX tiles").
//!
//! The weights are packed per [`TILE_OUT`] outputs (four tiles of 16) and 32 columns:
//! `[rows / 64][4][cols / 32][16 pairs][16 outputs][2]`, the layout `tdpbf16ps` reads its second
//! operand in (each output's two neighbouring columns side by side), with rows padded to a
//! multiple of 64 and columns to a multiple of 32, both with zeros.
//!
//! **Every output is computed the same way whatever the number of rows**: each row of a tile
//! is its own accumulation, chunk after chunk of 32 columns, so row `r` of a block is bit for
//! bit the one-row product of that row (tested). Intel documents the instruction's arithmetic
//! (bfloat16 products, float32 sums, round to nearest even, subnormals flushed) but not the
//! order of the additions inside one instruction, so unlike the other forms this one has no
//! portable model: it is only built where the CPU has the unit ([`available`]), and the tests
//! compare it with a float64 reference within rounding.

use super::pairs::PAIR_CHUNK;

/// Outputs per packed group: four 16-output tiles, one per accumulator tile.
pub(super) const TILE_OUT: usize = 64;
/// Rows of a tile: the most input rows one instruction multiplies.
const TILE_ROWS: usize = 16;
/// Outputs of one tile (16 float32 in its 64-byte rows).
const TILE_COLS: usize = 16;

/// Whether this CPU has AMX bfloat16 tiles and the operating system lets this process use them
/// (Linux grants the tile state on request; it is asked once).
pub(crate) fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            // SAFETY: CPUID leaf 7 exists on every x86-64 CPU with AVX2, checked first (the
            // intrinsic is safe in newer Rust).
            #[allow(unused_unsafe)]
            let leaf = std::is_x86_feature_detected!("avx2")
                .then(|| unsafe { std::arch::x86_64::__cpuid_count(7, 0) });
            let has = leaf.is_some_and(|l| l.edx & (1 << 22) != 0 && l.edx & (1 << 24) != 0);
            // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: the kernel refuses where it does
            // not manage the tile state.
            const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_ulong = 18;
            // SAFETY: the request only changes which register state this process may use.
            has && unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            } == 0
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// Where element `(r, c)` of a `[rows, cols]` matrix lies in the packed layout (module docs),
/// `kp` being the padded column count.
pub(super) fn at(r: usize, c: usize, kp: usize) -> usize {
    let (group, tile, out) = (r / TILE_OUT, r % TILE_OUT / TILE_COLS, r % TILE_COLS);
    let (chunk, pair, half) = (c / PAIR_CHUNK, c % PAIR_CHUNK / 2, c % 2);
    group * TILE_OUT * kp
        + tile * TILE_COLS * kp
        + chunk * PAIR_CHUNK * TILE_COLS
        + pair * 2 * TILE_COLS
        + out * 2
        + half
}

/// The packed layout of a `[rows, cols]` matrix whose element `(j, c)` is `value(j, c)`
/// (bfloat16 bits), zeros in the padding, `kp` columns: written in memory order, one 16-output
/// tile after another.
pub(super) fn pack(
    rows: usize,
    cols: usize,
    kp: usize,
    value: impl Fn(usize, usize) -> u16,
) -> Vec<u16> {
    let padded_rows = rows.div_ceil(TILE_OUT) * TILE_OUT;
    let items = (0..padded_rows / TILE_COLS).flat_map(move |tile| {
        (0..kp / PAIR_CHUNK).flat_map(move |chunk| {
            (0..PAIR_CHUNK * TILE_COLS).map(move |e| {
                // Element `e` of a chunk: pair `e / 32`, output `e / 2 % 16`, half `e % 2`.
                let r = tile * TILE_COLS + e / 2 % TILE_COLS;
                (r, chunk * PAIR_CHUNK + 2 * (e / (2 * TILE_COLS)) + e % 2)
            })
        })
    });
    super::matrix::huge_pages(
        items.map(|(r, c)| if r < rows && c < cols { value(r, c) } else { 0 }),
        padded_rows * kp,
    )
}

/// Outputs of groups `lo..hi` (of [`TILE_OUT`] outputs) for the `m` rows of `x` (`[m, kp]`,
/// bfloat16 bits), written through `out` (`[m, n]`); `w` packed by [`pack`].
///
/// # Safety
/// [`available`] must be true; `w` holds the packed `[n, kp]` matrix, `x` `m * kp` elements,
/// `out` `m * n` writable ones, and no other thread writes the outputs of groups `lo..hi`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    w: &[u16],
    n: usize,
    kp: usize,
    x: &[u16],
    m: usize,
    out: *mut f32,
    lo: usize,
    hi: usize,
) {
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, n, kp, x, m, out, lo, hi);
        unreachable!("AMX tiles are refused where the CPU has none");
    }
    // For each group the rows in passes of up to 16 (the group's weights, 64 outputs of `kp`
    // columns, stay in the L2 cache between passes).
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(available() && x.len() >= m * kp && w.len() >= hi * TILE_OUT * kp);
        let mut sums = [[0f32; TILE_OUT]; TILE_ROWS];
        let mut loaded = 0;
        for q in lo..hi {
            let wq = w.as_ptr().add(q * TILE_OUT * kp);
            let passes = m.div_ceil(TILE_ROWS);
            let mut r0 = 0;
            for p in 0..passes {
                let g = m / passes + usize::from(p < m % passes);
                if g != loaded {
                    amx::configure(g);
                    loaded = g;
                }
                let xq = x.as_ptr().add(r0 * kp);
                let dst = out.add(r0 * n + q * TILE_OUT);
                let cols = (n - q * TILE_OUT).min(TILE_OUT);
                if cols == TILE_OUT {
                    // A whole group: the tiles are stored straight into the outputs' rows.
                    amx::pass(wq, kp, xq, dst, n);
                } else {
                    // The last, padded group: through a buffer, its real outputs copied.
                    amx::pass(wq, kp, xq, sums.as_mut_ptr() as *mut f32, TILE_OUT);
                    for (r, row) in sums.iter().enumerate().take(g) {
                        std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add(r * n), cols);
                    }
                }
                r0 += g;
            }
        }
        if loaded != 0 {
            amx::release();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;

    use super::{PAIR_CHUNK, TILE_COLS, TILE_ROWS};

    /// The tile configuration `ldtilecfg` reads (palette 1).
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Tiles 0-3 accumulate `g` rows of 16 outputs each, tile 4 holds `g` input rows of 32
    /// columns, tiles 5-7 weight slices of 16 pairs of columns for 16 outputs.
    fn config(g: usize) -> Config {
        let mut c = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..5 {
            c.colsb[t] = 64;
            c.rows[t] = g as u8;
        }
        for t in 5..8 {
            c.colsb[t] = 64;
            c.rows[t] = TILE_ROWS as u8;
        }
        c
    }

    /// Configures the tiles for passes of `g` rows (this thread's tile state).
    pub(super) unsafe fn configure(g: usize) {
        let cfg = config(g);
        // SAFETY: `cfg` is a valid palette-1 configuration; tiles were granted (`available`).
        asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack));
    }

    /// Returns this thread's tiles to their initial state.
    pub(super) unsafe fn release() {
        asm!("tilerelease", options(nostack));
    }

    /// One group's 64 outputs for the configured rows of `x` (`kp` columns apart) into the rows
    /// of `dst` (`stride` floats apart).
    #[inline(always)]
    pub(super) unsafe fn pass(
        wq: *const u16,
        kp: usize,
        x: *const u16,
        dst: *mut f32,
        stride: usize,
    ) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        let tile = TILE_COLS * kp;
        let mut c = 0;
        while c < kp {
            let b = wq.add(c * TILE_COLS);
            asm!(
                "tileloadd tmm4, [{x} + {xs}*1]",
                "tileloadd tmm5, [{b0} + {bs}*1]",
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tileloadd tmm6, [{b1} + {bs}*1]",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tileloadd tmm7, [{b2} + {bs}*1]",
                "tdpbf16ps tmm2, tmm4, tmm7",
                "tileloadd tmm5, [{b3} + {bs}*1]",
                "tdpbf16ps tmm3, tmm4, tmm5",
                x = in(reg) x.add(c),
                xs = in(reg) kp * 2,
                b0 = in(reg) b,
                b1 = in(reg) b.add(tile),
                b2 = in(reg) b.add(2 * tile),
                b3 = in(reg) b.add(3 * tile),
                bs = in(reg) 2 * TILE_COLS * 2,
                options(nostack, readonly)
            );
            c += PAIR_CHUNK;
        }
        let s = dst;
        asm!(
            "tilestored [{s0} + {ss}*1], tmm0",
            "tilestored [{s1} + {ss}*1], tmm1",
            "tilestored [{s2} + {ss}*1], tmm2",
            "tilestored [{s3} + {ss}*1], tmm3",
            s0 = in(reg) s,
            s1 = in(reg) s.add(TILE_COLS),
            s2 = in(reg) s.add(2 * TILE_COLS),
            s3 = in(reg) s.add(3 * TILE_COLS),
            ss = in(reg) stride * 4,
            options(nostack)
        );
    }
}
