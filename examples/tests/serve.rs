//! `gac serve` on the two default models, over loopback: raw HTTP (the SSE format, every bad
//! input), the official OpenAI Python client, answers equal to `gac generate`'s, a bounded load
//! test, dropped streams, API keys and a clean shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gac_tests::{asset, cache, LlamaServer, GEMMA, SMOLLM};
use serde_json::{json, Value};

/// A running `gac serve`, killed when dropped.
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

fn path(relative: &str) -> String {
    asset(relative).display().to_string()
}

impl Server {
    /// Starts a server on a free port with the two default models and waits until it is ready.
    fn start(extra: &[&str]) -> Server {
        Self::start_with(&[&path(SMOLLM)], extra)
    }

    /// The same with `first` (a `--model` value and its own flags) instead of SmolLM2 in
    /// llama.cpp.
    fn start_with(first: &[&str], extra: &[&str]) -> Server {
        let mut args = vec!["--model"];
        args.extend(first);
        let gemma = path(GEMMA);
        args.extend(["--model", &gemma]);
        args.extend(extra);
        Self::start_args(&args)
    }

    /// A server with these arguments (members and flags) on a free port, once ready.
    fn start_args(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gac"))
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .env_remove("GAC_LLAMA_LOG")
            .env_remove("GAC_API_KEY")
            .stderr(Stdio::piped())
            .spawn()
            .expect("gac serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server prints its address");
        let server = Server { child, addr };
        let start = Instant::now();
        loop {
            let health = server.get("/health");
            if health.status == 200 {
                break;
            }
            assert_eq!(health.status, 503, "loading: {}", health.body);
            assert!(start.elapsed() < Duration::from_secs(180), "never ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn get(&self, path: &str) -> Response {
        self.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: gac\r\nConnection: close\r\n\r\n"
        ))
    }

    fn post(&self, path: &str, body: &str) -> Response {
        self.post_with(path, body, "")
    }

    fn post_with(&self, path: &str, body: &str, headers: &str) -> Response {
        self.send(&post_request(path, body, headers))
    }

    fn send(&self, raw: &str) -> Response {
        let mut stream = TcpStream::connect(&self.addr).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).expect("a whole response");
        Response::parse(&bytes)
    }

    /// A value from /metrics (the first line that starts with `name`).
    fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").body;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    fn complete(&self, body: Value) -> Value {
        let r = self.post("/v1/completions", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}

fn post_request(path: &str, body: &str, headers: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gac\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
}

struct Response {
    status: u16,
    headers: String,
    body: String,
}

