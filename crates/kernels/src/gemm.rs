//! GEMM drivers: `Y[m×n] = X[m×k] · Wᵀ` with `W` `n×k` in 16 bits, and `X·W` for the input
//! gradient of a frozen layer.
//!
//! Small `m` (one to a few tokens: decode, batch decode) never packs: each weight row is read
//! from memory once and dotted with every row of `X` ([`gemv::gemv_multi`]), so a batch of 8
//! costs about one batch-1 step of memory traffic.
//!
//! Larger `m` (prefill, teacher scoring, training) runs a register-tiled micro-kernel on packed
//! f32 operands. For `X·Wᵀ` the weight rows are the *broadcast* operand: a panel of `mr` rows is
//! widened once per `k` block into a thread-local `[mr][kc]` buffer (a contiguous copy per row,
//! no transpose), and `X` is packed once per call, transposed into slabs of `nr` rows
//! (`[k][nr]`), the vector operand. The micro-kernel then accumulates an `mr×nr` tile of `Yᵀ`
//! in a small per-task buffer that is written to `Y` once per panel. Threads take disjoint
//! panels of `W` (disjoint columns of `Y`) and share the packed `X` read-only.
//!
//! For `X·W` a panel of `nr` weight columns is already contiguous in each weight row, so the
//! weights are the vector operand (`[kc][nr]`) and `X`, packed per `k` block, is broadcast.

use rayon::prelude::*;

use crate::{gemv, scalar, Isa, Precision, Weights};

/// `k` block of the `X·Wᵀ` driver: the `mr×KC` f32 weight block (14 KiB on AVX-512) stays in
/// L1 while `X`'s `KC×m` block (320 KiB at m = 320) streams from L2.
const KC_NT: usize = 256;

/// `k` block of the `X·W` driver: a `KC_NN×nr` weight panel is 32 KiB on AVX-512, in L1.
const KC_NN: usize = 256;

/// Up to this many rows of `X` the product runs as a multi-row GEMV off the 16-bit weights;
/// beyond, packing pays. Measured on the 0.6B shapes (crates/kernels/BENCHMARKS.md).
pub(crate) const GEMV_MAX_M: usize = 16;

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

/// A base pointer shared by the tasks; each task writes only its own part.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint parts of the buffer (see the drivers), and the pointer outlives
// them because rayon's `for_each` returns only when every task has finished.
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer itself is only copied, never used to alias a write.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method, not `.0`: closures capture fields separately, and a bare `*mut` is not `Sync`.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// The register tile of `isa`: (`mr` broadcast rows, `nr` vector columns, kernel).
fn tile(isa: Isa) -> (usize, usize, Micro) {
    match isa {
        Isa::Portable => (4, 8, micro_portable),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (6, 16, crate::x86::micro_avx2),
        // 14×32: 28 zmm accumulators, two vector loads and 14 broadcasts per 28 FMAs.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (14, 32, crate::x86::micro_avx512),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("non-portable paths are never supported off x86-64"),
    }
}

/// How many tasks to split `units` independent pieces of a `macs`-multiply-add product into.
pub(crate) fn task_count(units: usize, macs: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads > 1 && macs >= PAR_MIN_MACS {
        // Four tasks per thread even out a core that is busy with something else.
        (threads * 4).min(units).max(1)
    } else {
        1
    }
}

pub(crate) fn run_tasks(tasks: usize, run: impl Fn(usize) + Sync + Send) {
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    isa: Isa,
    precision: Precision,
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
    if m == 1 {
        return gemv::gemv(isa, w, x, y);
    }
    if m <= GEMV_MAX_M {
        return gemv::gemv_multi(isa, w, x, y, m, k, n);
    }
    #[cfg(target_arch = "x86_64")]
    if let (Precision::Medium, Weights::Bf16(w)) = (precision, w) {
        if crate::amx::available() {
            return crate::amx::gemm_nt(w, x, y, m, k, n);
        }
    }
    tiled_nt(isa, w, x, y, m, k, n);
}

/// `dX[m×n] = G[m×k] · W` with `W` `k×n` in 16 bits: a linear layer's input gradient (`k` its
/// output width, `n` its input width), the weight itself getting no gradient.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nn(
    isa: Isa,
    precision: Precision,
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
    #[cfg(target_arch = "x86_64")]
    if let (Precision::Medium, Weights::Bf16(w)) = (precision, w) {
        if m > GEMV_MAX_M && crate::amx::available() {
            return crate::amx::gemm_nn(w, x, y, m, k, n);
        }
    }
    tiled_nn(isa, w, x, y, m, k, n);
}

