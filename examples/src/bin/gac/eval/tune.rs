//! `gac tune`: chooses, from the user's own questions, the configuration that helps, or says
//! that none does.
//!
//! Each task's questions are drawn in one seeded order: the first `--select` are the selection
//! sample, the next `--confirm` the confirmation sample, the next `--shots` the shots. On the
//! selection sample every member runs alone and the candidate ensembles race by successive
//! halving (as many rounds as it takes to leave two, each on twice the questions of the one
//! before and the last on all of them; the better half goes on each time, ties in accuracy
//! going to the faster). The candidates: the average, its top-k union, the
//! confidence-weighted average, weights learned from the members' selection accuracy, and gated
//! ensembles with each member as gate (averaging, or deferring to another member, when unsure).
//! The selective mode is not raced: tune's answers are greedy, and greedy it answers exactly as
//! the average (a token that every member ranks first is the average's first too).
//! The winner then answers the confirmation sample beside the better member, paired question
//! by question. An ensemble is recommended only when the lower end of the 95% paired interval
//! of its gain is above 0; otherwise the better member alone. With several tasks, the same is
//! decided for each task on its own questions, beside the decision for the mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use gac_core::select::DEFAULT_THRESHOLD;
use gac_core::{Member, Mode, Schedule, Weighting, WhenUnsure};
use gac_examples::config::{EnsembleConfig, GateConfig, Plan};
use gac_examples::eval::paired::{paired, Paired};
use gac_examples::eval::plot::{plot_points, Point};
use gac_examples::eval::{sample_at, Record, Results, Task};

use super::configs::{combination_name, configurations, Config};
use super::run::run_config;
use super::{prepare, EvalArgs, Prepared};
use crate::args::{MemberArgs, RemoteArgs};

/// The K of the top-k union candidate (UniTE's choice).
const UNION_TOP_K: usize = 10;

#[derive(Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    members: MemberArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Tasks (repeatable), as for `gac eval`: your own questions as jsonl:PATH, or built-in.
    #[arg(long = "task", value_name = "NAME", required = true)]
    tasks: Vec<String>,
    /// Folder with the fetched benchmark data (default: $GAC_CACHE/data, or .cache/data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// A checkout of the BIG-bench repository, for bigbench:NAME tasks.
    #[arg(long, value_name = "PATH")]
    bigbench: Option<PathBuf>,
    /// Questions per task on which the candidates are compared (the selection sample).
    #[arg(long, value_name = "N", default_value_t = 60)]
    select: usize,
    /// Other questions per task on which the winner is checked against the better member (the
    /// confirmation sample).
    #[arg(long, value_name = "N", default_value_t = 100)]
    confirm: usize,
    /// Answered examples shown before each question.
    #[arg(long, default_value_t = 3)]
    shots: usize,
    /// Seed of the question order.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Gate thresholds tried with each member as the gate (averaging when unsure; deferring to
    /// another member is tried at 0.5).
    #[arg(long = "threshold", value_name = "T", default_values_t = [0.3, 0.5, 0.7])]
    thresholds: Vec<f32>,
    /// Token limit per answer.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Results file (JSON lines, shared with `gac eval`: an answer already there is reused).
    #[arg(long, value_name = "FILE", default_value = "gac-tune.jsonl")]
    out: PathBuf,
    /// Where the recommended configuration is written, for `--config` (with several tasks,
    /// each task's own recommendation too, as FILE's name with `.TASK` before `.toml`).
    #[arg(long, value_name = "FILE", default_value = "gac-tuned.toml")]
    write: PathBuf,
    /// Also draw every candidate's selection accuracy against its ms/token into this file (SVG,
    /// or PNG for a name ending in .png).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// CPU threads per llama.cpp member.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Context window per member, in tokens.
    #[arg(long = "ctx", value_name = "TOKENS")]
    context: Option<u32>,
    /// Let llama.cpp members reuse the cached few-shot prefix of the previous question.
    #[arg(long)]
    prompt_cache: bool,
    /// Every candidate's answers must match the grammar in FILE (llguidance's Lark syntax), as
    /// the tuned configuration's will.
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
}

