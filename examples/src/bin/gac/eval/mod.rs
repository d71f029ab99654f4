//! `gac eval`: few-shot generative evaluation of members and ensembles, side by side.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use gac_core::{Error, Grammar, Member, Mode, Setting, WhenUnsure};
use gac_examples::config::{Plan, RuntimeKind};
use gac_examples::eval::paired::RESAMPLES;
use gac_examples::eval::plot::{plot_intervals, plot_points};
use gac_examples::eval::screen::{screen, screen_table};
use gac_examples::eval::tasks::{chance, expand_tasks, DataPaths};
use gac_examples::eval::{
    compare, letter_skew, load_task, paired_table, points, sample_at, sample_shots_at, summaries,
    table, Results, Task,
};

mod configs;
mod list;
mod run;
mod tune;

pub use tune::{tune, TuneArgs};

use configs::configurations;
use list::list_tasks;
use run::{learn_weights, run_config};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    members: crate::args::MemberArgs,
    #[command(flatten)]
    remote: super::args::RemoteArgs,
    /// Tasks (repeatable): a built-in one (mmlu, boolq, logiqa, ...: see --list-tasks),
    /// bigbench:NAME (a task.json of the --bigbench folder), jsonl:PATH (your own data).
    #[arg(
        long = "task",
        value_name = "NAME",
        required_unless_present = "list_tasks"
    )]
    tasks: Vec<String>,
    /// List the tasks found in the data folder (with their number of questions) and exit.
    #[arg(long)]
    list_tasks: bool,
    /// Folder with the fetched benchmark data (default: $GAC_CACHE/data, or .cache/data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// A checkout of the BIG-bench repository (or its bigbench/benchmark_tasks folder), where
    /// the bigbench:NAME tasks are read from (default: DATA/bigbench).
    #[arg(long, value_name = "PATH")]
    bigbench: Option<PathBuf>,
    /// Examples per task.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Skip the first N examples of each task's sampled order: with the number `gac tune`
    /// prints, questions (and shots) it never saw.
    #[arg(long, value_name = "N", default_value_t = 0)]
    offset: usize,
    /// Answered examples shown before each question.
    #[arg(long, default_value_t = 3)]
    shots: usize,
    /// Show the shots at position K of each task's sampled order instead of right after the
    /// scored questions: with the number `gac tune` prints, the shots its candidates saw, so a
    /// score on questions it never saw is under the same prompts.
    #[arg(long, value_name = "K", conflicts_with = "learn_weights")]
    shots_at: Option<usize>,
    /// Seed of the example and shot sample.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Gate thresholds to evaluate; repeatable. A --config with a [gate] adds that gated
    /// ensemble too.
    #[arg(long = "threshold", value_name = "T")]
    thresholds: Vec<f32>,
    /// Gate members for the --threshold ensembles (repeatable; default: member 0).
    #[arg(long = "gate", value_name = "N", requires = "thresholds")]
    gates: Vec<usize>,
    /// Also evaluate, for each gate and threshold, deferring to each other member alone at
    /// unsure steps (`when_unsure = member:K`, the paper's defer-to-the-stronger-model variant).
    #[arg(long, requires = "thresholds")]
    defer: bool,
    /// Also evaluate the average over each member's K most probable tokens only (the top-k
    /// union); repeatable.
    #[arg(long = "union-top-k", value_name = "K")]
    union_top_ks: Vec<usize>,
    /// Also evaluate the selective mode: the average only at the steps where the members'
    /// most probable tokens differ.
    #[arg(long)]
    selective: bool,
    /// Skip the members-alone configurations.
    #[arg(long)]
    no_single: bool,
    /// Also evaluate the confidence-weighted average: at each step, each member's weight times
    /// its top probability.
    #[arg(long)]
    confidence: bool,
    /// Also evaluate the average with weights learned per task: each member's accuracy on N
    /// questions of the task kept apart from the scored sample and the shots.
    #[arg(long, value_name = "N", conflicts_with = "no_single")]
    learn_weights: Option<usize>,
    /// Screen tasks instead: run the members alone (no ensembles) and report, per task, whether
    /// every member is above chance and all within --max-gap points of each other, where an
    /// ensemble of them can help. Meant for a small --limit over many tasks
    /// (`--task 'bigbench:*'`).
    #[arg(long, conflicts_with_all = ["thresholds", "union_top_ks", "selective", "no_single", "plot", "plot_paired", "confidence", "learn_weights"])]
    screen: bool,
    /// With --screen: the largest accuracy gap between the members, in points, for a task to
    /// be an ensemble candidate.
    #[arg(
        long,
        value_name = "POINTS",
        default_value_t = 10.0,
        requires = "screen"
    )]
    max_gap: f64,
    /// Token limit per answer.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Every configuration's answers must match the grammar in FILE (llguidance's Lark
    /// syntax), e.g. a task's labels: `start: "A" | "B" | "C" | "D"` (structured outputs).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
    /// Results file (JSON lines; an existing file is resumed: an example already answered in the
    /// same setup, asked the same way, is not generated again). One run at a time per file.
    #[arg(long, value_name = "FILE", default_value = "gac-eval.jsonl")]
    out: PathBuf,
    /// Also draw accuracy against ms/token per configuration into this file (SVG, or PNG for a
    /// name ending in .png).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Also draw each ensemble's difference to the better member (over all examples) with its
    /// interval into this file (SVG, or PNG for a name ending in .png).
    #[arg(long, value_name = "FILE")]
    plot_paired: Option<PathBuf>,
    /// Also write the table's numbers and the comparisons with the better member as JSON (with
    /// --screen: the screen's rows).
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
    /// CPU threads per llama.cpp member (mistral.rs members share one pool, sized by
    /// RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// llama.cpp members hand back only their K most probable tokens, chosen inside llama.cpp's
    /// graph (see `generate --device-top-k`); greedy answers stay those of full distributions.
    #[arg(long = "device-top-k", value_name = "K")]
    device_top_k: Option<u32>,
    /// Context window per member, in tokens (default: the model's, at most 4096). A question
    /// that does not fit is recorded as a failed generation.
    #[arg(long = "ctx", value_name = "TOKENS")]
    context: Option<u32>,
    /// Let llama.cpp members reuse the cached few-shot prefix of the previous question instead
    /// of evaluating every prompt from scratch: about 3x faster, but a reused prefix can round
    /// differently from a fresh one, so an answer can depend on the question before it.
    #[arg(long)]
    prompt_cache: bool,
}

