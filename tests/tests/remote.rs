//! Remote members: the default models served by llama-server on 127.0.0.1 (built by
//! `scripts/fetch-assets server` from another llama.cpp release than the one gac links), against
//! the same models in process. Where a text differs, the step where it first differs must be a
//! near-tie of the in-process run (its two most probable tokens within 1e-3).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gac_core::{
    Encoder, Ensemble, Evaluation, GenerateOptions, Generation, Interrupt, Member, Mode, Observer,
    Prompt, UnionId, WhenUnsure,
};
use gac_llamacpp::{LoadError, RemoteMember, RemoteOptions};
use gac_tests::{asset, boxed, member, LlamaServer, GEMMA, PROMPTS, SMOLLM};

const TOKENS: usize = 24;

/// How close the two most probable tokens are where remote and in-process texts part.
const NEAR_TIE: f32 = 1e-3;

fn connect(model: &str, options: &RemoteOptions) -> Result<RemoteMember, LoadError> {
    let path = asset(model);
    let text = gac_llamacpp::load_encoder(&path).unwrap_or_else(|e| panic!("{e}"));
    RemoteMember::connect(gac_core::gguf::model_name(&path), text, &path, options)
}

fn remote(server: &LlamaServer, model: &str, n_probs: usize) -> RemoteMember {
    let options = RemoteOptions {
        n_probs,
        ..RemoteOptions::new(&server.url)
    };
    connect(model, &options).unwrap_or_else(|e| panic!("{e}"))
}

/// Greedy generations of every prompt, with the top two log-probabilities of each step.
fn greedy(ensemble: &mut Ensemble, union_top_k: Option<usize>) -> Vec<Generation> {
    generations(ensemble, union_top_k, Some(2))
}

/// Greedy generations of every prompt, with `logprobs` alternatives reported if asked for.
fn generations(
    ensemble: &mut Ensemble,
    union_top_k: Option<usize>,
    logprobs: Option<usize>,
) -> Vec<Generation> {
    let options = GenerateOptions {
        max_tokens: TOKENS,
        union_top_k,
        logprobs,
        ..GenerateOptions::default()
    };
    PROMPTS
        .iter()
        .map(|p| {
            ensemble
                .generate(p, &options, &mut |_| {})
                .unwrap_or_else(|e| panic!("{p:?}: {e}"))
        })
        .collect()
}

/// The texts are the same, or they part where the in-process run (`want`) had a near-tie
/// and the other run picked its runner-up. Returns how many are the same.
fn same_or_near_tie(what: &str, want: &[Generation], got: &[Generation]) -> usize {
    let mut same = 0;
    for (prompt, (w, g)) in PROMPTS.iter().zip(want.iter().zip(got)) {
        let Some(at) =
            (0..w.tokens.len().min(g.tokens.len())).find(|&i| w.tokens[i] != g.tokens[i])
        else {
            assert_eq!(w.tokens.len(), g.tokens.len(), "{what} {prompt:?}: lengths");
            same += 1;
            continue;
        };
        let top = &w.logprobs[at].top;
        let (p1, p2) = (top[0].1.exp(), top[1].1.exp());
        assert!(
            p1 - p2 < NEAR_TIE && top[1].0 == g.tokens[at],
            "{what} {prompt:?}: differs at token {at} ({:?} instead of {:?}), where the in-process \
             run's two best were {p1} and {p2}\n  in process: {:?}\n  here:       {:?}",
            g.tokens[at],
            w.tokens[at],
            w.text,
            g.text
        );
    }
    eprintln!("{what}: {same} of {} texts the same", want.len());
    same
}

