//! Every path against a plain f64 loop over the exactly widened weights.
//!
//! Tolerance: an f32 sum of `k` products, in any order and with or without FMA, is within
//! `γ_k·Σ|wᵢxᵢ|` of the exact value (γ_k = k·u/(1−k·u), u = 2⁻²⁴; Higham, *Accuracy and
//! Stability*, §3.1/§4.2). `k·ε·Σ|wᵢxᵢ|` with ε = 2u bounds that for every `k` tested here,
//! so a path may differ from the reference only by summation order; a dropped or doubled term
//! (≈ Σ/k) is 1/(k²ε) times larger than the allowance and fails.

use half::{bf16, f16};

use crate::{bf16_to_f32, f16_to_f32, Isa};

/// xorshift64 values in [-1, 1); deterministic test data for every kernel's tests.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub(crate) fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Fmt {
    Bf16,
    F16,
    F32,
}

/// Random weights in `fmt`, returned as (bit patterns or f32 values, exact f32 widening).
fn weights(rng: &mut Rng, fmt: Fmt, n: usize) -> (Vec<u16>, Vec<f32>) {
    let v = rng.vec(n);
    match fmt {
        Fmt::Bf16 => {
            let bits: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
            let wide = bits.iter().map(|&b| bf16_to_f32(b)).collect();
            (bits, wide)
        }
        Fmt::F16 => {
            let bits: Vec<u16> = v.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            let wide = bits.iter().map(|&b| f16_to_f32(b)).collect();
            (bits, wide)
        }
        Fmt::F32 => (Vec::new(), v),
    }
}

/// `ref[i] = Σ_c w[i,c]·x[c]` in f64, and the allowance `k·ε·Σ|w·x|`.
fn reference(w: &[f32], x: &[f32], rows: usize) -> Vec<(f64, f64)> {
    let k = x.len();
    (0..rows)
        .map(|r| {
            let (mut s, mut a) = (0f64, 0f64);
            for c in 0..k {
                let p = w[r * k + c] as f64 * x[c] as f64;
                s += p;
                a += p.abs();
            }
            (s, k as f64 * f32::EPSILON as f64 * a)
        })
        .collect()
}

fn check(got: &[f32], want: &[(f64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &(r, tol))) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - r).abs();
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, want {r}, error {err:e} > tolerance {tol:e}"
        );
    }
}

fn gemv_with(isa: Isa, fmt: Fmt, bits: &[u16], wide: &[f32], x: &[f32], y: &mut [f32]) {
    match fmt {
        Fmt::Bf16 => crate::gemv_bf16_with(isa, bits, x, y),
        Fmt::F16 => crate::gemv_f16_with(isa, bits, x, y),
        Fmt::F32 => crate::gemv_f32_with(isa, wide, x, y),
    }
}

const GEMV_SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (17, 33),
    (3, 15),
    (5, 16),
    (7, 31),
    (4, 32),
    (33, 47),
    (64, 257),
    (129, 100),
    (1024, 1024),
    (0, 5),
    (5, 0),
];

#[test]
fn portable_path_is_always_available() {
    let isas = Isa::available();
    assert_eq!(isas[0], Isa::Portable);
    assert!(isas.contains(&Isa::detected()));
    assert_eq!(*isas.last().unwrap(), Isa::detected());
}

#[test]
fn gemv_matches_reference_on_every_path() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Three threads: more than this machine's cores, uneven row blocks, the parallel branch.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for &(rows, cols) in GEMV_SHAPES {
        for fmt in [Fmt::Bf16, Fmt::F16, Fmt::F32] {
            let (bits, wide) = weights(&mut rng, fmt, rows * cols);
            let x = rng.vec(cols);
            let want = reference(&wide, &x, rows);
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; rows];
                pool.install(|| gemv_with(isa, fmt, &bits, &wide, &x, &mut y));
                check(&y, &want, &format!("gemv {isa:?} {fmt:?} {rows}×{cols}"));
                // The single-threaded branch takes the same kernel on all rows at once.
                let mut y1 = vec![f32::NAN; rows];
                gemv_with(isa, fmt, &bits, &wide, &x, &mut y1);
                check(
                    &y1,
                    &want,
                    &format!("gemv {isa:?} {fmt:?} {rows}×{cols} 1 pool"),
                );
            }
        }
    }
}

