//! x86-64 kernels (AVX2+FMA+F16C and AVX-512F), compiled for their features with
//! `#[target_feature]` and only reached after run-time detection.
//!
//! Widening in registers: f16 with `vcvtph2ps`; bf16 by zero-extending to 32 bits and shifting
//! left 16 (bf16 is the top half of an f32, so this is exact). `avx512_bf16`'s `vdpbf16ps` is
//! not used: it needs `x` rounded to bf16 too (losing 16 bits of the activations), and the
//! GEMV is memory-bound anyway. `avx512_fp16` arithmetic accumulates in f16, which is too
//! coarse; its conversions are the same as AVX-512F's.

use std::arch::x86_64::*;

use crate::{bf16_to_f32, f16_to_f32, scalar, Weights};

const BF16: u8 = 0;
const F16: u8 = 1;
const F32: u8 = 2;

/// Element `i` of a weight row at `p`, in format `FMT`, as f32.
///
/// # Safety
/// `p` must point to a row of `FMT` elements with at least `i + 1` of them.
#[inline(always)]
unsafe fn ld1<const FMT: u8>(p: *const u8, i: usize) -> f32 {
    // SAFETY: in bounds by the caller's guarantee; unaligned reads are fine for 2/4-byte types
    // since the slices this comes from are properly aligned for their element type.
    unsafe {
        match FMT {
            BF16 => bf16_to_f32(*p.cast::<u16>().add(i)),
            F16 => f16_to_f32(*p.cast::<u16>().add(i)),
            _ => *p.cast::<f32>().add(i),
        }
    }
}

const fn elem_bytes(fmt: u8) -> usize {
    if fmt == F32 {
        4
    } else {
        2
    }
}

// The GEMV loop, written once for both vector widths. Four rows at a time share each load of
// `x`; two accumulators per row hide the FMA latency (8 independent chains in flight).
macro_rules! gemv_kernel {
    ($name:ident, $features:literal, $w:literal, $ld:ident, $loadx:ident, $fma:ident, $add:ident,
     $zero:ident, $hsum:ident) => {
        /// # Safety
        /// The CPU must support the enabled features; `w` must hold `y.len()` rows of `cols`
        /// `FMT` elements; `x.len() == cols`.
        #[target_feature(enable = $features)]
        unsafe fn $name<const FMT: u8>(w: *const u8, cols: usize, x: &[f32], y: &mut [f32]) {
            let row_bytes = cols * elem_bytes(FMT);
            let xp = x.as_ptr();
            let rows = y.len();
            let body2 = cols / (2 * $w) * (2 * $w);
            let body1 = cols / $w * $w;
            let mut r = 0;
            // SAFETY (whole body): every weight access is at row < rows, column < cols, and
            // every `x` access at column < cols, by the loop bounds and the caller's guarantee.
            unsafe {
                while r + 4 <= rows {
                    let p = [
                        w.add(r * row_bytes),
                        w.add((r + 1) * row_bytes),
                        w.add((r + 2) * row_bytes),
                        w.add((r + 3) * row_bytes),
                    ];
                    let mut a = [$zero(); 8];
                    let mut c = 0;
                    while c < body2 {
                        let x0 = $loadx(xp.add(c));
                        let x1 = $loadx(xp.add(c + $w));
                        // The hardware prefetchers follow each row but cannot guess the jump to
                        // the next group of rows; fetching it a group ahead measured 1.2-1.4× on
                        // DRAM-bound bf16 shapes. Prefetches never fault, so past the last row
                        // they are harmless (the address is formed with `wrapping_add`).
                        for pi in p {
                            let ahead = pi.wrapping_add(4 * row_bytes + c * elem_bytes(FMT));
                            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                            if 2 * $w * elem_bytes(FMT) > 64 {
                                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
                            }
                        }
                        for i in 0..4 {
                            a[2 * i] = $fma($ld::<FMT>(p[i], c), x0, a[2 * i]);
                            a[2 * i + 1] = $fma($ld::<FMT>(p[i], c + $w), x1, a[2 * i + 1]);
                        }
                        c += 2 * $w;
                    }
                    if c < body1 {
                        let x0 = $loadx(xp.add(c));
                        for i in 0..4 {
                            a[2 * i] = $fma($ld::<FMT>(p[i], c), x0, a[2 * i]);
                        }
                        c += $w;
                    }
                    for i in 0..4 {
                        let mut s = $hsum($add(a[2 * i], a[2 * i + 1]));
                        for cc in c..cols {
                            s += ld1::<FMT>(p[i], cc) * x[cc];
                        }
                        y[r + i] = s;
                    }
                    r += 4;
                }
                while r < rows {
                    let p = w.add(r * row_bytes);
                    let (mut a0, mut a1) = ($zero(), $zero());
                    let mut c = 0;
                    while c < body2 {
                        a0 = $fma($ld::<FMT>(p, c), $loadx(xp.add(c)), a0);
                        a1 = $fma($ld::<FMT>(p, c + $w), $loadx(xp.add(c + $w)), a1);
                        c += 2 * $w;
                    }
                    if c < body1 {
                        a0 = $fma($ld::<FMT>(p, c), $loadx(xp.add(c)), a0);
                        c += $w;
                    }
                    let mut s = $hsum($add(a0, a1));
                    for cc in c..cols {
                        s += ld1::<FMT>(p, cc) * x[cc];
                    }
                    y[r] = s;
                    r += 1;
                }
            }
        }
    };
}

