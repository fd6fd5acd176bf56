//! Runs the claas services together: the idempotent `claas init`, the in-process serving
//! backend the feedback API drives when both share one process, and `claas up`.

pub mod init;
pub mod inprocess;
pub mod local;
pub mod up;

pub use init::{run_init, InitSettings, InitSummary};
pub use inprocess::InProcessBackend;
pub use local::LocalStack;
pub use up::{up, UpAddrs, UpConfig};

/// Failures while setting up or running the stack.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Model(#[from] claas_model::ModelError),
    #[error(transparent)]
    Chat(#[from] claas_chat::ChatError),
    #[error(transparent)]
    Store(#[from] claas_store::StoreError),
    #[error(transparent)]
    Serve(#[from] claas_serve::ServeError),
    #[error(transparent)]
    Engine(#[from] claas_engine::EngineError),
    #[error(transparent)]
    OpenClaw(#[from] claas_gateway::openclaw::OpenClawError),
    #[error("creating the initial adapter: {0}")]
    Init(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}
