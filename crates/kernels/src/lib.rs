//! CPU kernels for linear layers whose weights stay in 16 bits (bf16 or f16) in memory.
//!
//! Decode is bound by memory bandwidth: a batch-1 token reads every weight once, so 2-byte
//! weights read twice as fast as the f32 copies candle makes of a bf16 checkpoint. The kernels
//! widen each weight to f32 in registers (exact for both formats) and accumulate in f32.
//!
//! - [`gemv_bf16`] / [`gemv_f16`] / [`gemv_f32`]: `y = W·x`, `W` row-major `rows×cols`
//!   (a Linear layer's `[out, in]` weight), row blocks spread over rayon's pool when large.
//! - [`gemm_bf16`] / [`gemm_f16`]: `Y = X·Wᵀ`, `X` row-major `m×k`, `Y` row-major `m×n`
//!   (what a Linear layer computes for `m` tokens), parallel over `W`'s rows. Up to 16 rows
//!   (batch decode) every weight row is read once and dotted with all rows of `X`; beyond,
//!   a packed GEMM widens each weight panel once per call into a thread-local f32 buffer and
//!   runs a register-tiled micro-kernel (14×32 on AVX-512) over all `m` rows.
//! - [`gemm_nn_bf16`] / [`gemm_nn_f16`]: `dX = G·W`, `G` `m×n`, `W` `n×k`: the input gradient
//!   of that layer when `W` is frozen (the same blocking, parallel over `W`'s columns).
//!
//! [`Precision::Medium`] lets the prefill-sized products of bf16 weights round activations to
//! bf16 and run on AMX tiles ([`gemm_bf16_at`], [`gemm_nn_bf16_at`]).
//!
//! Beside the weight products: [`attention_forward`] / [`attention_backward`], causal
//! grouped-query attention over f32 rows without stored score matrices, and the softmax row
//! kernels ([`max_and_log_sum_exp`], [`scaled_exp`], [`exp_affine_in_place`]) on a vector
//! `exp`, for the trainer's vocabulary-wide log-softmax.
//!
//! The instruction set is picked once at run time ([`Isa::detected`]); the `*_with` variants
//! take an explicit [`Isa`] so tests and benchmarks can force every path, the portable one
//! included. All paths agree with an exact reference within the f32 summation-order bound
//! `k·ε·Σ|wᵢxᵢ|` (see the tests).

#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
#[cfg(feature = "bench")]
pub mod bench;
mod gemm;
mod gemv;
mod q8;
#[cfg(target_arch = "x86_64")]
mod q8_x86;
mod scalar;
mod softmax;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

pub use attention::{attention_backward, attention_forward, AttentionShape};
pub use q8::{
    dequantize_row as q8_dequantize_row, gemm_nn_q8, gemm_nn_q8_with, gemm_q8, gemm_q8_with,
    gemv_q8, gemv_q8_with, q8_blocks, quantize_row as q8_quantize_row, Q8Matrix, Q8_BLOCK,
};
pub use softmax::{exp_affine_in_place, max_and_log_sum_exp, scaled_exp};

use std::sync::OnceLock;

/// An instruction-set path of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust written so the compiler can vectorise it for the build's baseline target.
    Portable,
    /// x86-64 AVX2 + FMA + F16C (256-bit; any x86 CPU since ~2013).
    Avx2,
    /// x86-64 AVX-512F (512-bit; `vcvtph2ps` widens f16, a zero-extend + shift widens bf16).
    Avx512,
}

impl Isa {
    /// The fastest path this CPU supports, detected once and cached.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Isa::available()
                .into_iter()
                .next_back()
                .unwrap_or(Isa::Portable)
        })
    }

    /// Every path this CPU can run, slowest first (always starts with [`Isa::Portable`]).
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    // Running a path the CPU lacks is undefined behaviour, so every entry point checks.
    fn check(self) {
        assert!(
            self.is_supported(),
            "claas-kernels: {self:?} is not supported by this CPU"
        );
    }
}

/// How the f32 activations enter a product by 16-bit weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Activations stay f32; the only rounding is the f32 summation.
    Highest,
    /// Activations may be rounded to bf16 first (to nearest, ties to even), as under PyTorch's
    /// "medium" float32 matmul precision and in oneDNN's and llama.cpp's bf16 products. This
    /// lets bf16 weights run on AMX tiles where the CPU has them, for products of more than
    /// 16 rows (prefill, scoring, training). Elsewhere (f16 weights, decode sizes, CPUs
    /// without AMX) the [`Precision::Highest`] kernels run, which meet this contract too.
    Medium,
}

