//! Configuration reload without a restart: a ConfigMap-style edit of the
//! mounted file is picked up by the poll (on the test's clock), a valid one
//! applies to new requests while in-flight ones finish on the old, an invalid
//! one is refused and the old stays, cached verdicts do not outlive the
//! settings they were given under, issued nonces survive, settings only a
//! restart applies are reported and keep their running values. The SIGHUP
//! path and the log lines are tested on the real binary.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use line_auth_proxy::Clock;
use support::process::{kill, spawn_binary, stderr_lines, wait_for_line, wait_for_message};
use support::*;

/// A directory laid out as the kubelet lays out a ConfigMap volume:
/// `config.toml` is a link through `..data`, itself a link to the current
/// version's directory; an update writes a new directory and renames a new
/// `..data` link over the old one, in one step.
struct ConfigMapVolume {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapVolume {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lap-configmap-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = Self { dir, version: 0 };
        volume.publish(text);
        std::os::unix::fs::symlink("..data/config.toml", volume.path()).unwrap();
        volume
    }

    fn path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    fn publish(&mut self, text: &str) {
        self.version += 1;
        let version = format!("..2026_12_07_v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("config.toml"), text).unwrap();
        let next = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &next).unwrap();
        std::fs::rename(&next, self.dir.join("..data")).unwrap();
    }
}

impl Drop for ConfigMapVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Mock LINE with [`TOKEN`] (our channel), a recording upstream, a clock.
async fn parts() -> (Clock, MockLine, RecordingUpstream) {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    (clock, line, RecordingUpstream::start().await)
}

const PUBLIC: &str = "[[routes]]\npath_prefix = \"/public/\"\nauth = \"none\"\n";
const OPEN: &str = "[[routes]]\npath_prefix = \"/open/\"\nauth = \"none\"\n";

