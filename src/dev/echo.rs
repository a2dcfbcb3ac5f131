//! The `dev` demo upstream: answers every request with a JSON echo of its
//! method, path and headers, so that what the proxy injected can be seen.

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use super::loopback::LoopbackServer;

/// Starts the echo upstream on a loopback port.
pub async fn start() -> std::io::Result<LoopbackServer> {
    LoopbackServer::start(echo).await
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: BTreeMap<&str, Vec<&str>> = req
        .headers()
        .keys()
        .map(|k| {
            let values = req.headers().get_all(k).iter().map(|v| v.to_str().unwrap_or("<non-ascii>")).collect();
            (k.as_str(), values)
        })
        .collect();
    let body = serde_json::json!({
        "upstream": "line-auth-proxy dev echo",
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_string_pretty(&body).unwrap_or_default() + "\n")));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}
