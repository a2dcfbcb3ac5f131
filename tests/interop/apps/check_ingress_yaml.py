"""Parses the YAML ingress examples of deploy/ingress/ (no Traefik, Envoy or
Istio binary runs in CI) and checks the settings line-auth-proxy depends on:
every identity header copied from the check's answer and removed from the
client's request first, the check at /_auth/verify, and a check that fails
closed. Prints one line per file; exits 1 naming what is wrong."""
import sys
from pathlib import Path

import yaml

IDENTITY = [
    "x-line-user-id", "x-line-display-name", "x-line-picture-url", "x-line-email",
    "x-line-channel-id", "x-line-auth-method", "x-line-expires-at", "x-line-identity-jwt",
]
URI_HEADERS = ["x-original-uri", "x-original-method"]
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)


def lower(names):
    return {n.lower() for n in names}


def traefik(name, strip, auth, chain):
    check(set(IDENTITY) <= lower(auth["authResponseHeaders"]), f"{name}: authResponseHeaders lacks an identity header")
    check(auth["address"].endswith(":8080/_auth/verify"), f"{name}: the check is not the proxy listener's /_auth/verify")
    check(auth.get("trustForwardHeader") is False, f"{name}: trustForwardHeader must be false")
    check("authorization" in lower(auth["authRequestHeaders"]), f"{name}: Authorization is not sent to the check")
    removed = {k.lower() for k, v in strip["customRequestHeaders"].items() if v == ""}
    check(set(IDENTITY + URI_HEADERS) <= removed, f"{name}: the strip middleware misses a header")
    check(chain == ["line-strip-identity", "line-auth"], f"{name}: the strip must run before the check: {chain}")


def traefik_dynamic(path):
    (doc,) = yaml.safe_load_all(path.read_text())
    m = doc["http"]["middlewares"]
    traefik(path.name, m["line-strip-identity"]["headers"], m["line-auth"]["forwardAuth"],
            doc["http"]["routers"]["app"]["middlewares"])


def traefik_kubernetes(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = sorted(d["kind"] for d in docs)
    check(kinds == ["IngressRoute", "Middleware", "Middleware"], f"{path.name}: kinds {kinds}")
    check(all(d["apiVersion"] == "traefik.io/v1alpha1" for d in docs), f"{path.name}: apiVersion")
    by_name = {d["metadata"]["name"]: d for d in docs}
    route = by_name["app"]["spec"]["routes"][0]
    traefik(path.name, by_name["line-strip-identity"]["spec"]["headers"],
            by_name["line-auth"]["spec"]["forwardAuth"], [m["name"] for m in route["middlewares"]])


def envoy_filters(path):
    (doc,) = yaml.safe_load_all(path.read_text())
    listener = doc["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm, [f["name"] for f in hcm["http_filters"]], {f["name"]: f["typed_config"] for f in hcm["http_filters"]}


def removed_by_mutation(config):
    return {m["remove"].lower() for m in config["mutations"]["request_mutations"] if "remove" in m}


def envoy(path):
    hcm, order, filters = envoy_filters(path)
    check(order == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz", "envoy.filters.http.router"],
          f"{path.name}: filter order {order}")
    check(set(IDENTITY + URI_HEADERS) <= removed_by_mutation(filters["envoy.filters.http.header_mutation"]),
          f"{path.name}: header_mutation misses a header")
    authz = filters["envoy.filters.http.ext_authz"]
    check(authz["failure_mode_allow"] is False, f"{path.name}: failure_mode_allow must be false")
    check(authz["status_on_error"]["code"] == "ServiceUnavailable", f"{path.name}: status_on_error must be 503")
    service = authz["http_service"]
    check(service["path_prefix"] == "/_auth/verify", f"{path.name}: path_prefix")
    upstream = {p["exact"] for p in service["authorization_response"]["allowed_upstream_headers"]["patterns"]}
    check(set(IDENTITY) <= upstream, f"{path.name}: allowed_upstream_headers lacks an identity header")
    client = {p.get("exact") for p in service["authorization_response"]["allowed_client_headers"]["patterns"]}
    check({"www-authenticate", "retry-after"} <= client, f"{path.name}: the challenge or Retry-After is not passed on")
    asked = {p["exact"] for p in authz["allowed_headers"]["patterns"]}
    check("authorization" in asked, f"{path.name}: Authorization is not sent to the check")
    check(hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER",
          f"{path.name}: X_Line_* spellings must be dropped")
    clusters = {c["name"]: c for c in doc_clusters(path)}
    port = clusters["line_auth_proxy"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    check(port["socket_address"]["port_value"] == 8080, f"{path.name}: the check must go to the proxy listener")


def doc_clusters(path):
    (doc,) = yaml.safe_load_all(path.read_text())
    return doc["static_resources"]["clusters"]


def istio(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    mesh = yaml.safe_load(by_kind["ConfigMap"]["data"]["mesh"])
    (provider,) = mesh["extensionProviders"]
    http = provider["envoyExtAuthzHttp"]
    check(http["failOpen"] is False, f"{path.name}: failOpen must be false")
    check(http["statusOnError"] == "503", f"{path.name}: statusOnError must be 503")
    check(http["pathPrefix"] == "/_auth/verify" and http["port"] == 8080, f"{path.name}: the check's address")
    check(set(IDENTITY) <= lower(http["headersToUpstreamOnAllow"]), f"{path.name}: headersToUpstreamOnAllow")
    check({"www-authenticate", "retry-after"} <= lower(http["headersToDownstreamOnDeny"]),
          f"{path.name}: the challenge or Retry-After is not passed on")
    check("authorization" in lower(http["includeRequestHeadersInCheck"]), f"{path.name}: Authorization not sent")
    policy = by_kind["AuthorizationPolicy"]["spec"]
    check(policy["action"] == "CUSTOM" and policy["provider"]["name"] == provider["name"],
          f"{path.name}: the AuthorizationPolicy must be CUSTOM with the provider above")
    patch = by_kind["EnvoyFilter"]["spec"]["configPatches"][0]
    check(patch["patch"]["operation"] == "INSERT_BEFORE"
          and patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.ext_authz",
          f"{path.name}: the strip must be inserted before ext_authz")
    check(set(IDENTITY + URI_HEADERS) <= removed_by_mutation(patch["patch"]["value"]["typed_config"]),
          f"{path.name}: the EnvoyFilter misses a header")


ingress = Path(sys.argv[1])
for name, checker in [("traefik-dynamic.yml", traefik_dynamic), ("traefik-kubernetes.yaml", traefik_kubernetes),
                      ("envoy.yaml", envoy), ("istio.yaml", istio)]:
    try:
        checker(ingress / name)
    except (KeyError, TypeError, ValueError, IndexError, yaml.YAMLError) as e:
        problems.append(f"{name}: {type(e).__name__} {e}")
    print("checked", name)
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
