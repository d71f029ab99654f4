//! The `gac` binary as a user runs it: good runs and every kind of bad input.

use std::process::{Command, Output};

use gac_tests::{asset, scratch, LlamaServer, GEMMA, SMOLLM};

fn gac(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gac"))
        .args(args)
        .env_remove("GAC_LLAMA_LOG")
        .output()
        .expect("gac runs")
}

fn path(relative: &str) -> String {
    asset(relative).display().to_string()
}

/// Runs gac and expects success.
fn succeeds(args: &[&str]) -> Output {
    let out = gac(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs gac, expects failure, and returns stderr (which must not show a panic).
fn fails(args: &[&str]) -> String {
    let out = gac(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains("error"),
        "{args:?}: no error message: {stderr}"
    );
    stderr
}

#[test]
fn generate_streams_text_and_json_has_statistics() {
    let (smollm, gemma) = (path(SMOLLM), path(GEMMA));
    let out = succeeds(&[
        "generate",
        "--model",
        &smollm,
        "--model",
        &gemma,
        "--max-tokens",
        "12",
        "The capital of France is",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ms/token") && stderr.contains("steps ensembled"),
        "{stderr}"
    );

    let out = succeeds(&[
        "generate",
        "--model",
        &smollm,
        "--model",
        &gemma,
        "--gate",
        "0",
        "--threshold",
        "0.5",
        "--max-tokens",
        "12",
        "--json",
        "Москва — столица",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert!(v["text"].is_string());
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    let steps = v["stats"]["steps"].as_u64().unwrap();
    assert!(steps >= 1 && v["stats"]["ensembled_steps"].as_u64().unwrap() <= steps);
    assert!(v["stats"]["ms_per_token"].as_f64().unwrap() > 0.0);
}

#[test]
fn config_file_and_stop_string() {
    let config = scratch(
        "ensemble.toml",
        format!(
            "[[member]]\npath = {:?}\nthreads = 1\n[[member]]\npath = {:?}\nweight = 0.5\n[gate]\nmember = 1\nthreshold = 0.4\nwhen_unsure = \"member:0\"\n",
            path(SMOLLM),
            path(GEMMA)
        )
        .as_bytes(),
    );
    let out = succeeds(&[
        "generate",
        "--config",
        config.to_str().unwrap(),
        "--max-tokens",
        "40",
        "--stop",
        ", five",
        "--json",
        "One, two, three",
    ]);
    // The models count on (", four, five, ..."): the stop string must end the generation.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["finish"], "stop", "{v}");
    assert!(!v["text"].as_str().unwrap().contains("five"), "{v}");
    assert_eq!(v["members"][1]["weight"], 0.5);
}

#[test]
fn vocab_reports_sizes_and_overlap() {
    let out = succeeds(&[
        "vocab",
        "--model",
        &path(SMOLLM),
        "--model",
        &path(GEMMA),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["members"][0]["vocab_size"], 49_152);
    assert_eq!(v["members"][1]["vocab_size"], 262_144);
    let overlap = v["members"][0]["overlap"][1].as_u64().unwrap();
    assert!((40_000..49_152).contains(&overlap), "{overlap}");
    let union = v["union_size"].as_u64().unwrap();
    assert!(
        union > 262_144 - 10_000 && union < 262_144 + 49_152,
        "{union}"
    );
}

/// The cells of the markdown table rows whose first cell starts with `name`.
fn rows<'a>(table: &'a str, name: &str) -> Vec<Vec<&'a str>> {
    table
        .lines()
        .filter(|l| l.starts_with(&format!("| {name}")))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

#[test]
fn bench_prints_every_table() {
    let out = succeeds(&[
        "bench",
        "--model",
        &path(SMOLLM),
        "--model",
        &path(GEMMA),
        "--tokens",
        "4",
        "--prompt",
        "The history of the printing press begins",
        "--device-top-k",
        "8",
    ]);
    let table = String::from_utf8(out.stdout).unwrap();
    // Full logits against the device top-k, per member and averaged.
    for name in [
        "SmolLM2-135M-Instruct.Q4_1 full logits",
        "SmolLM2-135M-Instruct.Q4_1 top-8",
        "gemma-3-270m-q4_k_m top-8",
        "average ensemble, full logits",
        "average ensemble, top-8",
    ] {
        assert_eq!(rows(&table, name).len(), 1, "{name} in {table}");
    }
    assert!(
        rows(&table, "average ensemble, top-8")[0][6].contains("same text: 1 of 1"),
        "{table}"
    );
    for name in [
        "SmolLM2-135M-Instruct.Q4_1 alone",
        "gemma-3-270m-q4_k_m alone",
        "average ensemble |",
        "average ensemble, grammar: any text |",
        "average ensemble, grammar: JSON object |",
        "gated ensemble (lazy), grammar: any text |",
        "selective ensemble |",
        "gated ensemble (lazy), gate",
        "gated ensemble (eager), gate",
    ] {
        assert_eq!(rows(&table, name).len(), 1, "{name} in {table}");
    }
    // Catch-up (3 sizes) and prompt cache (1 row) per member.
    for name in ["SmolLM2-135M-Instruct.Q4_1 |", "gemma-3-270m-q4_k_m |"] {
        let rows = rows(&table, name);
        assert_eq!(rows.len(), 4, "{name} in {table}");
        let cache = &rows[3];
        let number = |i: usize| cache[i].parse::<f64>().unwrap();
        assert!(number(2) > 0.0 && number(2) < number(1), "{cache:?}");
        assert!(number(3) > 0.0 && number(4) > 0.0, "{cache:?}");
        assert!(number(6) >= 0.0, "{cache:?}");
    }
}

#[test]
fn structured_outputs_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("gac-cli-grammar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (smollm, gemma) = (path(SMOLLM), path(GEMMA));
    let run = |extra: &[&str], prompt: &str| {
        let mut args = vec!["generate", "--model", &smollm, "--model", &gemma, "--json"];
        args.extend(extra);
        args.push(prompt);
        gac(&args)
    };
    // A grammar: only its words, under sampling too; the answer ends with the grammar.
    let yes_no = file("yes-no.lark", r#"start: "yes" | "no""#);
    for seed in ["1", "2", "3"] {
        let extra = ["--grammar", &yes_no, "--temperature", "1", "--seed", seed];
        let out = run(&extra, "Question: Is the sea salty?\nAnswer:");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(["yes", "no"].contains(&g["text"].as_str().unwrap()), "{g}");
        assert_eq!(g["finish"], "end", "{g}");
    }
    // JSON mode: an object.
    let out = run(&["--json-object", "--max-tokens", "64"], "A cat as JSON:");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = g["text"].as_str().unwrap();
    if g["finish"] == "end" {
        let object: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(object.is_object(), "{text}");
    } else {
        assert!(text.starts_with('{'), "{text}");
    }
    // Bad input is named before any model loads, or before any step.
    let missing = dir.join("missing.json").display().to_string();
    let e = fails(&[
        "generate",
        "--model",
        &smollm,
        "--json-schema",
        &missing,
        "hi",
    ]);
    assert!(
        e.contains("json_schema") && e.contains("missing.json"),
        "{e}"
    );
    let not_json = file("not.json", "{type: object");
    let e = fails(&[
        "generate",
        "--model",
        &smollm,
        "--json-schema",
        &not_json,
        "hi",
    ]);
    assert!(e.contains("not.json is not JSON"), "{e}");
    let bad = file("bad.lark", "start: nowhere");
    let e = fails(&["generate", "--model", &smollm, "--grammar", &bad, "hi"]);
    assert!(
        e.contains("invalid grammar") && e.contains("nowhere"),
        "{e}"
    );
    let e = fails(&[
        "generate",
        "--model",
        &smollm,
        "--grammar",
        &bad,
        "--json-object",
        "hi",
    ]);
    assert!(
        e.contains("--json-object") || e.contains("--grammar"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_model_files_are_named() {
    let smollm = path(SMOLLM);
    let missing = fails(&["generate", "--model", "no/such/model.gguf", "hi"]);
    assert!(
        missing.contains("no/such/model.gguf") && missing.contains("No such file"),
        "{missing}"
    );

    let text = scratch("notes.gguf", b"this is not a model\n");
    let err = fails(&["generate", "--model", text.to_str().unwrap(), "hi"]);
    assert!(
        err.contains("notes.gguf") && err.contains("not a GGUF file"),
        "{err}"
    );

    let bytes = std::fs::read(&smollm).unwrap();
    let truncated = scratch("truncated.gguf", &bytes[..bytes.len() / 2]);
    let err = fails(&["generate", "--model", truncated.to_str().unwrap(), "hi"]);
    assert!(
        err.contains("truncated.gguf") && err.contains("could not load"),
        "{err}"
    );

    let config = scratch("bad.toml", b"[[member]]\npath = 3\n");
    let err = fails(&["generate", "--config", config.to_str().unwrap(), "hi"]);
    assert!(err.contains("bad.toml"), "{err}");
}

#[test]
fn bad_settings_are_named() {
    let smollm = path(SMOLLM);
    let m = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            smollm.as_str(),
            "--model",
            smollm.as_str(),
        ];
        args.extend_from_slice(extra);
        fails(&args)
    };
    let cases: &[(&[&str], &str)] = &[
        (&["--gate", "0", "--threshold", "1.5", "hi"], "threshold"),
        (&["--gate", "0", "--threshold", "-0.1", "hi"], "threshold"),
        (&["--gate", "2", "hi"], "gate"),
        (
            &["--gate", "0", "--when-unsure", "member:7", "hi"],
            "when_unsure",
        ),
        (&["--weight", "-1", "hi"], "member[1].weight"),
        (
            &["--weight", "1", "--weight", "2", "hi"],
            "--weight: given twice for member 1",
        ),
        (&["--temperature", "-1", "hi"], "temperature"),
        (&["--top-p", "0", "hi"], "top_p"),
        (&[""], "prompt is empty"),
        (&["--union-top-k", "0", "hi"], "union_top_k"),
        (&["--device-top-k", "0", "hi"], "member[1].device_top_k"),
        (
            &["--weighting", "loud", "hi"],
            "weighting: 'loud' is neither",
        ),
        (&["--mode", "loud", "hi"], "mode: 'loud' is neither"),
        (
            &["--mode", "selective", "--gate", "0", "hi"],
            "cannot be used with",
        ),
    ];
    for (args, needle) in cases {
        let err = m(args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let early = fails(&["generate", "--gpu", "0", "--model", &smollm, "hi"]);
    assert!(
        early.contains("--gpu: it comes before the first --model"),
        "{early}"
    );
    // Per-member flags bind to the --model they follow.
    let gemma = path(GEMMA);
    let out = succeeds(&[
        "generate",
        "--model",
        &smollm,
        "--device-top-k",
        "8",
        "--model",
        &gemma,
        "--weight",
        "0",
        "--threads",
        "1",
        "--max-tokens",
        "2",
        "--json",
        "hi",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["members"][0]["weight"].as_f64(),
            v["members"][1]["weight"].as_f64()
        ),
        (Some(1.0), Some(0.0))
    );
    let head_evals = |i: usize| v["members"][i]["head_evals"].as_u64();
    let steps = v["stats"]["steps"].as_u64();
    assert_eq!((head_evals(0), head_evals(1)), (steps, Some(0)), "{v}");
    let none = fails(&["generate", "hi"]);
    assert!(none.contains("at least one member"), "{none}");
    let long = "word ".repeat(100);
    let err = fails(&["generate", "--model", &smollm, "--ctx", "32", &long]);
    assert!(err.contains("longer than its context of 32"), "{err}");
}

#[test]
fn mistralrs_members_from_the_command_line() {
    let (smollm, gemma) = (path(SMOLLM), path(GEMMA));
    let mistral = format!("mistralrs:{smollm}");
    let out = succeeds(&[
        "generate",
        "--model",
        &mistral,
        "--model",
        &gemma,
        "--max-tokens",
        "8",
        "--json",
        "The capital of France is",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["stats"]["steps"].as_u64().unwrap() >= 1);
    let config = scratch(
        "mixed.toml",
        format!("[[member]]\npath = {smollm:?}\nruntime = \"mistralrs\"\n[[member]]\npath = {gemma:?}\n").as_bytes(),
    );
    succeeds(&[
        "generate",
        "--config",
        config.to_str().unwrap(),
        "--max-tokens",
        "4",
        "Hello",
    ]);
    let text = scratch("text.gguf", b"not a model");
    let err = fails(&[
        "generate",
        "--model",
        &format!("mistralrs:{}", text.display()),
        "hi",
    ]);
    assert!(
        err.contains("text.gguf") && err.contains("not a GGUF file"),
        "{err}"
    );
    // llama.cpp-only settings on a mistral.rs member are refused with the reason, in a config
    // or as flags after its --model; --ctx caps the mistral.rs member's context.
    for (key, needle) in [
        ("threads = 2", "member[0].threads: mistral.rs members share"),
        (
            "gpu_layers = 4",
            "member[0].gpu_layers: a mistral.rs member runs wholly",
        ),
    ] {
        let config = scratch(
            "refused.toml",
            format!("[[member]]\npath = {smollm:?}\nruntime = \"mistralrs\"\n{key}\n"),
        );
        let err = fails(&["generate", "--config", config.to_str().unwrap(), "hi"]);
        assert!(err.contains(needle), "{key}: {err}");
    }
    let threads = fails(&["generate", "--model", &mistral, "--threads", "1", "hi"]);
    assert!(
        threads.contains("member[0].threads: mistral.rs members share"),
        "{threads}"
    );
    let long = "word ".repeat(100);
    let err = fails(&["generate", "--model", &mistral, "--ctx", "32", &long]);
    assert!(err.contains("longer than its context of 32"), "{err}");
    // `gac vocab` reads a mistral.rs member's vocabulary through mistral.rs.
    let out = succeeds(&["vocab", "--model", &mistral, "--model", &gemma, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["members"][0]["vocab_size"], 49_152);
}

#[test]
fn chat_runs_for_both_runtimes() {
    let smollm = path(SMOLLM);
    for model in [smollm.clone(), format!("mistralrs:{smollm}")] {
        let out = succeeds(&[
            "generate",
            "--model",
            &model,
            "--chat",
            "--max-tokens",
            "8",
            "--json",
            "Name a colour.",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!v["text"].as_str().unwrap().is_empty(), "{model}: {v}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("no usable chat template"),
            "{model}: {stderr}"
        );
    }
}

#[test]
fn wrapping_an_existing_mistralrs_engine() {
    let out = Command::new(env!("CARGO_BIN_EXE_wrap-mistralrs"))
        .args([
            path(SMOLLM),
            path(GEMMA),
            "The capital of France is".to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ensemble: ") && stdout.contains("mistral.rs alone: "),
        "{stdout}"
    );
}

#[test]
fn wrapping_an_already_loaded_llama_cpp_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_wrap-llamacpp"))
        .args([
            path(SMOLLM),
            path(GEMMA),
            "The capital of France is".to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The member and the program's own context share one copy of the weights.
    assert!(
        stdout.contains("ensemble: ")
            && stdout.contains("weights shared with the member: 2 references"),
        "{stdout}"
    );
}

#[test]
fn shell_completions_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = succeeds(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["generate", "serve", "chat", "max-tokens"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    assert!(fails(&["completions", "tcsh"]).contains("tcsh"));
}

#[test]
fn verbose_shows_the_runtimes_log_and_quiet_only_the_answer() {
    let smollm = path(SMOLLM);
    let args = ["generate", "--model", &smollm, "--max-tokens", "3", "Hi"];
    let plain = String::from_utf8_lossy(&succeeds(&args).stderr).into_owned();
    assert!(
        !plain.contains("llama_"),
        "llama.cpp's log is hidden by default: {plain}"
    );
    assert!(plain.contains("loaded member 0"), "{plain}");
    let verbose = [&["-v"][..], &args[..]].concat();
    let loud = String::from_utf8_lossy(&succeeds(&verbose).stderr).into_owned();
    assert!(loud.contains("llama_"), "-v shows llama.cpp's log: {loud}");
    let quiet = [&["-q"][..], &args[..]].concat();
    let out = succeeds(&quiet);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
    // A model llama.cpp refuses: -v shows llama.cpp's own reason next to gac's error.
    let truncated = scratch(
        "truncated.gguf",
        &std::fs::read(asset(SMOLLM)).unwrap()[..4096],
    );
    let truncated = truncated.display().to_string();
    let out = gac(&["-v", "generate", "--model", &truncated, "Hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("llama.cpp could not load"),
        "{stderr}"
    );
    assert!(stderr.contains("llama_model_load"), "{stderr}");
}

#[test]
fn vocab_words_probe_compares_how_tokenizers_split_words() {
    let (smollm, gemma) = (path(SMOLLM), path(GEMMA));
    let mistral = format!("mistralrs:{smollm}");
    let out = succeeds(&[
        "vocab", "--model", &smollm, "--model", &gemma, "--model", &mistral, "--words",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let probe = stdout.split("words split into").nth(1).unwrap_or_default();
    let share = |pair: &str| -> f64 {
        let line = probe
            .lines()
            .find(|l| l.trim_start().starts_with(pair))
            .unwrap();
        line.rsplit(' ')
            .next()
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    assert!(
        stdout.contains("words split into the same pieces (42 words"),
        "{stdout}"
    );
    // The same model in two runtimes splits every word alike; SmolLM2 and Gemma-3 do not.
    assert_eq!(share("0 & 2:"), 100.0, "{stdout}");
    assert!(share("0 & 1:") < 90.0 && share("0 & 1:") > 20.0, "{stdout}");
    let words = scratch("words.txt", "the\n\nphotosynthesis\n");
    let out = succeeds(&[
        "vocab",
        "--model",
        &smollm,
        "--model",
        &gemma,
        "--json",
        "--words",
        words.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["same_split"]["words"], 2, "{v}");
    let missing = fails(&[
        "vocab",
        "--model",
        &smollm,
        "--words",
        "/nonexistent/words.txt",
    ]);
    assert!(missing.contains("/nonexistent/words.txt"), "{missing}");
}

/// The "same text" cell of the all-remote row of a `gac bench --remote` table.
fn all_remote_text(table: &str) -> String {
    rows(table, "all remote, top-5")[0][5].to_string()
}

/// A GET's body, over a plain TCP connection.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    body.to_string()
}

#[test]
fn remote_members_from_the_command_line() {
    let (smollm, gemma) = (path(SMOLLM), path(GEMMA));
    let server = LlamaServer::start(SMOLLM, 1);
    // One member served, one here, gated with the served one as the gate.
    let here = [
        "--model",
        &gemma,
        "--union-top-k",
        "8",
        "--gate",
        "0",
        "--max-tokens",
        "8",
        "--json",
        "The capital of France is",
    ];
    let served = [
        "generate",
        "--model",
        &server.url,
        "--vocab",
        &smollm,
        "--n-probs",
        "8",
        "--timeout",
        "30",
    ];
    let out = succeeds(&[&served[..], &here].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(v["members"][0]["path"].as_str(), Some(server.url.as_str()));
    let steps = v["stats"]["steps"].as_u64();
    assert_eq!(v["members"][0]["head_evals"].as_u64(), steps, "{v}");

    // The same server through its OpenAI-compatible /v1, the model asked for by name: the
    // same text.
    let v1 = format!("openai+{}/v1", server.url);
    let listed: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{}/v1/models", server.url))).unwrap();
    let name = listed["data"][0]["id"].as_str().unwrap().to_string();
    let through_v1 = [
        "generate",
        "--model",
        &v1,
        "--vocab",
        &smollm,
        "--remote-model",
        &name,
        "--ctx",
        "2048",
        "--n-probs",
        "8",
    ];
    let openai = succeeds(&[&through_v1[..], &here].concat());
    let o: serde_json::Value = serde_json::from_slice(&openai.stdout).unwrap();
    assert_eq!(o["text"], v["text"], "{o}");
    let e = fails(&[
        "generate",
        "--model",
        &v1,
        "--vocab",
        &smollm,
        "--remote-model",
        "nope",
        "hi",
    ]);
    assert!(e.contains("no model 'nope'"), "{e}");

    // gac bench's remote table: all local, member 0 remote, all remote.
    let gemma_server = LlamaServer::start(GEMMA, 1);
    let out = succeeds(&[
        "bench",
        "--model",
        &smollm,
        "--model",
        &gemma,
        "--remote",
        &server.url,
        "--remote",
        &gemma_server.url,
        "--union-top-k",
        "5",
        "--tokens",
        "4",
        "--prompt",
        "The history of the printing press begins",
    ]);
    let table = String::from_utf8(out.stdout).unwrap();
    for name in [
        "all local, top-5",
        "member 0 remote, top-5",
        "member 0 remote through /v1, top-5",
        "all remote, top-5",
        "all remote through /v1, top-5",
    ] {
        assert_eq!(rows(&table, name).len(), 1, "{name} in {table}");
    }
    // Through /v1, the same server gives the same text as through its own /completion.
    let v1 = &rows(&table, "all remote through /v1, top-5")[0];
    assert_eq!(v1[5], all_remote_text(&table), "{table}");
    let all_remote = &rows(&table, "all remote, top-5")[0];
    assert!(all_remote[3].parse::<f64>().unwrap() >= 0.0, "{table}");
    assert!(all_remote[5].contains("of 1"), "{table}");

    // gac eval takes the same flags.
    let results = scratch("remote-eval.jsonl", "");
    std::fs::remove_file(&results).unwrap();
    let data = gac_tests::cache().join("data").display().to_string();
    succeeds(&[
        "eval",
        "--model",
        &server.url,
        "--vocab",
        &smollm,
        "--model",
        &gemma,
        "--task",
        "disfl_qa",
        "--limit",
        "2",
        "--union-top-k",
        "5",
        "--data",
        &data,
        "--out",
        &results.display().to_string(),
    ]);
    let lines = std::fs::read_to_string(&results).unwrap();
    for config in ["member:0", "member:1", "average:top5"] {
        let n = lines
            .lines()
            .filter(|l| l.contains(&format!("\"config\":\"{config}\"")))
            .count();
        assert_eq!(n, 2, "{config} in {lines}");
    }

    // What is wrong is named.
    let cases: &[(&[&str], &str)] = &[
        (&["--model", &server.url, "hi"], "member[0].vocab: missing"),
        (
            &["--model", &server.url, "--vocab", &gemma, "hi"],
            "whose vocabulary is not the one of",
        ),
        (
            &[
                "--model",
                &server.url,
                "--vocab",
                &smollm,
                "--threads",
                "2",
                "hi",
            ],
            "member[0].threads: not for a remote member",
        ),
        (
            &["--model", &smollm, "--n-probs", "4", "hi"],
            "member[0].n_probs: only a remote member",
        ),
        (
            &["--model", "https://example.org", "--vocab", &smollm, "hi"],
            "member[0].url: 'https://example.org' is not http://HOST:PORT",
        ),
        (
            &["--vocab", &smollm, "--model", &server.url, "hi"],
            "--vocab: it comes before",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["generate"];
        all.extend_from_slice(args);
        let err = fails(&all);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