// ---- AVX-512F ----

/// 16 weights from element `i` of the row at `p`, widened to f32.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn ld512<const FMT: u8>(p: *const u8, i: usize) -> __m512 {
    // SAFETY: the caller guarantees 16 elements from `i` are in bounds; loads are unaligned.
    unsafe {
        match FMT {
            BF16 => {
                let h = _mm256_loadu_si256(p.cast::<u16>().add(i).cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
            F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast::<u16>().add(i).cast())),
            _ => _mm512_loadu_ps(p.cast::<f32>().add(i)),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn loadx512(p: *const f32) -> __m512 {
    // SAFETY: the caller guarantees 16 floats from `p`.
    unsafe { _mm512_loadu_ps(p) }
}

gemv_kernel!(
    gemv512,
    "avx512f",
    16,
    ld512,
    loadx512,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_setzero_ps,
    _mm512_reduce_add_ps
);

/// # Safety
/// The CPU must support AVX-512F; `w` must hold `y.len()` rows of `cols`; `x.len() == cols`.
pub(crate) unsafe fn gemv_avx512(w: Weights<'_>, cols: usize, x: &[f32], y: &mut [f32]) {
    // SAFETY: forwarded contract; the slices give the pointers their bounds.
    unsafe {
        match w {
            Weights::Bf16(w) => gemv512::<BF16>(w.as_ptr().cast(), cols, x, y),
            Weights::F16(w) => gemv512::<F16>(w.as_ptr().cast(), cols, x, y),
            Weights::F32(w) => gemv512::<F32>(w.as_ptr().cast(), cols, x, y),
        }
    }
}

/// The `MR`×32 register tile (`MR ≤ 14`): up to 28 zmm accumulators, two panel loads and `MR`
/// broadcasts per `k`.
///
/// # Safety
/// See [`scalar::micro_generic`] with `MR` rows and `NR = 32`; the CPU must support AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro512<const MR: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY: all accesses are inside the regions the caller guarantees: `a` rows < MR,
    // columns < kc; `b` kc×32; `c` rows < MR, and only the first `nvalid` columns are touched
    // because the masks cover exactly those (masked-off lanes are never accessed; the second
    // half's pointer is formed with `wrapping_add` since it may lie past the row's end).
    unsafe {
        for kk in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(kk * 32));
            let b1 = _mm512_loadu_ps(b.add(kk * 32 + 16));
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + kk));
                accr[0] = _mm512_fmadd_ps(av, b0, accr[0]);
                accr[1] = _mm512_fmadd_ps(av, b1, accr[1]);
            }
        }
        let m0 = lane_mask(nvalid.min(16));
        let m1 = lane_mask(nvalid.saturating_sub(16));
        for (r, accr) in acc.iter().enumerate() {
            let c0 = c.add(r * ldc);
            let c1 = c0.wrapping_add(16);
            let (mut v0, mut v1) = (accr[0], accr[1]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c0));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c1));
            }
            _mm512_mask_storeu_ps(c0, m0, v0);
            _mm512_mask_storeu_ps(c1, m1, v1);
        }
    }
}

