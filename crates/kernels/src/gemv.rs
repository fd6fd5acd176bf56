//! GEMV driver: shape checks, row-block split over rayon, per-path kernel dispatch.

use rayon::prelude::*;

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
