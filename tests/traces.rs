//! OpenTelemetry traces, read by an OTLP/HTTP receiver that decodes what the
//! proxy exports with the official protobuf types: the span tree of a request
//! (its verdict, the LINE calls beneath it, the upstream call), the parent
//! the proxy takes or refuses, the `traceparent` the upstream gets, and a
//! collector that is down changing no answer.
#![cfg(all(feature = "dev", feature = "otel"))]

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;

/// One exported span, with what its resource says.
#[derive(Clone, Debug)]
struct Got {
    span: Span,
    service: String,
}

impl Got {
    fn name(&self) -> &str {
        &self.span.name
    }

    fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    fn trace_hex(&self) -> String {
        hex(&self.span.trace_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver: `POST /v1/traces`, protobuf.
struct Receiver {
    server: LoopbackServer,
    spans: Arc<Mutex<Vec<Got>>>,
    /// Requests that were not a decodable protobuf export to /v1/traces.
    malformed: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let malformed = Arc::new(Mutex::new(Vec::new()));
        let (s, m) = (spans.clone(), malformed.clone());
        let server = LoopbackServer::start(move |req: Request<Incoming>| {
            let (s, m) = (s.clone(), m.clone());
            async move {
                let ok = req.method() == "POST"
                    && req.uri().path() == "/v1/traces"
                    && req.headers().get("content-type").is_some_and(|v| v == "application/x-protobuf");
                let what = format!("{} {} {:?}", req.method(), req.uri(), req.headers().get("content-type"));
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                match ExportTraceServiceRequest::decode(body) {
                    Ok(export) if ok => {
                        for resource in export.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| r.attributes.iter())
                                .find(|kv| kv.key == "service.name")
                                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                    Value::StringValue(s) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    s.lock().unwrap().push(Got { span, service: service.clone() });
                                }
                            }
                        }
                    }
                    _ => m.lock().unwrap().push(what),
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        })
        .await
        .unwrap();
        Self { server, spans, malformed }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn spans(&self) -> Vec<Got> {
        assert!(self.malformed.lock().unwrap().is_empty(), "{:?}", self.malformed.lock().unwrap());
        self.spans.lock().unwrap().clone()
    }
}

async fn traced_env(receiver: &Receiver, otel: &str, server: &str) -> Env {
    let clock = line_auth_proxy::clock::Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let extra = format!(
        "[otel]\nendpoint = \"{}\"\n{otel}\n\n[[routes]]\npath_prefix = \"/api/\"\nauth = \"access_token\"\n",
        receiver.url()
    );
    let mut text = config_text(&line.base_url(), &upstream.url(), &extra);
    if !server.is_empty() {
        text = text.replace("[server]\n", &format!("[server]\n{server}\n"));
    }
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    Env { clock, line, upstream, proxy }
}

async fn get(e: &Env, traceparent: Option<&str>) -> u16 {
    let mut request = client().get(e.proxy.url("/api/x")).bearer_auth(TOKEN);
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp).header("tracestate", "vendor=opaque");
    }
    request.send().await.unwrap().status().as_u16()
}

/// `00-<trace>-<span>-<flags>` split.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

