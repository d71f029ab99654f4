//! `gac`: token-level ensembles of GGUF models from the command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use gac_examples::config::Plan;

mod args;
mod bench;
mod chat;
mod eval;
mod generate;
mod members;
mod progress;
mod serve;
mod vocab;

/// Ensemble several LLMs token by token (Generation as Classification).
///
/// Each step, every member's next-token distribution is mapped into the union of the members'
/// vocabularies (tokens compared by the bytes they stand for), averaged, and one token is picked
/// and fed back to every member in its own token ids.
#[derive(Parser, Debug)]
#[command(name = "gac", version, about, long_about)]
struct Cli {
    /// Show the runtimes' own log lines (llama.cpp, mistral.rs): -v info, -vv debug, -vvv
    /// trace. RUST_LOG, when set, decides instead (e.g. RUST_LOG=mistralrs_core=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print only results and errors (no loading or status lines).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// Routes `tracing` events (gac's dependencies', and llama.cpp's through llama-cpp-2) to
/// stderr at the level the flags ask for; none by default.
fn init_logs(verbose: u8) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => tracing_subscriber::EnvFilter::new(spec),
        _ => tracing_subscriber::EnvFilter::new(match verbose {
            0 => "off",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text with an ensemble (streamed to stdout, statistics to stderr).
    #[command(
        after_help = "Examples:\n  gac generate --model a.gguf --model b.gguf \"The capital of France is\"\n  gac generate --model a.gguf --gpu 0 --model b.gguf --gate 0 --threshold 0.5 --chat \"Hi!\"\n  gac generate --config ensemble.toml --temperature 0.8 --seed 7 --json -  < prompt.txt"
    )]
    Generate(generate::GenerateArgs),
    /// Show each vocabulary's size, the union size and pairwise overlaps.
    #[command(after_help = "Example:\n  gac vocab --model a.gguf --model mistralrs:b.gguf")]
    Vocab(vocab::VocabArgs),
    /// Measure ms/token of each member alone and of the ensembles, side by side, plus the cost
    /// of the ensemble step and of a gated member's catch-up (prints markdown tables).
    #[command(
        after_help = "Example:\n  gac bench --model a.gguf --model b.gguf --threshold 0.5 --tokens 64"
    )]
    Bench(bench::BenchArgs),
    /// Few-shot generative evaluation (accuracy per task) of each member alone, the average and
    /// gated ensembles; results are resumable JSON lines plus a markdown table.
    #[command(
        after_help = "Examples:\n  gac eval --model a.gguf --model b.gguf --task boolq --task piqa --limit 100\n  gac eval --config ensemble.toml --task bigbench:date_understanding --shots 3 --out results.jsonl"
    )]
    Eval(eval::EvalArgs),
    /// Choose, from your own questions, the configuration of these members that helps, or be
    /// told that none does: members alone and candidate ensembles race on a selection sample,
    /// the winner is checked against the better member on other questions, and the
    /// recommendation is written as a --config file.
    #[command(
        after_help = "Examples:\n  gac tune --model a.gguf --model b.gguf --task jsonl:my-questions.jsonl\n  gac tune --model a.gguf --model b.gguf --task boolq --task piqa --select 60 --confirm 100 --write tuned.toml\n  gac generate --config tuned.toml \"prompt\""
    )]
    Tune(eval::TuneArgs),
    /// Talk with the ensemble: a multi-turn chat in the terminal (each turn through every
    /// member's chat template; members keep their cache across turns).
    #[command(
        after_help = "Example:\n  gac chat --model a.gguf --model b.gguf --system \"You answer briefly.\"\n\nIn the chat: /reset, /stats, /exit (or Ctrl-D); Ctrl-C stops an answer."
    )]
    Chat(chat::ChatArgs),
    /// Serve the ensemble as one model over an OpenAI-compatible HTTP API (completions and chat,
    /// streamed or whole), with slots, a bounded queue, /health and /metrics.
    #[command(
        after_help = "Examples:\n  gac serve --model a.gguf --model b.gguf --port 8080\n  gac serve --config ensemble.toml --parallel 4 --queue 32 --api-key $KEY\n  curl localhost:8080/v1/chat/completions -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'"
    )]
    Serve(serve::ServeArgs),
    /// Show the llama.cpp that gac runs on (version, static or shared libraries) and the devices
    /// it sees.
    Info,
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell), e.g.
    /// `gac completions bash > ~/.local/share/bash-completion/completions/gac`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The ensemble a subcommand's flags describe (`matches` are the whole command line's).
fn plan_of(
    matches: &clap::ArgMatches,
    subcommand: &str,
    args: &args::EnsembleArgs,
) -> Result<Plan> {
    let sub = matches
        .subcommand_matches(subcommand)
        .expect("the subcommand that was parsed");
    args.plan(sub)
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logs(cli.verbose);
    progress::set_quiet(cli.quiet);
    let result = match cli.command {
        Command::Generate(args) => {
            plan_of(&matches, "generate", &args.ensemble).and_then(|c| generate::generate(args, c))
        }
        Command::Chat(args) => {
            plan_of(&matches, "chat", &args.ensemble).and_then(|c| chat::chat(args, c))
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "gac", &mut std::io::stdout());
            Ok(())
        }
        Command::Serve(args) => {
            plan_of(&matches, "serve", &args.ensemble).and_then(|c| serve::serve(args, c))
        }
        Command::Vocab(args) => vocab::vocab(args),
        Command::Bench(args) => bench::bench(args),
        Command::Tune(args) => eval::tune(
            args,
            matches
                .subcommand_matches("tune")
                .expect("the subcommand that was parsed"),
        ),
        Command::Eval(args) => eval::eval(
            args,
            matches
                .subcommand_matches("eval")
                .expect("the subcommand that was parsed"),
        ),
        Command::Info => {
            info();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn info() {
    let info = gac_llamacpp::runtime_info();
    let link = match info.dynamic {
        true => "shared libraries (the ones found at run time)",
        false => "built into gac",
    };
    println!("gac {}", env!("CARGO_PKG_VERSION"));
    let matches = match info.version.starts_with(gac_llamacpp::LLAMA_CPP_VERSION) {
        true => "matches the version gac was built against",
        false => "NOT the version gac was built against",
    };
    println!(
        "llama.cpp {} ({link}; {matches}, {})",
        info.version,
        gac_llamacpp::LLAMA_CPP_VERSION
    );
    println!(
        "GPU offload: {}",
        if info.gpu_offload { "yes" } else { "no" }
    );
    for (backend, name, description, memory) in &info.devices {
        let gib = *memory as f64 / (1u64 << 30) as f64;
        println!("device {name}: {description} ({backend}, {gib:.1} GiB)");
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
