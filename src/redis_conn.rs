//! Redis, for what several replicas must share: nonces and (optionally) verdicts.
//!
//! One [`RedisConn`] per use (`nonce`, `cache`) wraps redis-rs's
//! `ConnectionManager`, which reconnects by itself. Every call has a short
//! timeout of its own and is counted by operation and outcome. Nothing here ever
//! formats the URL (it may hold a password): logs name the redacted address.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;
use crate::telemetry::{Metrics, RedisLabels, RedisOpLabels};

/// How often the health probe PINGs (1 second).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// A Redis call that did not complete: the caller decides (nonces fail closed,
/// the shared cache falls back to LINE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedisFailure {
    #[error("Redis did not answer in time")]
    Timeout,
    #[error("Redis call failed")]
    Failed,
}

pub struct RedisConn {
    manager: ConnectionManager,
    /// `nonce` or `cache`: the `use` label of the metrics.
    purpose: &'static str,
    prefix: String,
    timeout: Duration,
    redacted: String,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
}

impl RedisConn {
    /// Prepares the connection without connecting (Redis may be down at start;
    /// the first call or the health probe connects).
    pub fn new(config: &RedisConfig, purpose: &'static str, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("{purpose} Redis at {}: {:?}", config.redacted(), e.kind()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("{purpose} Redis at {}: {:?}", config.redacted(), e.kind()))?;
        Ok(Self {
            manager,
            purpose,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            redacted: config.redacted(),
            healthy: AtomicBool::new(false),
            metrics,
        })
    }

    /// The namespaced key for `suffix`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// True after the last probe or call succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Runs one command with the per-call timeout; counts it as `op`.
    pub async fn run<T: redis::FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Result<T, RedisFailure> {
        let start = Instant::now();
        let mut conn = self.manager.clone();
        let result = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        self.metrics.redis_requests.get_or_create(&RedisLabels { purpose: self.purpose, op, outcome }).inc();
        self.metrics
            .redis_duration
            .get_or_create(&RedisOpLabels { purpose: self.purpose, op })
            .observe(start.elapsed().as_secs_f64());
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                // The kind only: a RedisError's text can carry server detail.
                tracing::warn!(purpose = self.purpose, redis = %self.redacted, op, kind = ?e.kind(), "Redis call failed");
                Err(RedisFailure::Failed)
            }
            Err(_) => {
                tracing::warn!(purpose = self.purpose, redis = %self.redacted, op, timeout_ms = self.timeout.as_millis() as u64, "Redis call timed out");
                Err(RedisFailure::Timeout)
            }
        };
        self.set_healthy(result.is_ok());
        result
    }

    fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            if healthy {
                tracing::info!(purpose = self.purpose, redis = %self.redacted, "Redis reachable");
            } else {
                tracing::warn!(purpose = self.purpose, redis = %self.redacted, "Redis unreachable");
            }
        }
    }

    /// PINGs every [`HEALTH_INTERVAL`] until aborted, keeping [`Self::is_healthy`]
    /// current (readiness follows it for the nonce store).
    pub async fn run_health_probe(self: Arc<Self>) {
        loop {
            let _ = self.run::<String>("ping", &redis::cmd("PING")).await;
            tokio::time::sleep(HEALTH_INTERVAL).await;
        }
    }
}
