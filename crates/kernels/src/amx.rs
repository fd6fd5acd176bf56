//! bf16 products on Intel AMX tiles, for [`Precision::Medium`](crate::Precision::Medium).
//!
//! One `tdpbf16ps` multiplies a 16×32 bf16 tile by a 32×16 one into a 16×16 f32 tile: 8192
//! multiply-adds per instruction, where an AVX-512 FMA does 16. Both operands must be bf16, so
//! the f32 activations are rounded to bf16 (to nearest, ties to even) as they are packed; the
//! weights are bf16 already, every product is exact in f32 and the sums accumulate in f32.
//! That is the contract of PyTorch's "medium" matmul precision and of oneDNN's bf16 GEMM. AMX
//! also treats bf16 subnormals as zero and flushes subnormal results.
//!
//! Tiles are 16 rows of 64 bytes. A row of the `A` operand holds 32 bf16 of one row; a row of
//! `B` holds, for 16 columns, the pair of values at two consecutive `k` ("VNNI" layout). So:
//! - `Y = X·Wᵀ`: the weight rows are read straight from the (mapped) matrix as `A` tiles, a
//!   16-row block of `X` packed per call as `B`, and the result tile is `Yᵀ`, transposed as it
//!   is written out. No copy of the weights is made unless a panel is ragged.
//! - `dX = G·W` (the frozen layer's input gradient): `G` packed row-major as `A`, each 32-column
//!   panel of `W` packed into pairs of rows as `B`, and the result tile lands in `dX` directly.
//!
//! Every block computes 2×2 result tiles (8 tiles: 4 results, 2 of each operand). Threads take
//! disjoint 32-wide panels of the output's columns; each configures its own tiles.
//!
//! Linux hands out the 8 KiB tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`),
//! once per process; [`available`] asks, and a refusal (an old kernel, a hypervisor that hides
//! the state) leaves the f32 kernels in charge.

use std::arch::asm;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::gemm::{run_tasks, task_count, OutPtr};

/// Rows and columns of a result tile; a bf16 operand tile spans 32 values of `k`.
const T: usize = 16;
const KT: usize = 32;
/// bf16 values in one operand tile.
const TILE: usize = T * KT;
/// Tiles of `k` per block of the backward's reduction: a 32-column panel of them is 64 KiB.
const K_BLOCK: usize = 32;

/// Whether the CPU has AMX-BF16 and this process may use the tile registers.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(target_os = "linux")]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only if the CPU has it.
    let edx = unsafe {
        if __get_cpuid_max(0).0 < 7 {
            return false;
        }
        __cpuid_count(7, 0).edx
    };
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it only changes which extended
    // states this process may use.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn detect() -> bool {
    false
}

/// `ldtilecfg`'s 64-byte operand: palette 1, all 8 tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = T as u8; // rows
        t += 1;
    }
    TileConfig(c)
};

/// This thread's tiles, configured; released on drop so an idle thread saves no tile state.
struct Tiles;