fn lane_mask(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// # Safety
/// See [`scalar::micro_generic`] with `mr ≤ 14`, `nr = 32`; the CPU must support AVX-512F.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_avx512(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    acc: bool,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match mr {
            1 => micro512::<1>(kc, a, lda, b, c, ldc, nvalid, acc),
            2 => micro512::<2>(kc, a, lda, b, c, ldc, nvalid, acc),
            3 => micro512::<3>(kc, a, lda, b, c, ldc, nvalid, acc),
            4 => micro512::<4>(kc, a, lda, b, c, ldc, nvalid, acc),
            5 => micro512::<5>(kc, a, lda, b, c, ldc, nvalid, acc),
            6 => micro512::<6>(kc, a, lda, b, c, ldc, nvalid, acc),
            7 => micro512::<7>(kc, a, lda, b, c, ldc, nvalid, acc),
            8 => micro512::<8>(kc, a, lda, b, c, ldc, nvalid, acc),
            9 => micro512::<9>(kc, a, lda, b, c, ldc, nvalid, acc),
            10 => micro512::<10>(kc, a, lda, b, c, ldc, nvalid, acc),
            11 => micro512::<11>(kc, a, lda, b, c, ldc, nvalid, acc),
            12 => micro512::<12>(kc, a, lda, b, c, ldc, nvalid, acc),
            13 => micro512::<13>(kc, a, lda, b, c, ldc, nvalid, acc),
            _ => micro512::<14>(kc, a, lda, b, c, ldc, nvalid, acc),
        }
    }
}

// ---- AVX2 + FMA + F16C ----

