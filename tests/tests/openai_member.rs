//! Members behind an OpenAI-compatible `/v1/completions`: llama-server's `/v1` on 127.0.0.1
//! (built by `scripts/fetch-assets server`), against the same model in process; and a fake
//! server for the answers a real one does not give (too few logprobs, text that maps to no
//! token, a 401, a dropped connection).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use gac_core::{Encoder, Ensemble, Evaluation, Finish, GenerateOptions, Member, Mode};
use gac_llamacpp::{LoadError, OpenAiMember, OpenAiOptions};
use gac_tests::{asset, boxed, member, LlamaServer, GEMMA, PROMPTS, SMOLLM};

const TOKENS: usize = 24;

fn connect(model: &str, options: &OpenAiOptions) -> Result<OpenAiMember, LoadError> {
    let path = asset(model);
    let text = gac_llamacpp::load_encoder(&path).unwrap_or_else(|e| panic!("{e}"));
    OpenAiMember::connect(gac_core::gguf::model_name(&path), text, &path, options)
}

/// Greedy texts of every prompt.
fn texts(ensemble: &mut Ensemble) -> Vec<String> {
    let options = GenerateOptions {
        max_tokens: TOKENS,
        ..GenerateOptions::default()
    };
    PROMPTS
        .iter()
        .map(|p| {
            (ensemble.generate(p, &options, &mut |_| {}))
                .unwrap_or_else(|e| panic!("{p:?}: {e}"))
                .text
        })
        .collect()
}

#[test]
fn an_openai_member_on_llama_servers_v1_is_the_model_in_process() {
    let server = LlamaServer::start(GEMMA, 1);
    let options = OpenAiOptions {
        context: Some(2048),
        ..OpenAiOptions::new(format!("{}/v1", server.url))
    };
    let mut m = connect(GEMMA, &options).unwrap_or_else(|e| panic!("{e}"));
    // Its head: the model's own most probable tokens, ids as the server gives them.
    let mut local = member(GEMMA);
    let prompt = local.encode_prompt(PROMPTS[0]).unwrap();
    for x in [&mut local as &mut dyn Member, &mut m] {
        x.reset().unwrap();
        x.push(&prompt).unwrap();
    }
    let logits = local.logits().unwrap().to_vec();
    let best = gac_core::select::argmax(&logits).unwrap() as u32;
    let Evaluation::Head(head) = m.evaluate().unwrap() else {
        panic!("an OpenAI member hands back its head");
    };
    assert_eq!(head.len(), 20);
    assert_eq!(head[0].0, best, "{head:?}");
    let full = m.logits().unwrap();
    assert_eq!(gac_core::select::argmax(full), Some(best as usize));

    // One member local, one behind /v1: the local-only ensemble's greedy texts (llama-server
    // is another llama.cpp release: a text may part at a near-tie, as for the native member).
    let mut here = Ensemble::new(
        boxed(vec![member(SMOLLM), member(GEMMA)]),
        None,
        Mode::Average,
    )
    .unwrap();
    let want = texts(&mut here);
    let mixed: Vec<Box<dyn Member>> = vec![Box::new(member(SMOLLM)), Box::new(m)];
    let mut there = Ensemble::new(mixed, None, Mode::Average).unwrap();
    let got = texts(&mut there);
    let same = want.iter().zip(&got).filter(|(w, g)| w == g).count();
    eprintln!(
        "{same} of {} texts the same\n{want:#?}\n{got:#?}",
        want.len()
    );
    assert!(same >= 3, "only {same} of 5 the same");

    // A model the server does not serve is named, with the ones it does.
    let wrong = OpenAiOptions {
        model: Some("no-such-model".into()),
        ..options.clone()
    };
    let err = connect(GEMMA, &wrong)
        .expect_err("no such model")
        .to_string();
    assert!(
        err.contains("no model 'no-such-model'") && err.contains("gemma"),
        "{err}"
    );
    // A vocabulary of another size is refused.
    let err = connect(SMOLLM, &options)
        .expect_err("not SmolLM2")
        .to_string();
    assert!(err.contains("262144 tokens"), "{err}");
}

/// A fake OpenAI-compatible server on a free port: `/v1/models` lists model "m" (unless
/// `status` is not 200: then every answer is that status), and `/v1/completions` answers
/// `completion` (or, when it is empty, closes the connection without answering).
fn fake(status: u16, completion: &'static str) -> String {
    fake_with(status, 200, completion)
}