impl Response {
    fn parse(bytes: &[u8]) -> Response {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = head.to_ascii_lowercase();
        let body = match headers.contains("transfer-encoding: chunked") {
            true => dechunk(body),
            false => body.to_string(),
        };
        Response {
            status,
            headers,
            body,
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The chunks of a server-sent event stream (its `data:` payloads), checking that it ends
    /// with `data: [DONE]`.
    fn chunks(&self) -> Vec<Value> {
        let events: Vec<&str> = self
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"), "{}", self.body);
        events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// `gac generate`'s greedy text for a prompt, with the same members and settings.
fn generate(prompt: &str, max_tokens: usize, chat: bool) -> String {
    generate_with(prompt, max_tokens, chat, &[])
}

/// [`generate`] with these extra flags.
fn generate_with(prompt: &str, max_tokens: usize, chat: bool, extra: &[&str]) -> String {
    let max = max_tokens.to_string();
    let mut args = vec!["generate", "--model", SMOLLM, "--model", GEMMA];
    args.extend(["--max-tokens", &max]);
    if chat {
        args.push("--chat");
    }
    args.extend(extra);
    let (smollm, gemma) = (path(SMOLLM), path(GEMMA));
    args[2] = &smollm;
    args[4] = &gemma;
    generate_args(&args[1..], prompt)
}

/// `gac generate` with these arguments and `--json`: the text.
fn generate_args(args: &[&str], prompt: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gac"))
        .arg("generate")
        .args(args)
        .args(["--json", prompt])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    value["text"].as_str().unwrap().to_string()
}

const PROMPTS: [&str; 2] = ["The capital of France is", "def fibonacci(n):"];

#[test]
fn a_served_ensemble_answers_like_gac_generate_streams_and_shuts_down_cleanly() {
    let server = Server::start(&[]);
    let models = server.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "gac", "{models}");

    // One request at a time, greedy: the same text as `gac generate`.
    for prompt in PROMPTS {
        let c = server.complete(json!({"prompt": prompt, "max_tokens": 16, "temperature": 0}));
        let text = c["choices"][0]["text"].as_str().unwrap();
        assert_eq!(text, generate(prompt, 16, false), "{prompt}");
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["usage"]["completion_tokens"], 16, "{c}");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert!(c["gac"]["steps"].as_u64().unwrap() >= 16, "{c}");

        // Streamed: raw SSE, OpenAI chunks, then [DONE]; the chunks spell the same text.
        let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": true});
        let r = server.post("/v1/completions", &body.to_string());
        assert_eq!(r.status, 200);
        assert!(
            r.headers.contains("content-type: text/event-stream"),
            "{}",
            r.headers
        );
        let chunks = r.chunks();
        let streamed: String = chunks
            .iter()
            .map(|c| c["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(streamed, text);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
    }

    // Selective, greedy: the average's text, with the steps it ensembled counted.
    let body =
        json!({"prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0, "mode": "selective"});
    let c = server.complete(body);
    assert_eq!(
        c["choices"][0]["text"],
        generate(PROMPTS[0], 16, false),
        "{c}"
    );
    let (ensembled, steps) = (&c["gac"]["ensembled_steps"], &c["gac"]["steps"]);
    let (ensembled, steps) = (ensembled.as_u64().unwrap(), steps.as_u64().unwrap());
    assert!(0 < ensembled && ensembled < steps, "{c}");

    // Chat: the same as `gac generate --chat` for one user message.
    let user = "Name three colours of the rainbow.";
    let r = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": user}], "max_tokens": 16, "temperature": 0})
            .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let chat = r.json();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        generate(user, 16, true)
    );

    // The official OpenAI client.
    let python = cache().join("venv/bin/python");
    assert!(
        python.is_file(),
        "missing {}: run `scripts/fetch-assets client`",
        python.display()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new(&python)
        .args([script, &format!("http://{}/v1", server.addr), "gac"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "openai client: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    bad_inputs_get_openai_errors(&server);
    dropped_streams_free_their_slot(&server);

    // SIGTERM while a stream runs: the stream ends normally, then the server exits 0.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    let body = json!({"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0, "stream": true});
    stream
        .write_all(post_request("/v1/completions", &body.to_string(), "").as_bytes())
        .unwrap();
    let mut first = [0u8; 64];
    stream.read_exact(&mut first).unwrap();
    let mut server = server;
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("data: [DONE]"));
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn structured_outputs_validate_against_their_schemas_and_match_gac_generate() {
    let server = Server::start(&[]);
    // The official client: 20 schemas checked by the jsonschema package, JSON mode, a yes/no
    // grammar under sampling, and an invalid schema refused.
    let python = cache().join("venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/structured_client.py");
    let out = Command::new(&python)
        .args([script, &format!("http://{}/v1", server.addr), "gac"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `scripts/fetch-assets client`)",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "structured client: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Greedy, the server's answer is `gac generate --json-schema`'s.
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    });
    let file = std::env::temp_dir().join(format!("gac-schema-{}.json", std::process::id()));
    std::fs::write(&file, schema.to_string()).unwrap();
    let user = "Give the name and age of a famous scientist.";
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}});
    let body = json!({"messages": [{"role": "user", "content": user}], "max_tokens": 48,
                      "temperature": 0, "response_format": format});
    let r = server.post("/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let served = r.json()["choices"][0]["message"]["content"].clone();
    let flag = file.display().to_string();
    let generated = generate_with(user, 48, true, &["--json-schema", &flag]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(served, generated.as_str());
    let value: Value = serde_json::from_str(&generated).expect("the answer is JSON");
    assert!(
        value["name"].is_string() && value["age"].is_i64(),
        "{value}"
    );

    // A grammar and a JSON format together, or GBNF, are 400s naming the field.
    let body = json!({"prompt": "x", "grammar": "start: \"a\"", "response_format": {"type": "json_object"}});
    let r = server.post("/v1/completions", &body.to_string());
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("grammar")),
        "{}",
        r.body
    );
    let body = json!({"prompt": "x", "grammar": "root ::= \"yes\""});
    let r = server.post("/v1/completions", &body.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("GBNF"), "{}", r.body);
}

#[test]
fn a_signal_refuses_queued_requests_and_a_second_one_exits_at_once() {
    let mut server = Server::start(&[]);
    // One slot: a long stream runs, a second request waits in the queue.
    let mut running = TcpStream::connect(&server.addr).unwrap();
    let body = json!({"prompt": PROMPTS[0], "max_tokens": 400, "temperature": 0, "stream": true});
    running
        .write_all(post_request("/v1/completions", &body.to_string(), "").as_bytes())
        .unwrap();
    let mut first = [0u8; 64];
    running.read_exact(&mut first).unwrap();
    let raw = post_request(
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2}).to_string(),
        "",
    );
    let addr = server.addr.clone();
    let queued = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        Response::parse(&bytes)
    });
    let start = Instant::now();
    while server.metric("gac_queue_depth") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30), "never queued");
        std::thread::sleep(Duration::from_millis(50));
    }
    let term = |server: &Server| {
        let killed = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    };
    term(&server);
    let refused = queued.join().unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("shutting down"), "{}", refused.body);
    // The stream is still running; a second signal ends the process now.
    term(&server);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{status}");
}