impl Tiles {
    /// # Safety
    /// [`available`] must have returned true.
    unsafe fn configure() -> Tiles {
        // SAFETY: the caller checked AMX support and permission; CONFIG is a valid palette-1
        // configuration (reserved bytes zero), 64-byte aligned.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: only constructed after a successful `ldtilecfg` on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// f32 to bf16 bits, to nearest with ties to even; NaN stays a (quiet) NaN. Branch-free apart
/// from the NaN select so the packing loops vectorise.
#[inline(always)]
pub(crate) fn bf16_rne(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// `C[2×2 tiles] = Σ_kb A[kb]·B[kb]` over `kbs` blocks of 32 `k`, into `c` (`[a][b]` order,
/// each tile 16×16 f32 row-major); with `add`, `C` starts from what `c` holds instead of zero.
///
/// # Safety
/// Tiles configured with [`CONFIG`]. `a0`/`a1` point at 16 rows of `32·kbs` bf16 (row stride
/// `lda` bytes); `b0`/`b1` at `kbs` consecutive packed tiles of [`TILE`] values, or with
/// `ldb_blocks` values between consecutive tiles; `c` at 1024 writable f32.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block(
    a0: *const u16,
    a1: *const u16,
    lda: usize,
    b0: *const u16,
    b1: *const u16,
    ldb_blocks: usize,
    kbs: usize,
    c: *mut f32,
    add: bool,
) {
    // SAFETY: every load stays within the ranges the caller vouched for; the tile registers are
    // not used by compiled code, so they keep their values between the asm blocks.
    unsafe {
        if add {
            asm!(
                "tileloadd tmm0, [{c0} + {s}]",
                "tileloadd tmm1, [{c1} + {s}]",
                "tileloadd tmm2, [{c2} + {s}]",
                "tileloadd tmm3, [{c3} + {s}]",
                c0 = in(reg) c,
                c1 = in(reg) c.add(T * T),
                c2 = in(reg) c.add(2 * T * T),
                c3 = in(reg) c.add(3 * T * T),
                s = in(reg) 64usize,
                options(nostack, readonly)
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        for kb in 0..kbs {
            asm!(
                "tileloadd tmm4, [{a0} + {lda}]",
                "tileloadd tmm5, [{a1} + {lda}]",
                "tileloadd tmm6, [{b0} + {ldb}]",
                "tileloadd tmm7, [{b1} + {ldb}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(kb * KT),
                a1 = in(reg) a1.add(kb * KT),
                b0 = in(reg) b0.add(kb * ldb_blocks),
                b1 = in(reg) b1.add(kb * ldb_blocks),
                lda = in(reg) lda,
                ldb = in(reg) 64usize,
                options(nostack, readonly)
            );
        }
        asm!(
            "tilestored [{c0} + {s}], tmm0",
            "tilestored [{c1} + {s}], tmm1",
            "tilestored [{c2} + {s}], tmm2",
            "tilestored [{c3} + {s}], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(T * T),
            c2 = in(reg) c.add(2 * T * T),
            c3 = in(reg) c.add(3 * T * T),
            s = in(reg) 64usize,
            options(nostack)
        );
    }
}

/// Rows `r0..r0+16` of the `rows×k` matrix `x`, rounded to bf16 and packed as `kbs` `B` tiles:
/// tile `kb` row `p` holds `(x[r][32kb+2p], x[r][32kb+2p+1])` for the 16 rows `r`. Zero past
/// the matrix's edges.
fn pack_b_rows(x: &[f32], rows: usize, k: usize, r0: usize, out: &mut [u16]) {
    for j in 0..T.min(rows.saturating_sub(r0)) {
        let row = &x[(r0 + j) * k..(r0 + j + 1) * k];
        for (tile, src) in out.chunks_exact_mut(TILE).zip(row.chunks(KT)) {
            // Tile row p, column j: the pair at k = 2p, 2p+1 of this block.
            for (p, pair) in src.chunks(2).enumerate() {
                let d = &mut tile[p * 2 * T + 2 * j..p * 2 * T + 2 * j + 2];
                d[0] = bf16_rne(pair[0]);
                d[1] = pair.get(1).map_or(0, |&v| bf16_rne(v));
            }
        }
    }
}

/// Columns `n0..n0+nv` (`nv ≤ 32`) of the `k×n` matrix `w` as `kbs` pairs of `B` tiles
/// (`[kb][half][TILE]`): tile row `p` of half `h` holds `(w[32kb+2p][c], w[32kb+2p+1][c])` for
/// the 16 columns `c` of that half. Zero past the matrix's edges.
fn pack_b_cols(w: &[u16], k: usize, n: usize, n0: usize, nv: usize, out: &mut [u16]) {
    out.fill(0);
    for r in (0..k).step_by(2) {
        let (kb, p) = (r / KT, (r % KT) / 2);
        let even = &w[r * n + n0..r * n + n0 + nv];
        let base = kb * 2 * TILE + p * 2 * T;
        if nv == 2 * T && r + 1 < k {
            let odd = &w[(r + 1) * n + n0..(r + 1) * n + n0 + nv];
            let (lo, hi) = out[base..base + TILE + 2 * T].split_at_mut(TILE);
            // SAFETY: AMX CPUs have AVX-512BW (every one since Sapphire Rapids); the slices
            // have the 32 values and 32-value destinations `interleave32` reads and writes.
            unsafe { interleave32(even, odd, &mut lo[..2 * T], &mut hi[..2 * T]) };
            continue;
        }
        let odd = (r + 1 < k).then(|| &w[(r + 1) * n + n0..(r + 1) * n + n0 + nv]);
        for half in 0..2 {
            let cols = half * T..(half * T + T).min(nv);
            if cols.is_empty() {
                break;
            }
            let at = base + half * TILE;
            let dst = &mut out[at..at + 2 * cols.len()];
            for (d, &v) in dst.iter_mut().step_by(2).zip(&even[cols.clone()]) {
                *d = v;
            }
            if let Some(odd) = odd {
                for (d, &v) in dst.iter_mut().skip(1).step_by(2).zip(&odd[cols]) {
                    *d = v;
                }
            }
        }
    }
}

/// Writes the transpose of the 16×16 row-major `tile` to the `rows × cols` corner of a
/// row-major matrix at `out` (row stride `ld`): `out[i][j] = tile[j][i]`. One 16×16 transpose
/// in registers (four rounds of shuffles) and one masked store per row, where element-wise
/// copying would take 256 scalar stores.
///
/// # Safety
/// The CPU supports AVX-512F; `tile` has 256 values; `out` addresses `rows ≤ 16` rows of
/// `cols ≤ 16` writable values at stride `ld`.
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(tile: &[f32], out: *mut f32, ld: usize, rows: usize, cols: usize) {
    use std::arch::x86_64::*;
    debug_assert!(tile.len() >= T * T && rows <= T && cols <= T);
    // SAFETY: loads read the 256 tile values; stores stay inside the caller's corner.
    unsafe {
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(tile.as_ptr().add(i * T)));
        let w = transpose16(r);
        let mask: __mmask16 = if cols == T {
            0xffff
        } else {
            (1u16 << cols) - 1
        };
        for (i, row) in w.iter().enumerate().take(rows) {
            _mm512_mask_storeu_ps(out.add(i * ld), mask, *row);
        }
    }
}

/// The transpose of a 16×16 matrix of 32-bit values held one row per register: four rounds
/// of in-register shuffles.
///
/// # Safety
/// The CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // Round 1: interleave pairs of rows by 32-bit lanes.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // Round 2: interleave by 64-bit lanes, rows 4q+{0,2} and 4q+{1,3}.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let q = i / 4 * 4;
        let (a, b) = (
            _mm512_castps_pd(t[q + i % 2]),
            _mm512_castps_pd(t[q + 2 + i % 2]),
        );
        _mm512_castpd_ps(if (i % 4) < 2 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // Rounds 3 and 4: gather 128-bit lanes across groups of four rows.
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let g = i / 8 * 8;
        let (a, b) = (u[g + i % 4], u[g + 4 + i % 4]);
        if (i % 8) < 4 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    let w: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (v[i % 8], v[8 + i % 8]);
        if i < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    // The rounds leave column i in register i with bits 0 and 1 swapped.
    std::array::from_fn(|i| w[(i & !3) | ((i & 1) << 1) | ((i >> 1) & 1)])
}

/// 16 f32 rounded to bf16 bits, the same bits as [`bf16_rne`].
///
/// # Safety
/// The CPU supports AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn round16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let rne = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        b,
        _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb),
    ));
    let nan = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
    let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rne, nan))
}