#[test]
fn a_remote_member_is_the_model_in_process_and_evaluates_only_new_tokens() {
    for model in [SMOLLM, GEMMA] {
        let server = LlamaServer::start(model, 1);
        let mut m = remote(&server, model, 20);
        let clock = m.clock();
        // The head: the model's own most probable tokens, with whole-vocabulary probabilities.
        let mut local = member(model);
        let prompt = local.encode_prompt(PROMPTS[0]).unwrap();
        assert_eq!(m.encode_prompt(PROMPTS[0]).unwrap(), prompt, "{model}");
        for x in [&mut local as &mut dyn Member, &mut m] {
            x.reset().unwrap();
            x.push(&prompt).unwrap();
        }
        let logits = local.logits().unwrap().to_vec();
        let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let Evaluation::Head(head) = m.evaluate().unwrap() else {
            panic!("{model}: a remote member hands back its head");
        };
        assert_eq!(head.len(), 20, "{model}");
        for &(id, p) in head {
            let want = (f64::from(logits[id as usize] - max).exp() / sum) as f32;
            assert!(
                (p - want).abs() < NEAR_TIE,
                "{model} id {id}: {p} vs {want}"
            );
        }
        // The full distribution on request, for the same position.
        let full = m.logits().unwrap();
        assert_eq!(full.len(), logits.len(), "{model}");
        let best = gac_core::select::argmax(full).unwrap();
        assert_eq!(best, gac_core::select::argmax(&logits).unwrap(), "{model}");

        // Greedy texts: the same as in process, or parting at a near-tie.
        let mut here = Ensemble::new(boxed(vec![member(model)]), None, Mode::Average).unwrap();
        let mut there =
            Ensemble::new(vec![Box::new(m) as Box<dyn Member>], None, Mode::Average).unwrap();
        let want = greedy(&mut here, None);
        let before = clock.totals();
        let got = generations(&mut there, None, None);
        let same = same_or_near_tie(model, &want, &got);
        assert!(same >= 3, "{model}: only {same} of 5 texts the same");
        // Each step sent the whole context but the server evaluated only the new token: every
        // position once, plus the last one again for each full distribution asked for.
        let after = clock.totals();
        let stats: Vec<_> = got.iter().map(|g| &g.stats.members[0]).collect();
        let evaluations: usize = stats.iter().map(|s| s.head_evals + s.full_after_head).sum();
        let positions: usize = stats
            .iter()
            .zip(&got)
            .map(|(s, g)| s.prompt_tokens + g.tokens.len().min(TOKENS - 1) + s.full_after_head)
            .sum();
        assert_eq!(
            (after.requests - before.requests) as usize,
            evaluations,
            "{model}"
        );
        assert!(
            (after.positions - before.positions) as usize <= positions,
            "{model}: {} positions evaluated for {positions}",
            after.positions - before.positions
        );
    }
}

#[test]
fn mixed_and_all_remote_ensembles_pick_what_the_local_top_k_union_picks() {
    let smollm = LlamaServer::start(SMOLLM, 1);
    let gemma = LlamaServer::start(GEMMA, 1);
    for k in [5, 20] {
        let mut local = Ensemble::new(
            boxed(vec![member(SMOLLM), member(GEMMA)]),
            None,
            Mode::Average,
        )
        .unwrap();
        let want = greedy(&mut local, Some(k));
        // Told to ask for 1 token a step: the union's K tokens are asked for all the same.
        let mixed: Vec<Box<dyn Member>> = vec![
            Box::new(remote(&smollm, SMOLLM, 1)),
            Box::new(member(GEMMA)),
        ];
        let all: Vec<Box<dyn Member>> = vec![
            Box::new(remote(&smollm, SMOLLM, 1)),
            Box::new(remote(&gemma, GEMMA, 1)),
        ];
        for (what, members) in [("mixed", mixed), ("all remote", all)] {
            let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
            let got = greedy(&mut e, Some(k));
            let same = same_or_near_tie(&format!("{what}, top-{k} union"), &want, &got);
            assert!(
                same >= 3,
                "{what}, top-{k}: only {same} of 5 texts the same"
            );
            let refetched: usize = got
                .iter()
                .flat_map(|g| &g.stats.members)
                .map(|m| m.full_after_head)
                .sum();
            assert_eq!(refetched, 0, "{what}, top-{k}: the heads held K tokens");
        }
    }
}

#[test]
fn asking_for_logprobs_changes_no_pick_of_a_remote_member() {
    // Told to hand back 1 token a step, the remote member's head rarely decides a greedy step
    // alone; with logprobs its whole distribution is fetched, and the picks stay the same.
    let smollm = LlamaServer::start(SMOLLM, 1);
    let members = || -> Vec<Box<dyn Member>> {
        vec![
            Box::new(remote(&smollm, SMOLLM, 1)),
            Box::new(member(GEMMA)),
        ]
    };
    let mut e = Ensemble::new(members(), None, Mode::Average).unwrap();
    let plain = generations(&mut e, None, None);
    let mut e = Ensemble::new(members(), None, Mode::Average).unwrap();
    let reported = generations(&mut e, None, Some(5));
    for (prompt, (a, b)) in PROMPTS.iter().zip(plain.iter().zip(&reported)) {
        assert_eq!(a.tokens, b.tokens, "{prompt:?}");
        assert_eq!(b.logprobs.len(), b.tokens.len(), "{prompt:?}");
        // The report is over the whole combined distribution: the remote member gave its
        // whole distribution at every step, besides the head that decided the pick.
        let remote = &b.stats.members[0];
        assert_eq!(remote.full_after_head, remote.head_evals, "{prompt:?}");
    }
}

