//! Time, as the proxy's expiring state sees it: the verdict cache, the nonce
//! store, the JWKS refresh, the LINE back-off and ID-token claim checks all read
//! a [`Clock`] instead of the standard clock, so that a test can pause time and
//! advance it past a TTL instead of sleeping through it.
//!
//! [`Clock::system`] is the real thing (monotonic `Instant` plus wall-clock unix
//! time, timers on tokio). [`Clock::manual`] stands still until
//! [`Clock::advance`] moves it; its timers fire when it is advanced past them.
//! Latency measurements are not expiry and always use real time: [`Stopwatch`].
//!
//! This is the one module allowed to read the standard clock (`.clippy.toml`
//! bans it elsewhere).
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// The proxy's notion of now. Cheap to clone; clones share the same time.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

/// A paused clock: a fixed starting point plus how far tests have advanced it.
struct Manual {
    start: Instant,
    start_unix: Duration,
    offset: watch::Sender<Duration>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.manual.is_some() { "Clock::manual" } else { "Clock::system" })
    }
}

impl Clock {
    /// The real clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that starts at the real now and then stands still until advanced.
    pub fn manual() -> Self {
        Self::manual_at(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    /// A manual clock whose wall-clock time starts at `start_unix` (since the
    /// unix epoch), for what is checked against another program's real clock:
    /// a clock set in the past issues what that program sees as expired.
    pub fn manual_at(start_unix: Duration) -> Self {
        let (offset, _) = watch::channel(Duration::ZERO);
        Self { manual: Some(Arc::new(Manual { start: Instant::now(), start_unix, offset })) }
    }

    /// Moves a manual clock forward and wakes every timer that is now due.
    ///
    /// # Panics
    /// On the system clock: real time cannot be advanced.
    pub fn advance(&self, by: Duration) {
        let manual = self.manual.as_ref().expect("only a manual clock can be advanced");
        manual.offset.send_modify(|offset| *offset += by);
    }

    /// Monotonic now, for expiry of in-memory state.
    pub fn now(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some(m) => m.start + *m.offset.borrow(),
        }
    }

    /// Wall-clock time since the unix epoch, for token `exp`/`iat` and values
    /// shared with other replicas.
    pub fn since_epoch(&self) -> Duration {
        match &self.manual {
            None => SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default(),
            Some(m) => m.start_unix + *m.offset.borrow(),
        }
    }

    /// Unix time in whole seconds.
    pub fn unix_seconds(&self) -> u64 {
        self.since_epoch().as_secs()
    }

    /// Unix time in milliseconds.
    pub fn unix_millis(&self) -> u64 {
        self.since_epoch().as_millis() as u64
    }

    /// Resolves once this clock has moved `duration` past the call.
    pub async fn sleep(&self, duration: Duration) {
        match &self.manual {
            None => tokio::time::sleep(duration).await,
            Some(m) => {
                let deadline = *m.offset.borrow() + duration;
                let mut changes = m.offset.subscribe();
                // The sender lives as long as `m`, which this borrow keeps alive.
                let _ = changes.wait_for(|offset| *offset >= deadline).await;
            }
        }
    }

    /// `future`, unless this clock moves `duration` first.
    pub async fn timeout<F: Future>(&self, duration: Duration, future: F) -> Result<F::Output, Elapsed> {
        tokio::select! {
            output = future => Ok(output),
            () = self.sleep(duration) => Err(Elapsed),
        }
    }
}

/// A [`Clock::timeout`] ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

/// Real elapsed time, for latency metrics and log fields (never for expiry).
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }

    /// Elapsed seconds, as histograms take them.
    pub fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_advanced() {
        let clock = Clock::manual();
        let (t0, u0) = (clock.now(), clock.unix_millis());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), t0);
        assert_eq!(clock.unix_millis(), u0);
        clock.clone().advance(Duration::from_secs(90));
        assert_eq!(clock.now() - t0, Duration::from_secs(90));
        assert_eq!(clock.unix_millis() - u0, 90_000);
    }

    #[tokio::test]
    async fn manual_timers_fire_when_advanced_past() {
        let clock = Clock::manual();
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep(Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        sleeper.await.unwrap();
        let never = std::future::pending::<()>();
        let timed_out = tokio::spawn({
            let clock = clock.clone();
            async move { clock.timeout(Duration::from_secs(1), never).await }
        });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(1));
        assert_eq!(timed_out.await.unwrap(), Err(Elapsed));
    }

    #[test]
    fn the_system_clock_is_real_time() {
        let clock = Clock::system();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(clock.unix_seconds() >= before);
    }
}