/// GET `path`, with `token` when given; the status.
async fn status(proxy: &TestProxy, path: &str, token: Option<&str>) -> u16 {
    let mut request = client().get(proxy.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Moves the clock one poll interval at a time until `done` holds. The
/// clock moves at most every 200 ms of real time: what a reload waits for in
/// real time (a JWKS fetched from the mock, up to 10 s of the proxy's clock)
/// gets that long, as it would in production.
async fn until_reloaded<F, Fut>(clock: &Clock, done: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let moved = std::cell::Cell::new(None::<tokio::time::Instant>);
    eventually(Duration::from_secs(20), || {
        if moved.get().is_none_or(|at| at.elapsed() >= Duration::from_millis(200)) {
            clock.advance(Duration::from_secs(5));
            moved.set(Some(tokio::time::Instant::now()));
        }
        done()
    })
    .await
}

/// The one `line_auth_proxy_config_info` series' hash.
fn config_hashes(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("line_auth_proxy_config_info{hash=\""))
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_configmap_edit_is_picked_up_without_a_restart() {
    let (clock, line, upstream) = parts().await;
    let mut volume = ConfigMapVolume::new(&config_text(&line.base_url(), &upstream.url(), PUBLIC));
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    assert_eq!(status(&proxy, "/public/a", None).await, 200);
    assert_eq!(status(&proxy, "/open/a", None).await, 401);
    let m = proxy.metrics().await;
    let first_hash = config_hashes(&m);
    assert_eq!(first_hash.len(), 1, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_config_last_reload_success"), 1.0, "{m}");
    let started = metric(&m, "line_auth_proxy_config_last_reload_timestamp_seconds");
    assert!(started > 1.0e9, "{m}");

    // The edit: /public/ now needs a token, /open/ does not.
    volume.publish(&config_text(&line.base_url(), &upstream.url(), OPEN));
    let hits = upstream.hits();
    let picked_up = until_reloaded(&clock, || async { status(&proxy, "/public/a", None).await == 401 }).await;
    assert!(picked_up, "the edited ConfigMap was never applied");
    assert_eq!(upstream.hits(), hits, "a refused request reached the upstream");
    assert_eq!(status(&proxy, "/open/a", None).await, 200);
    assert_eq!(status(&proxy, "/public/a", Some(TOKEN)).await, 200);
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_config_last_reload_success"), 1.0, "{m}");
    assert!(metric(&m, "line_auth_proxy_config_last_reload_timestamp_seconds") >= started + 5.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_config_restart_required"), 0.0, "{m}");
    let hashes = config_hashes(&m);
    assert!(hashes.len() == 1 && hashes != first_hash, "one series, of the new hash: {m}");
    // The new route has its own request-duration series.
    assert!(m.contains("line_auth_proxy_request_duration_seconds_count{route=\"/open/\",class=\"2xx\"} 1"), "{m}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_invalid_edit_is_refused_and_the_running_configuration_stays() {
    let (clock, line, upstream) = parts().await;
    let good = config_text(&line.base_url(), &upstream.url(), PUBLIC);
    let mut volume = ConfigMapVolume::new(&good);
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    let hash = config_hashes(&proxy.metrics().await);

    // Two problems, and a route change that must not apply with them.
    let broken =
        config_text(&line.base_url(), &upstream.url(), &format!("{OPEN}[cache]\nttl_seconds = -3\ncolour = 1\n"));
    volume.publish(&broken);
    let refused =
        until_reloaded(&clock, || async { proxy.metric("line_auth_proxy_config_last_reload_success").await == 0.0 })
            .await;
    assert!(refused, "the broken file was never refused");
    assert_eq!(status(&proxy, "/public/a", None).await, 200, "the running routes went");
    assert_eq!(status(&proxy, "/open/a", None).await, 401, "part of a refused file applied");
    assert_eq!(config_hashes(&proxy.metrics().await), hash);

    // A file that cannot be read at all (the link leads nowhere): refused too.
    std::fs::remove_file(volume.dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..missing", volume.dir.join("..data")).unwrap();
    clock.advance(Duration::from_secs(5));
    assert_eq!(status(&proxy, "/public/a", None).await, 200);

    // Fixed: taken at the next change.
    volume.publish(&config_text(&line.base_url(), &upstream.url(), OPEN));
    let taken = until_reloaded(&clock, || async { status(&proxy, "/open/a", None).await == 200 }).await;
    assert!(taken, "the fixed file was never applied");
    assert_eq!(proxy.metric("line_auth_proxy_config_last_reload_success").await, 1.0);
    proxy.stop().await;
}

#[tokio::test]
async fn cached_verdicts_do_not_outlive_a_channel_list_change() {
    let (clock, line, upstream) = parts().await;
    let text = config_text(&line.base_url(), &upstream.url(), PUBLIC);
    let mut volume = ConfigMapVolume::new(&text);
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    assert_eq!(status(&proxy, "/a", Some(TOKEN)).await, 200);
    let calls = line.verify_calls();

    // A comment and a route: the verdict cache stays (no LINE call).
    volume.publish(&format!("# edited\n{}", config_text(&line.base_url(), &upstream.url(), OPEN)));
    assert!(until_reloaded(&clock, || async { status(&proxy, "/open/a", None).await == 200 }).await);
    assert_eq!(status(&proxy, "/a", Some(TOKEN)).await, 200);
    assert_eq!(line.verify_calls(), calls, "a route change emptied the verdict cache");

    // The token's channel is no longer accepted: its cached verdict must not let it in.
    let other =
        text.replace(&format!("channel_ids = [\"{CHANNEL}\"]"), &format!("channel_ids = [\"{OTHER_CHANNEL}\"]"));
    assert_ne!(other, text);
    volume.publish(&other);
    let hits = upstream.hits();
    let refused = until_reloaded(&clock, || async { status(&proxy, "/a", Some(TOKEN)).await == 401 }).await;
    assert!(refused, "a token of a channel no longer configured still passes");
    assert_eq!(upstream.hits(), hits, "a refused request reached the upstream");
    assert!(line.verify_calls() > calls, "the token was not verified again");
    proxy.stop().await;
}

#[tokio::test]
async fn a_cache_ttl_change_applies_to_verdicts_from_then_on() {
    let (clock, line, upstream) = parts().await;
    let long = config_text(&line.base_url(), &upstream.url(), &format!("{PUBLIC}[cache]\nttl_seconds = 300\n"));
    let mut volume = ConfigMapVolume::new(&long);
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    assert_eq!(status(&proxy, "/a", Some(TOKEN)).await, 200);
    let calls = line.verify_calls();
    volume.publish(&long.replace("ttl_seconds = 300", "ttl_seconds = 10\n# reloaded"));
    let reloaded = until_reloaded(&clock, || async {
        proxy.metric("line_auth_proxy_config_last_reload_timestamp_seconds").await
            >= clock.since_epoch().as_secs_f64() - 5.0
            && config_hashes(&proxy.metrics().await).len() == 1
            && status(&proxy, "/a", Some(TOKEN)).await == 200
            && line.verify_calls() > calls
    })
    .await;
    assert!(reloaded, "a [cache] change kept verdicts cached under the old TTL");
    // Under the new TTL: cached for 10 s, not 300.
    let calls = line.verify_calls();
    assert_eq!(status(&proxy, "/a", Some(TOKEN)).await, 200);
    assert_eq!(line.verify_calls(), calls);
    clock.advance(Duration::from_secs(11));
    assert_eq!(status(&proxy, "/a", Some(TOKEN)).await, 200);
    assert_eq!(line.verify_calls(), calls + 1, "the verdict outlived the new TTL");
    proxy.stop().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_configuration_they_began_on() {
    let (clock, line, upstream) = parts().await;
    let slow = "[[routes]]\npath_prefix = \"/slow\"\nauth = \"none\"\n";
    // The upstream timeout runs on the proxy's clock, which the polls move on.
    let text = |extra: &str| {
        config_text(&line.base_url(), &upstream.url(), extra).replace("timeout_ms = 2000", "timeout_ms = 300000")
    };
    let mut volume = ConfigMapVolume::new(&text(slow));
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    let url = proxy.url("/slow/in-flight");
    let in_flight = tokio::spawn(async move {
        let r = client().get(url).header("x-test-delay-ms", "3000").send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert!(eventually(Duration::from_secs(5), || async { upstream.hits() == 1 }).await);

    // /slow now needs a token.
    volume.publish(&text(OPEN));
    assert!(until_reloaded(&clock, || async { status(&proxy, "/slow/new", None).await == 401 }).await);
    assert!(!in_flight.is_finished(), "the reload came too late to test anything");
    assert_eq!(in_flight.await.unwrap(), (200, "upstream ok".to_owned()));
    assert_eq!(upstream.hits(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn issued_nonces_and_the_jwks_survive_a_reload_and_id_token_routes_come_and_go() {
    let (clock, line, upstream) = parts().await;
    let login = "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";
    let (line_url, upstream_url, jwks_url) = (line.base_url(), upstream.url(), line.jwks_url());
    let with_login = |extra: &str| {
        config_text_line(&line_url, &upstream_url, &format!("jwks_url = \"{jwks_url}\""), &format!("{login}{extra}"))
    };
    let mut volume = ConfigMapVolume::new(&with_login(""));
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    let e = Env { clock: clock.clone(), line, upstream, proxy };
    let nonce = e.nonce().await;
    let jwks_calls = e.line.jwks_calls();

    volume.publish(&with_login(OPEN));
    assert!(until_reloaded(&clock, || async { status(&e.proxy, "/open/a", None).await == 200 }).await);
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&nonce)))).await, 200, "the nonce issued before was lost");
    assert_eq!(e.line.jwks_calls(), jwks_calls, "the key set was fetched again");

    // No ID-token route any more: the JWKS refresher and nonce upkeep stop,
    // and the proxy serves on (their end is no failure).
    volume.publish(&config_text(&e.line.base_url(), &e.upstream.url(), OPEN));
    assert!(until_reloaded(&clock, || async { status(&e.proxy, "/auth/nonce", None).await == 401 }).await);
    assert_eq!(status(&e.proxy, "/open/a", None).await, 200);
    assert!(eventually_status(&e.proxy.admin_url("/readyz"), 200, 1).await);
    let m = e.proxy.metrics().await;
    assert!(!m.contains("dependency=\"jwks\""), "a series of a dependency gone: {m}");
    assert_eq!(metric(&m, "line_auth_proxy_jwks_keys"), 0.0, "{m}");

    // And back: a new key set is fetched before the configuration serves,
    // so readiness never drops and logins work at once.
    volume.publish(&with_login(""));
    let ready = std::cell::Cell::new(true);
    assert!(
        until_reloaded(&clock, || async {
            let r = client().get(e.proxy.admin_url("/readyz")).send().await.unwrap().status();
            ready.set(ready.get() && r == 200);
            status(&e.proxy, "/open/a", None).await == 401
        })
        .await
    );
    assert!(ready.get(), "/readyz turned 503 during the reload");
    let nonce = e.nonce().await;
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&nonce)))).await, 200);
    assert!(e.line.jwks_calls() > jwks_calls);
    let Env { proxy, .. } = e;
    proxy.stop().await;
}

#[tokio::test]
async fn the_environment_overlay_applies_to_every_reload() {
    let (clock, line, upstream) = parts().await;
    // The file names another channel; the environment, ours.
    let text = config_text(&line.base_url(), &upstream.url(), PUBLIC)
        .replace(&format!("channel_ids = [\"{CHANNEL}\"]"), &format!("channel_ids = [\"{OTHER_CHANNEL}\"]"));
    let mut volume = ConfigMapVolume::new(&text);
    let env = vec![("LINE_AUTH_PROXY__LINE__CHANNEL_IDS".to_owned(), CHANNEL.to_owned())];
    let proxy = spawn_reloading(&volume.path(), env, &clock).await;
    assert_eq!(status(&proxy, "/a", Some(TOKEN)).await, 200);
    volume.publish(&text.replace(PUBLIC, OPEN));
    assert!(until_reloaded(&clock, || async { status(&proxy, "/open/a", None).await == 200 }).await);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(status(&proxy, "/a", Some(TOKEN)).await, 200, "the reload dropped the environment's channel list");
    proxy.stop().await;
}

#[tokio::test]
async fn settings_only_a_restart_applies_keep_their_running_values() {
    let (clock, line, upstream) = parts().await;
    let text = config_text(&line.base_url(), &upstream.url(), PUBLIC);
    let mut volume = ConfigMapVolume::new(&text);
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    let elsewhere = RecordingUpstream::start().await;

    // Another upstream and another idle timeout (restart) with a route (now).
    let edited = config_text(&line.base_url(), &elsewhere.url(), OPEN)
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\nidle_timeout_ms = 1000");
    volume.publish(&edited);
    assert!(until_reloaded(&clock, || async { status(&proxy, "/open/a", None).await == 200 }).await);
    assert_eq!(proxy.metric("line_auth_proxy_config_restart_required").await, 1.0);
    assert_eq!((upstream.hits(), elsewhere.hits()), (1, 0), "[upstream] changed without a restart");

    // Put back: nothing waits for a restart any more.
    volume.publish(&text);
    assert!(until_reloaded(&clock, || async { status(&proxy, "/public/a", None).await == 200 }).await);
    assert_eq!(proxy.metric("line_auth_proxy_config_restart_required").await, 0.0);

    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_whose_new_dependencies_never_become_ready_is_given_up_and_readiness_stays() {
    let (clock, line, upstream) = parts().await;
    let login = "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";
    let text = |jwks: &str| {
        config_text_line(
            &line.base_url(),
            &upstream.url(),
            &format!("jwks_url = \"{jwks}\""),
            &format!("{login}{OPEN}"),
        )
    };
    let mut volume = ConfigMapVolume::new(&text(&line.jwks_url()));
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    // A JWKS URL where nothing answers: the new generation never gets a key set.
    let nowhere = closed_port();
    volume.publish(&text(&format!("http://{}/jwks", nowhere.addr)).replace(OPEN, ""));
    let ready = std::cell::Cell::new(true);
    let given_up = until_reloaded(&clock, || async {
        let r = client().get(proxy.admin_url("/readyz")).send().await.unwrap().status();
        ready.set(ready.get() && r == 200);
        proxy.metric("line_auth_proxy_config_last_reload_success").await == 0.0
    })
    .await;
    assert!(given_up, "the reload was never given up");
    assert!(ready.get(), "/readyz turned 503 while the new configuration warmed up");
    assert_eq!(status(&proxy, "/open/a", None).await, 200, "the running configuration went");
    let e = Env { clock: clock.clone(), line, upstream, proxy };
    let nonce = e.nonce().await;
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&nonce)))).await, 200);
    let Env { proxy, .. } = e;
    proxy.stop().await;
}

