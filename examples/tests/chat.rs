//! `gac chat` through a pseudo-terminal on the default models, as a user types: two turns where
//! the second carries the first (and evaluates only what it adds), Ctrl-C during an answer,
//! `/reset`, and `/exit`.

use std::process::Command;

use gac_tests::{asset, GEMMA, SMOLLM};
use rexpect::session::{spawn_command, PtySession};

/// Waits for the input prompt: "> " after a new line or after the line editor's clear-line.
fn prompt(p: &mut PtySession) {
    p.exp_regex(r"(\n|\x1b\[K)> ").unwrap();
}

/// Member 0's prompt tokens and how many of them came from its cache, from `/stats`.
fn stats(p: &mut PtySession) -> (usize, usize) {
    p.send_line("/stats").unwrap();
    let (_, line) = p
        .exp_regex(r"prompt \d+ tokens \(\d+ from the cache\)")
        .unwrap();
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    prompt(p);
    (numbers[0], numbers[1])
}

#[test]
fn a_chat_keeps_its_history_stops_on_ctrl_c_resets_and_exits() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gac"));
    cmd.args(["chat", "--model", &asset(SMOLLM).display().to_string()])
        .args(["--model", &asset(GEMMA).display().to_string()])
        .args(["--temperature", "0", "--max-tokens", "400"])
        .env_remove("GAC_LLAMA_LOG");
    let mut p = spawn_command(cmd, Some(180_000)).expect("gac chat starts");
    prompt(&mut p);

    p.send_line("My name is Ada. Say hello to me.").unwrap();
    prompt(&mut p);
    let (first, _) = stats(&mut p);

    // The second turn's prompt holds the first turn and its answer, and most of it comes from
    // the cache: only what the turn adds is evaluated.
    p.send_line("What is my name?").unwrap();
    prompt(&mut p);
    let (second, reused) = stats(&mut p);
    assert!(
        second > first + 5,
        "the history reaches the members: {first} then {second}"
    );
    assert!(
        reused >= first,
        "{reused} of {second} prompt tokens from the cache (first turn {first})"
    );
    assert!(
        second - reused < 64,
        "{} tokens evaluated for the second turn",
        second - reused
    );

    p.send_line("/reset").unwrap();
    p.exp_string("history cleared").unwrap();
    prompt(&mut p);
    p.send_line("Hi").unwrap();
    prompt(&mut p);
    let (after_reset, _) = stats(&mut p);
    assert!(
        after_reset < first + 5,
        "after /reset the prompt is one turn: {after_reset}"
    );

    // Ctrl-C stops an answer (this one counts for hundreds of tokens); the session goes on.
    p.send_line("/reset").unwrap();
    prompt(&mut p);
    p.send_line("Write the numbers from 1 to 1000, separated by commas.")
        .unwrap();
    p.exp_string("5. 5").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("[stopped]").unwrap();
    prompt(&mut p);
    p.send_line("Thank you.").unwrap();
    prompt(&mut p);

    p.send_line("/exit").unwrap();
    p.exp_eof().unwrap();
}