#[test]
fn a_remote_member_whose_context_fills_ends_like_a_local_one() {
    // 256 tokens a slot and a prompt of about 200: the generation ends `context_full` with its
    // text kept, never with the server's 400 for a request as long as its whole context.
    let server = LlamaServer::start_with_context(SMOLLM, 1, 256);
    let mut e = Ensemble::new(
        vec![Box::new(remote(&server, SMOLLM, 20)) as Box<dyn Member>],
        None,
        Mode::Average,
    )
    .unwrap();
    let prompt = "one two three four five six seven eight nine ten ".repeat(18);
    let options = GenerateOptions {
        max_tokens: 200,
        ..GenerateOptions::default()
    };
    let g = e
        .generate(&prompt, &options, &mut |_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.finish, gac_core::Finish::ContextFull, "{}", g.text);
    let used = g.stats.members[0].prompt_tokens + g.tokens.len();
    assert!(
        !g.text.is_empty() && used >= 250,
        "{used} tokens: {:?}",
        g.text
    );
}

#[test]
fn a_gated_remote_member_catches_up_in_one_request() {
    let gemma = LlamaServer::start(GEMMA, 1);
    let mode = Mode::Gated {
        gate: 0,
        threshold: 0.5,
        when_unsure: WhenUnsure::Average,
    };
    let mut local = Ensemble::new(boxed(vec![member(SMOLLM), member(GEMMA)]), None, mode).unwrap();
    let want = greedy(&mut local, Some(20));
    let m = remote(&gemma, GEMMA, 20);
    let clock = m.clock();
    let members: Vec<Box<dyn Member>> = vec![Box::new(member(SMOLLM)), Box::new(m)];
    let mut e = Ensemble::new(members, None, mode).unwrap();
    let got = greedy(&mut e, Some(20));
    same_or_near_tie("gated", &want, &got);
    let steps: usize = got.iter().map(|g| g.stats.steps).sum();
    let ensembled: usize = got.iter().map(|g| g.stats.ensembled_steps).sum();
    assert!(0 < ensembled && ensembled < steps, "{ensembled} of {steps}");
    // One request per evaluation, and an evaluation only where the gate was unsure: a
    // skipped stretch is caught up in the next request.
    let evaluations: usize = got
        .iter()
        .map(|g| g.stats.members[1].head_evals + g.stats.members[1].full_after_head)
        .sum();
    assert_eq!(clock.totals().requests as usize, evaluations);
    assert_eq!(
        evaluations, ensembled,
        "the remote member is asked only when needed"
    );
}

/// Stops the server after `after` tokens.
struct KillAfter<'a> {
    server: &'a mut LlamaServer,
    after: usize,
    killed: Option<Instant>,
}

impl Observer for KillAfter<'_> {
    fn text(&mut self, _: &str) {}
    fn token(&mut self, _: UnionId, _: Option<&gac_core::TokenLogprob>) {
        self.after = self.after.saturating_sub(1);
        if self.after == 0 && self.killed.is_none() {
            self.server.kill();
            self.killed = Some(Instant::now());
        }
    }
}