fn upstream_traceparent(e: &Env, i: usize) -> String {
    e.upstream.requests()[i].headers["traceparent"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_cache_miss_is_a_request_span_with_the_verdict_and_both_line_calls_beneath_it() {
    let receiver = Receiver::start().await;
    let e = traced_env(&receiver, "sampling_ratio = 1.0", "").await;
    assert_eq!(get(&e, None).await, 200, "a miss");
    assert_eq!(get(&e, None).await, 200, "a hit");
    let upstream = [upstream_traceparent(&e, 0), upstream_traceparent(&e, 1)];
    e.proxy.stop().await;

    let spans = receiver.spans();
    let mut traces: HashMap<String, Vec<Got>> = HashMap::new();
    for s in &spans {
        traces.entry(s.trace_hex()).or_default().push(s.clone());
    }
    assert_eq!(traces.len(), 2, "one trace per request: {spans:#?}");
    for (i, sent) in upstream.iter().enumerate() {
        let (trace, parent, flags) = parts(sent);
        assert_eq!(flags, "01", "sampled");
        let trace_spans = &traces[&trace];
        let named = |name: &str| -> Vec<&Got> { trace_spans.iter().filter(|s| s.name() == name).collect() };
        let request = named("GET /api/");
        assert_eq!(request.len(), 1, "{trace_spans:#?}");
        let request = request[0];
        assert!(request.span.parent_span_id.is_empty(), "the proxy started the trace");
        assert_eq!(request.service, "line-auth-proxy");
        assert_eq!(request.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(request.attr("line_auth_proxy.outcome").as_deref(), Some("forwarded"));
        assert_eq!(request.attr("http.route").as_deref(), Some("/api/"));
        assert_eq!(request.attr("line_auth_proxy.route").as_deref(), Some("/api/"));
        let verdict = named("verdict");
        assert_eq!(verdict.len(), 1, "{trace_spans:#?}");
        let verdict = verdict[0];
        assert_eq!(verdict.span.parent_span_id, request.span.span_id, "the verdict is the request's");
        let upstream_span = named("upstream");
        assert_eq!(upstream_span.len(), 1);
        assert_eq!(upstream_span[0].span.parent_span_id, request.span.span_id);
        assert_eq!(hex(&upstream_span[0].span.span_id), parent, "the upstream's parent is the proxy's upstream span");
        assert_eq!(upstream_span[0].attr("http.response.status_code").as_deref(), Some("200"));
        let (verify, profile) = (named("line.verify"), named("line.profile"));
        if i == 0 {
            assert_eq!(verdict.attr("line_auth_proxy.verdict_source").as_deref(), Some("line"));
            assert_eq!((verify.len(), profile.len()), (1, 1), "{trace_spans:#?}");
            for call in [verify[0], profile[0]] {
                assert_eq!(call.span.parent_span_id, verdict.span.span_id, "{} is beneath the verdict", call.name());
                assert_eq!(call.attr("http.response.status_code").as_deref(), Some("200"));
                let line_id = call.attr("line.request_id").unwrap_or_default();
                assert!(line_id.len() >= 8 && line_id != "-", "LINE's x-line-request-id: {line_id:?}");
            }
            assert_eq!(trace_spans.len(), 5, "{trace_spans:#?}");
        } else {
            assert_eq!(verdict.attr("line_auth_proxy.verdict_source").as_deref(), Some("cache"));
            assert_eq!((verify.len(), profile.len()), (0, 0), "a hit calls no one");
            assert_eq!(trace_spans.len(), 3, "{trace_spans:#?}");
        }
    }
    // Nothing of the token in any span.
    let dump = format!("{spans:?}");
    assert!(!dump.contains(TOKEN) && !dump.contains(USER), "a token or user id in a span");
}

#[tokio::test]
async fn a_sampled_parent_is_kept_an_unsampled_one_is_not_and_the_upstream_always_gets_one() {
    let receiver = Receiver::start().await;
    // The test client (127.0.0.1) is the trusted ingress here.
    let e = traced_env(&receiver, "sampling_ratio = 0.0", "trusted_proxies = [\"127.0.0.1/32\"]").await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sampled = format!("00-{client_trace}-00f067aa0ba902b7-01");
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert_eq!(get(&e, Some(&sampled)).await, 200);
    assert_eq!(get(&e, Some(unsampled)).await, 200);
    assert_eq!(get(&e, None).await, 200);
    // Upper-case hex is no traceparent: replaced, its tracestate dropped.
    let invalid = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    assert_eq!(get(&e, Some(invalid)).await, 200);
    let sent: Vec<String> = (0..3).map(|i| upstream_traceparent(&e, i)).collect();
    let replaced = e.upstream.requests()[3].headers.clone();
    let tracestates: Vec<Option<String>> = e
        .upstream
        .requests()
        .iter()
        .map(|r| r.headers.get("tracestate").map(|v| v.to_str().unwrap().to_owned()))
        .collect();
    e.proxy.stop().await;

    // The sampled parent: recorded (ratio 0 notwithstanding), in the client's trace.
    let (trace, parent, flags) = parts(&sent[0]);
    assert_eq!((trace.as_str(), flags.as_str()), (client_trace, "01"));
    assert_ne!(parent, "00f067aa0ba902b7", "the proxy is the upstream's parent");
    assert_eq!(tracestates[0].as_deref(), Some("vendor=opaque"), "tracestate goes on with its parent");
    // The unsampled one: the same trace, still unsampled, nothing recorded.
    let (trace, parent, flags) = parts(&sent[1]);
    assert_eq!((trace.as_str(), flags.as_str()), ("0af7651916cd43dd8448eb211c80319c", "00"));
    assert_ne!(parent, "b7ad6b7169203331");
    // None sent: the proxy's own trace, not sampled at ratio 0.
    let (_, _, flags) = parts(&sent[2]);
    assert_eq!(flags, "00");
    // The invalid one: a trace of the proxy's own, alone on the upstream.
    let values: Vec<_> = replaced.get_all("traceparent").iter().collect();
    assert_eq!(values.len(), 1, "{replaced:?}");
    let (trace, _, flags) = parts(values[0].to_str().unwrap());
    assert_ne!(trace, client_trace);
    assert_eq!(flags, "00", "the client's flag did not count");
    assert!(replaced.get("tracestate").is_none(), "{replaced:?}");

    let spans = receiver.spans();
    assert!(!spans.is_empty());
    assert!(spans.iter().all(|s| s.trace_hex() == client_trace), "only the sampled parent's trace: {spans:#?}");
    let request = spans.iter().find(|s| s.name() == "GET /api/").expect("the request span");
    assert_eq!(hex(&request.span.parent_span_id), "00f067aa0ba902b7", "the client's span is the request's parent");
}

#[tokio::test]
async fn a_client_outside_trusted_proxies_cannot_choose_the_parent() {
    // The test client (127.0.0.1) is not in the list, and no list (the
    // default) trusts no one.
    for server in ["trusted_proxies = [\"10.0.0.0/8\"]", ""] {
        untrusted_parent_is_refused(server).await;
    }
}

async fn untrusted_parent_is_refused(server: &str) {
    let receiver = Receiver::start().await;
    let e = traced_env(&receiver, "sampling_ratio = 0.0", server).await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(get(&e, Some(&format!("00-{client_trace}-00f067aa0ba902b7-01"))).await, 200);
    let sent = upstream_traceparent(&e, 0);
    let tracestate = e.upstream.requests()[0].headers.get("tracestate").cloned();
    e.proxy.stop().await;
    let (trace, _, flags) = parts(&sent);
    assert_ne!(trace, client_trace, "a trace of the proxy's own");
    assert_eq!(flags, "00", "not sampled: the client's flag did not count");
    assert!(tracestate.is_none(), "the refused parent's tracestate is not passed on");
    assert!(receiver.spans().is_empty(), "nothing recorded at ratio 0");
}

#[tokio::test]
async fn a_collector_that_refuses_connections_changes_no_answer() {
    let closed = closed_port();
    let clock = line_auth_proxy::clock::Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    // 800 connections from one address at once: over the default
    // `limits.connections` (256), which is not what this test is about.
    let extra =
        format!("[otel]\nendpoint = \"http://{}\"\nsampling_ratio = 1.0\n[limits]\nconnections = 0\n", closed.addr);
    let proxy = spawn_proxy_with(config(&config_text(&line.base_url(), &upstream.url(), &extra)), &clock).await;
    // More spans than the export queue holds (5 a miss, 3 a hit; 2048 queued):
    // the excess is dropped, no request waits for the collector.
    let statuses = concurrent_statuses(proxy.url("/api/x"), TOKEN, 800).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(upstream.hits(), 800);
    // A miss after the flood still verifies with LINE and goes through.
    line.add_token("second-token-0123456789", MockToken::new(CHANNEL, USER, "Brown"));
    let r = client().get(proxy.url("/api/x")).bearer_auth("second-token-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The drain's flush gives up (two quick retries a batch) and the proxy stops cleanly.
    proxy.stop().await;
}

#[tokio::test]
async fn a_shared_cache_lookup_is_a_redis_span_beneath_the_verdict() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let cache = format!("[cache]\nshared = \"redis\"\nredis_url = \"{}\"\n{}", redis.url(0), mac_key_line());
    let e = traced_env(&receiver, &format!("sampling_ratio = 1.0\n\n{cache}"), "").await;
    assert_eq!(get(&e, None).await, 200);
    e.proxy.stop().await;
    let spans = receiver.spans();
    let verdict = spans.iter().find(|s| s.name() == "verdict").expect("a verdict span");
    let redis_spans: Vec<&Got> = spans.iter().filter(|s| s.name() == "redis").collect();
    assert!(!redis_spans.is_empty(), "the shared tier was asked: {spans:#?}");
    for span in redis_spans {
        assert_eq!(span.span.parent_span_id, verdict.span.span_id, "{span:#?}");
        assert_eq!(span.attr("db.system.name").as_deref(), Some("redis"));
        assert_eq!(span.attr("line_auth_proxy.redis_purpose").as_deref(), Some("cache"));
        assert!(span.attr("db.operation.name").is_some_and(|op| !op.is_empty()));
    }
    // The LINE calls of the miss are the verdict's too.
    let verify = spans.iter().find(|s| s.name() == "line.verify").expect("line.verify");
    assert_eq!(verify.span.parent_span_id, verdict.span.span_id);
}

#[tokio::test]
async fn the_background_jwks_fetch_is_a_trace_of_its_own() {
    let receiver = Receiver::start().await;
    let clock = line_auth_proxy::clock::Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let extra = format!(
        "[otel]\nendpoint = \"{}\"\nsampling_ratio = 1.0\n\n[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n",
        receiver.url()
    );
    let text =
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), &extra);
    // Ready only once the key set is loaded.
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    proxy.stop().await;
    let spans = receiver.spans();
    let fetch = spans.iter().find(|s| s.name() == "line.jwks").unwrap_or_else(|| panic!("{spans:#?}"));
    assert!(fetch.span.parent_span_id.is_empty(), "a root: no request asked for it");
    assert_eq!(fetch.attr("http.response.status_code").as_deref(), Some("200"));
    assert!(spans.iter().all(|s| s.trace_hex() == fetch.trace_hex()), "nothing else ran: {spans:#?}");
}

#[tokio::test]
async fn a_made_up_method_is_other_in_the_span_name() {
    let receiver = Receiver::start().await;
    let e = traced_env(&receiver, "sampling_ratio = 1.0", "").await;
    let method = http::Method::from_bytes(b"BREW").unwrap();
    let r = client().request(method, e.proxy.url("/api/x")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    e.proxy.stop().await;
    let spans = receiver.spans();
    let request = spans.iter().find(|s| s.name().ends_with("/api/")).unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(request.name(), "_OTHER /api/");
    assert_eq!(request.attr("http.request.method").as_deref(), Some("_OTHER"));
    assert!(!format!("{spans:?}").contains("BREW"), "the client's method is in no span");
}
