//! A real `redis-server` (Debian's package) per test, killed on drop. A missing
//! binary is a failure, never a skipped test.
//!
//! `redis-server` cannot take an ephemeral TCP port (`--port 0` means "no TCP"),
//! and choosing a "free" port for it races with every other test. So it listens
//! on a unix socket in its own directory, and the proxy reaches it through a
//! byte-for-byte TCP relay on a port this harness bound (port 0) and holds for
//! the server's whole life: a restart comes back on the same port, and a killed
//! server closes every relayed connection exactly as a dead Redis would.
//!
//! A TLS server ([`RedisServer::start_tls`]) needs a TCP port of its own,
//! since the TLS is redis-server's: a port the kernel just handed out is
//! given to it, and should something else take that port meanwhile,
//! redis-server exits ("Failed listening on port") and another is tried, so
//! the port the tests use is always this server's.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use super::eventually;

/// A `redis_mac_key_file = …` line: a fresh file holding `key` (32 raw
/// bytes). Replicas given the same key share what they put in Redis.
pub fn mac_key_line_for(key: [u8; 32]) -> String {
    let dir = std::env::temp_dir().join(format!("lap-test-mac-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("redis-mac");
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    format!("redis_mac_key_file = {:?}\n", path.to_str().unwrap())
}

/// The key every test replica shares unless a test says otherwise.
pub fn mac_key_line() -> String {
    mac_key_line_for([0x42; 32])
}

pub struct RedisServer {
    /// The relay's port: what `redis://127.0.0.1:{port}` reaches.
    pub port: u16,
    /// With [`RedisServer::start_tls`]: redis-server's own TLS port, what
    /// `rediss://127.0.0.1:{tls_port}` reaches.
    pub tls_port: Option<u16>,
    password: Option<String>,
    child: Option<std::process::Child>,
    dir: PathBuf,
    relay: JoinHandle<()>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with_password(None).await
    }

    pub async fn start_with_password(password: Option<&str>) -> Self {
        let mut server = Self::prepare(password).await;
        assert!(server.spawn().await, "redis-server exited at start");
        server
    }

    /// A server that also speaks TLS on 127.0.0.1, with this PEM certificate
    /// chain and key (clients are not asked for certificates); the plain
    /// relay stays for [`Self::run`] and [`Self::keys`].
    pub async fn start_tls(cert_pem: &str, key_pem: &str, password: Option<&str>) -> Self {
        let mut server = Self::prepare(password).await;
        std::fs::write(server.dir.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(server.dir.join("tls.key"), key_pem).unwrap();
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            server.tls_port = Some(port);
            if server.spawn().await {
                return server;
            }
        }
        panic!("redis-server found no free TLS port in 10 tries");
    }

    async fn prepare(password: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!("lap-redis-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, relay) = super::unix_relay(dir.join("redis.sock")).await;
        Self { port, tls_port: None, password: password.map(str::to_owned), child: None, dir, relay }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Starts redis-server and waits until it answers; false when it exited
    /// first (its TLS port was taken).
    async fn spawn(&mut self) -> bool {
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", "0", "--unixsocket", self.socket().to_str().unwrap(), "--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--dir", self.dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        if let Some(port) = self.tls_port {
            let file = |name: &str| self.dir.join(name).to_str().unwrap().to_owned();
            cmd.args(["--bind", "127.0.0.1", "--tls-port", &port.to_string(), "--tls-auth-clients", "no"]).args([
                "--tls-cert-file",
                &file("tls.crt"),
                "--tls-key-file",
                &file("tls.key"),
            ]);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): run tests/setup.sh (it installs redis-server); .ci/run does")
        });
        let socket = self.socket();
        let mut exited = false;
        let up = eventually(Duration::from_secs(10), || {
            // Every listener is bound before the socket answers, or the server has exited.
            exited = child.try_wait().unwrap().is_some();
            let socket = socket.clone();
            let exited = exited;
            async move {
                if exited {
                    return true;
                }
                let Ok(mut s) = UnixStream::connect(&socket).await else { return false };
                let mut buf = [0u8; 64];
                s.write_all(b"PING\r\n").await.is_ok() && s.read(&mut buf).await.is_ok_and(|n| n > 0)
            }
        })
        .await;
        assert!(up, "redis-server did not start on {}", socket.display());
        if exited {
            return false;
        }
        self.child = Some(child);
        true
    }

    /// `redis://[:password@]127.0.0.1:port/db`.
    pub fn url(&self, db: u8) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        }
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `rediss://[:password@]127.0.0.1:tls_port/db`.
    pub fn tls_url(&self, db: u8) -> String {
        let port = self.tls_port.expect("started with start_tls");
        match &self.password {
            Some(p) => format!("rediss://:{p}@127.0.0.1:{port}/{db}"),
            None => format!("rediss://127.0.0.1:{port}/{db}"),
        }
    }

    /// Starts it again, empty, behind the same port.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(self.spawn().await, "redis-server exited at restart");
    }

    /// Runs one command in database `db` (a test playing another writer).
    pub async fn run<T: redis::FromRedisValue>(&self, db: u8, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url(db)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut conn).await.unwrap()
    }

    /// Keys matching `pattern` in database `db`.
    pub async fn keys(&self, db: u8, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url(db)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.relay.abort();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