/// `Y = X·Wᵀ` with `W` rows broadcast and `X` packed transposed (see the module doc). Shapes
/// have been checked by the caller and are all non-zero.
fn tiled_nt(isa: Isa, w: Weights<'_>, x: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    let (mr, nr, micro) = tile(isa);
    let slabs = m.div_ceil(nr);
    // Xᵀ in slabs of `nr` rows, `[k][nr]` each, zero-padded past row m.
    let mut xt = vec![0f32; slabs * k * nr];
    xt.par_chunks_mut(k * nr)
        .enumerate()
        .for_each(|(s, slab)| scalar::pack_xt(x, k, s * nr, nr.min(m - s * nr), nr, slab));
    let panels = n.div_ceil(mr);
    let tasks = task_count(panels, m * n * k);
    let per_task = panels.div_ceil(tasks);
    let out = OutPtr(y.as_mut_ptr());
    let xt = &xt;
    run_tasks(tasks, |t| {
        let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels));
        let mut wbuf = vec![0f32; mr * KC_NT];
        // The `Yᵀ` tiles of one panel, `[slab][mr][nr]`.
        let mut acc = vec![0f32; slabs * mr * nr];
        for p in p0..p1 {
            let j0 = p * mr;
            let jv = mr.min(n - j0);
            for k0 in (0..k).step_by(KC_NT) {
                let kc = KC_NT.min(k - k0);
                scalar::pack_rows(w, k, j0, jv, mr, k0, kc, &mut wbuf);
                for s in 0..slabs {
                    // SAFETY: `wbuf` holds `mr` rows of `kc` floats (stride kc); slab `s` of
                    // `xt` has `k` rows of `nr` floats, of which rows k0..k0+kc are read;
                    // `acc`'s tile `s` has `mr` rows of `nr` floats (stride nr); `micro` is
                    // the kernel of `isa` (checked by the caller) with its own `mr` and `nr`.
                    unsafe {
                        micro(
                            mr,
                            kc,
                            wbuf.as_ptr(),
                            kc,
                            xt.as_ptr().add(s * k * nr + k0 * nr),
                            acc.as_mut_ptr().add(s * mr * nr),
                            nr,
                            nr,
                            k0 > 0,
                        )
                    }
                }
            }
            for s in 0..slabs {
                let tile = &acc[s * mr * nr..(s + 1) * mr * nr];
                for ii in 0..nr.min(m - s * nr) {
                    let i = s * nr + ii;
                    for jj in 0..jv {
                        // SAFETY: i < m and j0 + jj < n: inside `y`; columns j0..j0+jv belong
                        // to this task's panels only, so no other task writes them.
                        unsafe { *out.get().add(i * n + j0 + jj) = tile[jj * nr + ii] };
                    }
                }
            }
        }
    });
}

/// `Y = X·W`, `W` `k×n`: weight panels of `nr` columns are the vector operand, `X` (packed
/// per `k` block so its rows are not 4 KiB apart) is broadcast `mr` rows at a time.
fn tiled_nn(isa: Isa, w: Weights<'_>, x: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    let (mr, nr, micro) = tile(isa);
    // X by k blocks: block b is `[m][kc_b]`, contiguous, at offset m·b·KC_NN.
    let mut xb = vec![0f32; m * k];
    xb.par_chunks_mut(m * KC_NN)
        .enumerate()
        .for_each(|(b, blk)| {
            let k0 = b * KC_NN;
            let kc = KC_NN.min(k - k0);
            for (i, dst) in blk.chunks_exact_mut(kc).enumerate() {
                dst.copy_from_slice(&x[i * k + k0..i * k + k0 + kc]);
            }
        });
    let panels = n.div_ceil(nr);
    let tasks = task_count(panels, m * n * k);
    let per_task = panels.div_ceil(tasks);
    let out = OutPtr(y.as_mut_ptr());
    let xb = &xb;
    run_tasks(tasks, |t| {
        let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels));
        let mut panel = vec![0f32; KC_NN * nr];
        for k0 in (0..k).step_by(KC_NN) {
            let kc = KC_NN.min(k - k0);
            let xblk = &xb[m * k0..m * (k0 + kc)];
            for p in p0..p1 {
                let j0 = p * nr;
                let nvalid = nr.min(n - j0);
                scalar::pack_nn(w, n, j0, nvalid, nr, k0, kc, &mut panel);
                for i0 in (0..m).step_by(mr) {
                    // SAFETY: rows i0..i0+mr' of the X block (stride kc) have kc columns; the
                    // panel holds kc×nr floats; rows i0.. of `y` (stride n) have columns
                    // j0..j0+nvalid, which belong to this task's panels only; `micro` is the
                    // kernel of `isa`, checked by the caller, and gets `mr' ≤ mr`.
                    unsafe {
                        micro(
                            mr.min(m - i0),
                            kc,
                            xblk.as_ptr().add(i0 * kc),
                            kc,
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
    });
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
