//! Causal grouped-query attention over f32 rows, forward and backward, without materialising
//! the `[heads, queries, keys]` score matrices.
//!
//! Query head `h` reads key/value head `h / (heads / kv_heads)` (transformers' `repeat_kv`).
//! Query row `i` sees keys `0..=pos + i`: the queries are the last `q_len` positions of a
//! sequence whose first `pos` keys came before (a KV cache), or the whole sequence (`pos = 0`).
//!
//! The forward computes one block of `ROW_BLOCK` query rows at a time (scores, softmax,
//! output) and returns each row's log-sum-exp; the backward recomputes the probabilities from
//! it (as FlashAttention does), so neither pass keeps more than one block's scores per thread. The products are
//! the `gemm` crate's f32 GEMMs (candle's own CPU matmul, with its run-time ISA dispatch),
//! single-threaded inside tasks that run in parallel over query blocks (forward) or
//! key/value heads (backward).

use rayon::prelude::*;

/// Shapes of one attention call. Queries, outputs and their gradients are `[heads, q_len,
/// head_dim]` row-major; keys and values are `[kv_heads, ·, head_dim]` with `kv_head_stride`
/// values between heads (a cache's capacity times `head_dim`), rows of `head_dim` contiguous.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    /// Keys before the first query (its position in the sequence).
    pub pos: usize,
    pub head_dim: usize,
    /// Values between the starts of consecutive key (and value) heads.
    pub kv_head_stride: usize,
    /// Multiplies the scores before the softmax (usually `1/√head_dim`).
    pub scale: f32,
}

impl AttentionShape {
    /// Keys every query head reads: `pos + q_len`.
    pub fn kv_len(&self) -> usize {
        self.pos + self.q_len
    }

    /// Panics unless the slices have the lengths this shape needs.
    fn check(&self, q: usize, k: usize, v: usize) {
        let s = self;
        assert!(
            s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads) && s.head_dim > 0,
            "attention: {} heads over {} kv heads of {}",
            s.heads,
            s.kv_heads,
            s.head_dim
        );
        assert!(s.kv_head_stride >= s.kv_len() * s.head_dim);
        assert_eq!(q, s.heads * s.q_len * s.head_dim, "attention: query length");
        let kv = (s.kv_heads - 1) * s.kv_head_stride + s.kv_len() * s.head_dim;
        assert!(k >= kv && v >= kv, "attention: key/value length");
    }
}

