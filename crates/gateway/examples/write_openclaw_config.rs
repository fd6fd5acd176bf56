//! Write the OpenClaw config from the environment, as `claas init` does (used by
//! `integrations/openclaw/validate.sh` to check the result with the real OpenClaw).

use claas_gateway::openclaw::{write_openclaw_config, OpenClawSettings};

fn main() {
    let result = OpenClawSettings::from_env().and_then(|s| write_openclaw_config(&s));
    match result {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
