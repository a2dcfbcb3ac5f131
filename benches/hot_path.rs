//! Micro benchmarks of the per-request pieces (`cargo bench --bench hot_path`):
//! header strip + inject, a verdict-cache hit, path normalisation, route
//! matching, percent-encoding, assertion signing, and the session path next to
//! the bearer path. The load benchmark is `benches/load.sh`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use line_auth_proxy::bench::{
    AuthMethod, CredentialKind, Identity, IdentityHeaderNames, Route, RouteAuth, RouteTable, Session, Verdict,
    assertion_signer, cache_key, normalize_path, percent_encoded, sessions, strip_for_upstream, strip_identity,
    verdict_cache,
};

fn identity() -> Identity {
    Identity {
        user_id: "U1234567890abcdef1234567890abcdef".into(),
        display_name: Some("Brown ブラウン".into()),
        picture_url: Some("https://profile.line-scdn.net/0habcdefghijklmn".into()),
        email: None,
        channel_id: "1234567890".into(),
        method: AuthMethod::AccessToken,
        expires_at: 4_000_000_000,
        amr: Vec::new(),
    }
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("app.example"));
    h.insert("user-agent", HeaderValue::from_static("Mozilla/5.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
    h.insert("authorization", HeaderValue::from_static("Bearer eyJhbGciOiJIUzI1NiJ9.opaque-access-token-value"));
    h.insert("x-request-id", HeaderValue::from_static("abc-123"));
    h
}

fn strip_and_inject(c: &mut Criterion) {
    let names = IdentityHeaderNames::new("X-Line-").unwrap();
    let assertion = HeaderName::from_static("x-line-identity-jwt");
    let encoded = names.encode(&identity());
    c.bench_function("strip + inject (6 client headers, 6 identity headers)", |b| {
        b.iter_batched(
            client_headers,
            |mut h| {
                strip_identity(&mut h, &names, &assertion);
                strip_for_upstream(&mut h, false, false, false);
                names.inject(&encoded, &mut h);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache = verdict_cache(100_000);
    let token = "eyJhbGciOiJIUzI1NiJ9.opaque-access-token-value";
    rt.block_on(async {
        let key = cache_key(CredentialKind::AccessToken, token);
        let _ = cache.get_or_verify(key, async { Ok(Verdict::Valid(identity())) }).await;
    });
    c.bench_function("cache hit (digest + lookup)", |b| {
        b.to_async(&rt).iter(|| async {
            let key = cache_key(CredentialKind::AccessToken, black_box(token));
            let (hit, _) = cache.get_or_verify(key, async { unreachable!("a hit") }).await;
            hit.unwrap()
        })
    });
}

fn paths_and_routes(c: &mut Criterion) {
    c.bench_function("normalise an already-normal path", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/items/42")).unwrap().len())
    });
    c.bench_function("normalise /a//b/./c/../%7e/d", |b| {
        b.iter(|| normalize_path(black_box("/a//b/./c/../%7e/d")).unwrap().len())
    });
    let route = |prefix: &str, auth| Route {
        path_prefix: prefix.into(),
        auth,
        methods: None,
        allow_cors_preflight: false,
        require_nonce: false,
        cors_allow_origins: Vec::new(),
    };
    let table = RouteTable::new(vec![
        route("/public/", RouteAuth::None),
        route("/healthz", RouteAuth::None),
        route("/feed/", RouteAuth::Optional),
        route("/login", RouteAuth::IdToken),
        route("/api/", RouteAuth::AccessToken),
    ]);
    c.bench_function("route match (5 routes, last matches)", |b| {
        b.iter(|| table.policy(&Method::GET, black_box("/api/v1/items"), None).auth)
    });
}

fn encoding(c: &mut Criterion) {
    c.bench_function("percent-encode a Japanese display name", |b| {
        b.iter(|| percent_encoded(black_box("山田 太郎 (Taro)")))
    });
    let names = IdentityHeaderNames::new("X-Line-").unwrap();
    c.bench_function("encode an identity (once per verification)", |b| b.iter(|| names.encode(black_box(&identity()))));
}

fn assertions(c: &mut Criterion) {
    for alg in ["ES256", "EdDSA"] {
        let signer = assertion_signer(alg);
        let subject = signer.subject(&identity());
        c.bench_function(&format!("assertion: sign a new one ({alg}, once per verdict and 4 minutes)"), |b| {
            b.iter(|| signer.sign_fresh(black_box(&subject)))
        });
        c.bench_function(&format!("assertion: reuse the verdict's ({alg}, every other request)"), |b| {
            b.iter(|| signer.assertion(black_box(&subject)))
        });
    }
}

/// What a session adds to a request: the bearer path is a cache hit on the
/// `Authorization` token; the session path finds the cookie among others,
/// opens it (AES-256-GCM) and hits the cache on the key sealed inside.
fn session_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache = verdict_cache(100_000);
    let sessions = sessions();
    // A LINE access token is a JWT of about 170 characters.
    let token = format!("eyJhbGciOiJIUzI1NiJ9.{}.signature-part-of-a-line-token", "a".repeat(120));
    let now = 2_000_000_000;
    let session = Session {
        access_token: token.clone(),
        user_id: "U1234567890abcdef1234567890abcdef".into(),
        channel_id: "1234567890".into(),
        amr: vec!["pwd".into()],
        email: Some("brown@example.com".into()),
        issued_at: now,
        expires_at: now + 86_400,
    };
    let set_cookie = sessions.set_cookie(&session, now);
    let pair = set_cookie.to_str().unwrap().split(';').next().unwrap().to_owned();
    let mut headers = client_headers();
    headers.remove("authorization");
    headers.insert("cookie", HeaderValue::try_from(format!("theme=dark; {pair}; lang=ja")).unwrap());
    rt.block_on(async {
        for kind in [CredentialKind::AccessToken, CredentialKind::Session] {
            let _ = cache.get_or_verify(cache_key(kind, &token), async { Ok(Verdict::Valid(identity())) }).await;
        }
    });
    c.bench_function("bearer path: cache hit on the token", |b| {
        b.to_async(&rt).iter(|| async {
            let key = cache_key(CredentialKind::AccessToken, black_box(&token));
            cache.get_or_verify(key, async { unreachable!("a hit") }).await.0.unwrap()
        })
    });
    c.bench_function("session path: find + open the cookie, cache hit on its token", |b| {
        b.to_async(&rt).iter(|| async {
            let opened = sessions.session(black_box(&headers), now + 1).expect("the cookie opens");
            cache.get_or_verify(opened.verdict_key(), async { unreachable!("a hit") }).await.0.unwrap()
        })
    });
    c.bench_function("session: seal a new cookie (once per exchange)", |b| {
        b.iter(|| sessions.set_cookie(black_box(&session), now))
    });
}

criterion_group!(benches, strip_and_inject, cache_hit, paths_and_routes, encoding, assertions, session_path);
criterion_main!(benches);