impl TuneArgs {
    /// The `gac eval` run whose configurations and questions tune draws on.
    fn eval_args(self) -> EvalArgs {
        EvalArgs {
            members: self.members,
            remote: self.remote,
            tasks: self.tasks,
            list_tasks: false,
            data: self.data,
            bigbench: self.bigbench,
            limit: self.select + self.confirm,
            offset: 0,
            shots: self.shots,
            shots_at: None,
            seed: self.seed,
            thresholds: self.thresholds,
            gates: Vec::new(),
            defer: false,
            union_top_ks: vec![UNION_TOP_K],
            // Greedy, the selective mode answers exactly as the average: not raced.
            selective: false,
            no_single: false,
            confidence: true,
            learn_weights: None,
            screen: false,
            max_gap: 0.0,
            max_tokens: self.max_tokens,
            out: self.out,
            plot: None,
            plot_paired: None,
            summary: None,
            threads: self.threads,
            device_top_k: None,
            context: self.context,
            prompt_cache: self.prompt_cache,
            grammar: self.grammar,
        }
    }
}

/// One candidate's answers on the selection sample (and the confirmation sample, for the two
/// compared there).
struct Candidate {
    config: Config,
    selection: Vec<Record>,
    /// The halving round it fell out in (1-based), if it did.
    dropped: Option<usize>,
    confirmation: Vec<Record>,
}

impl Candidate {
    fn new(config: Config) -> Self {
        Self {
            config,
            selection: Vec::new(),
            dropped: None,
            confirmation: Vec::new(),
        }
    }

    fn accuracy<'a>(records: impl IntoIterator<Item = &'a Record>) -> Option<f64> {
        let (mut answered, mut right) = (0, 0);
        for r in records.into_iter().filter(|r| r.error.is_none()) {
            answered += 1;
            right += usize::from(r.correct);
        }
        (answered > 0).then(|| 100.0 * right as f64 / answered as f64)
    }

    /// Its selection answers, of one task or (`None`) of all.
    fn selection_in<'a>(&'a self, task: Option<&'a str>) -> impl Iterator<Item = &'a Record> {
        (self.selection.iter()).filter(move |r| task.is_none_or(|t| r.task == t))
    }

    fn ms_per_token(&self, task: Option<&str>) -> f64 {
        let ok: Vec<f64> = (self.selection_in(task))
            .filter(|r| r.error.is_none() && r.tokens > 0)
            .map(|r| r.ms_per_token)
            .collect();
        ok.iter().sum::<f64>() / ok.len().max(1) as f64
    }

    /// Higher accuracy first, then the faster, on one task's selection answers or all.
    fn rank(&self, task: Option<&str>) -> (f64, f64) {
        let accuracy = Self::accuracy(self.selection_in(task)).unwrap_or(-1.0);
        (accuracy, -self.ms_per_token(task))
    }
}

/// The best of the candidates that ran the whole selection sample, on one task or all.
fn best_of(list: &[Candidate], task: Option<&str>) -> usize {
    (0..list.len())
        .filter(|&i| list[i].dropped.is_none())
        .max_by(|&a, &b| {
            let (a, b) = (list[a].rank(task), list[b].rank(task));
            a.partial_cmp(&b).expect("finite")
        })
        .expect("a candidate")
}

/// What tune recommends, by its rule.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// The ensemble's gain over the better member holds on the confirmation sample.
    Ensemble,
    /// No ensemble was shown to help: the better member alone.
    Member,
}

/// The rule that protects the user: an ensemble only where the 95% paired interval of its gain
/// over the better member, on questions the choice never saw, lies above 0.
pub(super) fn verdict(confirmed: Option<&Paired>) -> Verdict {
    match confirmed {
        Some(p) if p.low > 0.0 => Verdict::Ensemble,
        _ => Verdict::Member,
    }
}