/// `dst[i] = bf16_rne(src[i])` over `src.len() ≤ dst.len()` values, 16 at a time.
///
/// # Safety
/// The CPU supports AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn round_row_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() <= dst.len());
    let mut i = 0;
    // SAFETY: masked loads and stores stay below `src.len()`.
    unsafe {
        while i < src.len() {
            let n = (src.len() - i).min(T);
            let m: __mmask16 = if n == T { 0xffff } else { (1u16 << n) - 1 };
            let v = round16(_mm512_maskz_loadu_ps(m, src.as_ptr().add(i)));
            _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), m, v);
            i += T;
        }
    }
}

/// [`pack_b_rows`] with AVX-512: per tile, each of the 16 rows' 32 values is rounded (the
/// same bits as [`bf16_rne`]) into one register of 16 pairs, and a 16×16 transpose of those
/// 32-bit pairs gives the tile's rows.
///
/// # Safety
/// The CPU supports AVX-512F and AVX-512BW; `out` holds `k.div_ceil(32)` tiles.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_b_rows_avx512(x: &[f32], rows: usize, k: usize, r0: usize, out: &mut [u16]) {
    use std::arch::x86_64::*;
    let live = T.min(rows.saturating_sub(r0));
    // SAFETY: loads are masked to the `live` rows' first `k` values; each store writes one
    // 64-byte row of a tile inside `out`.
    unsafe {
        let round = |v: __m512| round16(v);
        for (kb, tile) in out.chunks_exact_mut(TILE).take(k.div_ceil(KT)).enumerate() {
            let k0 = kb * KT;
            let n = (k - k0).min(KT);
            let (m0, m1): (__mmask16, __mmask16) = (
                if n >= T { 0xffff } else { (1u16 << n) - 1 },
                if n >= KT {
                    0xffff
                } else if n > T {
                    (1u16 << (n - T)) - 1
                } else {
                    0
                },
            );
            let r: [__m512; 16] = std::array::from_fn(|j| {
                if j >= live {
                    return _mm512_setzero_ps();
                }
                let p = x.as_ptr().add((r0 + j) * k + k0);
                let lo = round(_mm512_maskz_loadu_ps(m0, p));
                let hi = round(_mm512_maskz_loadu_ps(m1, p.add(T)));
                _mm512_castsi512_ps(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi))
            });
            for (p, row) in transpose16(r).iter().enumerate() {
                _mm512_storeu_ps(tile.as_mut_ptr().add(p * 2 * T).cast(), *row);
            }
        }
    }
}

