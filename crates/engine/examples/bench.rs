//! `cargo run -p claas-engine --example bench [LAYERS] [MAX_TOKENS]`: the multi-LoRA throughput
//! benchmark (the binary's `claas bench` runs the same function).

fn main() {
    let mut args = std::env::args().skip(1);
    let mut opts = claas_engine::bench::BenchOptions::default();
    if let Some(l) = args.next().and_then(|x| x.parse().ok()) {
        opts.layers = Some(l);
    }
    if let Some(t) = args.next().and_then(|x| x.parse().ok()) {
        opts.max_tokens = t;
    }
    match claas_engine::bench::run_bench(&opts) {
        Ok(r) => {
            claas_engine::bench::print_report(&r);
            match claas_engine::bench::sleep_memory_report(opts.layers) {
                Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                Err(e) => eprintln!("sleep report failed: {e}"),
            }
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