pub fn tune(args: TuneArgs, matches: &clap::ArgMatches) -> Result<()> {
    let (select, confirm, write) = (args.select, args.confirm, args.write.clone());
    let plot = args.plot.clone();
    if select < 4 || confirm < 4 {
        bail!("--select and --confirm need at least 4 questions each (got {select} and {confirm})");
    }
    let mut eval = args.eval_args();
    let Prepared { tasks, plan } = prepare(&eval, matches)?;
    let n = plan.config.members.len();
    if n < 2 {
        bail!("gac tune compares ensembles with their members: give at least two members");
    }
    eval.gates = (0..n).collect();
    let mut results = Results::open(&eval.out)?;
    let mut slots: Vec<Option<Box<dyn Member>>> =
        crate::members::load_members(&plan.config.members, false, eval.prompt_cache)?
            .into_iter()
            .map(Some)
            .collect();
    // The seeded order of each task: selection, then confirmation, then shots.
    let orders: HashMap<String, (Vec<usize>, Vec<usize>)> = tasks
        .iter()
        .map(|t| {
            let order = sample_at(t.examples.len(), 0, select + confirm, eval.shots, eval.seed);
            (t.name.clone(), order)
        })
        .collect();
    // Questions from..to of each task's order, of one task only where `only` names it.
    let questions = |from: usize, to: usize, only: Option<&str>| {
        let orders = &orders;
        let only = only.map(str::to_string);
        move |t: &Task| {
            let (order, shots) = &orders[&t.name];
            let (mut from, to) = (from.min(order.len()), to.min(order.len()));
            if only.as_ref().is_some_and(|name| *name != t.name) {
                from = to;
            }
            (order[from..to].to_vec(), shots.clone())
        }
    };
    let mut run_on = |config: &Config, from: usize, to: usize, only: Option<&str>| {
        run_config(
            &mut slots,
            config,
            &tasks,
            &eval,
            &mut results,
            &questions(from, to, only),
            None,
        )
    };

    // Each member alone on the whole selection sample, then the ensembles race.
    let mut members = Vec::new();
    let mut candidates = Vec::new();
    for config in configurations(&plan, &eval)? {
        match (config.members.len(), config.mode) {
            (1, _) => members.push(config),
            // A --config's own selective mode: greedy, it is the average.
            (_, Mode::Selective) => {}
            _ => candidates.push(config),
        }
    }
    let started = Instant::now();
    let mut alone: Vec<Candidate> = Vec::new();
    for config in members {
        let mut member = Candidate::new(config);
        member.selection = run_on(&member.config, 0, select, None)?;
        alone.push(member);
    }
    let members_time = started.elapsed();
    candidates.push(learned(&plan, &eval, &alone));
    for config in deferring(&plan, &eval) {
        if !candidates.iter().any(|c| c.name == config.name) {
            candidates.push(config);
        }
    }
    let mut racing: Vec<Candidate> = candidates.into_iter().map(Candidate::new).collect();
    for (round, upto) in halving_rounds(racing.len(), select).into_iter().enumerate() {
        let mut alive: Vec<&mut Candidate> =
            racing.iter_mut().filter(|c| c.dropped.is_none()).collect();
        for c in alive.iter_mut() {
            c.selection = run_on(&c.config, 0, upto, None)?;
        }
        if upto == select {
            break;
        }
        alive.sort_by(|a, b| b.rank(None).partial_cmp(&a.rank(None)).expect("finite"));
        // The better half goes on (ties in accuracy go to the faster).
        let keep = alive.len().div_ceil(2);
        for c in alive.into_iter().skip(keep) {
            c.dropped = Some(round + 1);
        }
    }
    let race_time = started.elapsed() - members_time;
    let confirming = Instant::now();
    let (m, e) = (best_of(&alone, None), best_of(&racing, None));
    let ahead = racing[e].rank(None).0 > alone[m].rank(None).0;
    // The confirmation sample, where the winner led: it and the better member, paired.
    let mut confirmed = None;
    if ahead {
        alone[m].confirmation = run_on(&alone[m].config, select, select + confirm, None)?;
        racing[e].confirmation = run_on(&racing[e].config, select, select + confirm, None)?;
        confirmed = Some(pair(&racing[e], &alone[m], "all", eval.seed));
    }
    let decision = verdict(confirmed.as_ref());
    report(
        &alone,
        &racing,
        (m, e),
        confirmed.as_ref(),
        &tasks,
        eval.seed,
    );
    let (chosen, evidence) = match decision {
        Verdict::Ensemble => {
            let p = confirmed.as_ref().expect("an ensemble is confirmed");
            println!(
                "\nRecommended: {} (ahead of {} alone by {:+.1} points on {} questions it was not chosen on, 95% interval {:+.1} to {:+.1}, McNemar p {:.3}).",
                racing[e].config.name, alone[m].config.name, p.difference, p.n, p.low, p.high, p.p_value
            );
            (&racing[e].config, format!("{} ahead of {} alone by {:+.1} points (95% paired interval {:+.1} to {:+.1}, McNemar p {:.3}, n = {})", racing[e].config.name, alone[m].config.name, p.difference, p.low, p.high, p.p_value, p.n))
        }
        Verdict::Member => {
            let why = match &confirmed {
                Some(p) => format!(
                    "the best ensemble, {}, was {:+.1} points against it on the confirmation sample (95% interval {:+.1} to {:+.1}): not shown to help",
                    racing[e].config.name, p.difference, p.low, p.high
                ),
                None => format!(
                    "no ensemble was ahead of it on the selection sample (the best, {}, {:.1}% against {:.1}%)",
                    racing[e].config.name,
                    racing[e].rank(None).0,
                    alone[m].rank(None).0
                ),
            };
            let name = &plan.config.members[alone[m].config.members[0]];
            println!(
                "\nRecommended: no ensemble of these members helps on these questions; use {} alone ({}): {why}.",
                alone[m].config.name,
                name.place()
            );
            (
                &alone[m].config,
                format!("{} alone: {why}", alone[m].config.name),
            )
        }
    };
    let toml = tuned_toml(&plan, chosen, &tasks, (select, confirm), &eval, &evidence)?;
    std::fs::write(&write, toml).with_context(|| format!("cannot write {}", write.display()))?;
    println!(
        "Written to {}: run it with `gac generate --config {0}` (or chat, serve).",
        write.display()
    );
    let (command, spent) = held_out_command(&write, &eval, &tasks, select + confirm);
    match command {
        Some(command) => {
            println!("To score it on questions tune never saw, under the same prompts: {command}")
        }
        None => {
            println!("Every question was used: give more to score it on questions tune never saw.")
        }
    }
    if !spent.is_empty() && spent.len() < tasks.len() {
        println!(
            "(Left out of that command, all of whose questions were used: {}.)",
            spent.join(", ")
        );
    }
    // Each task decided on its own questions: its better member and its best ensemble (of
    // those that ran the whole selection sample) on its selection answers, confirmed on its
    // confirmation questions where the ensemble led.
    if tasks.len() > 1 {
        println!("\nPer task, each decided on its own questions by the same rule (among the ensembles that ran the whole selection sample):\n");
        println!("| task | better member | best ensemble | selection accuracy (member, ensemble) | gain on confirmation | recommended | written to |");
        println!("|---|---|---|---|---|---|---|");
        for task in &tasks {
            let name = task.name.as_str();
            let (mt, et) = (best_of(&alone, Some(name)), best_of(&racing, Some(name)));
            let (member, ensemble) = (alone[mt].rank(Some(name)).0, racing[et].rank(Some(name)).0);
            let mut confirmed = None;
            if ensemble > member {
                for c in [&mut alone[mt], &mut racing[et]] {
                    let records = run_on(&c.config, select, select + confirm, Some(name))?;
                    c.confirmation.retain(|r| r.task != name);
                    c.confirmation.extend(records);
                }
                confirmed = Some(pair(&racing[et], &alone[mt], name, eval.seed));
            }
            let chosen = match verdict(confirmed.as_ref()) {
                Verdict::Ensemble => &racing[et].config,
                Verdict::Member => &alone[mt].config,
            };
            let gain = confirmed
                .as_ref()
                .map_or("not run (no ensemble led)".into(), |p| {
                    format!(
                        "{:+.1} ({:+.1} to {:+.1}, n = {})",
                        p.difference, p.low, p.high, p.n
                    )
                });
            let evidence = format!(
                "on task {name}: {} against {} alone: {gain}; recommended: {}",
                racing[et].config.name, alone[mt].config.name, chosen.name
            );
            let path = task_path(&write, name);
            let toml = tuned_toml(
                &plan,
                chosen,
                std::slice::from_ref(task),
                (select, confirm),
                &eval,
                &evidence,
            )?;
            std::fs::write(&path, toml)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "| {name} | {} | {} | {member:.1}, {ensemble:.1} | {gain} | {} | {} |",
                alone[mt].config.name,
                racing[et].config.name,
                chosen.name,
                path.display()
            );
        }
    }
    let confirm_time = confirming.elapsed();
    if let Some(path) = &plot {
        plot_selection(path, &alone, &racing)?;
    }
    cost_table(
        &[
            ("the members alone, selection sample", members_time),
            ("the race of the ensembles (successive halving)", race_time),
            ("the confirmations (overall, and per task)", confirm_time),
            ("all (loading the members not counted)", started.elapsed()),
        ],
        &eval.out,
    );
    Ok(())
}

