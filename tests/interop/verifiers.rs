//! The README's assertion verifiers, run as written: the Python (PyJWT) and
//! Node.js (jose) blocks of "Verifying the assertion in your backend" are
//! taken from `README.md`, pointed at a live proxy's admin listener, and
//! given what several proxies sent upstream. A valid assertion passes; an
//! expired one (a proxy whose clock is 10 minutes behind), one for another
//! audience, one signed with an algorithm the verifier did not pin (a
//! published ES256 key), a changed payload and no assertion are refused.

use base64::Engine;

use super::*;
use support::signing_keys::{ed25519_key, es256_key, key_file};

/// The fenced block of the README's verifier section whose first line is `first_line`.
fn readme_block(first_line: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme.split("### Verifying the assertion in your backend").nth(1).expect("the README section");
    let start = section.find(&format!("\n{first_line}\n")).unwrap_or_else(|| panic!("no README block {first_line}"));
    let block = &section[start + 1..];
    block[..block.find("\n```").expect("the block ends")].to_owned()
}

/// The README's placeholders, replaced by this test's proxy and upstream.
fn pointed_at(block: &str, jwks_url: &str, audience: &str) -> String {
    for placeholder in ["http://line-auth-proxy:9090/.well-known/jwks.json", "\"http://app:8000\""] {
        assert!(block.contains(placeholder), "the README block no longer holds {placeholder}: update this test");
    }
    block
        .replace("http://line-auth-proxy:9090/.well-known/jwks.json", jwks_url)
        .replace("\"http://app:8000\"", &format!("\"{audience}\""))
}

/// What each kind of assertion is: the token, and what the verifier must say.
struct Cases {
    jwks_url: String,
    audience: String,
    tokens: Vec<(&'static str, String)>,
    _proxies: Vec<TestProxy>,
    _upstream: RecordingUpstream,
    _line: MockLine,
}

/// The assertion one proxy sends upstream for `TOKEN`.
async fn assertion_of(proxy: &TestProxy, upstream: &RecordingUpstream) -> String {
    let r = client().get(proxy.url("/api/x")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    upstream.last().headers["x-line-identity-jwt"].to_str().unwrap().to_owned()
}

async fn cases() -> Cases {
    let (ed, es) = (ed25519_key(), es256_key());
    // Both keys published; the Ed25519 one signs. The verifiers pin EdDSA.
    let published = key_file(&[&ed, &es]);
    let es_signs = key_file(&[&es, &ed]);
    let now = Clock::manual().since_epoch();
    let behind = Clock::manual_at(now - Duration::from_secs(600));
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let with =
        |keys: &std::path::Path, extra: &str| format!("[assertion]\nenabled = true\nkey_file = {keys:?}\n{extra}");
    let mut proxies = Vec::new();
    let mut tokens = Vec::new();
    for (case, clock, keys, extra) in [
        ("valid", Clock::manual(), &published, ""),
        ("expired", behind, &published, ""),
        ("other_audience", Clock::manual(), &published, "audience = \"https://another-backend\"\n"),
        ("other_algorithm", Clock::manual(), &es_signs, ""),
    ] {
        let proxy = proxy_for(&clock, &line, &upstream.url(), &with(keys, extra), "").await;
        tokens.push((case, assertion_of(&proxy, &upstream).await));
        proxies.push(proxy);
    }
    let mut parts: Vec<String> = tokens[0].1.split('.').map(str::to_owned).collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(&parts[1]).unwrap()).unwrap();
    parts[1] = b64.encode(payload.replace(USER, "Uffffffffffffffffffffffffffffffff"));
    tokens.push(("changed_payload", parts.join(".")));
    tokens.push(("none", String::new()));
    Cases {
        jwks_url: proxies[0].admin_url("/.well-known/jwks.json"),
        audience: upstream.url(),
        tokens,
        _proxies: proxies,
        _upstream: upstream,
        _line: line,
    }
}

/// Runs `command` (a driver printing one verdict line per token) and pairs
/// each case with its line.
async fn verdicts(mut command: std::process::Command, cases: &Cases) -> Vec<(&'static str, String)> {
    command.args(cases.tokens.iter().map(|(_, t)| t));
    let out = run_to_end(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the verifier failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), cases.tokens.len(), "{stdout}");
    cases.tokens.iter().zip(lines).map(|((case, _), line)| (*case, line.to_owned())).collect()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lap-{name}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_readmes_pyjwt_verifier_accepts_the_proxys_assertion_and_refuses_the_rest() {
    let cases = cases().await;
    let dir = scratch_dir("pyjwt");
    let block = pointed_at(&readme_block("# verify_assertion.py"), &cases.jwks_url, &cases.audience);
    std::fs::write(dir.join("verify_assertion.py"), block).unwrap();
    std::fs::write(
        dir.join("driver.py"),
        "import sys\nimport jwt\nfrom verify_assertion import line_identity\n\
         for token in sys.argv[1:]:\n    try:\n        print('ok', line_identity({'X-Line-Identity-Jwt': token})['sub'])\n    \
         except jwt.PyJWTError as e:\n        print('refused', type(e).__name__)\n",
    )
    .unwrap();
    let mut command = std::process::Command::new(python());
    command.arg(dir.join("driver.py")).current_dir(&dir);
    let seen = verdicts(command, &cases).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        seen,
        [
            ("valid", format!("ok {USER}")),
            ("expired", "refused ExpiredSignatureError".into()),
            ("other_audience", "refused InvalidAudienceError".into()),
            ("other_algorithm", "refused InvalidAlgorithmError".into()),
            ("changed_payload", "refused InvalidSignatureError".into()),
            ("none", "refused InvalidTokenError".into()),
        ]
    );
}

#[tokio::test]
async fn the_readmes_jose_verifier_accepts_the_proxys_assertion_and_refuses_the_rest() {
    let cases = cases().await;
    let dir = scratch_dir("jose");
    // ES modules find `jose` in a node_modules beside them.
    std::os::unix::fs::symlink(interop_dir().join("node/node_modules"), dir.join("node_modules")).unwrap();
    let block = pointed_at(&readme_block("// verifyAssertion.mjs"), &cases.jwks_url, &cases.audience);
    std::fs::write(dir.join("verifyAssertion.mjs"), block).unwrap();
    std::fs::write(
        dir.join("driver.mjs"),
        "import { lineIdentity } from './verifyAssertion.mjs';\n\
         for (const token of process.argv.slice(2)) {\n  try {\n    \
         console.log('ok', (await lineIdentity({ 'x-line-identity-jwt': token || undefined })).sub);\n  \
         } catch (e) {\n    console.log('refused', e.code ?? e.message);\n  }\n}\n",
    )
    .unwrap();
    let mut command = std::process::Command::new("node");
    command.arg(dir.join("driver.mjs")).current_dir(&dir);
    let seen = verdicts(command, &cases).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        seen,
        [
            ("valid", format!("ok {USER}")),
            ("expired", "refused ERR_JWT_EXPIRED".into()),
            ("other_audience", "refused ERR_JWT_CLAIM_VALIDATION_FAILED".into()),
            ("other_algorithm", "refused ERR_JOSE_ALG_NOT_ALLOWED".into()),
            ("changed_payload", "refused ERR_JWS_SIGNATURE_VERIFICATION_FAILED".into()),
            ("none", "refused no assertion".into()),
        ]
    );
}
