//! GEMM driver: `Y[m×n] = X[m×k] · Wᵀ` with `W` `n×k` in 16 bits.
//!
//! Blocking (BLIS-style, one level): `k` in blocks of [`KC`]; `W` in panels of `nr` rows, each
//! widened and transposed once into a small f32 buffer that stays in L1; every `mr` rows of `X`
//! then run an `mr×nr` register-tile micro-kernel over it. Threads take disjoint ranges of
//! panels, i.e. disjoint columns of `Y`, so each weight is converted once per call and `X`
//! (the small operand at prefill sizes) is shared read-only.
//!
//! The same driver computes `X·W` (no transpose) for the input gradient of a frozen layer:
//! only the packing differs, and there it is simpler (a panel row is a contiguous slice of a
//! weight row).

use rayon::prelude::*;

use crate::{gemv, scalar, Isa, Weights};

/// `k` block: a 32-wide f32 panel of 128 rows is 16 KiB, half of a 48 KiB L1d, leaving room
/// for the `mr` rows of `X` it is multiplied with.
const KC: usize = 128;

/// Below this many rows of `X` packing costs more than it saves: each row runs as a GEMV
/// straight off the 16-bit weights.
const GEMV_MAX_M: usize = 3;

/// Below this many multiply-adds a second thread does not pay for its wake-up.
const PAR_MIN_MACS: usize = 1 << 20;

/// `C (+)= A·B` on one register tile; see [`scalar::micro_generic`] for the contract.
type Micro = unsafe fn(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    accumulate: bool,
);

/// `Y`'s base pointer, shared by the tasks; each task writes only its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of `Y` (see `gemm`), and the pointer outlives
// them because rayon's `for_each` returns only when every task has finished.
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer itself is only copied, never used to alias a write.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method, not `.0`: closures capture fields separately, and a bare `*mut` is not `Sync`.
    fn get(self) -> *mut f32 {
        self.0
    }
}

pub(crate) fn gemm(
    isa: Isa,
    w: Weights<'_>,
    x: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    isa.check();
    // Checked products: a wrapped product could match a short slice and let the unsafe
    // kernels read and write past it.
    assert_eq!(
        Some(x.len()),
        m.checked_mul(k),
        "gemm: x has {} elements, expected m {m} × k {k}",
        x.len()
    );
    assert_eq!(
        Some(w.len()),
        n.checked_mul(k),
        "gemm: w has {} elements, expected n {n} × k {k}",
        w.len()
    );
    assert_eq!(
        Some(y.len()),
        m.checked_mul(n),
        "gemm: y has {} elements, expected m {m} × n {n}",
        y.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    if m <= GEMV_MAX_M {
        for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
            gemv::gemv(isa, w, xr, yr);
        }
        return;
    }
    tiled(isa, w, x, y, m, k, n, Orient::Nt);
}

/// Which product the tiled driver computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Orient {
    /// `Y[m×n] = X[m×k]·Wᵀ`, `W` `n×k` (forward of a linear layer).
    Nt,
    /// `Y[m×n] = X[m×k]·W`, `W` `k×n` (its input gradient: `n` = the layer's input width).
    Nn,
}

/// `dX[m×n] = G[m×k] · W` with `W` `k×n` in 16 bits: a linear layer's input gradient (`k` its
/// output width, `n` its input width), the weight itself getting no gradient.
pub(crate) fn gemm_nn(
    isa: Isa,
    w: Weights<'_>,
    x: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    isa.check();
    assert_eq!(
        Some(x.len()),
        m.checked_mul(k),
        "gemm_nn: g has {} elements, expected m {m} × k {k}",
        x.len()
    );
    assert_eq!(
        Some(w.len()),
        k.checked_mul(n),
        "gemm_nn: w has {} elements, expected k {k} × n {n}",
        w.len()
    );
    assert_eq!(
        Some(y.len()),
        m.checked_mul(n),
        "gemm_nn: y has {} elements, expected m {m} × n {n}",
        y.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    tiled(isa, w, x, y, m, k, n, Orient::Nn);
}

/// The blocked product shared by both orientations; only the panel packing differs. Shapes
/// have been checked by the caller and are all non-zero.
#[allow(clippy::too_many_arguments)]
fn tiled(
    isa: Isa,
    w: Weights<'_>,
    x: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    orient: Orient,
) {
    let (mr, nr, micro): (usize, usize, Micro) = match isa {
        Isa::Portable => (4, 8, micro_portable),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (6, 16, crate::x86::micro_avx2),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (8, 32, crate::x86::micro_avx512),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("non-portable paths are never supported off x86-64"),
    };
    let panels = n.div_ceil(nr);
    let threads = rayon::current_num_threads();
    let tasks = if threads > 1 && m * n * k >= PAR_MIN_MACS {
        (threads * 4).min(panels)
    } else {
        1
    };
    let per_task = panels.div_ceil(tasks);
    let out = OutPtr(y.as_mut_ptr());
    let run = |t: usize| {
        let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels));
        let mut panel = vec![0f32; KC * nr];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in p0..p1 {
                let j0 = p * nr;
                let nvalid = nr.min(n - j0);
                match orient {
                    Orient::Nt => scalar::pack(w, k, j0, nvalid, nr, k0, kc, &mut panel),
                    Orient::Nn => scalar::pack_nn(w, n, j0, nvalid, nr, k0, kc, &mut panel),
                }
                for i0 in (0..m).step_by(mr) {
                    // SAFETY: rows i0..i0+mr' of `x` (stride k) have columns k0..k0+kc; the
                    // panel holds kc×nr floats; rows i0.. of `y` (stride n) have columns
                    // j0..j0+nvalid, which belong to this task's panels only; `micro` is the
                    // kernel of `isa`, checked above, and gets `mr' ≤ mr` as it requires.
                    unsafe {
                        micro(
                            mr.min(m - i0),
                            kc,
                            x.as_ptr().add(i0 * k + k0),
                            k,
                            panel.as_ptr(),
                            out.get().add(i0 * n + j0),
                            n,
                            nvalid,
                            k0 > 0,
                        )
                    }
                }
            }
        }
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// # Safety
/// See [`scalar::micro_generic`], with `mr ≤ 4` and `nr = 8`.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_portable(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match mr {
            1 => scalar::micro_generic::<1, 8, false>(kc, a, lda, b, c, ldc, nvalid, accumulate),
            2 => scalar::micro_generic::<2, 8, false>(kc, a, lda, b, c, ldc, nvalid, accumulate),
            3 => scalar::micro_generic::<3, 8, false>(kc, a, lda, b, c, ldc, nvalid, accumulate),
            _ => scalar::micro_generic::<4, 8, false>(kc, a, lda, b, c, ldc, nvalid, accumulate),
        }
    }
}