#[tokio::test]
async fn a_header_prefix_change_reaches_identities_already_cached() {
    let (clock, line, upstream) = parts().await;
    let text = config_text(&line.base_url(), &upstream.url(), PUBLIC);
    let mut volume = ConfigMapVolume::new(&text);
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    assert_eq!(status(&proxy, "/a", Some(TOKEN)).await, 200);
    assert_eq!(upstream.last().headers.get("x-line-user-id").unwrap(), USER);
    volume.publish(&format!("{text}\n[identity]\nheader_prefix = \"X-Auth-\"\n"));
    let renamed = until_reloaded(&clock, || async {
        status(&proxy, "/a", Some(TOKEN)).await == 200 && upstream.last().headers.get("x-auth-user-id").is_some()
    })
    .await;
    assert!(renamed, "the cached identity kept the old header names");
    let last = upstream.last();
    assert_eq!(last.headers.get("x-auth-user-id").unwrap(), USER);
    assert!(last.headers.get("x-line-user-id").is_none(), "the old name still reached the upstream");
    proxy.stop().await;
}

#[tokio::test]
async fn per_client_budgets_survive_a_reload_unless_the_limits_change() {
    let (clock, line, upstream) = parts().await;
    let login = "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";
    let text = |extra: &str| {
        config_text_line(
            &line.base_url(),
            &upstream.url(),
            &format!("jwks_url = \"{}\"", line.jwks_url()),
            &format!("{login}{extra}"),
        )
    };
    let limits = "[limits]\nnonces_per_minute = 2\n";
    let mut volume = ConfigMapVolume::new(&text(limits));
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    let nonce = || async { client().get(proxy.url("/auth/nonce")).send().await.unwrap().status().as_u16() };
    assert_eq!((nonce().await, nonce().await, nonce().await), (200, 200, 429));
    // A route edit: the budget spent stays spent.
    volume.publish(&text(&format!("{OPEN}{limits}")));
    assert!(until_reloaded(&clock, || async { status(&proxy, "/open/a", None).await == 200 }).await);
    // (The clock moved on while polling; the budget refills by the minute.)
    let _ = nonce().await;
    assert_eq!(nonce().await, 429, "a reload that left [limits] alone reset the budgets");
    // A new limit: counted afresh.
    volume.publish(&text(&format!("{OPEN}[limits]\nnonces_per_minute = 3\n")));
    let fresh = until_reloaded(&clock, || async { nonce().await == 200 }).await;
    assert!(fresh);
    proxy.stop().await;
}

