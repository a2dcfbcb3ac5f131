//! Helper for `benches/load.sh` (not a test): the fixtures the load benchmark
//! runs against, and the small drivers that measure what wrk cannot.
//!
//! ```text
//! loadbench fixtures <line_delay_ms>          upstream + mock LINE; prints "READY <upstream_port> <line_port>"
//! loadbench cold <proxy> <admin> <n> <conc>   n distinct fresh tokens: latency per login, LINE calls per login
//! loadbench coalesce <proxy> <admin> <n>      n concurrent requests with one fresh token: LINE calls
//! loadbench fill <proxy> <n> <conc>           caches n distinct identities
//! loadbench spray <proxy> <admin> <n> <conc>  n never-seen invalid tokens from 127.0.0.1, then one
//!                                             fresh valid token from 127.0.0.2: statuses, LINE calls
//! loadbench nonces <proxy> <n> <conc> [path]  n nonces (GET path, default /auth/nonce) over one h2c
//!                                             connection, conc streams at a time (SPRAY=k: from k
//!                                             addresses, in X-Forwarded-For)
//! loadbench soak <rate> <seconds> <proxy command…>
//!                                             the soak of benches/soak.sh: fixtures here, the proxy
//!                                             started with the command (+ --config FILE), rate req/s
//!                                             of 90 % cached, 9 % fresh, 1 % invalid tokens over 128
//!                                             keep-alive connections, LINE answering 500 for 30 s in
//!                                             the middle; RSS, fds, cached verdicts, connections to
//!                                             LINE and LINE verify calls every 10 s; JSON
//!                                             summary, exit 1 on a failure. Rate 0: the same mix as
//!                                             fast as it goes, no outage (the maximum)
//! ```
//!
//! Everything listens on and talks to 127.0.0.1 only: the real LINE Platform
//! never receives benchmark traffic.

use std::convert::Infallible;
use std::time::Duration;

use line_auth_proxy::clock::Stopwatch;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use line_auth_proxy::dev::{Faults, MockLine, MockToken};
use tokio::net::TcpListener;

const CHANNEL: &str = "1234567890";
const USER: &str = "U1234567890abcdef1234567890abcdef";
/// Every token with this prefix is valid at the mock LINE Platform.
const PREFIX: &str = "bench-";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).unwrap_or_else(|| usage()).as_str();
    let num = |i: usize| arg(i).parse::<usize>().unwrap_or_else(|_| usage());
    match arg(0) {
        "fixtures" => fixtures(num(1) as u64).await,
        "cold" => cold(arg(1), arg(2), num(3), num(4)).await,
        "coalesce" => coalesce(arg(1), arg(2), num(3)).await,
        "fill" => fill(arg(1), num(2), num(3)).await,
        "spray" => spray(arg(1), arg(2), num(3), num(4)).await,
        "nonces" => nonces(arg(1), num(2), num(3), args.get(4).map_or("/auth/nonce", |p| p.as_str())).await,
        "soak" => soak::run(num(1), num(2) as u64, &args[3..]).await,
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: loadbench fixtures <line_delay_ms> | cold <proxy> <admin> <n> <concurrency> | coalesce <proxy> <admin> <n> | fill <proxy> <n> <concurrency> | spray <proxy> <admin> <n> <concurrency> | nonces <proxy> <n> <concurrency>"
    );
    std::process::exit(2)
}

/// A minimal keep-alive upstream answering `ok`, and the mock LINE Platform.
async fn fixtures(line_delay_ms: u64) {
    let line = MockLine::start().await.expect("mock LINE binds");
    line.accept_prefix(PREFIX, MockToken::new(CHANNEL, USER, "Bench User"));
    line.set_faults(Faults { delay: Duration::from_millis(line_delay_ms), ..Faults::default() });
    let listener = listener().expect("upstream binds");
    let upstream_port = listener.local_addr().unwrap().port();
    let line_port = line.base_url().rsplit(':').next().unwrap().to_string();
    println!("READY {upstream_port} {line_port}");
    serve_upstream(listener).await;
}

/// A loopback listener with the backlog of a real server (1024; the
/// standard library's 128 drops the SYNs of a burst of new connections).
fn listener() -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(1024)
}

