//! SIGHUP, the operator's "re-read your files". The handler is installed when
//! the proxy binds, whatever there is to reload: without one, SIGHUP's default
//! action ends the process. Each signal goes to every subscriber: the
//! configuration reload (`reload`), the TLS files' reloader, the audit file.

use tokio::sync::watch;

/// The SIGHUP listener: counts signals, and subscribers wait for the count to
/// change (signals that arrive during a reload coalesce into one more).
pub struct Hangups {
    count: watch::Sender<u64>,
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Installs the handler: from here on SIGHUP no longer ends the process.
    /// Needs a running tokio runtime.
    pub fn install() -> Self {
        #[cfg(unix)]
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads follow file changes only"))
            .ok();
        Self {
            count: watch::channel(0).0,
            #[cfg(unix)]
            signal,
        }
    }

    /// Changes on every SIGHUP from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }

    /// Hands each SIGHUP to the subscribers; runs until aborted.
    pub async fn run(mut self) {
        loop {
            #[cfg(unix)]
            let received = match self.signal.as_mut() {
                Some(signal) => signal.recv().await.is_some(),
                None => false,
            };
            #[cfg(not(unix))]
            let received = false;
            if !received {
                return std::future::pending().await;
            }
            if self.count.receiver_count() == 0 {
                tracing::info!("SIGHUP: nothing to reload (no TLS files, and no configuration file to read again)");
            } else {
                tracing::info!("SIGHUP: reloading");
            }
            self.count.send_modify(|n| *n += 1);
        }
    }
}