/// 8 weights from element `i` of the row at `p`, widened to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld256<const FMT: u8>(p: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller guarantees 8 elements from `i` are in bounds; loads are unaligned.
    unsafe {
        match FMT {
            BF16 => {
                let h = _mm_loadu_si128(p.cast::<u16>().add(i).cast());
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<u16>().add(i).cast())),
            _ => _mm256_loadu_ps(p.cast::<f32>().add(i)),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn loadx256(p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 8 floats from `p`.
    unsafe { _mm256_loadu_ps(p) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

gemv_kernel!(
    gemv256,
    "avx2,fma,f16c",
    8,
    ld256,
    loadx256,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_setzero_ps,
    hsum256
);

/// # Safety
/// The CPU must support AVX2, FMA and F16C; shapes as for [`gemv_avx512`].
pub(crate) unsafe fn gemv_avx2(w: Weights<'_>, cols: usize, x: &[f32], y: &mut [f32]) {
    // SAFETY: forwarded contract; the slices give the pointers their bounds.
    unsafe {
        match w {
            Weights::Bf16(w) => gemv256::<BF16>(w.as_ptr().cast(), cols, x, y),
            Weights::F16(w) => gemv256::<F16>(w.as_ptr().cast(), cols, x, y),
            Weights::F32(w) => gemv256::<F32>(w.as_ptr().cast(), cols, x, y),
        }
    }
}

/// The generic 6×16 tile compiled for AVX2+FMA (12 ymm accumulators; `mul_add` becomes FMA).
///
/// # Safety
/// See [`scalar::micro_generic`] with `mr ≤ 6`, `nr = 16`; the CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_avx2(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    acc: bool,
) {
    use scalar::micro_generic as g;
    // SAFETY: forwarded contract.
    unsafe {
        match mr {
            1 => g::<1, 16, true>(kc, a, lda, b, c, ldc, nvalid, acc),
            2 => g::<2, 16, true>(kc, a, lda, b, c, ldc, nvalid, acc),
            3 => g::<3, 16, true>(kc, a, lda, b, c, ldc, nvalid, acc),
            4 => g::<4, 16, true>(kc, a, lda, b, c, ldc, nvalid, acc),
            5 => g::<5, 16, true>(kc, a, lda, b, c, ldc, nvalid, acc),
            _ => g::<6, 16, true>(kc, a, lda, b, c, ldc, nvalid, acc),
        }
    }
}

// The multi-row GEMV (`Y = X·Wᵀ` for a few rows of `X`), written once for both vector widths:
// `RW` weight rows at a time are widened once per vector of columns and multiplied with `MB`
// rows of `X`, `RW·MB` accumulators. The weights stream from memory once per call; `X` (a few
// rows) stays in L1/L2.
macro_rules! multi_kernel {
    ($tile:ident, $name:ident, $features:literal, $w:literal, $ld:ident, $loadx:ident,
     $fma:ident, $zero:ident, $hsum:ident, $mb:literal) => {
        /// # Safety
        /// The CPU must support the enabled features; `w` must hold `RW` rows of `cols` `FMT`
        /// elements (stride `row_bytes`), `x` `MB` rows of `cols` floats (stride `cols`), and
        /// `y` must be writable at `i·ldy + j` for `i < MB`, `j < RW`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $tile<const FMT: u8, const RW: usize, const MB: usize>(
            w: *const u8,
            row_bytes: usize,
            cols: usize,
            x: *const f32,
            y: *mut f32,
            ldy: usize,
            prefetch: bool,
        ) {
            let body = cols / $w * $w;
            let mut acc = [[$zero(); MB]; RW];
            // SAFETY (whole body): accesses stay at weight row < RW, column < cols, x row < MB,
            // column < cols, and y as the caller guarantees; prefetches never fault (their
            // address is formed with `wrapping_add`).
            unsafe {
                let mut c = 0;
                while c < body {
                    let mut wv = [$zero(); RW];
                    for j in 0..RW {
                        let pj = w.add(j * row_bytes);
                        if prefetch && (c * elem_bytes(FMT)) % 64 == 0 {
                            // The next row group, as in the GEMV: the prefetchers do not
                            // guess the jump.
                            let ahead = pj.wrapping_add(RW * row_bytes + c * elem_bytes(FMT));
                            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                        }
                        wv[j] = $ld::<FMT>(pj, c);
                    }
                    for i in 0..MB {
                        let xv = $loadx(x.add(i * cols + c));
                        for j in 0..RW {
                            acc[j][i] = $fma(wv[j], xv, acc[j][i]);
                        }
                    }
                    c += $w;
                }
                for j in 0..RW {
                    for i in 0..MB {
                        let mut s = $hsum(acc[j][i]);
                        for cc in body..cols {
                            s += ld1::<FMT>(w.add(j * row_bytes), cc) * *x.add(i * cols + cc);
                        }
                        *y.add(i * ldy + j) = s;
                    }
                }
            }
        }

        /// # Safety
        /// The CPU must support the enabled features; `w` must hold `rows` rows of `cols`
        /// `FMT` elements, `x` `m` rows of `cols` floats, and `y` must be writable at
        /// `i·ldy + r` for `i < m`, `r < rows`.
        #[target_feature(enable = $features)]
        unsafe fn $name<const FMT: u8>(
            w: *const u8,
            rows: usize,
            cols: usize,
            x: *const f32,
            m: usize,
            y: *mut f32,
            ldy: usize,
        ) {
            let row_bytes = cols * elem_bytes(FMT);
            let mut r = 0;
            // SAFETY: each tile gets rows r..r+rw < rows, x rows i0..i0+mb < m, and the
            // matching part of `y`, as its contract requires.
            unsafe {
                while r < rows {
                    let rw = if rows - r >= 2 { 2 } else { 1 };
                    let wr = w.add(r * row_bytes);
                    let mut i0 = 0;
                    while i0 < m {
                        let mb = (m - i0).min($mb);
                        let (xi, yi) = (x.add(i0 * cols), y.add(i0 * ldy + r));
                        let pf = i0 == 0;
                        let a = (wr, row_bytes, cols, xi, yi, ldy, pf);
                        // Arms past `$mb` are never taken (`mb ≤ $mb`).
                        match (rw, mb) {
                            (2, 1) => $tile::<FMT, 2, 1>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (2, 2) => $tile::<FMT, 2, 2>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (2, 3) => $tile::<FMT, 2, 3>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (2, 4) => $tile::<FMT, 2, 4>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (2, 5) => $tile::<FMT, 2, 5>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (2, 6) => $tile::<FMT, 2, 6>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (2, 7) => $tile::<FMT, 2, 7>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (2, _) => $tile::<FMT, 2, 8>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (_, 1) => $tile::<FMT, 1, 1>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (_, 2) => $tile::<FMT, 1, 2>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (_, 3) => $tile::<FMT, 1, 3>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (_, 4) => $tile::<FMT, 1, 4>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (_, 5) => $tile::<FMT, 1, 5>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (_, 6) => $tile::<FMT, 1, 6>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (_, 7) => $tile::<FMT, 1, 7>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                            (_, _) => $tile::<FMT, 1, 8>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                        }
                        i0 += mb;
                    }
                    r += rw;
                }
            }
        }
    };
}

multi_kernel!(
    multi_tile512,
    multi512,
    "avx512f",
    16,
    ld512,
    loadx512,
    _mm512_fmadd_ps,
    _mm512_setzero_ps,
    _mm512_reduce_add_ps,
    8
);

multi_kernel!(
    multi_tile256,
    multi256,
    "avx2,fma,f16c",
    8,
    ld256,
    loadx256,
    _mm256_fmadd_ps,
    _mm256_setzero_ps,
    hsum256,
    4
);

/// # Safety
/// The CPU must support AVX-512F; `w` must hold `rows` rows of `cols`, `x` `m` rows of
/// `cols`, and `y` must be writable at `i·ldy + r` for `i < m`, `r < rows`.
pub(crate) unsafe fn gemv_multi_avx512(
    w: Weights<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    m: usize,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: forwarded contract; the slices give the pointers their bounds.
    unsafe {
        match w {
            Weights::Bf16(w) => {
                multi512::<BF16>(w.as_ptr().cast(), rows, cols, x.as_ptr(), m, y, ldy)
            }
            Weights::F16(w) => {
                multi512::<F16>(w.as_ptr().cast(), rows, cols, x.as_ptr(), m, y, ldy)
            }
            Weights::F32(w) => {
                multi512::<F32>(w.as_ptr().cast(), rows, cols, x.as_ptr(), m, y, ldy)
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; shapes as for [`gemv_multi_avx512`].
pub(crate) unsafe fn gemv_multi_avx2(
    w: Weights<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    m: usize,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: forwarded contract; the slices give the pointers their bounds.
    unsafe {
        match w {
            Weights::Bf16(w) => {
                multi256::<BF16>(w.as_ptr().cast(), rows, cols, x.as_ptr(), m, y, ldy)
            }
            Weights::F16(w) => {
                multi256::<F16>(w.as_ptr().cast(), rows, cols, x.as_ptr(), m, y, ldy)
            }
            Weights::F32(w) => {
                multi256::<F32>(w.as_ptr().cast(), rows, cols, x.as_ptr(), m, y, ldy)
            }
        }
    }
}
