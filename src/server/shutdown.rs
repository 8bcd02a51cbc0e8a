//! One shutdown signal for every long-running task of a process.

use std::time::Duration;

use tokio::sync::watch;

/// Sender side: triggered once, on SIGTERM/SIGINT or when a test is done.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Receiver side, cloned into each task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when shutdown is triggered or the trigger is dropped.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }

    /// Sleeps for `interval`; returns false instead when shutdown comes first.
    pub async fn sleep(&mut self, interval: Duration) -> bool {
        if self.is_triggered() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => true,
            changed = self.0.changed() => changed.is_ok() && !self.is_triggered(),
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn os_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}