/// Query rows per block: one block's scores are a `[ROW_BLOCK, kv_len]` matrix, computed
/// and consumed by GEMMs, never stored beyond the block.
const ROW_BLOCK: usize = 64;

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, or `dst += …` when `acc`, single-threaded (the
/// callers are already parallel). Strides are `(row, column)` in elements.
///
/// # Safety
/// Every addressed element of the three matrices is in bounds; `dst` does not overlap the
/// others.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_s: (usize, usize),
    lhs: *const f32,
    lhs_s: (usize, usize),
    rhs: *const f32,
    rhs_s: (usize, usize),
    acc: bool,
) {
    let i = |x: usize| x as isize;
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            i(dst_s.1),
            i(dst_s.0),
            acc,
            lhs,
            i(lhs_s.1),
            i(lhs_s.0),
            rhs,
            i(rhs_s.1),
            i(rhs_s.0),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Raw pointers to one key and value head, shared read-only by the tasks.
#[derive(Clone, Copy)]
struct Kv {
    k: *const f32,
    v: *const f32,
}
// SAFETY: the pointed-to keys and values are only read while the call that made `Kv` runs.
unsafe impl Send for Kv {}
unsafe impl Sync for Kv {}

impl AttentionShape {
    /// Head `g`'s keys and values.
    fn head(&self, kv: Kv, g: usize) -> Kv {
        // SAFETY: `check` made sure every head's rows are inside the slices.
        unsafe {
            Kv {
                k: kv.k.add(g * self.kv_head_stride),
                v: kv.v.add(g * self.kv_head_stride),
            }
        }
    }

    /// `scores (b×keys) = Q_block · K[..keys]ᵀ` for the `b` query rows at `q`.
    ///
    /// # Safety
    /// `q` has `b` rows of `head_dim`; `kv` is a checked head with `keys` rows; `scores` holds
    /// `b·keys` values.
    unsafe fn scores(&self, q: *const f32, b: usize, kv: Kv, keys: usize, scores: &mut [f32]) {
        let d = self.head_dim;
        // SAFETY: forwarded from the caller; Kᵀ is K read with swapped strides.
        unsafe {
            mm(
                b,
                keys,
                d,
                scores.as_mut_ptr(),
                (keys, 1),
                q,
                (d, 1),
                kv.k,
                (1, d),
                false,
            )
        }
    }

    /// Row `r` of a block starting at query `i0` sees this many keys.
    fn seen(&self, i0: usize, r: usize) -> usize {
        self.pos + i0 + r + 1
    }
}

/// One block of query rows of head `h` from row `i0`: its `out` rows and `lse`.
#[allow(clippy::too_many_arguments)]
fn forward_block(
    s: &AttentionShape,
    h: usize,
    i0: usize,
    q: &[f32],
    kv: Kv,
    out: &mut [f32],
    lse: &mut [f32],
    p: &mut Vec<f32>,
) {
    let d = s.head_dim;
    let b = lse.len();
    let keys = s.seen(i0, b - 1);
    let kv = s.head(kv, h / (s.heads / s.kv_heads));
    p.resize(b * keys, 0.0);
    let qb = q[(h * s.q_len + i0) * d..][..b * d].as_ptr();
    // SAFETY: `qb` has `b` rows; head `kv` has `kv_len ≥ keys` rows; `p` has `b·keys` values.
    unsafe { s.scores(qb, b, kv, keys, p) };
    for (r, (row, l)) in p.chunks_exact_mut(keys).zip(lse.iter_mut()).enumerate() {
        let (live, masked) = row.split_at_mut(s.seen(i0, r));
        let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * s.scale;
        let sum = crate::softmax::exp_affine_in_place(live, s.scale, max);
        let inv = 1.0 / sum;
        live.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
        *l = max + sum.ln();
    }
    // SAFETY: `p` is `b×keys`, V's first `keys` rows are in head `kv`, `out` is `b×d`.
    unsafe {
        mm(
            b,
            d,
            keys,
            out.as_mut_ptr(),
            (d, 1),
            p.as_ptr(),
            (keys, 1),
            kv.v,
            (d, 1),
            false,
        )
    };
}

/// The gradients of one key/value head `g` (all its query heads): `dq` rows of its query
/// heads, and `dk`, `dv` of head `g`.
#[allow(clippy::too_many_arguments)]
fn backward_head(
    s: &AttentionShape,
    g: usize,
    q: &[f32],
    kv: Kv,
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let d = s.head_dim;
    let rep = s.heads / s.kv_heads;
    let kv = s.head(kv, g);
    dk.fill(0.0);
    dv.fill(0.0);
    let (mut p, mut dp) = (Vec::new(), Vec::new());
    for r in 0..rep {
        let h = g * rep + r;
        for i0 in (0..s.q_len).step_by(ROW_BLOCK) {
            let b = ROW_BLOCK.min(s.q_len - i0);
            let keys = s.seen(i0, b - 1);
            let row0 = (h * s.q_len + i0) * d;
            let (qb, ob, gb) = (
                &q[row0..][..b * d],
                &out[row0..][..b * d],
                &d_out[row0..][..b * d],
            );
            p.resize(b * keys, 0.0);
            dp.resize(b * keys, 0.0);
            // SAFETY (the GEMMs below): `qb`, `gb` and the `dq` block have `b` rows of `d`;
            // head `kv` has ≥ `keys` rows; `p`, `dp` are `b×keys`; `dk`, `dv` are this head's
            // `kv_len×d` gradients, `kv_len ≥ keys`.
            unsafe {
                s.scores(qb.as_ptr(), b, kv, keys, &mut p);
                // dP = dO · V[..keys]ᵀ
                mm(
                    b,
                    keys,
                    d,
                    dp.as_mut_ptr(),
                    (keys, 1),
                    gb.as_ptr(),
                    (d, 1),
                    kv.v,
                    (1, d),
                    false,
                );
            }
            for r in 0..b {
                let li = lse[h * s.q_len + i0 + r];
                let delta: f32 = gb[r * d..][..d]
                    .iter()
                    .zip(&ob[r * d..][..d])
                    .map(|(a, b)| a * b)
                    .sum();
                let seen = s.seen(i0, r);
                let (pr, dpr) = (&mut p[r * keys..][..keys], &mut dp[r * keys..][..keys]);
                crate::softmax::exp_affine_in_place(&mut pr[..seen], s.scale, li);
                for (x, y) in pr[..seen].iter().zip(&mut dpr[..seen]) {
                    // dS, with the scale of the scores folded in.
                    *y = *x * (*y - delta) * s.scale;
                }
                pr[seen..].fill(0.0);
                dpr[seen..].fill(0.0);
            }
            let dqb = &mut dq[(r * s.q_len + i0) * d..][..b * d];
            // SAFETY: as above.
            unsafe {
                // dQ = dS · K[..keys]
                mm(
                    b,
                    d,
                    keys,
                    dqb.as_mut_ptr(),
                    (d, 1),
                    dp.as_ptr(),
                    (keys, 1),
                    kv.k,
                    (d, 1),
                    false,
                );
                // dK += dSᵀ · Q, dV += Pᵀ · dO
                mm(
                    keys,
                    d,
                    b,
                    dk.as_mut_ptr(),
                    (d, 1),
                    dp.as_ptr(),
                    (1, keys),
                    qb.as_ptr(),
                    (d, 1),
                    true,
                );
                mm(
                    keys,
                    d,
                    b,
                    dv.as_mut_ptr(),
                    (d, 1),
                    p.as_ptr(),
                    (1, keys),
                    gb.as_ptr(),
                    (d, 1),
                    true,
                );
            }
        }
    }
}

/// Attention output `out` (`[heads, q_len, head_dim]`) and each query row's log-sum-exp of
/// its scaled scores `lse` (`[heads, q_len]`, what [`attention_backward`] needs).
/// Parallel over blocks of query rows.
pub fn attention_forward(
    s: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    s.check(q.len(), k.len(), v.len());
    assert_eq!(out.len(), q.len(), "attention: output length");
    assert_eq!(lse.len(), s.heads * s.q_len, "attention: lse length");
    if s.q_len == 0 {
        return;
    }
    let d = s.head_dim;
    let kv = Kv {
        k: k.as_ptr(),
        v: v.as_ptr(),
    };
    out.par_chunks_mut(s.q_len * d)
        .zip(lse.par_chunks_mut(s.q_len))
        .enumerate()
        .flat_map(|(h, (o, l))| {
            o.par_chunks_mut(ROW_BLOCK * d)
                .zip(l.par_chunks_mut(ROW_BLOCK))
                .enumerate()
                .map(move |(b, ol)| (h, b, ol))
        })
        .for_each_init(Vec::new, |p, (h, b, (o, l))| {
            forward_block(s, h, b * ROW_BLOCK, q, kv, o, l, p)
        });
}

/// Gradients of [`attention_forward`]'s output with respect to `q`, `k` and `v`, given its
/// `out` and `lse` and the output's gradient `d_out`. `dk` and `dv` are `[kv_heads, kv_len,
/// head_dim]` (contiguous); every output is overwritten. Parallel over key/value heads.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    s: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    s.check(q.len(), k.len(), v.len());
    let kv_rows = s.kv_len() * s.head_dim;
    assert!(out.len() == q.len() && d_out.len() == q.len() && dq.len() == q.len());
    assert_eq!(lse.len(), s.heads * s.q_len, "attention: lse length");
    assert!(dk.len() == s.kv_heads * kv_rows && dv.len() == s.kv_heads * kv_rows);
    if s.q_len == 0 {
        return;
    }
    let per_head_q = s.heads / s.kv_heads * s.q_len * s.head_dim;
    let kv = Kv {
        k: k.as_ptr(),
        v: v.as_ptr(),
    };
    dq.par_chunks_mut(per_head_q)
        .zip(dk.par_chunks_mut(kv_rows).zip(dv.par_chunks_mut(kv_rows)))
        .enumerate()
        .for_each(|(g, (dq, (dk, dv)))| backward_head(s, g, q, kv, out, lse, d_out, dq, dk, dv));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1.5, 1.5).
    fn fill(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::tests::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        rng.vec(n).into_iter().map(|x| x * 1.5).collect()
    }

    struct Reference {
        out: Vec<f64>,
        dq: Vec<f64>,
        dk: Vec<f64>,
        dv: Vec<f64>,
    }

    /// Materialised f64 attention: P = softmax(QKᵀ·scale + causal mask), O = PV, and the
    /// textbook gradients dV = Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O)), dQ = dS·K·scale,
    /// dK = dSᵀ·Q·scale.
    fn reference(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32], d_out: &[f32]) -> Reference {
        let (d, t, n) = (s.head_dim, s.q_len, s.kv_len());
        let rep = s.heads / s.kv_heads;
        let mut r = Reference {
            out: vec![0.0; q.len()],
            dq: vec![0.0; q.len()],
            dk: vec![0.0; s.kv_heads * n * d],
            dv: vec![0.0; s.kv_heads * n * d],
        };
        let key = |g: usize, j: usize, c: usize| k[g * s.kv_head_stride + j * d + c] as f64;
        let val = |g: usize, j: usize, c: usize| v[g * s.kv_head_stride + j * d + c] as f64;
        for h in 0..s.heads {
            let g = h / rep;
            for i in 0..t {
                let row = (h * t + i) * d;
                let seen = s.pos + i + 1;
                let sc: Vec<f64> = (0..seen)
                    .map(|j| {
                        (0..d)
                            .map(|c| q[row + c] as f64 * key(g, j, c))
                            .sum::<f64>()
                            * s.scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                let p: Vec<f64> = sc.iter().map(|x| (x - m).exp() / z).collect();
                for c in 0..d {
                    r.out[row + c] = (0..seen).map(|j| p[j] * val(g, j, c)).sum();
                }
                let delta: f64 = (0..d).map(|c| d_out[row + c] as f64 * r.out[row + c]).sum();
                for (j, &pj) in p.iter().enumerate() {
                    let dp: f64 = (0..d).map(|c| d_out[row + c] as f64 * val(g, j, c)).sum();
                    let ds = pj * (dp - delta) * s.scale as f64;
                    for c in 0..d {
                        r.dq[row + c] += ds * key(g, j, c);
                        r.dk[(g * n + j) * d + c] += ds * q[row + c] as f64;
                        r.dv[(g * n + j) * d + c] += pj * d_out[row + c] as f64;
                    }
                }
            }
        }
        r
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Forward and backward match the materialised f64 reference over shapes with a cache
    /// offset, padded key heads, head sizes off the vector width, and several query blocks
    /// (the last one partial).
    #[test]
    fn attention_matches_materialised_reference() {
        let shapes = [
            (4, 2, 5, 3, 20, 0),
            (4, 2, 37, 0, 48, 16),
            (2, 2, 1, 9, 16, 0),
            (6, 3, 17, 4, 33, 7),
            (1, 1, 40, 0, 128, 0),
            (4, 2, 2 * ROW_BLOCK + 22, 5, 24, 3),
        ];
        for (si, &(heads, kv_heads, q_len, pos, head_dim, pad)) in shapes.iter().enumerate() {
            let kv_len = pos + q_len;
            let s = AttentionShape {
                heads,
                kv_heads,
                q_len,
                pos,
                head_dim,
                kv_head_stride: kv_len * head_dim + pad,
                scale: 1.0 / (head_dim as f32).sqrt(),
            };
            let q = fill(heads * q_len * head_dim, 1 + si as u64);
            let k = fill(kv_heads * s.kv_head_stride, 100 + si as u64);
            let v = fill(kv_heads * s.kv_head_stride, 200 + si as u64);
            let d_out = fill(q.len(), 300 + si as u64);
            let want = reference(&s, &q, &k, &v, &d_out);
            {
                let isa = "gemm";
                let mut out = vec![f32::NAN; q.len()];
                let mut lse = vec![f32::NAN; heads * q_len];
                attention_forward(&s, &q, &k, &v, &mut out, &mut lse);
                let tag = format!("shape {si} {isa}");
                assert_close(&format!("{tag} out"), &out, &want.out, 1e-5);
                let (mut dq, mut dk, mut dv) = (
                    vec![f32::NAN; q.len()],
                    vec![f32::NAN; want.dk.len()],
                    vec![f32::NAN; want.dv.len()],
                );
                attention_backward(
                    &s, &q, &k, &v, &out, &lse, &d_out, &mut dq, &mut dk, &mut dv,
                );
                assert_close(&format!("{tag} dq"), &dq, &want.dq, 1e-4);
                assert_close(&format!("{tag} dk"), &dk, &want.dk, 1e-4);
                assert_close(&format!("{tag} dv"), &dv, &want.dv, 1e-4);
            }
        }
    }

    /// A wrong slice length is refused before anything is read.
    #[test]
    #[should_panic(expected = "attention: query length")]
    fn attention_refuses_short_queries() {
        let s = AttentionShape {
            heads: 2,
            kv_heads: 1,
            q_len: 3,
            pos: 0,
            head_dim: 4,
            kv_head_stride: 12,
            scale: 0.5,
        };
        let (mut out, mut lse) = (vec![0.0; 23], vec![0.0; 6]);
        attention_forward(&s, &[0.0; 23], &[0.0; 12], &[0.0; 12], &mut out, &mut lse);
    }
}