/// The upstream: `ok` to everything, keep-alive.
async fn serve_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build().unwrap()
}

/// A counter's value in the proxy's exposition (0 when absent).
async fn metric(admin: &str, series: &str) -> f64 {
    let text = client().get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn line_calls(admin: &str) -> (f64, f64) {
    (
        metric(admin, "line_auth_proxy_line_requests_total{endpoint=\"verify\",outcome=\"ok\"}").await,
        metric(admin, "line_auth_proxy_line_requests_total{endpoint=\"profile\",outcome=\"ok\"}").await,
    )
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// `n` distinct, never-seen tokens, `concurrency` at a time.
async fn cold(proxy: &str, admin: &str, n: usize, concurrency: usize) {
    let (v0, p0) = line_calls(admin).await;
    let c = client();
    let run = format!("{PREFIX}cold-{}-", std::process::id());
    let mut latencies = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let (c, url, token) = (c.clone(), format!("{proxy}/api/cold"), format!("{run}{i}"));
                tokio::spawn(async move {
                    let start = Stopwatch::start();
                    let status = c.get(url).bearer_auth(token).send().await.unwrap().status();
                    assert_eq!(status, 200);
                    start.elapsed()
                })
            })
            .collect();
        for t in tasks {
            latencies.push(t.await.unwrap());
        }
    }
    let (v1, p1) = line_calls(admin).await;
    latencies.sort();
    let avg = latencies.iter().map(Duration::as_secs_f64).sum::<f64>() / n as f64 * 1000.0;
    println!(
        "{{\"logins\": {n}, \"verify_per_login\": {:.3}, \"profile_per_login\": {:.3}, \"avg_ms\": {avg:.2}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}}}",
        (v1 - v0) / n as f64,
        (p1 - p0) / n as f64,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
}

/// `n` concurrent requests carrying one token the proxy has never seen.
async fn coalesce(proxy: &str, admin: &str, n: usize) {
    let (v0, p0) = line_calls(admin).await;
    let c = client();
    let token = format!("{PREFIX}coalesce-{}", std::process::id());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, url, token) = (c.clone(), format!("{proxy}/api/coalesce"), token.clone());
            tokio::spawn(async move { c.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += (t.await.unwrap() == 200) as usize;
    }
    let (v1, p1) = line_calls(admin).await;
    println!("{{\"requests\": {n}, \"ok\": {ok}, \"verify_calls\": {}, \"profile_calls\": {}}}", v1 - v0, p1 - p0);
}

/// Verifies (and so caches) `n` distinct identities.
async fn fill(proxy: &str, n: usize, concurrency: usize) {
    let c = client();
    let started = Stopwatch::start();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(concurrency);
    let mut handles = Vec::with_capacity(concurrency);
    let per = n.div_ceil(concurrency);
    for w in 0..concurrency {
        let (c, proxy, tx) = (c.clone(), proxy.to_string(), tx.clone());
        handles.push(tokio::spawn(async move {
            for i in (w * per)..((w + 1) * per).min(n) {
                let status = c
                    .get(format!("{proxy}/api/fill"))
                    .bearer_auth(format!("{PREFIX}fill-{i}"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 200);
            }
            drop(tx);
        }));
    }
    drop(tx);
    while rx.recv().await.is_some() {}
    for h in handles {
        h.await.unwrap();
    }
    println!("{{\"filled\": {n}, \"seconds\": {:.1}}}", started.elapsed().as_secs_f64());
}

/// Sends `n` requests, `concurrency` at a time, `request(i)` building the
/// i-th; returns how many answers of each status (0: no answer) and as JSON.
async fn statuses<F>(n: usize, concurrency: usize, request: F) -> String
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let (next, request) = (std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)), std::sync::Arc::new(request));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, request) = (next.clone(), request.clone());
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeMap::<u16, usize>::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break seen;
                    }
                    let status = match request(i).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    *seen.entry(status).or_default() += 1;
                }
            })
        })
        .collect();
    let mut all = std::collections::BTreeMap::<u16, usize>::new();
    for w in workers {
        for (status, count) in w.await.unwrap() {
            *all.entry(status).or_default() += count;
        }
    }
    let counts: Vec<String> = all.iter().map(|(s, c)| format!("\"{s}\": {c}")).collect();
    format!("{{{}}}", counts.join(", "))
}