/// Every finite bf16 and f16 value goes through each path's vector widening and comes out
/// exactly (row r holds value r in all 16 columns; x picks column 0).
#[test]
fn gemv_widens_every_finite_value_exactly() {
    let cols = 16;
    let mut x = vec![0f32; cols];
    x[0] = 1.0;
    for (fmt, widen) in [
        (Fmt::Bf16, bf16_to_f32 as fn(u16) -> f32),
        (Fmt::F16, f16_to_f32),
    ] {
        let values: Vec<u16> = (0..=u16::MAX).filter(|&b| widen(b).is_finite()).collect();
        let bits: Vec<u16> = values.iter().flat_map(|&b| [b; 16]).collect();
        for isa in Isa::available() {
            let mut y = vec![f32::NAN; values.len()];
            gemv_with(isa, fmt, &bits, &[], &x, &mut y);
            for (&b, &g) in values.iter().zip(&y) {
                // 0·v is ±0 and v + 0 == v for finite v, so the sum is the widened value.
                assert_eq!(g, widen(b), "{isa:?} {fmt:?} bits {b:#06x}");
            }
        }
    }
}

#[test]
fn gemv_panics_on_shape_mismatch() {
    let r = std::panic::catch_unwind(|| {
        let mut y = [0f32; 3];
        crate::gemv_bf16(&[0u16; 8], &[0f32; 3], &mut y)
    });
    assert!(r.is_err());
}

fn gemm_with(isa: Isa, fmt: Fmt, bits: &[u16], x: &[f32], y: &mut [f32], mkn: [usize; 3]) {
    let [m, k, n] = mkn;
    match fmt {
        Fmt::Bf16 => crate::gemm_bf16_with(isa, bits, x, y, m, k, n),
        Fmt::F16 => crate::gemm_f16_with(isa, bits, x, y, m, k, n),
        Fmt::F32 => unreachable!("no f32 GEMM: candle's is the baseline"),
    }
}

