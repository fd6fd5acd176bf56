//! `claas up` in the background of the caller's runtime, on the ports the configuration names
//! (0 = any free one): for tests, tools and programs that embed a whole stack.

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::up::{up, UpAddrs, UpConfig};
use crate::StackError;

/// A running stack; [`LocalStack::stop`] shuts it down cleanly.
pub struct LocalStack {
    /// `http://host:port` of the OpenAI-compatible server.
    pub serve: String,
    /// `http://host:port` of the CLaaS API.
    pub api: String,
    /// The bound addresses.
    pub addrs: UpAddrs,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), StackError>>,
}

impl LocalStack {
    /// Starts `cfg` and waits until every service listens (or start-up failed).
    pub async fn start(cfg: UpConfig) -> Result<LocalStack, StackError> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut task = tokio::spawn(up(
            cfg,
            async move {
                let _ = stop_rx.await;
            },
            move |a| {
                let _ = ready_tx.send(a);
            },
        ));
        let addrs = tokio::select! {
            ready = ready_rx => ready.ok(),
            done = &mut task => {
                return Err(match done {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => StackError::Other("stack stopped before it was ready".into()),
                    Err(e) => StackError::Other(format!("stack task failed: {e}")),
                });
            }
        };
        let Some(addrs) = addrs else {
            return Err(match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => StackError::Other("stack stopped before it was ready".into()),
                Err(e) => StackError::Other(format!("stack task failed: {e}")),
            });
        };
        Ok(LocalStack {
            serve: format!("http://{}", addrs.serve),
            api: format!("http://{}", addrs.api),
            addrs,
            stop: Some(stop_tx),
            task,
        })
    }

    /// Stops every service and waits for them to finish.
    pub async fn stop(mut self) -> Result<(), StackError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(StackError::Other(format!("stack task failed: {e}"))),
        }
    }
}
