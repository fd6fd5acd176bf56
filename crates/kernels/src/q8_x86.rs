//! x86-64 paths of the q8_0 kernels (see `q8.rs`): AVX-512F and AVX2+FMA+F16C, compiled with
//! `#[target_feature]` and reached only after run-time detection.
//!
//! GEMV dequantizes in registers: `vpmovsxbd` widens 16 (8) int8 to i32, `vcvtdq2ps` to f32;
//! a block's 32 products are summed, then scaled once by the block's f16 scale (`vcvtph2ps` of
//! a broadcast). Four rows share each load of `x`.

use std::arch::x86_64::*;

use crate::f16_to_f32;
use crate::q8::{q8_blocks, Q8_BLOCK};

/// The partial last block of a row (`c0..cols`), scalar.
///
/// # Safety
/// `q` points to a row of `cols` int8.
#[inline(always)]
unsafe fn tail(q: *const i8, c0: usize, cols: usize, x: &[f32]) -> f32 {
    let mut s = 0f32;
    for (c, &xv) in x.iter().enumerate().take(cols).skip(c0) {
        // SAFETY: c < cols, inside the row.
        s += unsafe { *q.add(c) } as f32 * xv;
    }
    s
}

macro_rules! gemv_rows {
    ($name:ident, $features:literal, $block:ident, $zero:ident, $fma:ident, $bcast:ident,
     $hsum:ident) => {
        /// `R` rows from row `r` of `y = W·x`.
        ///
        /// # Safety
        /// The CPU supports the features; rows `r..r+R` exist in `qs`/`scales`/`y`, `x.len()
        /// == cols`.
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(
            qs: &[i8],
            scales: &[u16],
            cols: usize,
            x: &[f32],
            y: &mut [f32],
            r: usize,
        ) {
            let nb = q8_blocks(cols);
            let full = cols / Q8_BLOCK;
            let xp = x.as_ptr();
            let mut acc = [$zero(); R];
            // SAFETY: every row index is < r+R and column < cols by the caller's guarantee;
            // prefetches never fault (their addresses are formed with `wrapping_add`).
            unsafe {
                let q: [*const i8; R] = std::array::from_fn(|i| qs.as_ptr().add((r + i) * cols));
                let s: [*const u16; R] = std::array::from_fn(|i| scales.as_ptr().add((r + i) * nb));
                for b in 0..full {
                    let c = b * Q8_BLOCK;
                    for i in 0..R {
                        // The prefetchers follow each row but not the jump to the next group.
                        _mm_prefetch::<_MM_HINT_T0>(q[i].wrapping_add(R * cols + c).cast());
                        let t = $block(q[i].add(c), xp.add(c));
                        acc[i] = $fma(t, $bcast(*s[i].add(b)), acc[i]);
                    }
                }
                for i in 0..R {
                    let mut v = $hsum(acc[i]);
                    if full < nb {
                        v += tail(q[i], full * Q8_BLOCK, cols, x) * f16_to_f32(*s[i].add(full));
                    }
                    y[r + i] = v;
                }
            }
        }
    };
}

// ---- AVX-512F ----

/// Σ over one block of 32: `q[0..32]·x[0..32]`, as 16 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block512(q: *const i8, x: *const f32) -> __m512 {
    // SAFETY: the caller guarantees 32 int8 at `q` and 32 floats at `x`.
    unsafe {
        let w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.cast())));
        let w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16).cast())));
        let t = _mm512_mul_ps(w0, _mm512_loadu_ps(x));
        _mm512_fmadd_ps(w1, _mm512_loadu_ps(x.add(16)), t)
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn bcast512(bits: u16) -> __m512 {
    _mm512_cvtph_ps(_mm256_set1_epi16(bits as i16))
}

gemv_rows!(
    rows512,
    "avx512f",
    block512,
    _mm512_setzero_ps,
    _mm512_fmadd_ps,
    bcast512,
    _mm512_reduce_add_ps
);

/// # Safety
/// The CPU supports AVX-512F; `qs`, `scales` hold `y.len()` rows of `cols`; `x.len() == cols`.
pub(crate) unsafe fn gemv_avx512(qs: &[i8], scales: &[u16], cols: usize, x: &[f32], y: &mut [f32]) {
    let rows = y.len();
    let mut r = 0;
    // SAFETY: forwarded contract, rows in bounds by the loop.
    unsafe {
        while r + 4 <= rows {
            rows512::<4>(qs, scales, cols, x, y, r);
            r += 4;
        }
        while r < rows {
            rows512::<1>(qs, scales, cols, x, y, r);
            r += 1;
        }
    }
}

// ---- AVX2 + FMA + F16C ----