fn bad_inputs_get_openai_errors(server: &Server) {
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(2 << 20));
    let long_stream =
        json!({"prompt": "word ".repeat(20_000), "stream": true, "max_tokens": 4}).to_string();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/v1/completions", "{\"prompt\": ", 400, "not valid JSON"),
        ("/v1/completions", "[1, 2]", 400, "not a valid request"),
        ("/v1/completions", "{\"max_tokens\": 4}", 400, "prompt"),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"max_tokens\": \"ten\"}",
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"max_tokens\": 100000}",
            400,
            "smallest member context",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"max_tokens\": 0}",
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"\"}",
            400,
            "invalid prompt: it is empty",
        ),
        (
            "/v1/completions",
            "{\"prompt\": [\"a\", 2]}",
            400,
            "lists of prompts are not supported",
        ),
        (
            "/v1/completions",
            "{\"prompt\": [1, 0]}",
            400,
            "invalid prompt: id 1: the end token cannot be part of a prompt",
        ),
        (
            "/v1/completions",
            "{\"prompt\": [1, 4000000000]}",
            400,
            "id 1: 4000000000 is outside the served vocabulary",
        ),
        (
            "/v1/completions",
            "{\"prompt\": [1, -2]}",
            400,
            "invalid prompt: id 1: -2 is not a token id",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"logprobs\": 21, \"max_tokens\": 2}",
            400,
            "invalid logprobs: 21 is above 20 (more only with max_tokens 1)",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"temperature\": -1}",
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"top_p\": 2}",
            400,
            "top_p",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"n\": 2}",
            400,
            "invalid n: only 1",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"logprobs\": 50000000}",
            400,
            "invalid logprobs: 50000000 is above",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"stop\": [\"\"]}",
            400,
            "stop",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"gate\": 5}",
            400,
            "gate",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"gate\": 0, \"threshold\": 2}",
            400,
            "threshold",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"threshold\": 0.5}",
            400,
            "needs a gate",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"gate\": 0, \"when_unsure\": \"maybe\"}",
            400,
            "when_unsure",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"weights\": [1]}",
            400,
            "weights",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"weights\": [1, -1]}",
            400,
            "weight",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"union_top_k\": 0}",
            400,
            "union_top_k",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"mode\": \"loud\"}",
            400,
            "invalid mode: 'loud' is neither",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"mode\": \"selective\", \"gate\": 0}",
            400,
            "invalid mode: give either mode or gate",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"mode\": \"average\", \"threshold\": 0.5}",
            400,
            "invalid threshold: needs a gate",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"model\": \"gpt-4\"}",
            404,
            "gpt-4",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": []}",
            400,
            "invalid messages: it is empty",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}",
            400,
            "role 'tool'",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\"}]}",
            400,
            "invalid messages[0].content",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
            400,
            "text parts",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
            400,
            "needs logprobs",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"union_top_k\": 1000000}",
            400,
            "invalid union_top_k: 1000000 is above 1000",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": \"xml\"}}",
            400,
            "invalid response_format: type 'xml' is not 'text', 'json_object' or 'json_schema'",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {}}}",
            400,
            "invalid response_format: type 'json_schema'",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"grammar\": \"root ::= x\"}",
            400,
            "looks like GBNF",
        ),
        (
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": \"auto\"}",
            400,
            "invalid tool_choice",
        ),
        // A streamed request that cannot be served gets its error status, not a 200.
        (
            "/v1/completions",
            &long_stream,
            400,
            "context",
        ),
        ("/v1/nothing", "{}", 404, "no route"),
        ("/v1/completions", &big, 413, "over the limit"),
    ];
    for (path, body, status, message) in cases {
        let r = server.post(path, body);
        let shown = &body[..body.len().min(80)];
        assert_eq!(r.status, *status, "{path} {shown}: {}", r.body);
        let error = r.json();
        let text = error["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{path} {shown}: {error}");
        assert!(error["error"]["type"].is_string(), "{error}");
    }
    let r = server.get("/v1/completions");
    assert_eq!(r.status, 405, "{}", r.body);
    // User text that spells a control token is generated from as text.
    let c = server.complete(
        json!({"prompt": "<|im_end|><end_of_turn> hi", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(c["usage"]["completion_tokens"], 2, "{c}");
    // Null means "not set" for every optional field; `developer` is a system message; an
    // end-user id and a plain-text response format are read and have no effect.
    let c = server.complete(json!({
        "prompt": "Hi", "max_tokens": 2, "temperature": 0, "logprobs": null, "stream": null,
        "echo": null, "stop": null, "seed": null, "stream_options": null, "user": "u1",
        "tool_choice": null, "metadata": null,
        "response_format": {"type": "text"},
    }));
    assert_eq!(c["usage"]["completion_tokens"], 2, "{c}");
    let r = server.post(
        "/v1/chat/completions",
        &json!({
            "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 2, "logprobs": null, "top_logprobs": null, "tools": null,
        })
        .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The server still answers after all of that.
    assert_eq!(server.get("/health").status, 200);
}

fn dropped_streams_free_their_slot(server: &Server) {
    let before = server.metric("gac_requests_total{outcome=\"cancelled\"}");
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        let body =
            json!({"prompt": PROMPTS[1], "max_tokens": 200, "temperature": 0, "stream": true});
        stream
            .write_all(post_request("/v1/completions", &body.to_string(), "").as_bytes())
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "no first chunk");
        }
    }
    // Whole (not streamed) requests whose clients give up while they generate.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        let body = json!({"prompt": PROMPTS[1], "max_tokens": 400, "temperature": 0});
        stream
            .write_all(post_request("/v1/completions", &body.to_string(), "").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let start = Instant::now();
    while server.metric("gac_requests_total{outcome=\"cancelled\"}") < before + 23.0
        || server.metric("gac_slots_busy") > 0.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "dropped streams still generating: {}",
            server.get("/metrics").body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = server.complete(json!({"prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0}));
    assert_eq!(c["choices"][0]["text"], generate(PROMPTS[0], 16, false));
}

/// What one streamed request got back.
struct Streamed {
    status: u16,
    /// The text, or the error body.
    text: String,
    /// Every token was the argmax of the distribution the server computed for it.
    argmax: bool,
    retry_after: bool,
    tokens: u64,
}

/// One streamed greedy completion with logprobs and usage.
fn streamed_greedy(server: &Server, prompt: &str) -> Streamed {
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": true,
        "logprobs": 1, "stream_options": {"include_usage": true}});
    let r = server.post("/v1/completions", &body.to_string());
    if r.status != 200 {
        let retry_after = r.headers.contains("retry-after: ");
        return Streamed {
            status: r.status,
            text: r.body,
            argmax: false,
            retry_after,
            tokens: 0,
        };
    }
    let mut text = String::new();
    let mut argmax = true;
    let mut tokens = 0;
    for chunk in r.chunks() {
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n;
            continue;
        }
        let choice = &chunk["choices"][0];
        text.push_str(choice["text"].as_str().unwrap());
        if let Some(lp) = choice["logprobs"].as_object() {
            for (chosen, top) in lp["token_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .zip(lp["top_logprobs"].as_array().unwrap())
            {
                let best = top
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_f64().unwrap())
                    .fold(f64::MIN, f64::max);
                argmax &= chosen.as_f64().unwrap() >= best - 1e-6;
            }
        }
    }
    Streamed {
        status: 200,
        text,
        argmax,
        retry_after: false,
        tokens,
    }
}

#[test]
fn a_bounded_load_completes_or_refuses_every_request_and_metrics_add_up() {
    let server = Server::start(&["--parallel", "2", "--queue", "4"]);
    let alone: Vec<Streamed> = PROMPTS
        .iter()
        .map(|p| streamed_greedy(&server, p))
        .collect();
    let (done, refused, differ, tokens) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (server, alone) = (&server, &alone);
                s.spawn(move || {
                    let mut out = (0, 0, 0, 0);
                    for i in 0..6 {
                        let k = (w + i) % 2;
                        let r = streamed_greedy(server, PROMPTS[k]);
                        match r.status {
                            200 => {
                                assert!(
                                    r.argmax,
                                    "a token that was not its step's argmax: {}",
                                    r.text
                                );
                                out.0 += 1;
                                out.2 += usize::from(r.text != alone[k].text);
                                out.3 += r.tokens;
                            }
                            429 => {
                                assert!(r.retry_after, "429 without Retry-After");
                                assert!(r.text.contains("slots are busy"), "{}", r.text);
                                out.1 += 1;
                            }
                            other => panic!("status {other}: {}", r.text),
                        }
                    }
                    out
                })
            })
            .collect();
        workers.into_iter().fold((0, 0, 0, 0), |acc, w| {
            let r = w.join().unwrap();
            (acc.0 + r.0, acc.1 + r.1, acc.2 + r.2, acc.3 + r.3)
        })
    });
    eprintln!(
        "load: {done} completed, {refused} refused (429), {differ} of the completed differ from the one-at-a-time answer"
    );
    assert_eq!(done + refused, 48);
    assert!(done >= 6, "{done} completed");
    assert_eq!(
        server.metric("gac_requests_total{outcome=\"ok\"}"),
        (done + 2) as f64
    );
    assert_eq!(
        server.metric("gac_requests_total{outcome=\"rejected\"}"),
        refused as f64
    );
    assert_eq!(server.metric("gac_slots_busy"), 0.0);
    assert_eq!(server.metric("gac_queue_depth"), 0.0);
    let alone_tokens: u64 = alone.iter().map(|a| a.tokens).sum();
    assert!(alone
        .iter()
        .all(|a| a.status == 200 && a.argmax && a.tokens > 0));
    assert_eq!(
        server.metric("gac_generated_tokens_total"),
        (tokens + alone_tokens) as f64
    );
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn deterministic_slots_answer_under_load_exactly_as_alone() {
    let server = Server::start(&["--parallel", "4", "--deterministic"]);
    let ask = |prompt: &str| {
        let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 3});
        server.complete(body)["choices"][0].clone()
    };
    let alone: Vec<Value> = PROMPTS.iter().map(|p| ask(p)).collect();
    let together: Vec<(usize, Value)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let ask = &ask;
                s.spawn(move || {
                    (0..2)
                        .map(|i| ((w + i) % 2, ask(PROMPTS[(w + i) % 2])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    for (k, answer) in &together {
        // Text and every logprob, bit for bit as serialized.
        assert_eq!(answer, &alone[*k], "prompt {k} under load");
    }
    assert_eq!(together.len(), 16);
}

#[test]
fn an_api_key_guards_the_api() {
    let server = Server::start(&["--api-key", "sesame"]);
    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    for headers in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: sesame\r\n",
        "Authorization: Bearer sesamf\r\n",
        "Authorization: Bearer sesame2\r\n",
    ] {
        let r = server.post_with("/v1/completions", &body, headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    // The scheme's case does not matter (RFC 9110).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let header = format!("Authorization: {scheme} sesame\r\n");
        let r = server.post_with("/v1/completions", &body, &header);
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
    }
    assert_eq!(server.get("/health").status, 200);
}

/// Starts `gac serve ARGS --port 0`, which must refuse to start within a minute (else it is
/// killed and the test fails); its stderr.
fn refused_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gac"))
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("gac serve starts");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = reader.join().unwrap();
    match status {
        Some(status) => assert!(!status.success(), "it started: {stderr}"),
        None => panic!("still running after a minute: {stderr}"),
    }
    stderr
}

#[test]
fn a_mistralrs_member_serves_concurrent_slots() {
    let first = format!("mistralrs:{}", path(SMOLLM));
    let server = Server::start_with(&[&first], &["--parallel", "2"]);
    let answers: Vec<Value> = std::thread::scope(|s| {
        let runs: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let server = &server;
                s.spawn(move || {
                    server.complete(json!({"prompt": p, "max_tokens": 8, "temperature": 0}))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(a["usage"]["completion_tokens"], 8, "{a}");
        assert_eq!(a["gac"]["members"].as_array().unwrap().len(), 2, "{a}");
    }
    assert_eq!(server.metric("gac_requests_total{outcome=\"ok\"}"), 2.0);
    drop(server);

    // mistral.rs batches the slots itself: --deterministic cannot hold for it, and says so.
    let stderr = refused_start(&[
        "--model",
        &first,
        "--model",
        &path(GEMMA),
        "--parallel",
        "2",
        "--deterministic",
    ]);
    assert!(
        stderr.contains("--deterministic: member 0 (") && stderr.contains("only llama.cpp members"),
        "{stderr}"
    );
}

#[test]
fn a_remote_member_serves_each_slot_from_its_own_server_slot() {
    let smollm = LlamaServer::start(SMOLLM, 2);
    let vocab = path(SMOLLM);
    let first = [smollm.url.as_str(), "--vocab", vocab.as_str()];
    let server = Server::start_with(&first, &["--parallel", "2"]);
    let answers: Vec<Value> = std::thread::scope(|s| {
        let runs: Vec<_> = PROMPTS[..2]
            .iter()
            .map(|p| {
                let server = &server;
                s.spawn(move || {
                    server.complete(
                        json!({"prompt": p, "max_tokens": 8, "temperature": 0, "union_top_k": 5}),
                    )
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(a["usage"]["completion_tokens"], 8, "{a}");
    }
    assert_eq!(server.metric("gac_requests_total{outcome=\"ok\"}"), 2.0);
    drop(server);

    // A server with fewer slots than gac's is refused at load, with the reason.
    let one = LlamaServer::start(SMOLLM, 1);
    let stderr = refused_start(&["--model", &one.url, "--vocab", &vocab, "--parallel", "2"]);
    assert!(
        stderr.contains(
            "slot 1 asked for, but the server has 1 (start it with --parallel 2 or more)"
        ),
        "{stderr}"
    );
}

/// `gac generate --json` with these members: the text.
fn generate_members(members: &[&str], prompt: &str, max_tokens: usize) -> String {
    let max = max_tokens.to_string();
    let mut args = members.to_vec();
    args.extend(["--max-tokens", &max]);
    generate_args(&args, prompt)
}

/// Writes the server's served vocabulary to a file of its own.
fn served_vocab(server: &Server, name: &str) -> String {
    let r = server.get("/v1/vocab");
    assert_eq!(r.status, 200, "{}", r.body);
    let file = std::env::temp_dir().join(format!("gac-{}-{name}.json", std::process::id()));
    std::fs::write(&file, r.body).unwrap();
    file.display().to_string()
}

#[test]
fn a_served_ensemble_is_a_member_of_another_and_gives_the_local_ensembles_text() {
    let (smollm, gemma) = (path(SMOLLM), path(GEMMA));
    // The last ends at once (End is the first pick).
    let prompts = [
        PROMPTS[0],
        PROMPTS[1],
        "Question: What is 12 times 12? Answer:",
        "What is 2+2?",
    ];
    let local: Vec<String> = prompts
        .iter()
        .map(|p| generate_members(&["--model", &smollm, "--model", &gemma], p, 24))
        .collect();

    // Gemma-3 alone behind gac serve, SmolLM2 here: the pair's text, token for token.
    let inner = Server::start_args(&["--model", &gemma, "--prompt-cache"]);
    let models = inner.get("/v1/models").json();
    let vocab = served_vocab(&inner, "gemma");
    let url = format!("openai+http://{}/v1", inner.addr);
    let member = ["--model", &smollm, "--model", &url, "--vocab", &vocab];
    for (p, want) in prompts.iter().zip(&local) {
        assert_eq!(&generate_members(&member, p, 24), want, "{p}");
    }
    // The listed size is the served vocabulary's: the union, 256 byte ids, open and close.
    let listed = models["data"][0]["meta"]["n_vocab"].as_u64().unwrap();
    let text = std::fs::read_to_string(&vocab).unwrap();
    let tokens = serde_json::from_str::<Value>(&text).unwrap()["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed as usize, tokens + 258, "{models}");

    // A token-id prompt: the prompt's text as one text piece gives the text prompt's answer,
    // and the listed tokens carry their union ids.
    let (open, close) = (tokens as u64 + 256, tokens as u64 + 257);
    let mut ids = vec![open];
    ids.extend(PROMPTS[0].bytes().map(|b| tokens as u64 + u64::from(b)));
    ids.push(close);
    let by_text = inner.complete(json!({"prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0}));
    let by_ids =
        inner.complete(json!({"prompt": ids, "max_tokens": 6, "temperature": 0, "logprobs": 3}));
    assert_eq!(by_ids["choices"][0]["text"], by_text["choices"][0]["text"]);
    let first = &by_ids["choices"][0]["logprobs"]["content"][0];
    assert_eq!(
        first["top_logprobs"].as_array().unwrap().len(),
        3,
        "{first}"
    );
    assert_eq!(first["id"], first["top_logprobs"][0]["id"], "{first}");
    assert!(first["id"].as_u64().unwrap() < tokens as u64, "{first}");

    // A vocabulary file of the same size but other tokens is refused by its fingerprint.
    let mut file: Value = serde_json::from_str(&text).unwrap();
    file["tokens"].as_array_mut().unwrap().swap(1, 2);
    std::fs::write(&vocab, file.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gac"))
        .args(["generate", "--model", &url, "--vocab", &vocab, "x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another vocabulary") && stderr.contains("/v1/vocab"),
        "{stderr}"
    );
    drop(inner);
    let _ = std::fs::remove_file(&vocab);

    // The pair behind gac serve as the only member (a hierarchical ensemble of one): every
    // member of the served ensemble gets the ids it would get here, so the text is the pair's.
    let pair = Server::start(&["--prompt-cache"]);
    let vocab = served_vocab(&pair, "pair");
    // A piece a member cannot spell (no SmolLM2 token is the byte 0xFF) is a 400 naming it.
    let u = pair.get("/v1/models").json()["data"][0]["meta"]["n_vocab"]
        .as_u64()
        .unwrap()
        - 258;
    let body = json!({"prompt": [u + 256, u + 72, u + 105, u + 257, u + 255], "max_tokens": 1});
    let r = pair.post("/v1/completions", &body.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("\"param\":\"prompt\"")
            && r.body.contains("cannot spell piece 1")
            && r.body.contains("0xFF"),
        "{}",
        r.body
    );
    let url = format!("openai+http://{}/v1", pair.addr);
    for (p, want) in prompts.iter().zip(&local) {
        assert_eq!(
            &generate_members(&["--model", &url, "--vocab", &vocab], p, 24),
            want,
            "{p}"
        );
    }
    let _ = std::fs::remove_file(&vocab);
}

#[test]
fn a_tuned_config_serves_the_answers_it_generates() {
    // A file as `gac tune` writes it: its evidence as comments, members with learned weights,
    // a gate.
    let toml = format!(
        "# Chosen by gac tune on 2026-12-08.\n# Evidence: gated:0.5:gate=1 ahead of member:0.\n\
         [[member]]\npath = {:?}\nruntime = \"llamacpp\"\nweight = 0.7\nthreads = 1\n\n\
         [[member]]\npath = {:?}\nruntime = \"llamacpp\"\nweight = 1.0\nthreads = 1\n\n\
         [gate]\nmember = 1\nthreshold = 0.5\nwhen_unsure = \"average\"\n",
        path(SMOLLM),
        path(GEMMA)
    );
    let file = std::env::temp_dir().join(format!("gac-{}-tuned.toml", std::process::id()));
    std::fs::write(&file, toml).unwrap();
    let config = file.display().to_string();
    let server = Server::start_args(&["--config", &config]);
    for prompt in PROMPTS {
        let c = server.complete(json!({"prompt": prompt, "max_tokens": 16, "temperature": 0}));
        let served = c["choices"][0]["text"].as_str().unwrap();
        let generated = generate_args(&["--config", &config, "--max-tokens", "16"], prompt);
        assert_eq!(served, generated, "{prompt}");
    }
    let _ = std::fs::remove_file(&file);
}