/// Where this run reads its tasks from.
fn data_paths(args: &EvalArgs) -> DataPaths {
    let dir = args.data.clone().unwrap_or_else(|| {
        std::env::var_os("GAC_CACHE")
            .map_or_else(|| PathBuf::from(".cache"), PathBuf::from)
            .join("data")
    });
    DataPaths::new(dir, args.bigbench.clone())
}

impl EvalArgs {
    /// The grammar of `--grammar`, read from its file.
    pub(super) fn grammar(&self) -> Result<Option<Grammar>> {
        let Some(path) = &self.grammar else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("invalid --grammar: cannot read {}", path.display()))?;
        Ok(Some(Grammar::Lark(text)))
    }
}

/// What a run evaluates: its tasks and the checked ensemble plan (the flags bound to their
/// members, the gate and threshold flags checked by gac-core).
pub(super) struct Prepared {
    pub(super) tasks: Vec<Task>,
    pub(super) plan: Plan,
}

/// Reads the tasks and builds the plan of an eval (or tune) run.
pub(super) fn prepare(args: &EvalArgs, matches: &clap::ArgMatches) -> Result<Prepared> {
    let data = data_paths(args);
    let tasks: Vec<Task> = expand_tasks(&args.tasks, &data)?
        .iter()
        .map(|t| load_task(t, &data, args.seed))
        .collect::<Result<_>>()?;
    for task in &tasks {
        if let Some((top, chance)) = letter_skew(task) {
            if task.examples.len() >= 20 && top > 2.0 * chance {
                eprintln!(
                    "gac eval: warning: in {} one letter is the answer to {:.0}% of the questions (chance: {:.0}%); few-shot examples can teach that letter",
                    task.name,
                    100.0 * top,
                    100.0 * chance
                );
            }
        }
    }
    let mut config = args.members.config()?;
    args.remote.bind(&mut config, matches)?;
    for m in &mut config.members {
        if m.runtime == RuntimeKind::LlamaCpp {
            m.threads = Some(args.threads);
            m.device_top_k = args.device_top_k.or(m.device_top_k);
        }
        if !m.runtime.is_remote() {
            m.context = args.context.or(m.context);
        }
    }
    let plan = config.plan()?;
    // A --config's Lark grammar (a tuned file's) is used when --grammar gives the same one.
    if let Some(g) = &plan.combination.grammar {
        if args.grammar()?.as_ref() != Some(g) {
            bail!("the --config's json_schema, json_object or grammar is not used by gac eval: give a Lark grammar with --grammar FILE (the --config's own file, where it names one)");
        }
    }
    args.grammar()?;
    if let Some(at) = args.shots_at {
        for t in &tasks {
            if at.saturating_add(args.shots) > t.examples.len() {
                bail!(
                    "invalid --shots-at: {} has {} questions, so no {} shots at {at}",
                    t.name,
                    t.examples.len(),
                    args.shots
                );
            }
        }
    }
    let n = plan.config.members.len();
    for &gate in args.gates.iter().chain(args.gates.is_empty().then_some(&0)) {
        for &threshold in &args.thresholds {
            let mode = Mode::Gated {
                gate,
                threshold,
                when_unsure: WhenUnsure::Average,
            };
            if let Err(e) = gac_core::ensemble::validate(&plan.combination.weights, &mode, n) {
                match e {
                    Error::Setting {
                        setting: Setting::Gate,
                        message,
                    } => bail!("invalid --gate: {message}"),
                    Error::Setting {
                        setting: Setting::Threshold,
                        message,
                    } => bail!("invalid --threshold: {message}"),
                    e => return Err(e.into()),
                }
            }
        }
    }
    Ok(Prepared { tasks, plan })
}

