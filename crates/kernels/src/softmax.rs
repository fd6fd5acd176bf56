//! Softmax row statistics over a whole vocabulary: the max and log-sum-exp of a row, and the
//! scaled probabilities of the log-softmax backward. A 152k-wide row is 152k `exp`s; libm's
//! scalar `expf` made them the largest cost of scoring a response, so the AVX-512 path
//! evaluates 16 at a time (Cephes' `expf` polynomial, scaled by `vscalefps`, within 2 ulp).

/// Values summed in f32 lanes before the partial sum is added in f64: short enough that the
/// f32 rounding stays far below the f64 total's, long enough to keep the loop in registers.
const CHUNK: usize = 1024;

/// `(max, ln Σ exp(x − max))` of a row (`(-inf, NaN)`-free only for finite rows: a NaN
/// anywhere makes the sum NaN). Empty rows give `(-inf, -inf)`.
pub fn max_and_log_sum_exp(row: &[f32]) -> (f32, f64) {
    #[cfg(target_arch = "x86_64")]
    if crate::Isa::Avx512.is_supported() {
        // SAFETY: AVX-512F was detected.
        return unsafe { x86::max_and_log_sum_exp(row) };
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if max == f32::NEG_INFINITY {
        return (max, f64::NEG_INFINITY);
    }
    let mut sum = 0f64;
    for chunk in row.chunks(CHUNK) {
        sum += chunk.iter().map(|&x| (x - max).exp()).sum::<f32>() as f64;
    }
    (max, sum.ln())
}

/// `out[i] = scale · exp(row[i] − shift)`.
pub fn scaled_exp(row: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    assert_eq!(row.len(), out.len(), "scaled_exp: lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::Isa::Avx512.is_supported() {
        // SAFETY: AVX-512F was detected; the lengths match.
        return unsafe { x86::scaled_exp(row, shift, scale, out) };
    }
    for (o, &x) in out.iter_mut().zip(row) {
        *o = scale * (x - shift).exp();
    }
}

/// `x ← exp(scale·x − shift)` in place; returns the sum of the new values (attention's
/// softmax numerators and their normaliser).
pub fn exp_affine_in_place(row: &mut [f32], scale: f32, shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::Isa::Avx512.is_supported() {
        // SAFETY: AVX-512F was detected.
        return unsafe { x86::exp_affine_in_place(row, scale, shift) };
    }
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x * scale - shift).exp();
        sum += *x;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHUNK;

    /// `exp` of 16 lanes: `x = n·ln2 + r`, `|r| ≤ ln2/2`, Cephes' degree-6 polynomial for
    /// `e^r`, then `vscalefps` multiplies by `2^n` (exact, and zero below the f32 range).
    /// NaN propagates; `-inf` and anything below −104 give 0.
    // Cephes' coefficients as published (some round to the same f32).
    #[allow(clippy::excessive_precision)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn exp16(x: __m512) -> __m512 {
        // max(c, x) returns x when x is NaN, so NaN passes through.
        let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
        let x = _mm512_min_ps(_mm512_set1_ps(88.7), x);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5.000_000_1e-1,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(y, n)
    }

    /// Lanes of the `i`th 16-value step of a `len`-value row.
    #[inline]
    fn mask(len: usize, i: usize) -> __mmask16 {
        let n = (len - i).min(16);
        if n == 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_and_log_sum_exp(row: &[f32]) -> (f32, f64) {
        let p = row.as_ptr();
        // SAFETY: masked loads stay below `row.len()`.
        unsafe {
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut i = 0;
            while i < row.len() {
                let k = mask(row.len(), i);
                let v = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), k, p.add(i));
                m = _mm512_max_ps(m, v);
                i += 16;
            }
            let max = _mm512_reduce_max_ps(m);
            if row.is_empty() || max == f32::NEG_INFINITY {
                // exp(x − max) would be NaN; an all −inf row has no mass.
                return (max, f64::NEG_INFINITY);
            }
            let mv = _mm512_set1_ps(max);
            let mut sum = 0f64;
            for start in (0..row.len()).step_by(CHUNK) {
                let end = (start + CHUNK).min(row.len());
                let mut acc = _mm512_setzero_ps();
                let mut i = start;
                while i < end {
                    let k = mask(end, i);
                    let v = _mm512_maskz_loadu_ps(k, p.add(i));
                    let e = exp16(_mm512_sub_ps(v, mv));
                    acc = _mm512_mask_add_ps(acc, k, acc, e);
                    i += 16;
                }
                sum += _mm512_reduce_add_ps(acc) as f64;
            }
            (max, sum.ln())
        }
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_affine_in_place(row: &mut [f32], scale: f32, shift: f32) -> f32 {
        let (cv, sv) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift));
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: masked loads and stores stay below `row.len()`.
        unsafe {
            while i < row.len() {
                let k = mask(row.len(), i);
                let p = row.as_mut_ptr().add(i);
                let e = exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, p), cv, sv));
                _mm512_mask_storeu_ps(p, k, e);
                acc = _mm512_mask_add_ps(acc, k, acc, e);
                i += 16;
            }
        }
        _mm512_reduce_add_ps(acc)
    }

    /// # Safety
    /// The CPU supports AVX-512F; `out.len() == row.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scaled_exp(row: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
        let (sv, cv) = (_mm512_set1_ps(shift), _mm512_set1_ps(scale));
        let mut i = 0;
        // SAFETY: masked loads and stores stay below the common length.
        unsafe {
            while i < row.len() {
                let k = mask(row.len(), i);
                let v = _mm512_maskz_loadu_ps(k, row.as_ptr().add(i));
                let e = _mm512_mul_ps(cv, exp16(_mm512_sub_ps(v, sv)));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), k, e);
                i += 16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector `exp` is within 2 ulp of f64's over the range a shifted log-softmax sees,
    /// and maps −inf, huge negatives and NaN as documented.
    #[test]
    fn vector_exp_is_within_two_ulp() {
        if !crate::Isa::Avx512.is_supported() {
            println!("no AVX-512F: nothing to check");
            return;
        }
        let xs: Vec<f32> = (0..200_000)
            .map(|i| -100.0 + i as f32 * 5e-4)
            .chain([0.0, -0.0, 1e-30, -1e-30, 10.0, 80.0])
            .collect();
        let mut out = vec![0f32; xs.len()];
        scaled_exp(&xs, 0.0, 1.0, &mut out);
        for (&x, &y) in xs.iter().zip(&out) {
            let want = (x as f64).exp();
            // Below f32's normal range the result is subnormal: compare absolutely.
            let ulp = (want as f32).abs().max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
            assert!(
                (y as f64 - want).abs() <= 2.0 * ulp,
                "exp({x}) = {y}, want {want}"
            );
        }
        let special = [f32::NEG_INFINITY, -1e6, f32::NAN];
        let mut out = [1f32; 3];
        scaled_exp(&special, 0.0, 1.0, &mut out);
        assert_eq!(&out[..2], &[0.0, 0.0]);
        assert!(out[2].is_nan());
    }

    /// The in-place form computes the same values and returns their sum.
    #[test]
    fn exp_affine_in_place_matches_f64() {
        let mut row: Vec<f32> = (0..37).map(|i| i as f32 * 0.3 - 4.0).collect();
        let want: Vec<f64> = row.iter().map(|&x| (x as f64 * 0.5 - 1.25).exp()).collect();
        let sum = exp_affine_in_place(&mut row, 0.5, 1.25);
        for (&g, &w) in row.iter().zip(&want) {
            assert!(
                (g as f64 - w).abs() <= 4.0 * f32::EPSILON as f64 * w,
                "{g} vs {w}"
            );
        }
        let total: f64 = want.iter().sum();
        assert!(
            (sum as f64 - total).abs() <= 1e-5 * total,
            "{sum} vs {total}"
        );
    }

    /// Row statistics match an f64 evaluation, on rows off the vector and chunk widths.
    #[test]
    fn log_sum_exp_matches_f64() {
        for len in [1usize, 15, 17, 1000, CHUNK + 3, 151_936] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1009) as f32 / 50.0) - 10.0)
                .collect();
            let (m, ls) = max_and_log_sum_exp(&row);
            let want_m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let want: f64 = row
                .iter()
                .map(|&x| ((x - want_m) as f64).exp())
                .sum::<f64>()
                .ln();
            assert_eq!(m, want_m, "max of {len}");
            assert!(
                (ls - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{len}: {ls} vs {want}"
            );
        }
        assert_eq!(max_and_log_sum_exp(&[]).1, f64::NEG_INFINITY);
        let (m, ls) = max_and_log_sum_exp(&[f32::NEG_INFINITY; 20]);
        assert_eq!((m, ls), (f32::NEG_INFINITY, f64::NEG_INFINITY));
        assert!(max_and_log_sum_exp(&[0.0, f32::NAN, 1.0]).1.is_nan());
    }
}
