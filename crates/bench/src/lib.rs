//! Benchmarks printed by `claas bench`: figures are ratios against baselines measured in the
//! same process (memory bandwidth) or supplied from the PyTorch anchor run on the same machine.

pub mod constrain;
pub mod fairness;
pub mod model;
pub mod prefix;
pub mod sdpo;
pub mod serve;
pub mod whole_loop;

use std::time::Instant;

/// Bench failures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Model(#[from] claas_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Engine(#[from] claas_engine::EngineError),
    #[error(transparent)]
    Sdpo(#[from] claas_sdpo::SdpoError),
    #[error("{0}")]
    Other(String),
}

/// Sustained read bandwidth in bytes/s: the best of a few passes summing a buffer much larger
/// than the caches, with one thread and with every core.
pub fn memory_bandwidth() -> f64 {
    let n: usize = 128 * 1024 * 1024; // 512 MiB of f32
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut best = 0f64;
    for t in [1, threads] {
        for _ in 0..3 {
            let start = Instant::now();
            let total: f32 = std::thread::scope(|s| {
                let chunk = n.div_ceil(t);
                let handles: Vec<_> = buf
                    .chunks(chunk)
                    .map(|c| s.spawn(move || sum_lanes(c)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            });
            let secs = start.elapsed().as_secs_f64();
            std::hint::black_box(total);
            best = best.max((n * 4) as f64 / secs);
        }
    }
    best
}

fn sum_lanes(c: &[f32]) -> f32 {
    // Eight independent accumulators so the loop vectorises and is load-bound.
    let mut acc = [0f32; 8];
    let mut it = c.chunks_exact(8);
    for x in &mut it {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// Reads PyTorch anchor figures (the JSON line `shared/bench/torch_anchor.py` prints).
pub fn read_torch_anchor(path: &std::path::Path) -> Result<serde_json::Value, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Other(format!("{}: {e}", path.display())))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| BenchError::Other(format!("{}: no JSON line", path.display())))?;
    serde_json::from_str(line).map_err(|e| BenchError::Other(e.to_string()))
}