#[test]
fn a_server_that_dies_or_stalls_fails_the_generation_naming_it() {
    // Killed mid-generation: refused connections, two retries, then the error.
    let mut server = LlamaServer::start(SMOLLM, 1);
    let url = server.url.clone();
    let members: Vec<Box<dyn Member>> = vec![
        Box::new(remote(&server, SMOLLM, 20)),
        Box::new(member(GEMMA)),
    ];
    let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
    let mut observer = KillAfter {
        server: &mut server,
        after: 3,
        killed: None,
    };
    let options = GenerateOptions {
        max_tokens: TOKENS,
        ..GenerateOptions::default()
    };
    let err = e
        .generate_with(Prompt::Text(PROMPTS[0]), &options, &mut observer)
        .expect_err("the server is gone")
        .to_string();
    let waited = observer.killed.expect("killed after 3 tokens").elapsed();
    assert!(
        err.contains("SmolLM2-135M-Instruct") && err.contains(&url) && err.contains("refused"),
        "{err}"
    );
    assert!(waited < Duration::from_secs(10), "failed after {waited:?}");

    // Stalled (stopped, its port still open): each try times out.
    let server = LlamaServer::start(SMOLLM, 1);
    let options = RemoteOptions {
        timeout: Duration::from_secs(1),
        retries: 1,
        ..RemoteOptions::new(&server.url)
    };
    let mut m = connect(SMOLLM, &options).unwrap();
    let prompt = m.encode_prompt(PROMPTS[0]).unwrap();
    m.reset().unwrap();
    m.push(&prompt).unwrap();
    let signal = |s: &str| {
        let status = std::process::Command::new("kill")
            .args([s, &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let started = Instant::now();
    let err = m.evaluate().map(|_| ()).expect_err("stalled").to_string();
    let waited = started.elapsed();
    signal("-CONT");
    assert!(
        err.contains(&server.url)
            && err.contains("did not answer in time")
            && err.contains("2 times"),
        "{err}"
    );
    assert!(waited < Duration::from_secs(6), "failed after {waited:?}");
}

/// What a [`FaultyProxy`] does to an answer to `/completion`.
#[derive(Clone, Copy)]
enum Fault {
    /// Sends half of it (its whole length announced) and closes.
    Cut,
    /// Sends nothing for this long, then closes.
    Stall(Duration),
    /// Announces 300 MiB and sends zeros until the client hangs up.
    Flood,
}

/// A loopback proxy in front of a llama-server that does `fault` to the first `times` answers
/// to `/completion` and passes everything else.
struct FaultyProxy {
    url: String,
    faults: Arc<AtomicUsize>,
}

impl FaultyProxy {
    fn start(target: &str, fault: Fault, times: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = target.trim_start_matches("http://").to_string();
        let faults = Arc::new(AtomicUsize::new(0));
        let counter = faults.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (target, counter) = (target.clone(), counter.clone());
                std::thread::spawn(move || relay(client, &target, fault, &counter, times));
            }
        });
        Self { url, faults }
    }
}

/// One HTTP/1.1 message with a Content-Length body: (head, body).
fn read_message(reader: &mut impl BufRead) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((head, body))
}

fn relay(
    client: TcpStream,
    target: &str,
    fault: Fault,
    faults: &AtomicUsize,
    times: usize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let (head, body) = read_message(&mut reader)?;
        let faulty = head.starts_with(b"POST /completion ")
            && faults
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < times).then_some(n + 1)
                })
                .is_ok();
        match fault {
            Fault::Stall(wait) if faulty => {
                std::thread::sleep(wait);
                return Ok(());
            }
            Fault::Flood if faulty => {
                let length = 300 << 20;
                write!(client, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n")?;
                let zeros = vec![b'0'; 1 << 20];
                for _ in 0..300 {
                    client.write_all(&zeros)?;
                }
                return Ok(());
            }
            _ => {}
        }
        let mut upstream = TcpStream::connect(target)?;
        upstream.write_all(&head)?;
        upstream.write_all(&body)?;
        let (answer_head, answer) = read_message(&mut BufReader::new(upstream))?;
        client.write_all(&answer_head)?;
        if faulty {
            client.write_all(&answer[..answer.len() / 2])?;
            return Ok(()); // closed mid-answer
        }
        client.write_all(&answer)?;
    }
}

/// One evaluation of the first prompt by a SmolLM2 member behind `options`.
fn first_head(options: &RemoteOptions) -> gac_core::Result<usize> {
    let mut m = connect(SMOLLM, options).unwrap_or_else(|e| panic!("{e}"));
    let prompt = m.encode_prompt(PROMPTS[0]).unwrap();
    m.reset().unwrap();
    m.push(&prompt).unwrap();
    match m.evaluate()? {
        Evaluation::Head(head) => Ok(head.len()),
        _ => panic!("a head"),
    }
}

