//! GEMV drivers (one row of `x`, and a few rows sharing each weight read): shape checks,
//! row-block split over rayon, per-path kernel dispatch.

use rayon::prelude::*;

use crate::gemm::OutPtr;
use crate::{scalar, Isa, Weights};

/// Below this many weights one thread finishes before rayon would have woken a second
/// (512 KiB of bf16 streams in ~20 µs here; a rayon hand-off costs a few µs).
const PAR_MIN_WEIGHTS: usize = 1 << 18;

/// Row block per rayon task: big enough to keep each core's hardware prefetchers streaming,
/// small enough that 2+ threads share the work evenly.
const MIN_ROWS_PER_TASK: usize = 16;

pub(crate) fn gemv(isa: Isa, w: Weights<'_>, x: &[f32], y: &mut [f32]) {
    isa.check();
    let (rows, cols) = (y.len(), x.len());
    assert_eq!(
        Some(w.len()),
        rows.checked_mul(cols),
        "gemv: weights have {} elements, expected rows {rows} × cols {cols}",
        w.len()
    );
    if rows == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if threads <= 1 || rows * cols < PAR_MIN_WEIGHTS || rows < 2 * MIN_ROWS_PER_TASK {
        return kernel(isa, w, cols, x, y);
    }
    // Four tasks per thread evens out a core that is busy with something else.
    let chunk = rows.div_ceil(threads * 4).max(MIN_ROWS_PER_TASK);
    y.par_chunks_mut(chunk).enumerate().for_each(|(i, yc)| {
        let r0 = i * chunk;
        kernel(isa, w.rows(r0, r0 + yc.len(), cols), cols, x, yc)
    });
}

/// One thread's rows. `isa` has been checked by the caller.
fn kernel(isa: Isa, w: Weights<'_>, cols: usize, x: &[f32], y: &mut [f32]) {
    match isa {
        Isa::Portable => scalar::gemv(w, cols, x, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemv` checked that the CPU supports AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { crate::x86::gemv_avx2(w, cols, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemv` checked that the CPU supports AVX-512F.
        Isa::Avx512 => unsafe { crate::x86::gemv_avx512(w, cols, x, y) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("non-portable paths are never supported off x86-64"),
    }
}

/// `Y[m×n] = X[m×k]·Wᵀ` for a few rows of `X` (batch decode, short chunks): each weight row is
/// read from memory once and dotted with every row of `X`, so the call costs about one GEMV
/// of memory traffic instead of `m`. Weight rows are split over rayon's pool as in [`gemv`].
/// Shapes have been checked by the caller.
pub(crate) fn gemv_multi(
    isa: Isa,
    w: Weights<'_>,
    x: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    let out = OutPtr(y.as_mut_ptr());
    let run = |r0: usize, r1: usize| {
        // SAFETY: rows r0..r1 of `w` and columns r0..r1 of every row of `y` (stride n) are in
        // bounds (shapes checked by `gemm`); tasks get disjoint row ranges, so disjoint
        // columns of `y`; `isa` was checked by `gemm`.
        unsafe {
            multi_kernel(
                isa,
                w.rows(r0, r1, k),
                r1 - r0,
                k,
                x,
                m,
                out.get().add(r0),
                n,
            )
        }
    };
    let threads = rayon::current_num_threads();
    if threads <= 1 || n * k < PAR_MIN_WEIGHTS || n < 2 * MIN_ROWS_PER_TASK {
        return run(0, n);
    }
    let chunk = n.div_ceil(threads * 4).max(MIN_ROWS_PER_TASK);
    (0..n.div_ceil(chunk))
        .into_par_iter()
        .for_each(|t| run(t * chunk, ((t + 1) * chunk).min(n)));
}

/// # Safety
/// The CPU must support `isa`; `w` holds `rows` rows of `cols`, `x` `m` rows of `cols`, and
/// `y` is writable at `i·ldy + r` for `i < m`, `r < rows`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn multi_kernel(
    isa: Isa,
    w: Weights<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    m: usize,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match isa {
            Isa::Portable => scalar::gemv_multi(w, rows, cols, x, m, y, ldy),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::gemv_multi_avx2(w, rows, cols, x, m, y, ldy),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => crate::x86::gemv_multi_avx512(w, rows, cols, x, m, y, ldy),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("non-portable paths are never supported off x86-64"),
        }
    }
}
