//! Panics are never swallowed. A panic in a listener or background task ends
//! [`crate::Bound::serve`] through its join handle; for the tasks nobody joins
//! (hyper's per-connection and per-stream tasks), [`install_panic_hook`] — which
//! the binary installs — logs every panic and makes every running proxy in the
//! process fail, so that `/readyz` turns 503 and the process exits 1 instead of
//! serving on in an unknown state.

use std::any::Any;
use std::sync::OnceLock;

use tokio::sync::watch;

/// Panics seen since the hook was installed, and the last one's message.
static PANICS: OnceLock<watch::Sender<(u64, String)>> = OnceLock::new();

/// Installs the process-wide panic hook (once; later calls do nothing). The
/// previous hook still runs after ours, so the standard message is kept too.
pub fn install_panic_hook() {
    let mut installed = false;
    PANICS.get_or_init(|| {
        installed = true;
        watch::channel((0, String::new())).0
    });
    if !installed {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = message(info.payload());
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(panic = %text, location = %location, "a task panicked; the proxy stops");
        if let Some(panics) = PANICS.get() {
            panics.send_modify(|(count, last)| {
                *count += 1;
                *last = format!("{text} at {location}");
            });
        }
        previous(info);
    }));
}

/// Resolves with the message of the next panic anywhere in the process; never,
/// when the hook is not installed (tests that do not want it).
pub(crate) async fn panicked() -> String {
    let Some(panics) = PANICS.get() else {
        return std::future::pending().await;
    };
    let mut seen = panics.subscribe();
    seen.mark_unchanged();
    match seen.changed().await {
        Ok(()) => seen.borrow().1.clone(),
        Err(_) => std::future::pending().await,
    }
}

/// The text of a panic payload (`panic!` with a string literal or a format).
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}
