//! Measures `gac serve` side by side with `gac generate` (and, when given, llama-server) on the
//! same prompts, in one run, and prints a markdown table.
//!
//! usage: serve-bench --model A.gguf --model B.gguf [--requests N] [--max-tokens N]
//!        [--llama-server PATH --llama-model M.gguf]
//!
//! Rows: `gac generate` one prompt at a time (the baseline); `gac serve --parallel 1` with one
//! request at a time (its overhead per token over the baseline); `--parallel 1`, `2` and `4`
//! with 4 concurrent clients (throughput); `--parallel 4` with and without `--deterministic`
//! at 1 and 4 clients (what batch invariance costs); llama-server with one model, when given. Every
//! request is greedy with the same `max_tokens`. Needs the `gac` binary next to this one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colours are",
];

struct Args {
    models: Vec<String>,
    requests: usize,
    max_tokens: usize,
    llama_server: Option<(PathBuf, String)>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        models: Vec::new(),
        requests: 8,
        max_tokens: 32,
        llama_server: None,
    };
    let (mut server, mut server_model) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.models.push(value()?),
            "--requests" => args.requests = value()?.parse().context("--requests")?,
            "--max-tokens" => args.max_tokens = value()?.parse().context("--max-tokens")?,
            "--llama-server" => server = Some(PathBuf::from(value()?)),
            "--llama-model" => server_model = Some(value()?),
            other => bail!("unknown flag {other} (see the usage in the source's doc)"),
        }
    }
    if args.models.is_empty() {
        bail!("usage: serve-bench --model A.gguf --model B.gguf [--requests N] [--max-tokens N] [--llama-server PATH --llama-model M.gguf]");
    }
    args.llama_server = match (server, server_model) {
        (Some(s), Some(m)) => Some((s, m)),
        (None, None) => None,
        _ => bail!("--llama-server and --llama-model go together"),
    };
    Ok(args)
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gac_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let gac = me.with_file_name("gac");
    if !gac.is_file() {
        bail!(
            "{} not found: build it (cargo build --release --bin gac)",
            gac.display()
        );
    }
    Ok(gac)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    fn gac(models: &[String], parallel: usize, deterministic: bool) -> Result<Server> {
        let port = free_port()?;
        let mut cmd = Command::new(gac_binary()?);
        cmd.arg("serve");
        for m in models {
            cmd.args(["--model", m]);
        }
        cmd.args([
            "--port",
            &port.to_string(),
            "--parallel",
            &parallel.to_string(),
        ]);
        if deterministic {
            cmd.arg("--deterministic");
        }
        Self::start(cmd, port)
    }

    fn llama(binary: &Path, model: &str, parallel: usize) -> Result<Server> {
        let port = free_port()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut cmd = Command::new(binary);
        cmd.args(["-m", model, "--port", &port.to_string()]);
        cmd.args(["-np", &parallel.to_string(), "-t", &threads.to_string()]);
        cmd.args(["-c", &(2048 * parallel).to_string()]);
        Self::start(cmd, port)
    }

    fn start(mut cmd: Command, port: u16) -> Result<Server> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let mut server = Server {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while get_status(&server.addr, "/health") != Some(200) {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("{cmd:?} exited ({status}) before it became healthy");
            }
            if start.elapsed() > Duration::from_secs(300) {
                bail!("{cmd:?} never became healthy");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }
}

fn get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// One greedy completion: (wall time, completion tokens).
fn complete(addr: &str, prompt: &str, max_tokens: usize) -> Result<(Duration, usize)> {
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).to_string();
    let t = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let elapsed = t.elapsed();
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{head}\n{body}");
    }
    let value: Value = serde_json::from_str(body).with_context(|| body.to_string())?;
    let tokens = value["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
    Ok((elapsed, tokens))
}

/// `clients` threads send `requests` completions in all, prompts in turn: the latencies and the
/// tokens per second over the whole run.
fn load(
    addr: &str,
    requests: usize,
    clients: usize,
    max_tokens: usize,
) -> Result<(Vec<Duration>, f64)> {
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let tx = tx.clone();
            s.spawn(move || {
                for i in (c..requests).step_by(clients) {
                    let _ = tx.send(complete(addr, PROMPTS[i % PROMPTS.len()], max_tokens));
                }
            });
        }
    });
    drop(tx);
    let wall = t.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut tokens = 0;
    for r in rx {
        let (latency, n) = r?;
        latencies.push(latency);
        tokens += n;
    }
    latencies.sort();
    Ok((latencies, tokens as f64 / wall))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// `gac generate` on each prompt in turn: per prompt, its own total time and tokens.