/// Σ over one block of 32, as 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block256(q: *const i8, x: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 32 int8 at `q` and 32 floats at `x`.
    unsafe {
        let w =
            |o: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(o).cast())));
        let mut t = _mm256_mul_ps(w(0), _mm256_loadu_ps(x));
        t = _mm256_fmadd_ps(w(8), _mm256_loadu_ps(x.add(8)), t);
        t = _mm256_fmadd_ps(w(16), _mm256_loadu_ps(x.add(16)), t);
        _mm256_fmadd_ps(w(24), _mm256_loadu_ps(x.add(24)), t)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast256(bits: u16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

gemv_rows!(
    rows256,
    "avx2,fma,f16c",
    block256,
    _mm256_setzero_ps,
    _mm256_fmadd_ps,
    bcast256,
    hsum256
);

/// # Safety
/// The CPU supports AVX2, FMA and F16C; otherwise as [`gemv_avx512`].
pub(crate) unsafe fn gemv_avx2(qs: &[i8], scales: &[u16], cols: usize, x: &[f32], y: &mut [f32]) {
    let rows = y.len();
    let mut r = 0;
    // SAFETY: forwarded contract, rows in bounds by the loop.
    unsafe {
        while r + 4 <= rows {
            rows256::<4>(qs, scales, cols, x, y, r);
            r += 4;
        }
        while r < rows {
            rows256::<1>(qs, scales, cols, x, y, r);
            r += 1;
        }
    }
}

// ---- GEMM register tiles over a dequantized f32 panel ----

/// `MR×32` tile: 2 zmm accumulators per row.
///
/// # Safety
/// `a`: `MR` rows (stride `lda`) × `kc`; `b`: `kc×32`; `c`: `MR` rows (stride `ldc`) ×
/// `nvalid ≤ 32`; the CPU supports AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile512<const MR: usize>(
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
    // SAFETY: accesses stay in the caller's regions; stores and loads of `c` are masked to
    // `nvalid` columns (the second half's pointer is formed with `wrapping_add`).
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
        let m0 = ((1u32 << nvalid.min(16)) - 1) as __mmask16;
        let m1 = ((1u32 << nvalid.saturating_sub(16).min(16)) - 1) as __mmask16;
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

/// # Safety
/// See [`tile512`], with `mr ≤ 8` rows.
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
            1 => tile512::<1>(kc, a, lda, b, c, ldc, nvalid, acc),
            2 => tile512::<2>(kc, a, lda, b, c, ldc, nvalid, acc),
            3 => tile512::<3>(kc, a, lda, b, c, ldc, nvalid, acc),
            4 => tile512::<4>(kc, a, lda, b, c, ldc, nvalid, acc),
            5 => tile512::<5>(kc, a, lda, b, c, ldc, nvalid, acc),
            6 => tile512::<6>(kc, a, lda, b, c, ldc, nvalid, acc),
            7 => tile512::<7>(kc, a, lda, b, c, ldc, nvalid, acc),
            _ => tile512::<8>(kc, a, lda, b, c, ldc, nvalid, acc),
        }
    }
}

/// `MR×16` tile: 2 ymm accumulators per row; the partial columns go through a stack buffer.
///
/// # Safety
/// As [`tile512`] with `b` `kc×16`, `nvalid ≤ 16`, and AVX2 + FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile256<const MR: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    // SAFETY: accesses stay in the caller's regions; `c` is touched only in `nvalid` columns.
    unsafe {
        for kk in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(kk * 16));
            let b1 = _mm256_loadu_ps(b.add(kk * 16 + 8));
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*a.add(r * lda + kk));
                accr[0] = _mm256_fmadd_ps(av, b0, accr[0]);
                accr[1] = _mm256_fmadd_ps(av, b1, accr[1]);
            }
        }
        let mut buf = [0f32; 16];
        for (r, accr) in acc.iter().enumerate() {
            _mm256_storeu_ps(buf.as_mut_ptr(), accr[0]);
            _mm256_storeu_ps(buf.as_mut_ptr().add(8), accr[1]);
            let cr = std::slice::from_raw_parts_mut(c.add(r * ldc), nvalid);
            for (cv, &v) in cr.iter_mut().zip(&buf) {
                *cv = if accumulate { *cv + v } else { v };
            }
        }
    }
}

/// # Safety
/// See [`tile256`], with `mr ≤ 6` rows.
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
    // SAFETY: forwarded contract.
    unsafe {
        match mr {
            1 => tile256::<1>(kc, a, lda, b, c, ldc, nvalid, acc),
            2 => tile256::<2>(kc, a, lda, b, c, ldc, nvalid, acc),
            3 => tile256::<3>(kc, a, lda, b, c, ldc, nvalid, acc),
            4 => tile256::<4>(kc, a, lda, b, c, ldc, nvalid, acc),
            5 => tile256::<5>(kc, a, lda, b, c, ldc, nvalid, acc),
            _ => tile256::<6>(kc, a, lda, b, c, ldc, nvalid, acc),
        }
    }
}

/// One row of q8_0 to f32 (`out.len() == q.len() == cols`, `scales` its blocks' scales): each
/// value is `q·d` exactly, as `q8::dequantize_row` computes it, 16 lanes at a time.
///
/// # Safety
/// The CPU supports AVX-512F; `scales` has `q8_blocks(q.len())` entries.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn dequantize_row_avx512(q: &[i8], scales: &[u16], out: &mut [f32]) {
    let cols = q.len();
    let full = cols / Q8_BLOCK;
    // SAFETY: blocks b < full lie inside `q`, `out` and `scales` (caller's guarantee).
    unsafe {
        for b in 0..full {
            let c = b * Q8_BLOCK;
            let d = bcast512(*scales.get_unchecked(b));
            let qp = q.as_ptr().add(c);
            let w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qp.cast())));
            let w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qp.add(16).cast())));
            _mm512_storeu_ps(out.as_mut_ptr().add(c), _mm512_mul_ps(w0, d));
            _mm512_storeu_ps(out.as_mut_ptr().add(c + 16), _mm512_mul_ps(w1, d));
        }
    }
    if full * Q8_BLOCK < cols {
        let d = f16_to_f32(scales[full]);
        for c in full * Q8_BLOCK..cols {
            out[c] = q[c] as f32 * d;
        }
    }
}