/// `lo = (e0, o0, e1, o1, …, e15, o15)`, `hi` the same for values 16..32: two weight rows
/// interleaved into the pairs of a `B` tile row, 64 bytes per store.
///
/// # Safety
/// The CPU supports AVX-512BW; `even`, `odd`, `lo` and `hi` each hold at least 32 values.
#[target_feature(enable = "avx512bw")]
unsafe fn interleave32(even: &[u16], odd: &[u16], lo: &mut [u16], hi: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert!(even.len() >= 32 && odd.len() >= 32 && lo.len() >= 32 && hi.len() >= 32);
    const LO: [i16; 32] = {
        let mut v = [0i16; 32];
        let mut j = 0;
        while j < 16 {
            v[2 * j] = j as i16;
            v[2 * j + 1] = 32 + j as i16;
            j += 1;
        }
        v
    };
    const HI: [i16; 32] = {
        let mut v = [0i16; 32];
        let mut j = 0;
        while j < 16 {
            v[2 * j] = 16 + j as i16;
            v[2 * j + 1] = 48 + j as i16;
            j += 1;
        }
        v
    };
    // SAFETY: the caller guarantees the lengths; unaligned loads and stores.
    unsafe {
        let e = _mm512_loadu_si512(even.as_ptr().cast());
        let o = _mm512_loadu_si512(odd.as_ptr().cast());
        let il = _mm512_loadu_si512(LO.as_ptr().cast());
        let ih = _mm512_loadu_si512(HI.as_ptr().cast());
        _mm512_storeu_si512(lo.as_mut_ptr().cast(), _mm512_permutex2var_epi16(e, il, o));
        _mm512_storeu_si512(hi.as_mut_ptr().cast(), _mm512_permutex2var_epi16(e, ih, o));
    }
}