/// How many selection questions each halving round asks: the whole sample in the last round,
/// half of it in the one before, and so on back to the first, with as many rounds as halving
/// `candidates` takes to leave two (so every round costs about the same).
fn halving_rounds(candidates: usize, select: usize) -> Vec<usize> {
    let rounds = candidates.max(2).next_power_of_two().trailing_zeros();
    (0..rounds)
        .rev()
        .map(|halvings| select.div_ceil(1 << halvings))
        .collect()
}

/// Draws every candidate's accuracy on the selection questions it answered against its
/// ms/token; a candidate dropped by the halving is labelled with how many it answered.
fn plot_selection(path: &std::path::Path, alone: &[Candidate], racing: &[Candidate]) -> Result<()> {
    let points: Vec<Point> = (alone.iter().chain(racing))
        .filter_map(|c| {
            let accuracy = Candidate::accuracy(&c.selection)?;
            let label = match c.dropped {
                Some(_) => format!("{} (n={})", c.config.name, c.selection.len()),
                None => c.config.name.clone(),
            };
            Some(Point {
                label,
                ms_per_token: c.ms_per_token(None),
                accuracy,
            })
        })
        .collect();
    let title = "gac tune: selection accuracy vs ms/token";
    plot_points(path, title, &points).map_err(anyhow::Error::msg)?;
    eprintln!("gac tune: plot in {}", path.display());
    Ok(())
}

