//! `claas`: one binary for the whole continual-learning stack. This crate only wires the
//! library crates together behind a command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "claas", version, about = "Continual learning as a service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks (figures printed as ratios against baselines measured in the same run).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Prefill/decode tokens/s of the model core on a Qwen3-0.6B-shaped random model.
    Model {
        /// JSON output of shared/bench/torch_anchor.py run on this machine, for ratios.
        #[arg(long)]
        torch_json: Option<PathBuf>,
        /// 4 layers instead of 28 (smoke run).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { what } => match what {
            BenchWhat::Model { torch_json, quick } => {
                let torch = torch_json
                    .map(|p| claas_bench::read_torch_anchor(&p))
                    .transpose()
                    .context("reading the torch anchor JSON")?;
                claas_bench::model::run(torch.as_ref(), quick)?;
            }
        },
    }
    Ok(())
}
