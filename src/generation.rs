//! One generation of the shared state ([`State`]): everything requests read
//! that the configuration decides. Start-up builds the first; each reload
//! builds the next from the new configuration and takes over from the
//! running one whatever the changed settings leave as it was, so that a
//! reload forgets nothing it need not:
//!
//! | piece | taken over while these are unchanged |
//! | --- | --- |
//! | LINE client (its connections and back-off) | `[line]` |
//! | JWKS (local ID-token mode) | `[line]` and the JWKS URL; a new one starts with the old key set |
//! | nonce store (issued nonces) | `[nonce]` TTL and store |
//! | verdict cache (memory and shared tier) | `[cache]`, `[line]`, `[identity]`, ID-token, `[assertion]`, `[session]` settings |
//! | assertion signer | `[assertion]` |
//! | per-client budgets and connection counts | `[limits]` |
//!
//! The rest (routes, identity header rule, sessions, web login, ID-token
//! verifier, route metrics) is cheap and always built anew. What belongs to
//! the process — metrics, the clock, the upstream pool, the trace exporter —
//! is shared by every generation (`[upstream]` and `[otel]` changes need a
//! restart, see `config::reload`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::auth::{id_token, jwks, line, nonce};
use crate::config::{self, Config};
use crate::proxy::{self, State};
use crate::{RunError, assertion, cache, limits, redis_conn, redis_entry, telemetry, traces, upstream};

pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What every generation shares.
pub(crate) struct Process {
    pub metrics: Arc<telemetry::Metrics>,
    pub clock: crate::Clock,
    pub upstream: Arc<upstream::Upstream>,
    pub traces: Option<Arc<traces::Traces>>,
}

/// A piece of a generation with a background task of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PieceKind {
    Jwks,
    Nonces,
    SharedCacheProbe,
    CacheSweeper,
    LimitsSweeper,
}

impl PieceKind {
    /// The task's name in a failure's log line.
    pub fn task_name(self) -> &'static str {
        match self {
            PieceKind::Jwks => "JWKS refresher",
            PieceKind::Nonces => "nonce store upkeep",
            PieceKind::SharedCacheProbe => "shared cache probe",
            PieceKind::CacheSweeper => "cache sweeper",
            PieceKind::LimitsSweeper => "limits sweeper",
        }
    }
}

/// A piece the generation has, with its task when it was built anew (a piece
/// taken over keeps the task already running for it).
pub(crate) struct Piece {
    pub kind: PieceKind,
    pub task: Option<Task>,
}

/// A generation, its tasks not started yet.
pub(crate) struct Generation {
    pub state: State,
    pub pieces: Vec<Piece>,
}

impl Generation {
    /// What `/readyz` waits for among the pieces built anew: a reload takes
    /// the generation into service only once it is ready, so that it never
    /// turns a serving replica unready.
    pub fn warmup(&self) -> Warmup {
        let fresh = |kind| self.pieces.iter().any(|p| p.kind == kind && p.task.is_some());
        Warmup {
            jwks: self.state.jwks.clone().filter(|_| fresh(PieceKind::Jwks)),
            nonce_redis: self
                .state
                .nonces
                .as_ref()
                .and_then(|n| n.store.redis().cloned())
                .filter(|_| fresh(PieceKind::Nonces)),
        }
    }
}

/// The dependencies a new generation must have ready before it serves.
pub(crate) struct Warmup {
    jwks: Option<Arc<jwks::Jwks>>,
    nonce_redis: Option<Arc<redis_conn::RedisConn>>,
}

impl Warmup {
    /// What is not ready yet, if anything.
    pub fn cold(&self) -> Option<&'static str> {
        if self.jwks.as_ref().is_some_and(|j| !j.is_loaded()) {
            return Some("no key set from the JWKS URL (line.jwks_url) yet");
        }
        if self.nonce_redis.as_ref().is_some_and(|r| !r.is_healthy()) {
            return Some("the nonce store's Redis (nonce.redis_url) has not answered yet");
        }
        None
    }
}

