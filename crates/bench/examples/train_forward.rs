//! Profiling aid: forward (inference vs training path) and backward on the 0.6B shape.
use std::time::Instant;

use claas_bench::model::{qwen3_0_6b_config, random_adapter, random_model};
use claas_model::TrainableLora;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let layers: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(28);
    let mut cfg = qwen3_0_6b_config();
    cfg.num_hidden_layers = layers;
    let m = random_model(&cfg)?;
    let a = random_adapter(&cfg, 1)?;
    let ids: Vec<u32> = (0..320u32).map(|i| (i * 7919) % 150000).collect();
    for _ in 0..2 {
        let t = Instant::now();
        let l = m.logits(&ids, Some(&a), 512)?;
        println!(
            "inference logits {:?}: {:.2}s",
            l.dims(),
            t.elapsed().as_secs_f64()
        );
        let tl = TrainableLora::from_adapter(&a)?;
        let t = Instant::now();
        let l = m.forward_train(&ids, Some(&tl.adapter()))?;
        let loss = l.narrow(0, 64, 256)?.sum_all()?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let g = loss.backward()?;
        println!(
            "train fwd {:.2}s, backward {:.2}s ({} grads)",
            f,
            t.elapsed().as_secs_f64(),
            tl.named_vars()
                .iter()
                .filter(|(_, v)| g.get(v.as_tensor()).is_some())
                .count()
        );
    }
    Ok(())
}