pub fn eval(args: EvalArgs, matches: &clap::ArgMatches) -> Result<()> {
    if args.list_tasks {
        return list_tasks(&args);
    }
    let Prepared { tasks, plan } = prepare(&args, matches)?;
    let n = plan.config.members.len();
    let mut results = Results::open(&args.out)?;
    let configs = configurations(&plan, &args)?;
    let mut slots: Vec<Option<Box<dyn Member>>> =
        crate::members::load_members(&plan.config.members, false, args.prompt_cache)?
            .into_iter()
            .map(Some)
            .collect();
    let mut current = Vec::new();
    let learned = match args.learn_weights {
        Some(held) if n > 1 => learn_weights(
            &configs[..n],
            &mut slots,
            &tasks,
            held,
            &args,
            &mut results,
            &mut current,
        )?,
        _ => Vec::new(),
    };
    for c in &configs {
        let per_task = c.learned.then_some(&learned[..]);
        let scored = |t: &Task| {
            let len = t.examples.len();
            match args.shots_at {
                Some(at) => {
                    sample_shots_at(len, args.offset, args.limit, args.shots, at, args.seed)
                }
                None => sample_at(len, args.offset, args.limit, args.shots, args.seed),
            }
        };
        current.extend(run_config(
            &mut slots,
            c,
            &tasks,
            &args,
            &mut results,
            &scored,
            per_task,
        )?);
    }
    let ignored = results.records().len().saturating_sub(current.len());
    if ignored > 0 {
        eprintln!(
            "gac eval: {ignored} records in {} belong to other setups or samples, or are failures asked again, and are not counted",
            args.out.display()
        );
    }
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let task_names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    if args.screen {
        let chances: Vec<f64> = tasks.iter().map(chance).collect();
        let members = summaries(&current, &names, &task_names);
        let rows = screen(&members, &task_names, &chances, args.max_gap);
        let candidates = rows.iter().filter(|r| r.candidate).count();
        println!(
            "{candidates} of {} tasks have every member above chance (exact binomial p <= 0.05) and within {} points:\n",
            rows.len(),
            args.max_gap
        );
        println!("{}", screen_table(&rows, &names));
        if let Some(path) = &args.summary {
            std::fs::write(path, serde_json::to_string_pretty(&rows)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("gac eval: screen in {}", path.display());
        }
        eprintln!("gac eval: per-example results in {}", args.out.display());
        return Ok(());
    }
    println!("{}", table(&current, &names, &task_names));
    let comparisons = compare(&current, &names, &task_names, args.seed);
    if !comparisons.is_empty() {
        println!(
            "Each ensemble against the better member (paired over the same questions; {} bootstrap resamples):\n",
            RESAMPLES
        );
        println!("{}", paired_table(&comparisons));
    }
    if let Some(path) = &args.plot_paired {
        let overall: Vec<_> = comparisons
            .iter()
            .filter(|c| c.task == "all")
            .cloned()
            .collect();
        let title = "each ensemble against the better member, all examples";
        plot_intervals(path, title, &overall).map_err(anyhow::Error::msg)?;
        eprintln!("gac eval: interval plot in {}", path.display());
    }
    if let Some(path) = &args.summary {
        let summary = serde_json::json!({
            "configurations": summaries(&current, &names, &task_names),
            "tasks": task_names,
            "versus_better_member": comparisons,
        });
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("gac eval: summary in {}", path.display());
    }
    if let Some(plot) = &args.plot {
        let title = format!(
            "accuracy (mean over {} tasks) vs ms/token",
            task_names.len()
        );
        plot_points(plot, &title, &points(&current, &names, &task_names))
            .map_err(anyhow::Error::msg)?;
        eprintln!("gac eval: plot in {}", plot.display());
    }
    eprintln!("gac eval: per-example results in {}", args.out.display());
    Ok(())
}
