//! Reloading the configuration of a running proxy: on SIGHUP, and when the
//! file changes (its stamp, every [`POLL_INTERVAL`]: a Kubernetes ConfigMap
//! volume's update swaps the `..data` link, which changes the inode the
//! mounted path leads to).
//!
//! The file is read and validated as `check` would ([`config::reload`]); a
//! file with problems is refused, every problem logged, and the running
//! configuration stays. A valid one becomes the next generation
//! ([`crate::generation`]), stored for new requests at once (a request
//! loads the generation when it starts and finishes on it). Settings only a
//! restart applies are named in a WARN line and keep their running values.
//! `line_auth_proxy_config_last_reload_success` and
//! `_timestamp_seconds` follow every attempt.

use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{self, Source};
use crate::file_stamp::FileStamp;
use crate::generation::{self, Piece, Process};
use crate::proxy::Current;
use crate::tls::POLL_INTERVAL;

/// What asks for reloads: SIGHUP and the file's stamp.
pub(crate) struct Reloader {
    source: Source,
    hangups: Option<watch::Receiver<u64>>,
    /// The file as last read (none without a file).
    seen: Option<FileStamp>,
    clock: Clock,
}

impl Reloader {
    pub fn new(source: Source, hangups: watch::Receiver<u64>, clock: Clock) -> Self {
        let seen = source.path.as_deref().and_then(FileStamp::of);
        Self { source, hangups: Some(hangups), seen, clock }
    }

    /// Resolves with the trigger of the next reload (`SIGHUP` or `file
    /// change`). Cancel-safe: dropped between triggers, nothing is lost but
    /// the time already waited for the next poll.
    pub async fn next(&mut self) -> &'static str {
        let Self { source, hangups, seen, clock } = self;
        loop {
            let changed = async {
                match hangups.as_mut() {
                    Some(h) => h.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                signalled = changed => {
                    if signalled {
                        // Read now: a file change seen by the same reload is not another.
                        *seen = source.path.as_deref().and_then(FileStamp::of);
                        return "SIGHUP";
                    }
                    // The SIGHUP listener stopped (shutdown): polling goes on.
                    *hangups = None;
                }
                () = clock.sleep(POLL_INTERVAL), if source.path.is_some() => {
                    let now = source.path.as_deref().and_then(FileStamp::of);
                    if now != *seen {
                        *seen = now;
                        return "file change";
                    }
                }
            }
        }
    }

    /// Reads the configuration again and, when it is valid and differs,
    /// stores its generation in `current`. Returns the generation's pieces
    /// for the supervisor when one was stored.
    pub fn reload(&self, trigger: &'static str, current: &Current, process: &Process) -> Option<Vec<Piece>> {
        let running = current.load_full();
        let at = process.clock.since_epoch().as_secs_f64();
        let metrics = &process.metrics;
        let refused = |problems: String, count: usize| {
            tracing::warn!(
                trigger,
                problems = %problems,
                count,
                "configuration not reloaded; the running one stays"
            );
            metrics.config_loaded(false, at);
            None
        };
        let reloaded = match config::reload(self.source.path.as_deref(), &self.source.env, &running.config) {
            Ok(reloaded) => reloaded,
            Err(problems) => {
                let all: Vec<String> = problems.errors.iter().map(ToString::to_string).collect();
                return refused(all.join("; "), all.len());
            }
        };
        for w in &reloaded.warnings {
            tracing::warn!(key = %w.key, "configuration warning: {}", w.message);
        }
        let restart_required = !reloaded.restart_needed.is_empty();
        if restart_required {
            tracing::warn!(
                trigger,
                keys = %reloaded.restart_needed.join(", "),
                "these settings changed in the configuration file and take effect only after a restart; their running values stay"
            );
        }
        if reloaded.config == running.config {
            tracing::info!(trigger, "configuration unchanged");
            metrics.config_loaded(true, at);
            metrics.set_config(&running.config.fingerprint, restart_required);
            return None;
        }
        let changed = config::changed_sections(&running.config, &reloaded.config);
        let fingerprint = reloaded.config.fingerprint.clone();
        let generation = match generation::build(reloaded.config, process, Some(&running)) {
            Ok(generation) => generation,
            Err(e) => return refused(crate::error_chain(&e), 1),
        };
        current.store(Arc::new(generation.state));
        metrics.config_loaded(true, at);
        metrics.set_config(&fingerprint, restart_required);
        tracing::info!(
            trigger,
            changed = %changed.join(", "),
            hash = %fingerprint,
            "configuration reloaded; new requests use it"
        );
        Some(generation.pieces)
    }
}