/// The file of one task's recommendation: `tuned.toml` becomes `tuned.TASK.toml`, the task's
/// name reduced to letters, digits, `-` and `_`.
fn task_path(write: &std::path::Path, task: &str) -> PathBuf {
    let task: String = task
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '_',
            },
        )
        .collect();
    let stem = write.file_stem().unwrap_or_default().to_string_lossy();
    write.with_file_name(format!("{stem}.{task}.toml"))
}

/// Gated ensembles that, where the gate is unsure, take another member alone (the paper's
/// defer-to-the-stronger-model variant), at the default threshold, each member as gate.
fn deferring(plan: &Plan, eval: &EvalArgs) -> Vec<Config> {
    let n = plan.config.members.len();
    let all: Vec<usize> = (0..n).collect();
    let weights = Some(plan.combination.weights.clone());
    let mut configs = Vec::new();
    for gate in 0..n {
        for k in (0..n).filter(|&k| k != gate) {
            let mode = Mode::Gated {
                gate,
                threshold: DEFAULT_THRESHOLD,
                when_unsure: WhenUnsure::Defer(k),
            };
            configs.push(Config::new(
                (plan, eval),
                combination_name(mode, None, Weighting::Fixed),
                all.clone(),
                weights.clone(),
                (mode, Schedule::Lazy),
                None,
            ));
        }
    }
    configs
}

/// The average with each member weighted by its accuracy on the selection sample (plus 0.01,
/// so that none is 0).
fn learned(plan: &Plan, eval: &EvalArgs, alone: &[Candidate]) -> Config {
    let weights: Vec<f32> = alone
        .iter()
        .map(|c| (Candidate::accuracy(&c.selection).unwrap_or(0.0) / 100.0) as f32 + 0.01)
        .collect();
    Config::new(
        (plan, eval),
        "average:learned".into(),
        (0..alone.len()).collect(),
        Some(weights),
        (Mode::Average, plan.combination.schedule),
        None,
    )
}

/// `ensemble` against `member` on the confirmation questions both answered, in `task` (or all).
fn pair(ensemble: &Candidate, member: &Candidate, task: &str, seed: u64) -> Paired {
    let base: HashMap<(&str, &str), bool> = (member.confirmation.iter())
        .filter(|r| r.error.is_none())
        .map(|r| ((r.task.as_str(), r.id.as_str()), r.correct))
        .collect();
    let pairs: Vec<(bool, bool)> = (ensemble.confirmation.iter())
        .filter(|r| r.error.is_none() && (task == "all" || r.task == task))
        .filter_map(|r| Some((r.correct, *base.get(&(r.task.as_str(), r.id.as_str()))?)))
        .collect();
    paired(
        &ensemble.config.name,
        &member.config.name,
        task,
        &pairs,
        seed,
    )
}