#[tokio::test]
async fn a_rotated_channel_secret_is_never_undone_by_the_shared_cache_tier() {
    let redis = RedisServer::start().await;
    let (clock, line, upstream) = parts().await;
    let dir = tempdir();
    let (old, new) = (b"0123456789abcdef0123456789abcdef", b"fedcba9876543210fedcba9876543210");
    let (old_file, new_file) = (dir.0.join("secret-1"), dir.0.join("secret-2"));
    std::fs::write(&old_file, old).unwrap();
    std::fs::write(&new_file, new).unwrap();
    for file in [&old_file, &new_file] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    // LIFF-style ID-token route (no nonce), verdicts shared through Redis.
    let text = |secret: &PathBuf| {
        let line_extra = format!("jwks_url = \"{}\"\nchannel_secret_file = {secret:?}", line.jwks_url());
        let extra = format!(
            "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\nrequire_nonce = false\n\
             [cache]\nshared = \"redis\"\nredis_url = \"{}\"\n{}",
            redis.url(3),
            mac_key_line()
        );
        config_text_line(&line.base_url(), &upstream.url(), &line_extra, &extra)
    };
    let mut volume = ConfigMapVolume::new(&text(&old_file));
    let proxy = spawn_reloading(&volume.path(), Vec::new(), &clock).await;
    let login = |token: String| {
        let url = proxy.url("/login");
        async move { client().post(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    let signed_before = MockLine::sign_hs256(old, &line.id_claims(CHANNEL, USER, None));
    assert_eq!(login(signed_before.clone()).await, 200);
    let stored =
        eventually(Duration::from_secs(5), || async { !redis.keys(3, "line-auth-proxy:verdict:*").await.is_empty() })
            .await;
    assert!(stored, "the verdict never reached Redis");

    // The old secret leaked and is rotated: what it signed is refused at once.
    let hash = config_hashes(&proxy.metrics().await);
    volume.publish(&text(&new_file));
    assert!(until_reloaded(&clock, || async { config_hashes(&proxy.metrics().await) != hash }).await);
    let hits = upstream.hits();
    assert_eq!(login(signed_before).await, 401, "a verdict the old secret passed was taken from Redis");
    assert_eq!(upstream.hits(), hits);
    assert_eq!(login(MockLine::sign_hs256(new, &line.id_claims(CHANNEL, USER, None))).await, 200);
    proxy.stop().await;
}

/// The binary: SIGHUP, and what the log says of each kind of reload.
#[tokio::test]
async fn sighup_reloads_and_the_log_explains_each_outcome() {
    let (_clock, line, upstream) = parts().await;
    let dir = tempdir();
    let path = dir.0.join("config.toml");
    let text = config_text(&line.base_url(), &upstream.url(), PUBLIC);
    std::fs::write(&path, &text).unwrap();
    let mut child = spawn_binary(&path);
    let mut lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let ready = wait_for_message(&mut lines, &mut seen, "line-auth-proxy ready").await;
    let listen = ready["listen"].as_str().unwrap().to_owned();
    let admin = format!("http://{}/metrics", ready["admin"].as_str().unwrap());
    let get = |path: &str| {
        let url = format!("http://{listen}{path}");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    let metrics = || async { client().get(&admin).send().await.unwrap().text().await.unwrap() };
    assert_eq!(get("/public/a").await, 200);
    let hup = |v: &serde_json::Value| v["trigger"] == "SIGHUP";

    // Two problems: both logged, in one refusal.
    std::fs::write(&path, text.replace(PUBLIC, "[cache]\nttl_seconds = -3\ncolour = 1\n")).unwrap();
    kill(&child, "HUP");
    let refused = wait_for_line(&mut lines, &mut seen, "configuration not reloaded; the running one stays", hup).await;
    let problems = refused["problems"].as_str().unwrap();
    assert!(problems.contains("cache.ttl_seconds: ") && problems.contains("cache.colour: "), "{problems}");
    assert_eq!(refused["count"], 2, "{refused}");
    assert_eq!(refused["level"], "WARN");
    assert_eq!(get("/public/a").await, 200);
    assert_eq!(metric(&metrics().await, "line_auth_proxy_config_last_reload_success"), 0.0);

    // A new route with a new listen address: the route applies, the address waits.
    let moved = text
        .replace(PUBLIC, OPEN)
        .replace("listen = \"127.0.0.1:0\"\nadmin_listen", "listen = \"127.0.0.1:1\"\nadmin_listen");
    assert_ne!(moved, text.replace(PUBLIC, OPEN));
    std::fs::write(&path, &moved).unwrap();
    kill(&child, "HUP");
    let restart = wait_for_line(
        &mut lines,
        &mut seen,
        "these settings changed in the configuration file and take effect only after a restart; their running values stay",
        hup,
    )
    .await;
    assert_eq!(restart["keys"], "server.listen", "{restart}");
    let reloaded = wait_for_line(&mut lines, &mut seen, "configuration reloaded; new requests use it", hup).await;
    assert_eq!(reloaded["changed"], "routes", "{reloaded}");
    assert_eq!(get("/open/a").await, 200, "served on the running address with the new routes");
    assert_eq!(get("/public/a").await, 401);
    let m = metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_config_last_reload_success"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_config_restart_required"), 1.0, "{m}");

    // The same again: nothing to do.
    kill(&child, "HUP");
    wait_for_line(&mut lines, &mut seen, "configuration unchanged", hup).await;

    // Only a restart-only setting more: reported, nothing rebuilt.
    std::fs::write(&path, moved.replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 6")).unwrap();
    kill(&child, "HUP");
    let restart = wait_for_line(
        &mut lines,
        &mut seen,
        "these settings changed in the configuration file and take effect only after a restart; their running values stay",
        hup,
    )
    .await;
    assert_eq!(restart["keys"], "server.listen, server.shutdown_grace_seconds", "{restart}");
    wait_for_line(&mut lines, &mut seen, "configuration unchanged", hup).await;

    kill(&child, "TERM");
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    while let Some(line) = lines.recv().await {
        seen.push(line);
    }
    assert_eq!(code.code(), Some(0), "{seen:#?}");
    assert!(!seen.join("\n").contains(TOKEN));
}

/// The binary configured by the environment alone: SIGHUP reads it again
/// (and finds it unchanged) instead of ending the process.
#[tokio::test]
async fn sighup_with_a_configuration_from_the_environment_alone() {
    let (_clock, line, upstream) = parts().await;
    let mut child = std::process::Command::new(support::process::BIN)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .env_remove("LINE_AUTH_PROXY_CONFIG")
        .env("LINE_AUTH_PROXY__SERVER__LISTEN", "127.0.0.1:0")
        .env("LINE_AUTH_PROXY__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("LINE_AUTH_PROXY__UPSTREAM__URL", upstream.url())
        .env("LINE_AUTH_PROXY__LINE__CHANNEL_IDS", CHANNEL)
        .env("LINE_AUTH_PROXY__LINE__API_BASE_URL", line.base_url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let ready = wait_for_message(&mut lines, &mut seen, "line-auth-proxy ready").await;
    kill(&child, "HUP");
    wait_for_line(&mut lines, &mut seen, "configuration unchanged", |v| v["trigger"] == "SIGHUP").await;
    let url = format!("http://{}/a", ready["listen"].as_str().unwrap());
    let r = client().get(url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    kill(&child, "TERM");
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(code.code(), Some(0), "{seen:#?}");
}

struct TempDir(PathBuf);

fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("lap-reload-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
