//! The access log as a Pingora background service: it starts the writer thread and reopens the
//! destination on `SIGUSR1`.
//!
//! A service because Pingora starts services after it has daemonized (`-d`), and a thread
//! started before that fork would not exist in the daemon.

use std::sync::Arc;

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::AccessLog;

pub struct AccessLogService {
    pub log: Arc<AccessLog>,
}

#[async_trait::async_trait]
impl BackgroundService for AccessLogService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.log.start();
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGUSR1, the access log cannot be reopened: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    log::info!("SIGUSR1: reopening the access log");
                    self.log.reopen();
                }
                // The writer thread outlives this task: requests finishing during the grace
                // period still log, and `AccessLog::close` writes the rest.
                _ = shutdown.changed() => return,
            }
        }
    }
}
