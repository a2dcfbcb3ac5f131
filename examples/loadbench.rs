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
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("upstream binds");
    let upstream_port = listener.local_addr().unwrap().port();
    let line_port = line.base_url().rsplit(':').next().unwrap().to_string();
    println!("READY {upstream_port} {line_port}");
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