fn generate(models: &[String], requests: usize, max_tokens: usize) -> Result<(Vec<Duration>, f64)> {
    let mut latencies = Vec::new();
    let (mut tokens, mut total) = (0, 0.0);
    for i in 0..requests {
        let mut cmd = Command::new(gac_binary()?);
        cmd.args([
            "generate",
            "--json",
            "--max-tokens",
            &max_tokens.to_string(),
        ]);
        for m in models {
            cmd.args(["--model", m]);
        }
        let out = cmd.arg(PROMPTS[i % PROMPTS.len()]).output()?;
        if !out.status.success() {
            bail!("gac generate: {}", String::from_utf8_lossy(&out.stderr));
        }
        let value: Value = serde_json::from_slice(&out.stdout)?;
        let ms = value["stats"]["total_ms"].as_f64().unwrap_or(0.0);
        latencies.push(Duration::from_secs_f64(ms / 1e3));
        tokens += value["tokens"].as_u64().unwrap_or(0);
        total += ms / 1e3;
    }
    latencies.sort();
    Ok((latencies, tokens as f64 / total))
}

/// One table row; `base` is the baseline's tokens/s, `alone` that of the same server (or tool)
/// with one client.
fn row(what: &str, (latencies, tps): &(Vec<Duration>, f64), base: f64, alone: f64) {
    println!(
        "| {what} | {tps:.1} | {:.2}x | {:.2}x | {:.0} | {:.0} |",
        tps / base,
        tps / alone,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99)
    );
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let (n, max) = (args.requests, args.max_tokens);
    eprintln!("serve-bench: {n} requests of {max} tokens per row");
    let baseline = generate(&args.models, n, max)?;
    let base = baseline.1;
    let mut rows = vec![("`gac generate`, one at a time".to_string(), baseline)];
    // (--parallel, --deterministic, clients); on 4 slots, with and without --deterministic.
    let runs: [(usize, bool, &[usize]); 4] = [
        (1, false, &[1, 4]),
        (2, false, &[4]),
        (4, false, &[1, 4]),
        (4, true, &[1, 4]),
    ];
    let mut four_slots = Vec::new();
    for (parallel, deterministic, clients) in runs {
        let server = Server::gac(&args.models, parallel, deterministic)?;
        complete(&server.addr, PROMPTS[0], 4)?; // warm-up
        let flags = match deterministic {
            true => format!("--parallel {parallel} --deterministic"),
            false => format!("--parallel {parallel}"),
        };
        for &c in clients {
            let result = load(&server.addr, n, c, max)?;
            if parallel == 4 {
                four_slots.push((deterministic, c, result.1));
            }
            let s = if c == 1 { "" } else { "s" };
            rows.push((format!("`gac serve {flags}`, {c} client{s}"), result));
        }
    }
    if let Some((binary, model)) = &args.llama_server {
        for (parallel, clients) in [(1, 1), (4, 4)] {
            let server = Server::llama(binary, model, parallel)?;
            complete(&server.addr, PROMPTS[0], 4)?;
            rows.push((
                format!(
                    "llama-server `-np {parallel}`, Gemma alone, {clients} client{}",
                    if clients == 1 { "" } else { "s" }
                ),
                load(&server.addr, n, clients, max)?,
            ));
        }
    }
    println!("| run | tokens/s | vs `gac generate` | vs one client | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut alone = base;
    for (what, result) in &rows {
        if what.contains("1 client") || what.contains("one at a time") {
            alone = result.1;
        }
        row(what, result, base, alone);
    }
    for c in [1, 4] {
        let tps = |d: bool| {
            four_slots
                .iter()
                .find(|r| r.0 == d && r.1 == c)
                .map(|r| r.2)
        };
        if let (Some(batched), Some(invariant)) = (tps(false), tps(true)) {
            let s = if c == 1 { "" } else { "s" };
            println!(
                "\n`--deterministic` on `--parallel 4`, {c} client{s}: {:.2}x the batched throughput ({:+.0}%)",
                invariant / batched,
                (invariant / batched - 1.0) * 100.0
            );
        }
    }
    Ok(())
}