/// `Y = X·Wᵀ`, `W` `n×k` bf16, `X` `m×k`, `Y` `m×n`, all non-empty and of checked lengths.
pub(crate) fn gemm_nt(w: &[u16], x: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    debug_assert!(available());
    let kbs = k.div_ceil(KT);
    // X in 16-row blocks of `kbs` tiles, an even number of blocks (the kernel takes pairs).
    let mblocks = m.div_ceil(2 * T) * 2;
    let mut xp = vec![0u16; mblocks * kbs * TILE];
    xp.par_chunks_mut(kbs * TILE)
        .enumerate()
        .for_each(|(mb, blk)| {
            if std::arch::is_x86_feature_detected!("avx512bw") {
                // SAFETY: AVX-512BW implies AVX-512F; `blk` holds `kbs` tiles.
                unsafe { pack_b_rows_avx512(x, m, k, mb * T, blk) }
            } else {
                pack_b_rows(x, m, k, mb * T, blk)
            }
        });
    let panels = n.div_ceil(2 * T);
    let tasks = task_count(panels, m * n * k);
    let per_task = panels.div_ceil(tasks);
    let out = OutPtr(y.as_mut_ptr());
    let xp = &xp;
    run_tasks(tasks, |t| {
        let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels));
        // SAFETY: `gemm` dispatches here only when `available()`.
        let _tiles = unsafe { Tiles::configure() };
        let mut c = vec![0f32; 4 * T * T];
        let mut pad: Vec<u16> = Vec::new();
        for p in p0..p1 {
            let n0 = p * 2 * T;
            let nv = (2 * T).min(n - n0);
            // A full panel of a matrix whose rows are whole tiles is read in place; a ragged
            // one is copied, zero-padded, so no load reads past a row or the matrix.
            let (a, lda) = if nv == 2 * T && k.is_multiple_of(KT) {
                (w[n0 * k..].as_ptr(), 2 * k)
            } else {
                let kp = kbs * KT;
                pad.clear();
                pad.resize(2 * T * kp, 0);
                for r in 0..nv {
                    pad[r * kp..r * kp + k].copy_from_slice(&w[(n0 + r) * k..(n0 + r + 1) * k]);
                }
                (pad.as_ptr(), 2 * kp)
            };
            for mp in 0..mblocks / 2 {
                let b0 = xp[2 * mp * kbs * TILE..].as_ptr();
                let b1 = xp[(2 * mp + 1) * kbs * TILE..].as_ptr();
                // SAFETY: `a` has 32 rows of `32·kbs` values at stride `lda` bytes (the matrix
                // itself when n0+32 ≤ n and k = 32·kbs, else `pad`); `b0`/`b1` are two blocks
                // of `kbs` tiles inside `xp`; `c` holds four tiles.
                unsafe {
                    block(
                        a,
                        a.byte_add(T * lda),
                        lda,
                        b0,
                        b1,
                        TILE,
                        kbs,
                        c.as_mut_ptr(),
                        false,
                    )
                };
                // Tile (a, b) holds Yᵀ for weight rows n0+16a.. and X rows 32mp+16b..
                for (ti, tile) in c.chunks_exact(T * T).enumerate() {
                    let (ha, hb) = (ti / 2, ti % 2);
                    let (i0, j0) = (2 * T * mp + T * hb, n0 + T * ha);
                    if i0 >= m || j0 >= n {
                        continue;
                    }
                    // SAFETY: rows i0.. < m and columns j0.. < n of `Y` (row stride n);
                    // columns n0..n0+32 belong to this task's panels only. AMX CPUs have
                    // AVX-512F.
                    unsafe {
                        store_transposed(
                            tile,
                            out.get().add(i0 * n + j0),
                            n,
                            T.min(m - i0),
                            T.min(n - j0),
                        )
                    };
                }
            }
        }
    });
}

