//! GEMV (decode) and GEMM (prefill) micro-benchmarks on Qwen3-0.6B shapes:
//! `cargo run --release -p claas-kernels --features bench --example gemv_bench [threads] [gemm]`.

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|t| t.parse().expect("threads: a positive integer"))
        .unwrap_or(1);
    // candle sizes its matmul parallelism from this variable; set before any rayon use.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // `gemm`: only the batch and GEMM tables (the GEMV table is unchanged by them).
    if std::env::args().nth(2).as_deref() != Some("gemm") {
        claas_kernels::bench::gemv_report(threads);
    }
    claas_kernels::bench::batch_report(threads);
    claas_kernels::bench::gemm_report(threads);
}