/// Asks for `n` nonces over one h2c connection, `concurrency` streams at a
/// time (a nonce flood from one client); prints how many answers of each status.
async fn nonces(proxy: &str, n: usize, concurrency: usize, path: &str) {
    let c = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    // SPRAY=<k>: request i from the i % k-th of k addresses, in the
    // X-Forwarded-For that a trusted proxy (127.0.0.1 in server.trusted_proxies)
    // forwarding for many clients would send.
    let spray: Option<usize> = std::env::var("SPRAY").ok().and_then(|k| k.parse().ok()).filter(|&k| k > 0);
    let started = Stopwatch::start();
    let url = format!("{proxy}{path}");
    let statuses = statuses(n, concurrency, move |i| {
        let request = c.get(&url);
        match spray {
            Some(k) => {
                let [_, a, b, c] = ((i % k) as u32).to_be_bytes();
                request.header("x-forwarded-for", format!("10.{a}.{b}.{c}"))
            }
            None => request,
        }
    })
    .await;
    println!("{{\"requested\": {n}, \"seconds\": {:.1}, \"statuses\": {statuses}}}", started.elapsed().as_secs_f64());
}

/// Calls to LINE's verify endpoint, whatever LINE answered.
async fn verify_calls(admin: &str) -> f64 {
    let text = client().get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("line_auth_proxy_line_requests_total{endpoint=\"verify\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A fresh-token spray from one address: `n` distinct invalid tokens,
/// `concurrency` at a time; then a user on another address with a token the
/// proxy has never seen. Prints the sprayer's statuses, the LINE verify calls
/// the spray caused, and the user's status.
async fn spray(proxy: &str, admin: &str, n: usize, concurrency: usize) {
    let before = verify_calls(admin).await;
    let (c, url) = (client(), format!("{proxy}/api/spray"));
    let statuses = statuses(n, concurrency, move |i| c.get(&url).bearer_auth(format!("sprayed-{i}"))).await;
    let calls = verify_calls(admin).await - before;
    let user = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap()
        .get(format!("{proxy}/api/user"))
        .bearer_auth(format!("{PREFIX}spray-check-user"))
        .send()
        .await
        .unwrap()
        .status();
    println!(
        "{{\"sprayed\": {n}, \"statuses\": {statuses}, \"line_verify_calls\": {calls}, \"other_user\": {}}}",
        user.as_u16()
    );
}

mod soak {
    //! A rate-paced token mix against a proxy this process starts, with a LINE
    //! outage in the middle; what counts as a failure is in [`Tally::record`].

    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use line_auth_proxy::clock::Stopwatch;
    use line_auth_proxy::dev::{Fault, Faults, MockLine, MockToken};
    use tokio::net::TcpStream;

    use super::{CHANNEL, PREFIX, USER};

    /// Cached tokens in the mix (each verified before the clock starts).
    const CACHED: u64 = 1000;
    /// The LINE outage: 30 s in the middle of the run.
    const OUTAGE: Duration = Duration::from_secs(30);
    /// A request within this of the outage's edges counts as in it.
    const EDGE: Duration = Duration::from_secs(2);
    /// Keep-alive connections the load is sent over (at most this many
    /// requests in flight; beyond, the schedule waits).
    const CONNECTIONS: usize = 128;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Cached,
        Fresh,
        Invalid,
    }

    /// When a request was, against the outage.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Phase {
        Normal,
        /// Sent during the outage.
        Outage,
        /// Across one of its edges: only "an invalid token is never 200" holds.
        Edge,
    }

    #[derive(Default)]
    struct Tally {
        sent: AtomicU64,
        edge: AtomicU64,
        /// Outside the outage: an answer that was not the expected one.
        failed_outside: AtomicU64,
        /// In the outage: a fresh or invalid token answered 200 (forwarded).
        forwarded_unverified: AtomicU64,
        outage_503: AtomicU64,
        outage_200_cached: AtomicU64,
        /// The unexpected answers outside the outage, by token kind and status
        /// (0: the connection failed), to say what failed.
        unexpected: Mutex<BTreeMap<String, u64>>,
    }

    pub async fn run(rate: usize, seconds: u64, command: &[String]) {
        let line = Arc::new(MockLine::start().await.expect("mock LINE binds"));
        line.accept_prefix(PREFIX, MockToken::new(CHANNEL, USER, "Soak User"));
        let upstream = super::listener().unwrap();
        let up_port = upstream.local_addr().unwrap().port();
        tokio::spawn(super::serve_upstream(upstream));
        let dir = std::env::temp_dir().join(format!("lap-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("soak.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:{up_port}\"\n\
                 [line]\nchannel_ids = [\"{CHANNEL}\"]\napi_base_url = \"{}\"\n[limits]\nconnections = 0\nfresh_tokens_per_minute = 0\n",
                line.base_url()
            ),
        )
        .unwrap();
        let log = dir.join("proxy.log");
        let mut child = std::process::Command::new(&command[0])
            .args(&command[1..])
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn,line_auth_proxy=info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the proxy starts");
        let pid = child.id();
        let (proxy, admin): (SocketAddr, String) = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains("line-auth-proxy ready")) {
                let field = |name: &str| l.split(name).nth(1).unwrap().split(' ').next().unwrap().to_owned();
                let proxy = field("listen=").parse().expect("the ready line names the listener");
                break (proxy, format!("http://{}", field("admin=")));
            }
        };
        let mut warm = Client::connect(proxy).await.expect("the proxy accepts");
        for i in 0..CACHED {
            assert_eq!(warm.get(&format!("{PREFIX}cached-{i}")).await, 200);
        }
        let total = Duration::from_secs(seconds);
        // With rate 0 (the maximum) there is no outage.
        let outage_start = if rate == 0 { total } else { (total / 2).saturating_sub(OUTAGE / 2) };
        let outage_end = if rate == 0 { total } else { outage_start + OUTAGE };
        let clock = Stopwatch::start();
        let run = Arc::new(Run {
            tally: Tally::default(),
            next: AtomicU64::new(0),
            // 0: as fast as the connections go (the maximum), and no outage.
            rate: if rate == 0 { f64::INFINITY } else { rate as f64 },
            total,
            outage_start,
            outage_end,
            clock,
        });
        // LINE fails for the outage, on its own schedule.
        let outage = {
            let line = line.clone();
            tokio::spawn(async move {
                if rate == 0 {
                    return;
                }
                tokio::time::sleep(outage_start).await;
                let fault = Some(Fault::Status(500));
                line.set_faults(Faults { verify: fault, profile: fault, ..Faults::default() });
                tokio::time::sleep(OUTAGE).await;
                line.set_faults(Faults::default());
            })
        };
        let workers: Vec<_> = (0..CONNECTIONS).map(|_| tokio::spawn(worker(run.clone(), proxy))).collect();
        let mut samples = Vec::new();
        // What explains the RSS, at the same instants: the proxy's cached
        // verdicts, its open connections to LINE, and since the sample
        // before: LINE verify calls, requests sent (whether the schedule was
        // kept) and the proxy's CPU time (clock ticks).
        let mut detail = Vec::new();
        let mut calls_before = line.verify_calls();
        let mut sent_before = 0;
        let mut ticks_before = cpu_ticks(pid);
        let mut next_sample = Duration::ZERO;
        while clock.elapsed() < total {
            samples.push((clock.elapsed().as_secs(), rss_kb(pid), open_fds(pid)));
            let calls = line.verify_calls();
            let sent = run.tally.sent.load(Ordering::Relaxed);
            let ticks = cpu_ticks(pid);
            let entries = super::metric(&admin, "line_auth_proxy_cache_entries").await as u64;
            detail.push((
                entries,
                line.open_connections(),
                calls - calls_before,
                sent - sent_before,
                ticks.saturating_sub(ticks_before),
            ));
            (calls_before, sent_before, ticks_before) = (calls, sent, ticks);
            next_sample += Duration::from_secs(10);
            tokio::time::sleep(next_sample.saturating_sub(clock.elapsed())).await;
        }
        // The last answers.
        for w in workers {
            let _ = w.await;
        }
        let _ = outage.await;
        samples.push((clock.elapsed().as_secs(), rss_kb(pid), open_fds(pid)));
        let entries = super::metric(&admin, "line_auth_proxy_cache_entries").await as u64;
        detail.push((
            entries,
            line.open_connections(),
            line.verify_calls() - calls_before,
            run.tally.sent.load(Ordering::Relaxed) - sent_before,
            cpu_ticks(pid).saturating_sub(ticks_before),
        ));
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(report(&run.tally, &samples, &detail, rate, seconds));
    }

    /// One sample's explanation: cached verdicts, connections open to LINE,
    /// and since the sample before: LINE verify calls, requests sent, proxy
    /// CPU clock ticks.
    type Detail = (u64, usize, usize, u64, u64);

    /// What every worker shares: the schedule, the outage's window, the tally.
    struct Run {
        tally: Tally,
        /// The next request's number; request n is due at n / rate seconds.
        next: AtomicU64,
        rate: f64,
        total: Duration,
        outage_start: Duration,
        outage_end: Duration,
        clock: Stopwatch,
    }

    /// One keep-alive connection's loop: take the next request number, wait
    /// until it is due (or send at once when the schedule is behind: the
    /// achieved rate is reported), send, record.
    async fn worker(run: Arc<Run>, proxy: SocketAddr) {
        let mut client: Option<Client> = None;
        loop {
            let n = run.next.fetch_add(1, Ordering::Relaxed) + 1;
            let due = Duration::from_secs_f64(n as f64 / run.rate);
            if due >= run.total {
                return;
            }
            let now = run.clock.elapsed();
            if due > now {
                tokio::time::sleep(due - now).await;
            } else if now >= run.total {
                // Behind the schedule at the end: what was not sent by then
                // is not sent (the achieved rate says how far behind).
                return;
            }
            let kind = match n % 100 {
                0 => Kind::Invalid,
                1..=9 => Kind::Fresh,
                _ => Kind::Cached,
            };
            let token = match kind {
                Kind::Cached => format!("{PREFIX}cached-{}", n % CACHED),
                Kind::Fresh => format!("{PREFIX}fresh-{n}"),
                Kind::Invalid => format!("invalid-{n}"),
            };
            run.tally.sent.fetch_add(1, Ordering::Relaxed);
            let started = run.clock.elapsed();
            if client.is_none() {
                client = Client::connect(proxy).await.ok();
            }
            let status = match client.as_mut() {
                Some(c) => c.get(&token).await,
                None => 0,
            };
            if status == 0 {
                // The connection failed: the next request opens another.
                client = None;
            }
            let ended = run.clock.elapsed();
            // Sent and answered while LINE was failing: nothing fresh can
            // have been verified. Done before it began, or sent once it had
            // been over for EDGE: answered as usual.
            let phase = if started >= run.outage_start && ended < run.outage_end {
                Phase::Outage
            } else if ended < run.outage_start || started >= run.outage_end + EDGE {
                Phase::Normal
            } else {
                Phase::Edge
            };
            run.tally.record(kind, status, phase);
        }
    }

    /// One HTTP/1.1 keep-alive connection to the proxy (hyper's own client
    /// connection: no pool, so the client costs little of the load core).
    struct Client {
        send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    }

    impl Client {
        async fn connect(proxy: SocketAddr) -> std::io::Result<Client> {
            let stream = TcpStream::connect(proxy).await?;
            stream.set_nodelay(true)?;
            let (send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok(Client { send })
        }

        /// `GET /soak` with the token: the status, 0 when the connection failed.
        async fn get(&mut self, token: &str) -> u16 {
            let request = hyper::Request::get("/soak")
                .header(hyper::header::HOST, "soak")
                .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Empty::new())
                .expect("a valid request");
            if self.send.ready().await.is_err() {
                return 0;
            }
            let Ok(response) = self.send.send_request(request).await else { return 0 };
            let status = response.status().as_u16();
            match response.into_body().collect().await {
                Ok(_) => status,
                Err(_) => 0,
            }
        }
    }

    impl Tally {
        fn record(&self, kind: Kind, status: u16, phase: Phase) {
            if phase == Phase::Edge {
                self.edge.fetch_add(1, Ordering::Relaxed);
                if kind == Kind::Invalid && status == 200 {
                    self.forwarded_unverified.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            if phase == Phase::Outage {
                match (kind, status) {
                    (Kind::Fresh | Kind::Invalid, 200) => self.forwarded_unverified.fetch_add(1, Ordering::Relaxed),
                    (Kind::Cached, 200) => self.outage_200_cached.fetch_add(1, Ordering::Relaxed),
                    (_, 503) => self.outage_503.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                return;
            }
            let expected = match kind {
                Kind::Cached | Kind::Fresh => 200,
                Kind::Invalid => 401,
            };
            if status != expected {
                self.failed_outside.fetch_add(1, Ordering::Relaxed);
                let name = match kind {
                    Kind::Cached => "cached",
                    Kind::Fresh => "fresh",
                    Kind::Invalid => "invalid",
                };
                *self.unexpected.lock().expect("not poisoned").entry(format!("{name} {status}")).or_default() += 1;
            }
        }
    }

    /// Prints the summary; the exit code (1: a check failed).
    fn report(t: &Tally, samples: &[(u64, u64, u64)], detail: &[Detail], rate: usize, seconds: u64) -> i32 {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (base, peak, growth) = rss_growth(samples, 60);
        // Informational: the same from the second minute on (past the first
        // expiry of the tokens cached before the clock started).
        let (base2, peak2, growth2) = rss_growth(samples, 120);
        let fds: Vec<u64> = samples.iter().map(|s| s.2).collect();
        let mut failures = Vec::new();
        if growth > 10.0 {
            failures.push(format!("RSS grew {growth:.1} % after the first minute"));
        }
        if get(&t.failed_outside) > 0 {
            failures.push(format!("{} requests failed outside the outage", get(&t.failed_outside)));
        }
        if get(&t.forwarded_unverified) > 0 {
            failures.push(format!("{} unverifiable tokens forwarded during the outage", get(&t.forwarded_unverified)));
        }
        println!(
            "{{\"rate\": {rate}, \"seconds\": {seconds}, \"sent\": {}, \"achieved_rate\": {}, \"across_edges\": {}, \"failed_outside_outage\": {}, \
             \"forwarded_unverified_in_outage\": {}, \"outage_503\": {}, \"outage_200_cached\": {}, \
             \"rss_kb_at_60s\": {base}, \"rss_kb_peak_after\": {peak}, \"rss_growth_pct\": {growth:.1}, \
             \"rss_kb_at_120s\": {base2}, \"rss_kb_peak_after_120s\": {peak2}, \"rss_growth_after_120s_pct\": {growth2:.1}, \
             \"fds_min\": {}, \"fds_max\": {}, \"unexpected\": {}, \"samples\": {}, \"detail\": {}, \"failures\": {:?}}}",
            get(&t.sent),
            get(&t.sent) / seconds.max(1),
            get(&t.edge),
            get(&t.failed_outside),
            get(&t.forwarded_unverified),
            get(&t.outage_503),
            get(&t.outage_200_cached),
            fds.iter().min().unwrap_or(&0),
            fds.iter().max().unwrap_or(&0),
            serde_json::to_string(&*t.unexpected.lock().expect("not poisoned")).expect("a map"),
            serde_json::to_string(samples).expect("numbers"),
            serde_json::to_string(detail).expect("numbers"),
            failures,
        );
        i32::from(!failures.is_empty())
    }

    /// RSS at the first sample from `from` seconds on, the peak after it
    /// (KiB), and the growth between them in percent.
    fn rss_growth(samples: &[(u64, u64, u64)], from: u64) -> (u64, u64, f64) {
        let after: Vec<_> = samples.iter().filter(|s| s.0 >= from).collect();
        let base = after.first().map_or(0, |s| s.1);
        let peak = after.iter().map(|s| s.1).max().unwrap_or(0);
        let growth = if base > 0 { (peak as f64 - base as f64) / base as f64 * 100.0 } else { 0.0 };
        (base, peak, growth)
    }

    fn rss_kb(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").parse().ok()))
            })
            .flatten()
            .unwrap_or(0)
    }

    /// The process's user + system CPU time in clock ticks (`/proc/<pid>/stat`
    /// fields 14 and 15, counted after the parenthesised command name).
    fn cpu_ticks(pid: u32) -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
        let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
        rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum()
    }

    fn open_fds(pid: u32) -> u64 {
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
    }
}