#[test]
fn gemm_matches_reference_on_every_path() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    // (m, k, n): tiny; the multi-row GEMV (m = 2..=16: every row-block and weight-pair
    // remainder, k not a multiple of 8/16, n = 1, the parallel branch); the packed GEMM past
    // it: exact tiles, odd sizes across tile (14/6/4 weight rows, 32/16/8 X rows) and k-block
    // (256) edges, one partial slab, the parallel branch, and 1024-wide layers.
    let shapes: &[[usize; 3]] = &[
        [1, 1, 1],
        [1, 100, 1],
        [2, 33, 17],
        [2, 1, 5],
        [3, 16, 5],
        [4, 1, 1],
        [5, 17, 3],
        [7, 40, 9],
        [8, 128, 32],
        [9, 130, 33],
        [11, 31, 1],
        [13, 257, 70],
        [15, 1023, 3],
        [16, 1024, 1024],
        [17, 33, 19],
        [17, 1, 2],
        [31, 7, 14],
        [33, 300, 65],
        [40, 600, 29],
        [64, 512, 28],
        [70, 513, 15],
        [100, 65, 1],
        [65, 1024, 1024],
        [0, 4, 4],
        [4, 0, 4],
        [4, 4, 0],
    ];
    for &[m, k, n] in shapes {
        for fmt in [Fmt::Bf16, Fmt::F16] {
            let (bits, wide) = weights(&mut rng, fmt, n * k);
            let x = rng.vec(m * k);
            // Y = X·Wᵀ: row i of Y is W·xᵢ.
            let want: Vec<(f64, f64)> = (0..m)
                .flat_map(|i| reference(&wide, &x[i * k..(i + 1) * k], n))
                .collect();
            for isa in Isa::available() {
                for threads in [1, 3] {
                    let mut y = vec![f32::NAN; m * n];
                    let mut run = || gemm_with(isa, fmt, &bits, &x, &mut y, [m, k, n]);
                    if threads == 1 {
                        run()
                    } else {
                        pool.install(run)
                    }
                    check(
                        &y,
                        &want,
                        &format!("gemm {isa:?} {fmt:?} {m}×{k}×{n} t{threads}"),
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "gemm: x has")]
fn gemm_shapes_whose_product_wraps_are_refused() {
    // m·k wraps to 0 in usize arithmetic; the check must not take that for the empty x.
    let (m, k) = (1usize << 63, 2);
    assert_eq!(m.wrapping_mul(k), 0);
    crate::gemm_bf16(&[0; 4], &[], &mut [], m, k, 2);
}

/// The frozen-weight backward `dX = G·W` against the f64 loop over the exactly widened `W`.
#[test]
fn gemm_nn_matches_reference_on_every_path() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    // (m, n, k) with W n×k: one row, tile and k-block edges (n > 128 is the reduction here),
    // partial panels, the parallel branch, empty shapes.
    let shapes: &[[usize; 3]] = &[
        [1, 1, 1],
        [1, 33, 17],
        [3, 16, 5],
        [17, 33, 19],
        [8, 128, 32],
        [9, 130, 33],
        [13, 257, 70],
        [33, 300, 65],
        [40, 600, 29],
        [15, 513, 14],
        [29, 1, 33],
        [64, 1024, 256],
        [0, 4, 4],
        [4, 0, 4],
        [4, 4, 0],
    ];
    for &[m, n, k] in shapes {
        for fmt in [Fmt::Bf16, Fmt::F16] {
            let (bits, wide) = weights(&mut rng, fmt, n * k);
            let g = rng.vec(m * n);
            // Row i of dX is Wᵀ·gᵢ: the reference GEMV on the transposed widened weights.
            let wt: Vec<f32> = (0..k)
                .flat_map(|c| (0..n).map(move |j| (j, c)))
                .map(|(j, c)| wide[j * k + c])
                .collect();
            let want: Vec<(f64, f64)> = (0..m)
                .flat_map(|i| reference(&wt, &g[i * n..(i + 1) * n], k))
                .collect();
            for isa in Isa::available() {
                for threads in [1, 3] {
                    let mut y = vec![f32::NAN; m * k];
                    let mut run = || match fmt {
                        Fmt::Bf16 => crate::gemm_nn_bf16_with(isa, &bits, &g, &mut y, m, n, k),
                        Fmt::F16 => crate::gemm_nn_f16_with(isa, &bits, &g, &mut y, m, n, k),
                        Fmt::F32 => unreachable!(),
                    };
                    if threads == 1 {
                        run()
                    } else {
                        pool.install(run)
                    }
                    check(
                        &y,
                        &want,
                        &format!("gemm_nn {isa:?} {fmt:?} {m}×{n}×{k} t{threads}"),
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "gemm_nn: w has")]
fn gemm_nn_refuses_mismatched_weights() {
    let mut y = [0f32; 6];
    crate::gemm_nn_bf16(&[0; 5], &[0.0; 4], &mut y, 2, 2, 3);
}

/// The AMX kernels against the f64 loop over the bf16-rounded activations: that rounding is
/// all [`crate::Precision::Medium`] adds, so the f32 summation bound applies unchanged and a
/// dropped, doubled or misplaced term fails. Shapes cross every tile edge: ragged 32-row
/// panels, `k` not a multiple of 32 (odd too), single and partial 16-row blocks.
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_kernels_match_reference_on_rounded_activations() {
    if !crate::amx::available() {
        eprintln!("AMX-BF16 is not available on this machine; its kernels are not exercised");
        return;
    }
    let mut rng = Rng(0x6A09_E667_F3BC_C908);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect() };
    // (m, k, n) for Y = X·Wᵀ, W n×k; the same triples serve as (m, n, k) for dX = G·W.
    let shapes: &[[usize; 3]] = &[
        [1, 1, 1],
        [1, 32, 32],
        [16, 32, 16],
        [17, 33, 19],
        [32, 64, 32],
        [33, 31, 65],
        [40, 600, 29],
        [64, 512, 96],
        [70, 513, 15],
        [100, 1024, 200],
        [320, 96, 33],
        // The backward's reduction (n here) over three k-blocks, the last one ragged.
        [40, 70, 2100],
    ];
    for &[m, k, n] in shapes {
        let (bits, wide) = weights(&mut rng, Fmt::Bf16, n * k);
        let x = rng.vec(m * k);
        let xr = round(&x);
        let want: Vec<(f64, f64)> = (0..m)
            .flat_map(|i| reference(&wide, &xr[i * k..(i + 1) * k], n))
            .collect();
        // dX = G·W with G m×n and W n×k.
        let g = rng.vec(m * n);
        let gr = round(&g);
        let wt: Vec<f32> = (0..k)
            .flat_map(|c| (0..n).map(move |j| (j, c)))
            .map(|(j, c)| wide[j * k + c])
            .collect();
        let want_nn: Vec<(f64, f64)> = (0..m)
            .flat_map(|i| reference(&wt, &gr[i * n..(i + 1) * n], k))
            .collect();
        for threads in [1, 3] {
            let mut y = vec![f32::NAN; m * n];
            let mut dx = vec![f32::NAN; m * k];
            let mut run = || {
                crate::amx::gemm_nt(&bits, &x, &mut y, m, k, n);
                crate::amx::gemm_nn(&bits, &g, &mut dx, m, n, k);
            };
            if threads == 1 {
                run()
            } else {
                pool.install(run)
            }
            check(&y, &want, &format!("amx gemm {m}×{k}×{n} t{threads}"));
            check(
                &dx,
                &want_nn,
                &format!("amx gemm_nn {m}×{n}×{k} t{threads}"),
            );
        }
    }
}

/// The public entry points at [`crate::Precision::Medium`] keep its contract on every size:
/// within `2⁻⁸·Σ|w·x|` (bf16 rounding of each activation) plus the f32 summation bound of the
/// exact value, whichever kernel runs (AMX past 16 rows, the f32 ones below and for f16).
#[test]
fn medium_precision_meets_its_contract() {
    use crate::Precision;
    let mut rng = Rng(0xBB67_AE85_84CA_A73B);
    for &[m, k, n] in &[[1, 40, 7], [16, 64, 33], [17, 100, 40], [96, 256, 64]] {
        let (bits, wide) = weights(&mut rng, Fmt::Bf16, n * k);
        let x = rng.vec(m * k);
        let contract = |r: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
            r.into_iter()
                .map(|(s, tol)| {
                    // `tol` is k·ε·Σ|w·x|; recover Σ|w·x| to add the rounding allowance.
                    let sum_abs = tol / (k.max(1) as f64 * f32::EPSILON as f64);
                    (s, tol * 1.01 + sum_abs / 256.0)
                })
                .collect()
        };
        let want: Vec<(f64, f64)> = (0..m)
            .flat_map(|i| contract(reference(&wide, &x[i * k..(i + 1) * k], n)))
            .collect();
        for p in [Precision::Highest, Precision::Medium] {
            let mut y = vec![f32::NAN; m * n];
            crate::gemm_bf16_at(p, &bits, &x, &mut y, m, k, n);
            check(&y, &want, &format!("gemm {p:?} {m}×{k}×{n}"));
        }
        // The same W (n×k) as the backward of a layer with k outputs: dX = G·W, G m×n... here
        // read as W k'×n' with k' = n, n' = k.
        let g = rng.vec(m * n);
        let wt: Vec<f32> = (0..k)
            .flat_map(|c| (0..n).map(move |j| (j, c)))
            .map(|(j, c)| wide[j * k + c])
            .collect();
        let want_nn: Vec<(f64, f64)> = (0..m)
            .flat_map(|i| {
                let r = reference(&wt, &g[i * n..(i + 1) * n], k);
                r.into_iter()
                    .map(|(s, tol)| {
                        let sum_abs = tol / (n.max(1) as f64 * f32::EPSILON as f64);
                        (s, tol * 1.01 + sum_abs / 256.0)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for p in [Precision::Highest, Precision::Medium] {
            let mut dx = vec![f32::NAN; m * k];
            crate::gemm_nn_bf16_at(p, &bits, &g, &mut dx, m, n, k);
            check(&dx, &want_nn, &format!("gemm_nn {p:?} {m}×{n}×{k}"));
        }
    }
}

/// The packing's rounding is IEEE round-to-nearest-even, as `half` implements it, on every
/// class of value: ties both ways, the largest finite values (which round to infinity),
/// subnormals, infinities and NaNs (which stay NaN).
#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_rounding_is_ties_to_even() {
    let mut rng = Rng(0x3C6E_F372_FE94_F82B);
    let specials = [
        0.0f32,
        -0.0,
        1.0,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e-40,
        -1e-45,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x3F80_8000), // a tie, rounds down to even
        f32::from_bits(0x3F81_8000), // a tie, rounds up to even
        f32::from_bits(0x3F80_8001),
        f32::from_bits(0x7F7F_8000),
    ];
    let randoms = (0..100_000).map(|_| f32::from_bits((rng.next_f32().to_bits()) ^ (rng.0 as u32)));
    for v in specials.into_iter().chain(randoms) {
        let got = crate::amx::bf16_rne(v);
        let want = bf16::from_f32(v);
        if v.is_nan() {
            assert!(bf16::from_bits(got).is_nan(), "{v:e} ({:#x})", v.to_bits());
        } else {
            assert_eq!(got, want.to_bits(), "{v:e} ({:#x})", v.to_bits());
        }
    }
}
