//! Decode GEMV micro-benchmark on Qwen3-0.6B shapes: `cargo run --release -p claas-kernels
//! --features bench --example gemv_bench [threads]`.

fn main() {
    let threads = std::env::args()
        .nth(1)
        .map(|t| t.parse().expect("threads: a positive integer"))
        .unwrap_or(1);
    claas_kernels::bench::gemv_report(threads);
}
