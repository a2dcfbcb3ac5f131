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
use crate::generation::{self, Generation, Process, Warmup};
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
        let seen = source.seen;
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
                        *seen = source.path().and_then(FileStamp::of);
                        return "SIGHUP";
                    }
                    // The SIGHUP listener stopped (shutdown): polling goes on.
                    *hangups = None;
                }
                () = clock.sleep(POLL_INTERVAL), if source.path().is_some() => {
                    let now = source.path().and_then(FileStamp::of);
                    if now != *seen {
                        *seen = now;
                        return "file change";
                    }
                }
            }
        }
    }

    /// Reads the configuration again; when it is valid and differs, builds
    /// its generation (not yet serving: see [`Prepared`]). Refusals and "unchanged"
    /// are logged and counted here.
    pub fn prepare(&self, trigger: &'static str, current: &Current, process: &Process) -> Option<Prepared> {
        let running = current.load_full();
        let at = process.clock.since_epoch().as_secs_f64();
        let metrics = &process.metrics;
        let reloaded = match config::reload(self.source.path(), self.source.env(), &running.config) {
            Ok(reloaded) => reloaded,
            Err(problems) => {
                let all: Vec<String> = problems.errors.iter().map(ToString::to_string).collect();
                refused(trigger, &all.join("; "), all.len(), process);
                return None;
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
        if reloaded.config.same_settings(&running.config) {
            tracing::info!(trigger, "configuration unchanged");
            metrics.config_loaded(true, at);
            metrics.set_config(&reloaded.config.fingerprint, restart_required);
            return None;
        }
        let changed = config::changed_sections(&running.config, &reloaded.config);
        let fingerprint = reloaded.config.fingerprint.clone();
        match generation::build(reloaded.config, process, Some(&running)) {
            Ok(generation) => Some(Prepared { trigger, generation, changed, fingerprint, restart_required }),
            Err(e) => {
                refused(trigger, &crate::error_chain(&e), 1, process);
                None
            }
        }
    }
}

/// A valid new configuration's generation, built, its new pieces' tasks to
/// be started; it serves once [`Prepared::commit`] stores it.
pub(crate) struct Prepared {
    trigger: &'static str,
    pub generation: Generation,
    changed: Vec<&'static str>,
    fingerprint: String,
    restart_required: bool,
}

/// How long a new generation may take to have its new dependencies ready
/// (a JWKS fetched, a Redis reached) before the reload is given up.
pub(crate) const WARMUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Prepared {
    /// Waits (up to [`WARMUP_TIMEOUT`] on the proxy's clock) for what
    /// `/readyz` would wait for in the pieces built anew; their tasks must be
    /// running. `Err` says what was still not ready.
    pub async fn warm(warmup: &Warmup, clock: &Clock) -> Result<(), &'static str> {
        let ready = async {
            while warmup.cold().is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        match clock.timeout(WARMUP_TIMEOUT, ready).await {
            Ok(()) => Ok(()),
            Err(_) => Err(warmup.cold().unwrap_or("not ready")),
        }
    }

    /// Takes the generation into service: new requests use it from now on.
    pub fn commit(self, current: &Current, process: &Process) {
        let state = self.generation.state;
        let metrics = &process.metrics;
        if state.jwks.is_none() {
            // No ID-token key set in force any more.
            metrics.jwks_keys.set(0);
        }
        metrics.clear_limit_clients(&state.limits);
        current.store(Arc::new(state));
        metrics.config_loaded(true, process.clock.since_epoch().as_secs_f64());
        metrics.set_config(&self.fingerprint, self.restart_required);
        tracing::info!(
            trigger = self.trigger,
            changed = %self.changed.join(", "),
            hash = %self.fingerprint,
            "configuration reloaded; new requests use it"
        );
    }

    /// Gives the reload up: the new dependencies did not become ready.
    pub fn refuse(self, why: &str, process: &Process) {
        refused(
            self.trigger,
            &format!("the new configuration is not ready: {why} after {} s", WARMUP_TIMEOUT.as_secs()),
            1,
            process,
        );
    }
}

/// A reload refused: logged with every problem, counted; the running
/// configuration stays.
fn refused(trigger: &'static str, problems: &str, count: usize, process: &Process) {
    tracing::warn!(trigger, problems = %problems, count, "configuration not reloaded; the running one stays");
    process.metrics.config_loaded(false, process.clock.since_epoch().as_secs_f64());
}