/// The shared cache tier's key scope: 16 hex of SHA-256 over the ID-token
/// rules (verification mode, JWKS URL, clock skew, maximum age, the channel
/// secrets' contents). What a verdict read back can be judged by here — its
/// channel, its age against this replica's TTLs — is judged on read; what
/// it cannot (which secret or key set verified it) is in the key: replicas,
/// or generations, under other rules never read each other's verdicts, so a
/// rotated channel secret is never undone by a verdict the old one passed.
/// (The secrets enter a hash truncated to 64 bits, shown in Redis keys:
/// LINE's channel secrets are 128-bit random values, out of reach of
/// guessing through it.)
pub(crate) fn verdict_scope(config: &Config) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    if let Some(c) = &config.id_token {
        context.update(format!("{:?}|{}|{:?}|{:?}", c.verification, c.jwks_url, c.clock_skew, c.max_age).as_bytes());
        for (channel, secret) in &c.channel_secrets {
            context.update(channel.as_bytes());
            context.update(&(secret.0.len() as u64).to_be_bytes());
            context.update(&secret.0);
        }
    }
    context.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the generation of `config`, taking over from `previous` (the one
/// running) what its changes leave as it was.
pub(crate) fn build(config: Config, process: &Process, previous: Option<&State>) -> Result<Generation, RunError> {
    let (metrics, clock) = (&process.metrics, &process.clock);
    let mut pieces = Vec::new();
    // Taken over when `same` holds between the running configuration and this one.
    let kept = |same: &dyn Fn(&Config) -> bool| previous.filter(|p| same(&p.config));

    let line = match kept(&|old| old.line == config.line) {
        Some(old) => old.line.clone(),
        None => Arc::new(
            line::LineClient::new(&config.line, clock.clone(), metrics.clone())
                .map_err(|e| RunError::LineClient(e.without_url()))?,
        ),
    };
    let line_kept = previous.is_some_and(|p| Arc::ptr_eq(&p.line, &line));

    let jwks_url = config
        .id_token
        .as_ref()
        .filter(|c| c.verification == config::IdTokenVerification::Local)
        .map(|c| c.jwks_url.clone());
    let jwks = jwks_url.map(|url| {
        let old = previous.and_then(|p| p.jwks.as_deref());
        match old.filter(|old| line_kept && old.url() == url) {
            Some(_) => {
                pieces.push(Piece { kind: PieceKind::Jwks, task: None });
                previous.and_then(|p| p.jwks.clone()).expect("the running JWKS")
            }
            None => {
                let fresh =
                    Arc::new(jwks::Jwks::new(line.clone(), url, clock.clone(), metrics.clone()).with_keys_of(old));
                let task = traces::background(process.traces.as_deref(), fresh.clone().run_refresher());
                pieces.push(Piece { kind: PieceKind::Jwks, task: Some(task) });
                fresh
            }
        }
    });
    let id_tokens = config.id_token.as_ref().map(|c| {
        id_token::IdTokenVerifier::new(c, config.line.channel_ids.clone(), line.clone(), jwks.clone(), clock.clone())
    });

    let redis = |c: &redis_conn::RedisConfig, purpose| {
        redis_conn::RedisConn::new(c, purpose, metrics.clone()).map(Arc::new).map_err(RunError::Redis)
    };
    let nonces = match &config.id_token {
        None => None,
        Some(c) => {
            let same_store = |old: &Config| {
                old.id_token.as_ref().is_some_and(|o| o.nonce.ttl == c.nonce.ttl && o.nonce.redis == c.nonce.redis)
            };
            let store = match kept(&same_store).and_then(|p| p.nonces.as_ref()) {
                Some(old) => {
                    pieces.push(Piece { kind: PieceKind::Nonces, task: None });
                    old.store.clone()
                }
                None => {
                    let store = Arc::new(match &c.nonce.redis {
                        None => nonce::NonceStore::Memory(nonce::MemoryNonces::new(
                            c.nonce.ttl,
                            nonce::MAX_NONCES,
                            clock.clone(),
                            metrics.clone(),
                        )),
                        Some(r) => nonce::NonceStore::Redis(nonce::RedisNonces::new(
                            redis(r, "nonce")?,
                            redis_entry::RedisMac::new("nonce", &r.mac_keys, metrics.clone()),
                            c.nonce.ttl,
                            clock.clone(),
                            metrics.clone(),
                        )),
                    });
                    pieces
                        .push(Piece { kind: PieceKind::Nonces, task: Some(Box::pin(store.clone().run_maintenance())) });
                    store
                }
            };
            Some(proxy::Nonces { path: c.nonce.path.clone(), store })
        }
    };

    let signer = match kept(&|old| old.assertion == config.assertion) {
        Some(old) => old.signer.clone(),
        None => match &config.assertion {
            None => None,
            Some(a) => Some(Arc::new(assertion::Signer::new(a, clock.clone()).map_err(RunError::Assertion)?)),
        },
    };
    let sessions = config.session.clone().map(proxy::session::Sessions::new);

    // A verdict holds what these settings decided (channels accepted, header
    // names, assertion, session revalidation): a change of any starts an
    // empty cache, so no verdict outlives the settings it was given under.
    let same_verdicts = |old: &Config| {
        old.cache == config.cache
            && old.line == config.line
            && old.identity == config.identity
            && old.id_token == config.id_token
            && old.assertion == config.assertion
            && old.session == config.session
    };
    let cache = match kept(&same_verdicts) {
        Some(old) => {
            if old.cache.shared_redis().is_some() {
                pieces.push(Piece { kind: PieceKind::SharedCacheProbe, task: None });
            }
            pieces.push(Piece { kind: PieceKind::CacheSweeper, task: None });
            old.cache.clone()
        }
        None => {
            let shared = match &config.cache.shared {
                None => None,
                Some(r) => {
                    let conn = redis(r, "cache")?;
                    pieces.push(Piece {
                        kind: PieceKind::SharedCacheProbe,
                        task: Some(Box::pin(conn.clone().run_health_probe())),
                    });
                    Some(cache::SharedTier::new(
                        conn,
                        redis_entry::RedisMac::new("cache", &r.mac_keys, metrics.clone()),
                        config.line.channel_ids.clone(),
                        verdict_scope(&config),
                        (config.cache.keys.ttl_seconds.duration(), config.cache.keys.negative_ttl_seconds.duration()),
                        clock.clone(),
                        metrics.clone(),
                    ))
                }
            };
            let cache = Arc::new(
                cache::VerdictCache::new(&config.cache, config.identity.names.clone(), shared, clock.clone())
                    .with_assertions(signer.clone())
                    .with_session_revalidation(sessions.as_ref().map(|s| s.config.revalidate)),
            );
            pieces.push(Piece { kind: PieceKind::CacheSweeper, task: Some(Box::pin(cache.clone().run_sweeper())) });
            cache
        }
    };

    // Web login's ID tokens are HS256 (the channel secret); should LINE issue
    // an ES256 one, its key comes from the JWKS, fetched when first needed.
    let login = config.login.clone().map(|c| proxy::login::Login {
        verifier: id_token::IdTokenVerifier::for_login(
            &c,
            &config.line,
            line.clone(),
            Some(jwks.clone().unwrap_or_else(|| {
                Arc::new(jwks::Jwks::new(
                    line.clone(),
                    config.line.jwks_url.as_str().to_owned(),
                    clock.clone(),
                    metrics.clone(),
                ))
            })),
            clock.clone(),
        ),
        config: c,
    });

    let limits = match kept(&|old| old.limits == config.limits) {
        Some(old) => {
            pieces.push(Piece { kind: PieceKind::LimitsSweeper, task: None });
            old.limits.clone()
        }
        None => {
            let limits = Arc::new(limits::Limits::new(&config.limits, clock.clone()));
            let task = Box::pin(limits.clone().run_sweeper(metrics.clone()));
            pieces.push(Piece { kind: PieceKind::LimitsSweeper, task: Some(task) });
            limits
        }
    };
    let strip_rule = Arc::new(upstream::StripRule {
        names: config.identity.names.clone(),
        assertion: config.identity.assertion_header.clone(),
    });
    let prefixes: Vec<&str> = config.routes.routes().iter().map(|r| r.path_prefix.as_str()).collect();
    let route_metrics = metrics.routes(&prefixes);
    let state = State {
        config,
        strip_rule,
        line,
        id_tokens,
        nonces,
        cache,
        jwks,
        upstream: process.upstream.clone(),
        signer,
        metrics: metrics.clone(),
        route_metrics,
        limits,
        clock: clock.clone(),
        sessions,
        login,
        traces: process.traces.clone(),
    };
    Ok(Generation { state, pieces })
}