/// [`fake`] whose completions answer with `completion_status`.
fn fake_with(status: u16, completion_status: u16, completion: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = Vec::new();
            let mut buf = [0u8; 65536];
            // The headers and the body (small: a few ids).
            while let Ok(n) = stream.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let length = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if n == 0 || request.len() >= end + 4 + length {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&request);
            let (status, body) = match () {
                _ if status != 200 => (status, r#"{"error": {"message": "invalid api key"}}"#),
                _ if text.starts_with("GET /v1/models") => (200, r#"{"data": [{"id": "m"}]}"#),
                _ if completion.is_empty() => continue,
                _ => (completion_status, completion),
            };
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    url
}

/// The error of a generation by local SmolLM2 with a SmolLM2 member behind `url` that asks for
/// `n_probs` tokens a step, and how long it took.
fn failure(url: &str, n_probs: usize) -> (String, Duration) {
    let options = OpenAiOptions {
        n_probs,
        context: Some(512),
        timeout: Duration::from_secs(2),
        retries: 1,
        ..OpenAiOptions::new(url)
    };
    let remote = connect(SMOLLM, &options).unwrap_or_else(|e| panic!("{e}"));
    let members: Vec<Box<dyn Member>> = vec![Box::new(member(SMOLLM)), Box::new(remote)];
    let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
    let started = Instant::now();
    let err = e
        .generate(
            "The capital of France is",
            &GenerateOptions::default(),
            &mut |_| {},
        )
        .expect_err("the remote member fails");
    (err.to_string(), started.elapsed())
}

#[test]
fn bad_answers_are_errors_that_name_them_and_leave_no_member_waiting() {
    // Fewer logprobs than asked for.
    let few = r#"{"choices": [{"logprobs": {"top_logprobs": [{"token_id:1": -0.1, "token_id:2": -2.5}]}}]}"#;
    let (err, took) = failure(&fake(200, few), 20);
    assert!(
        err.contains("listed 2 next tokens where 20 were asked for"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Text that no token of the vocabulary spells.
    let unknown =
        r#"{"choices": [{"logprobs": {"top_logprobs": [{"\u0000nowhere\u0000": -0.1}]}}]}"#;
    let (err, _) = failure(&fake(200, unknown), 1);
    assert!(
        err.contains("which no token of the vocabulary spells"),
        "{err}"
    );
    // An id outside the vocabulary.
    let outside = r#"{"choices": [{"logprobs": {"top_logprobs": [{"token_id:99999999": -0.1}]}}]}"#;
    let (err, _) = failure(&fake(200, outside), 1);
    assert!(err.contains("outside the vocabulary"), "{err}");
    // A llama-server's own /completions (a url without its /v1): named, with the remedy.
    let native = r#"{"content": " Paris", "completion_probabilities": []}"#;
    let (err, _) = failure(&fake(200, native), 1);
    assert!(
        err.contains("answered no choices") && err.contains("/v1"),
        "{err}"
    );
    // A malformed id is not read as another token.
    let bad_id = r#"{"choices": [{"logprobs": {"content": [{"top_logprobs": [{"id": -3, "token": "a", "logprob": -0.1}]}]}}]}"#;
    let (err, _) = failure(&fake(200, bad_id), 1);
    assert!(err.contains("answered the id -3"), "{err}");
    // A connection dropped without an answer: retried, then named.
    let (err, took) = failure(&fake(200, ""), 1);
    assert!(
        err.contains("/completions") && err.contains("tried 2 times"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    // A context the server's window refuses ends the generation there (finish "length"), as
    // a local member's full context does.
    let full = r#"{"error": {"message": "too long", "code": "context_length_exceeded"}}"#;
    let options = OpenAiOptions {
        context: Some(512),
        ..OpenAiOptions::new(fake_with(200, 400, full))
    };
    let remote = connect(SMOLLM, &options).unwrap_or_else(|e| panic!("{e}"));
    let members: Vec<Box<dyn Member>> = vec![Box::new(member(SMOLLM)), Box::new(remote)];
    let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
    let g = (e.generate("Hi", &GenerateOptions::default(), &mut |_| {}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.finish, Finish::ContextFull);
    // A 401 is refused at once, with the server's message.
    let url = fake(401, "");
    let err = connect(SMOLLM, &OpenAiOptions::new(&url))
        .expect_err("401")
        .to_string();
    assert!(
        err.contains("401") && err.contains("invalid api key"),
        "{err}"
    );
}
