//! `gac chat`: a multi-turn conversation with the ensemble in the terminal. Every turn goes
//! through each member's own chat template with the whole history; answers stream; members
//! keep their KV cache across turns, so a turn evaluates only what it adds. Ctrl-C stops the
//! answer and keeps the session; Ctrl-D or `/exit` leaves.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use gac_core::select::DEFAULT_TEMPERATURE;
use gac_core::{Ensemble, Finish, Generation, Message, Observer, Prompt};
use gac_examples::config::Plan;
use rustyline::error::ReadlineError;

use super::args::{EnsembleArgs, SamplingArgs};
use super::generate::print_stats;
use crate::members::load_members;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub ensemble: EnsembleArgs,
    /// A system prompt, the first message of every conversation.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Longest answer, in tokens.
    #[arg(long, value_name = "N", default_value_t = 512)]
    max_tokens: usize,
}

const HELP: &str = "commands: /reset (forget the conversation), /stats (the last answer's statistics), /exit (or Ctrl-D); Ctrl-C stops an answer";

/// Streams an answer to stdout; stops when Ctrl-C set the flag.
struct Terminal {
    stop: Arc<AtomicBool>,
    failed: Option<std::io::Error>,
}

impl Observer for Terminal {
    fn text(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            self.failed.get_or_insert(e);
        }
    }

    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.failed.is_some()
    }
}

pub fn chat(args: ChatArgs, plan: Plan) -> Result<()> {
    let sampling = args.sampling.sampling(DEFAULT_TEMPERATURE)?;
    let options = plan.combination.options(args.max_tokens, sampling);
    // The cache across generations is what lets a turn evaluate only what it adds.
    let members = load_members(&plan.config.members, false, true)?;
    let mut ensemble = Ensemble::new(
        members,
        Some(plan.combination.weights),
        plan.combination.mode,
    )?;
    let mut editor = rustyline::DefaultEditor::new().context("opening the terminal")?;
    // After the editor, which takes SIGINT for itself when it is created: while it reads a
    // line, Ctrl-C is a key it sees; during an answer, it is this signal.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let fresh = || -> Vec<Message> {
        args.system
            .iter()
            .map(|s| Message::new("system", s.clone()))
            .collect()
    };
    let mut history = fresh();
    let mut last: Option<Generation> = None;
    eprintln!(
        "gac: chat with {} members; {HELP}",
        ensemble.members().len()
    );
    loop {
        let line = match editor.readline("> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                eprintln!("(Ctrl-D or /exit leaves)");
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a line"),
        };
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh();
                eprintln!("gac: history cleared");
                continue;
            }
            "/stats" => {
                match &last {
                    Some(g) => print_stats(g),
                    None => eprintln!("gac: no answer yet"),
                }
                continue;
            }
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            _ => {}
        }
        let _ = editor.add_history_entry(line);
        history.push(Message::new("user", line));
        stop.store(false, Ordering::Relaxed);
        let mut terminal = Terminal {
            stop: stop.clone(),
            failed: None,
        };
        match ensemble.generate_with(Prompt::Chat(&history), &options, &mut terminal) {
            Ok(g) => {
                println!();
                match g.finish {
                    Finish::Cancelled => eprintln!("gac: [stopped]"),
                    Finish::ContextFull => {
                        eprintln!("gac: the context is full; /reset starts a new conversation")
                    }
                    _ => {}
                }
                history.push(Message::new("assistant", g.text.clone()));
                last = Some(g);
            }
            Err(e) => {
                // The turn is dropped; the conversation stays as it was.
                history.pop();
                eprintln!("gac: error: {e}");
            }
        }
        if let Some(e) = terminal.failed {
            return Err(e.into());
        }
    }
    Ok(())
}