/// The table of every candidate on both samples, and the winner per task.
fn report(
    alone: &[Candidate],
    racing: &[Candidate],
    (m, e): (usize, usize),
    confirmed: Option<&Paired>,
    tasks: &[Task],
    seed: u64,
) {
    let cell = |records: &[Record]| match Candidate::accuracy(records) {
        Some(a) => format!(
            "{a:.1} (n={})",
            records.iter().filter(|r| r.error.is_none()).count()
        ),
        None => String::new(),
    };
    println!("The selective mode is not raced: greedy, it answers exactly as the average, whose row stands for it.\n");
    println!("| configuration | selection accuracy | ms/token | halving | confirmation accuracy |");
    println!("|---|---:|---:|---|---:|");
    for (i, c) in alone.iter().chain(racing).enumerate() {
        let fate = match (c.dropped, i == m, i == alone.len() + e) {
            (Some(r), _, _) => format!("dropped after round {r}"),
            (None, true, _) => "better member".into(),
            (None, _, true) => "winner".into(),
            (None, _, _) => String::new(),
        };
        println!(
            "| {} | {} | {:.1} | {fate} | {} |",
            c.config.name,
            cell(&c.selection),
            c.ms_per_token(None),
            cell(&c.confirmation)
        );
    }
    if let (Some(all), true) = (confirmed, tasks.len() > 1) {
        println!(
            "\n| task | gain over {} (points) | 95% interval | n |",
            all.baseline
        );
        println!("|---|---:|---|---:|");
        for task in tasks {
            let p = pair(&racing[e], &alone[m], &task.name, seed);
            if p.n > 0 {
                println!(
                    "| {} | {:+.1} | {:+.1} to {:+.1} | {} |",
                    task.name, p.difference, p.low, p.high, p.n
                );
            }
        }
        println!(
            "| all | {:+.1} | {:+.1} to {:+.1} | {} |",
            all.difference, all.low, all.high, all.n
        );
    }
}

