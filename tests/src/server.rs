//! llama-server processes on 127.0.0.1 for the remote-member tests, built by
//! `scripts/fetch-assets server` into the asset cache.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{asset, cache};

/// The llama-server binary in the asset cache.
pub const LLAMA_SERVER: &str = "llama-server/11434.0.0/llama-server";

/// A running llama-server; killed when dropped.
pub struct LlamaServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
}

impl LlamaServer {
    /// Starts a llama-server for the cached model `relative` on a free loopback port (one
    /// thread, `slots` slots of 2048 tokens) and waits until it has loaded the model; fails
    /// the test when the binary is missing or the server does not come up.
    pub fn start(relative: &str, slots: usize) -> Self {
        Self::start_with_context(relative, slots, 2048)
    }

    /// The same with `context` tokens a slot.
    pub fn start_with_context(relative: &str, slots: usize, context: usize) -> Self {
        let binary = cache().join(LLAMA_SERVER);
        assert!(
            binary.is_file(),
            "missing {}: run `scripts/fetch-assets server` (or set GAC_CACHE to where it is)",
            binary.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::env::temp_dir().join(format!("gac-llama-server-{port}.log"));
        let out = std::fs::File::create(&log).expect("server log");
        let child = Command::new(&binary)
            .args(["-m", &asset(relative).display().to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-t", "1", "-tb", "1", "-np", &slots.to_string()])
            .args(["--kv-unified-per-slot", &context.to_string(), "--swa-full"])
            .stdout(out.try_clone().expect("server log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_until_ready(port);
        server
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_until_ready(&mut self, port: u16) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("llama-server exited ({status}): {}", self.log_tail());
            }
            if health(port) == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("llama-server not ready after 120 s: {}", self.log_tail());
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The status code of `GET /health`, if anything answers.
fn health(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
