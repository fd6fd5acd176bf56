//! GEMV/GEMM time of q8_0 vs bf16 weights on Qwen3-0.6B/8B projection shapes (same process,
//! interleaved rounds; best of each). `cargo run --release -p claas-kernels --example q8_bench`.

use std::time::Instant;

use claas_kernels::{gemm_bf16, gemm_q8, gemv_bf16, gemv_q8, q8_blocks, q8_quantize_row, Q8Matrix};

fn main() {
    let shapes = [
        (3072usize, 1024usize),
        (1024, 3072),
        (12288, 4096),
        (4096, 12288),
    ];
    for (n, k) in shapes {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i as u32).wrapping_mul(2654435761) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
            .collect();
        let bf: Vec<u16> = w
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        let nb = q8_blocks(k);
        let (mut qs, mut sc) = (vec![0i8; n * k], vec![0u16; n * nb]);
        for r in 0..n {
            q8_quantize_row(
                &w[r * k..(r + 1) * k],
                &mut qs[r * k..(r + 1) * k],
                &mut sc[r * nb..(r + 1) * nb],
            )
            .unwrap();
        }
        drop(w);
        let q = Q8Matrix::new(&qs, &sc, n, k);
        let x: Vec<f32> = (0..320 * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0f32; 320 * n];
        let (mut tb, mut tq, mut gb, mut gq) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..10 {
                gemv_bf16(&bf, &x[..k], &mut y[..n]);
            }
            tb = tb.min(t.elapsed().as_secs_f64() / 10.0);
            let t = Instant::now();
            for _ in 0..10 {
                gemv_q8(q, &x[..k], &mut y[..n]);
            }
            tq = tq.min(t.elapsed().as_secs_f64() / 10.0);
            let t = Instant::now();
            gemm_bf16(&bf, &x, &mut y, 320, k, n);
            gb = gb.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            gemm_q8(q, &x, &mut y, 320);
            gq = gq.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{n}x{k}: GEMV bf16 {:.1} GB/s ({:.3} ms), q8_0 {:.1} GB/s ({:.3} ms), q8/bf16 time {:.2}; GEMM m=320 bf16 {:.1} GFLOP/s, q8_0 {:.1} GFLOP/s",
            (n * k * 2) as f64 / tb / 1e9,
            tb * 1e3,
            (n * k + n * nb * 2) as f64 / tq / 1e9,
            tq * 1e3,
            tq / tb,
            2.0 * (320 * n * k) as f64 / gb / 1e9,
            2.0 * (320 * n * k) as f64 / gq / 1e9,
        );
    }
}