#[test]
fn cut_off_and_late_answers_are_retried_a_flood_is_refused_and_an_interrupt_ends_a_wait() {
    // Two answers cut off mid-body: retried, the third try answers.
    let server = LlamaServer::start(SMOLLM, 1);
    let proxy = FaultyProxy::start(&server.url, Fault::Cut, 2);
    let options = RemoteOptions {
        retries: 2,
        ..RemoteOptions::new(&proxy.url)
    };
    assert_eq!(first_head(&options).unwrap_or_else(|e| panic!("{e}")), 20);
    assert_eq!(proxy.faults.load(Ordering::SeqCst), 2);

    // Two tries that get no answer within the timeout: retried, the third answers.
    let proxy = FaultyProxy::start(&server.url, Fault::Stall(Duration::from_secs(4)), 2);
    let options = RemoteOptions {
        timeout: Duration::from_secs(1),
        retries: 2,
        ..RemoteOptions::new(&proxy.url)
    };
    let started = Instant::now();
    assert_eq!(first_head(&options).unwrap_or_else(|e| panic!("{e}")), 20);
    assert_eq!(proxy.faults.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() >= Duration::from_secs(2));

    // An answer beyond the size limit: refused at once, not retried, never read whole.
    let proxy = FaultyProxy::start(&server.url, Fault::Flood, 3);
    let options = RemoteOptions {
        retries: 2,
        ..RemoteOptions::new(&proxy.url)
    };
    let err = first_head(&options).expect_err("a flood").to_string();
    assert!(err.contains("answered more than 268435456 bytes"), "{err}");
    assert_eq!(proxy.faults.load(Ordering::SeqCst), 1);

    // A stalled server and a patient member (30 s, 2 retries): the interrupt ends the
    // generation within a poll, not after 90 s.
    let stalled = LlamaServer::start(SMOLLM, 1);
    let options = RemoteOptions {
        timeout: Duration::from_secs(30),
        retries: 2,
        ..RemoteOptions::new(&stalled.url)
    };
    let members: Vec<Box<dyn Member>> = vec![
        Box::new(connect(SMOLLM, &options).unwrap()),
        Box::new(member(GEMMA)),
    ];
    let mut e = Ensemble::new(members, None, Mode::Average).unwrap();
    let interrupt = Interrupt::default();
    e.set_interrupt(interrupt.clone());
    let signal = |s: &str| {
        let status = std::process::Command::new("kill")
            .args([s, &stalled.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        interrupt.set();
        Instant::now()
    });
    let g = e.generate(PROMPTS[0], &GenerateOptions::default(), &mut |_| {});
    let ended = Instant::now();
    signal("-CONT");
    let set = setter.join().unwrap();
    let g = g.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.finish, gac_core::Finish::Cancelled);
    assert!(
        ended.duration_since(set) < Duration::from_secs(1),
        "ended {:?} after the interrupt",
        ended.duration_since(set)
    );
}

#[test]
fn a_server_that_is_not_the_vocabularys_model_is_refused() {
    let gemma = LlamaServer::start(GEMMA, 1);
    let err = connect(SMOLLM, &RemoteOptions::new(&gemma.url))
        .expect_err("a Gemma server is not SmolLM2")
        .to_string();
    assert!(
        err.contains(&gemma.url)
            && err.contains("gemma-3-270m")
            && err.contains("SmolLM2-135M-Instruct.Q4_1.gguf")
            && err.contains("262144 tokens there, 49152 here"),
        "{err}"
    );
    let slot = RemoteOptions {
        slot: 1,
        ..RemoteOptions::new(&gemma.url)
    };
    let err = connect(GEMMA, &slot)
        .expect_err("one slot only")
        .to_string();
    assert!(
        err.contains("slot 1") && err.contains("--parallel 2"),
        "{err}"
    );

    // Nothing listening: refused within a few seconds.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = connect(
        GEMMA,
        &RemoteOptions::new(format!("http://127.0.0.1:{port}")),
    )
    .expect_err("nothing there")
    .to_string();
    assert!(err.contains("is a llama-server running there"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Something that answers, but not as a llama-server does.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello there",
            );
        }
    });
    let err = connect(GEMMA, &RemoteOptions::new(&url))
        .expect_err("not a llama-server")
        .to_string();
    assert!(
        err.contains(&url)
            && err.contains("did not answer what a llama-server answers")
            && err.contains("hello there"),
        "{err}"
    );
}