/// Whether this CPU and OS let [`Precision::Medium`] run bf16 products on AMX tiles.
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A row-major weight matrix in one of the supported storage formats.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Weights<'a> {
    /// bf16 bit patterns.
    Bf16(&'a [u16]),
    /// IEEE f16 bit patterns.
    F16(&'a [u16]),
    F32(&'a [f32]),
}

impl<'a> Weights<'a> {
    fn len(&self) -> usize {
        match self {
            Weights::Bf16(w) | Weights::F16(w) => w.len(),
            Weights::F32(w) => w.len(),
        }
    }

    /// Rows `r0..r1` of a matrix with `cols` columns.
    fn rows(&self, r0: usize, r1: usize, cols: usize) -> Weights<'a> {
        let range = r0 * cols..r1 * cols;
        match *self {
            Weights::Bf16(w) => Weights::Bf16(&w[range]),
            Weights::F16(w) => Weights::F16(&w[range]),
            Weights::F32(w) => Weights::F32(&w[range]),
        }
    }
}

/// `y = W·x` for bf16 weights `w` (bit patterns, `y.len()×x.len()` row-major), f32 accumulation.
///
/// # Panics
/// If `w.len() != y.len() * x.len()`.
pub fn gemv_bf16(w: &[u16], x: &[f32], y: &mut [f32]) {
    gemv::gemv(Isa::detected(), Weights::Bf16(w), x, y)
}

/// [`gemv_bf16`] with f16 weights (bit patterns).
pub fn gemv_f16(w: &[u16], x: &[f32], y: &mut [f32]) {
    gemv::gemv(Isa::detected(), Weights::F16(w), x, y)
}

/// [`gemv_bf16`] with f32 weights: the same code structure, as a baseline.
pub fn gemv_f32(w: &[f32], x: &[f32], y: &mut [f32]) {
    gemv::gemv(Isa::detected(), Weights::F32(w), x, y)
}

/// [`gemv_bf16`] on an explicit path.
///
/// # Panics
/// If the CPU does not support `isa`, or on a shape mismatch.
pub fn gemv_bf16_with(isa: Isa, w: &[u16], x: &[f32], y: &mut [f32]) {
    gemv::gemv(isa, Weights::Bf16(w), x, y)
}

/// [`gemv_f16`] on an explicit path.
pub fn gemv_f16_with(isa: Isa, w: &[u16], x: &[f32], y: &mut [f32]) {
    gemv::gemv(isa, Weights::F16(w), x, y)
}

/// [`gemv_f32`] on an explicit path.
pub fn gemv_f32_with(isa: Isa, w: &[f32], x: &[f32], y: &mut [f32]) {
    gemv::gemv(isa, Weights::F32(w), x, y)
}

/// `Y = X·Wᵀ` for bf16 weights `w` (`n×k` row-major bit patterns), `x` `m×k`, `y` `m×n`,
/// f32 accumulation. `y` is overwritten.
///
/// # Panics
/// If `k == 0` while `x` or `w` is not empty, or the lengths disagree with `m×k`, `n×k`, `m×n`.
pub fn gemm_bf16(w: &[u16], x: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    gemm::gemm(
        Isa::detected(),
        Precision::Highest,
        Weights::Bf16(w),
        x,
        y,
        m,
        k,
        n,
    )
}

/// [`gemm_bf16`] at an explicit [`Precision`].
pub fn gemm_bf16_at(
    precision: Precision,
    w: &[u16],
    x: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    gemm::gemm(Isa::detected(), precision, Weights::Bf16(w), x, y, m, k, n)
}

/// [`gemm_bf16`] with f16 weights.
pub fn gemm_f16(w: &[u16], x: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    gemm::gemm(
        Isa::detected(),
        Precision::Highest,
        Weights::F16(w),
        x,
        y,
        m,
        k,
        n,
    )
}

/// [`gemm_bf16`] on an explicit path.
pub fn gemm_bf16_with(isa: Isa, w: &[u16], x: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    gemm::gemm(isa, Precision::Highest, Weights::Bf16(w), x, y, m, k, n)
}

/// [`gemm_f16`] on an explicit path.
pub fn gemm_f16_with(isa: Isa, w: &[u16], x: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    gemm::gemm(isa, Precision::Highest, Weights::F16(w), x, y, m, k, n)
}

/// `Y = G·W` for bf16 weights `w` (`n×k` row-major bit patterns), `g` `m×n`, `y` `m×k`, f32
/// accumulation: the input gradient of the layer [`gemm_bf16`] computes (`n` outputs, `k`
/// inputs). `y` is overwritten.
///
/// # Panics
/// If the lengths disagree with `m×n`, `n×k`, `m×k`.
pub fn gemm_nn_bf16(w: &[u16], g: &[f32], y: &mut [f32], m: usize, n: usize, k: usize) {
    gemm::gemm_nn(
        Isa::detected(),
        Precision::Highest,
        Weights::Bf16(w),
        g,
        y,
        m,
        n,
        k,
    )
}

/// [`gemm_nn_bf16`] at an explicit [`Precision`].
pub fn gemm_nn_bf16_at(
    precision: Precision,
    w: &[u16],
    g: &[f32],
    y: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    gemm::gemm_nn(Isa::detected(), precision, Weights::Bf16(w), g, y, m, n, k)
}

/// [`gemm_nn_bf16`] with f16 weights.
pub fn gemm_nn_f16(w: &[u16], g: &[f32], y: &mut [f32], m: usize, n: usize, k: usize) {
    gemm::gemm_nn(
        Isa::detected(),
        Precision::Highest,
        Weights::F16(w),
        g,
        y,
        m,
        n,
        k,
    )
}

/// [`gemm_nn_bf16`] on an explicit path.
pub fn gemm_nn_bf16_with(
    isa: Isa,
    w: &[u16],
    g: &[f32],
    y: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    gemm::gemm_nn(isa, Precision::Highest, Weights::Bf16(w), g, y, m, n, k)
}

/// [`gemm_nn_f16`] on an explicit path.
pub fn gemm_nn_f16_with(
    isa: Isa,
    w: &[u16],
    g: &[f32],
    y: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    gemm::gemm_nn(isa, Precision::Highest, Weights::F16(w), g, y, m, n, k)
}

/// bf16 bits to f32: bf16 is the top half of an f32, so this is exact for every value.
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f16 bits to f32 (exact for every value).
#[inline(always)]
pub fn f16_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}