/// `Y = G·W`, `W` `k×n` bf16, `G` `m×k`, `Y` `m×n`, all non-empty and of checked lengths.
pub(crate) fn gemm_nn(w: &[u16], g: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    debug_assert!(available());
    let kbs = k.div_ceil(KT);
    let kp = kbs * KT;
    let mp_count = m.div_ceil(2 * T);
    // G rounded to bf16, row-major with rows padded to whole tiles and a whole number of pairs
    // of 16-row blocks: the `A` operand, read in place.
    let mut gp = vec![0u16; mp_count * 2 * T * kp];
    gp.par_chunks_mut(kp)
        .take(m)
        .enumerate()
        .for_each(|(i, row)| {
            let src = &g[i * k..(i + 1) * k];
            if std::arch::is_x86_feature_detected!("avx512bw") {
                // SAFETY: AVX-512BW implies AVX-512F; `row` has `kp ≥ k` values.
                unsafe { round_row_avx512(src, row) }
            } else {
                for (d, &v) in row.iter_mut().zip(src) {
                    *d = bf16_rne(v);
                }
            }
        });
    let panels = n.div_ceil(2 * T);
    let tasks = task_count(panels, m * n * k);
    let per_task = panels.div_ceil(tasks);
    let out = OutPtr(y.as_mut_ptr());
    let gp = &gp;
    run_tasks(tasks, |t| {
        let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels));
        // SAFETY: `gemm_nn` dispatches here only when `available()`.
        let _tiles = unsafe { Tiles::configure() };
        // The task's panels' results, per panel `mp_count` blocks of four tiles, accumulated
        // over k-blocks.
        let per_panel = mp_count * 4 * T * T;
        let mut c = vec![0f32; p1.saturating_sub(p0) * per_panel];
        // Columns n0..n0+32 of one k-block of W as `[kb][half][TILE]` `B` tiles.
        let mut wp = vec![0u16; kbs.min(K_BLOCK) * 2 * TILE];
        // k in blocks of K_BLOCK tiles, outermost: each block of G (all m rows) stays in
        // cache while it meets every panel, and each packed panel while it meets every row
        // block, where a whole LM head's k (152k) would stream G from memory once per panel.
        for kb0 in (0..kbs).step_by(K_BLOCK) {
            let nkb = K_BLOCK.min(kbs - kb0);
            let r0 = kb0 * KT;
            let rows = (nkb * KT).min(k - r0);
            let wp = &mut wp[..nkb * 2 * TILE];
            for (p, cp) in (p0..p1).zip(c.chunks_exact_mut(per_panel)) {
                let n0 = p * 2 * T;
                pack_b_cols(&w[r0 * n..], rows, n, n0, (2 * T).min(n - n0), wp);
                for (mp, c) in cp.chunks_exact_mut(4 * T * T).enumerate() {
                    let a0 = gp[2 * T * mp * kp + r0..].as_ptr();
                    // SAFETY: `gp` has 32 rows of `kp = 32·kbs` values from row 32mp (stride
                    // 2kp bytes), read from column r0 for `nkb` tiles; `wp` has `nkb` pairs of
                    // tiles (consecutive tiles of one half are 2·TILE apart); `c` holds four
                    // tiles.
                    unsafe {
                        block(
                            a0,
                            a0.add(T * kp),
                            2 * kp,
                            wp.as_ptr(),
                            wp.as_ptr().add(TILE),
                            2 * TILE,
                            nkb,
                            c.as_mut_ptr(),
                            kb0 > 0,
                        )
                    };
                }
            }
        }
        for (p, cp) in (p0..p1).zip(c.chunks_exact(per_panel)) {
            let n0 = p * 2 * T;
            for (mp, c) in cp.chunks_exact(4 * T * T).enumerate() {
                // Tile (a, b) holds Y rows 32mp+16a.., columns n0+16b..
                for (ti, tile) in c.chunks_exact(T * T).enumerate() {
                    let (ha, hb) = (ti / 2, ti % 2);
                    let (i0, j0) = (2 * T * mp + T * ha, n0 + T * hb);
                    if i0 >= m || j0 >= n {
                        continue;
                    }
                    let cols = T.min(n - j0);
                    for ii in 0..T.min(m - i0) {
                        // SAFETY: row i0+ii < m, columns j0..j0+cols ≤ n, all in this task's
                        // panels.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                tile[ii * T..].as_ptr(),
                                out.get().add((i0 + ii) * n + j0),
                                cols,
                            )
                        };
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector packing writes the same bits as the scalar one, ragged edges and NaN
    /// included.
    #[test]
    fn vector_packing_matches_scalar_packing() {
        if !std::arch::is_x86_feature_detected!("avx512bw") {
            println!("no AVX-512BW: nothing to check");
            return;
        }
        for (rows, k) in [(16, 64), (5, 37), (40, 32), (3, 1), (20, 100)] {
            let mut x: Vec<f32> = (0..rows * k)
                .map(|i| ((i as f32 * 0.731).sin() * 1e3) / (1.0 + i as f32))
                .collect();
            x[0] = f32::NAN;
            x[rows * k / 2] = f32::INFINITY;
            // Exact ties (to even: down, then up) and a value just below a tie.
            x[rows * k - 1] = f32::from_bits(0x3f80_8000);
            x[(rows * k).saturating_sub(2)] = f32::from_bits(0x3f81_8000);
            x[rows * k / 3] = f32::from_bits(0x3f81_7fff);
            for r0 in (0..rows).step_by(T) {
                let tiles = k.div_ceil(KT) * TILE;
                let (mut a, mut b) = (vec![7u16; tiles], vec![9u16; tiles]);
                a.fill(0);
                pack_b_rows(&x, rows, k, r0, &mut a);
                // SAFETY: checked AVX-512BW above; `b` holds the tiles.
                unsafe { pack_b_rows_avx512(&x, rows, k, r0, &mut b) };
                assert_eq!(a, b, "rows {rows}, k {k}, block {r0}");
            }
            let mut row = vec![0u16; x.len() + 3];
            // SAFETY: checked AVX-512BW above; `row` is longer than `x`.
            unsafe { round_row_avx512(&x, &mut row) };
            let want: Vec<u16> = x.iter().map(|&v| bf16_rne(v)).collect();
            assert_eq!(&row[..x.len()], &want[..], "row of {}", x.len());
            assert_eq!(&row[x.len()..], &[0, 0, 0], "wrote past the row");
        }
    }

    /// The register transpose equals the element-wise one, on full and partial corners.
    #[test]
    fn store_transposed_is_the_transpose() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("no AVX-512F: nothing to check");
            return;
        }
        let tile: Vec<f32> = (0..T * T).map(|i| i as f32 * 0.5 - 3.0).collect();
        for (rows, cols) in [(16, 16), (16, 5), (7, 16), (1, 1), (3, 11)] {
            let ld = 21;
            let mut out = vec![f32::NAN; T * ld];
            // SAFETY: checked AVX-512F above; `out` has 16 rows of `ld ≥ 16` values.
            unsafe { store_transposed(&tile, out.as_mut_ptr(), ld, rows, cols) };
            for i in 0..T {
                for j in 0..ld {
                    let got = out[i * ld + j];
                    if i < rows && j < cols {
                        assert_eq!(got, tile[j * T + i], "({rows}, {cols}) at [{i}][{j}]");
                    } else {
                        assert!(got.is_nan(), "({rows}, {cols}) wrote outside at [{i}][{j}]");
                    }
                }
            }
        }
    }
}