/// The chosen configuration as a `--config` file, with the evidence in a comment block.
fn tuned_toml(
    plan: &Plan,
    chosen: &Config,
    tasks: &[Task],
    (select, confirm): (usize, usize),
    eval: &EvalArgs,
    evidence: &str,
) -> Result<String> {
    let members: Vec<_> = chosen
        .members
        .iter()
        .zip(
            chosen
                .weights
                .clone()
                .unwrap_or_else(|| vec![1.0; chosen.members.len()]),
        )
        .map(|(&i, weight)| gac_examples::config::MemberConfig {
            weight,
            ..plan.config.members[i].clone()
        })
        .collect();
    let gate = match chosen.mode {
        Mode::Average | Mode::Selective => None,
        Mode::Gated {
            gate,
            threshold,
            when_unsure,
        } => Some(GateConfig {
            member: gate,
            threshold,
            when_unsure: when_unsure.name(),
            schedule: None,
        }),
    };
    let config = EnsembleConfig {
        name: plan.config.name.clone(),
        members,
        gate,
        weighting: (chosen.weighting == Weighting::Confidence).then(|| "confidence".into()),
        mode: (chosen.mode == Mode::Selective).then(|| chosen.mode.name().into()),
        union_top_k: chosen.union_top_k,
        json_schema: None,
        json_object: None,
        // Absolute: the file is read relative to the TOML's folder.
        grammar: (eval.grammar.as_ref()).map(|p| std::path::absolute(p).unwrap_or(p.clone())),
    };
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    let members: Vec<String> = plan.config.members.iter().map(|m| m.place()).collect();
    let header = format!(
        "# Chosen by gac tune on {}.\n# Members: {}.\n# Tasks: {}; per task the first {select} questions of the seeded order (seed {}) chose, the next {confirm} confirmed, {} shots: the questions that follow (gac eval --shots-at {}).\n# Evidence: {evidence}.\n# The rule: an ensemble only where the 95% paired interval of its gain over the better member, on the confirmation questions, is above 0; it holds for questions like these, under prompts like these, as far as these samples represent them.\n",
        today(),
        members.join(", "),
        names.join(", "),
        eval.seed,
        eval.shots,
        select + confirm,
    );
    Ok(format!("{header}{}", config.to_toml()?))
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The `gac eval` command that scores `file` on the questions of each task tune did not use
/// (past its first `used` and the shots), under the same prompts (the same shots, at `used`)
/// and setup, and the tasks left out because it used all of theirs (their shots sit elsewhere);
/// no command when that is every task.
fn held_out_command<'a>(
    file: &Path,
    eval: &EvalArgs,
    tasks: &'a [Task],
    used: usize,
) -> (Option<String>, Vec<&'a str>) {
    let (mut left, mut spent) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.examples.len().saturating_sub(used + eval.shots) {
            0 => spent.push(t.name.as_str()),
            n => left.push((t.name.as_str(), n)),
        }
    }
    let Some(limit) = left.iter().map(|&(_, n)| n).max() else {
        return (None, spent);
    };
    let path = |p: &Path| quoted(&p.display().to_string());
    let mut words = vec!["gac eval --config".to_string(), path(file)];
    for (name, _) in &left {
        words.extend(["--task".into(), quoted(name)]);
    }
    for (flag, value) in [("--data", &eval.data), ("--bigbench", &eval.bigbench)] {
        if let Some(v) = value {
            words.extend([flag.into(), path(v)]);
        }
    }
    if let Some(g) = &eval.grammar {
        words.extend(["--grammar".into(), path(g)]);
    }
    words.push(format!(
        "--shots {} --seed {} --max-tokens {} --threads {}",
        eval.shots, eval.seed, eval.max_tokens, eval.threads
    ));
    if let Some(c) = eval.context {
        words.push(format!("--ctx {c}"));
    }
    if let Some(k) = eval.device_top_k {
        words.push(format!("--device-top-k {k}"));
    }
    if eval.prompt_cache {
        words.push("--prompt-cache".into());
    }
    words.push(format!(
        "--offset {} --shots-at {used} --limit {limit}",
        used + eval.shots
    ));
    (Some(words.join(" ")), spent)
}

/// `word` as one shell word: as it is when it holds nothing the shell reads, else quoted.
fn quoted(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=+,@%".contains(c);
    match !word.is_empty() && word.chars().all(plain) {
        true => word.to_string(),
        false => format!("'{}'", word.replace('\'', "'\\''")),
    }
}

/// The run's cost by part, in minutes and as a multiple of the members alone (the first part;
/// no multiple where their answers were reused from the results file).
fn cost_table(parts: &[(&str, Duration)], out: &Path) {
    println!(
        "\nCost of this run (answers already in {} are reused, not counted):\n",
        out.display()
    );
    println!("| part | minutes | x the members alone |\n|---|---:|---:|");
    let base = parts[0].1.as_secs_f64();
    for (part, time) in parts {
        let t = time.as_secs_f64();
        let times = match base >= 1.0 {
            true => format!("{:.1}", t / base),
            false => "- (their answers were reused)".into(),
        };
        println!("| {part} | {:.1} | {times} |", t / 60.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gain(low: f64) -> Paired {
        Paired {
            config: "average".into(),
            baseline: "member:1".into(),
            task: "all".into(),
            n: 100,
            difference: low + 3.0,
            low,
            high: low + 6.0,
            wins: 10,
            losses: 4,
            p_value: 0.18,
        }
    }

    #[test]
    fn an_ensemble_only_where_its_gain_holds() {
        assert_eq!(verdict(Some(&gain(0.5))), Verdict::Ensemble);
        assert_eq!(verdict(Some(&gain(0.0))), Verdict::Member);
        assert_eq!(verdict(Some(&gain(-2.0))), Verdict::Member);
        assert_eq!(verdict(None), Verdict::Member);
    }

    #[test]
    fn halving_doubles_the_sample_until_two_are_left() {
        assert_eq!(halving_rounds(13, 40), [5, 10, 20, 40]);
        assert_eq!(halving_rounds(8, 60), [15, 30, 60]);
        assert_eq!(halving_rounds(2, 60), [60]);
        assert_eq!(halving_rounds(1, 60), [60]);
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
