//! `gac eval`: few-shot generative evaluation of members and ensembles, side by side.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use gac_core::{Ensemble, GenerateOptions, Member, Mode, Schedule, Weighting, WhenUnsure};
use gac_examples::config::{EnsembleConfig, RuntimeKind};
use gac_examples::eval::paired::RESAMPLES;
use gac_examples::eval::plot::{plot_intervals, plot_points};
use gac_examples::eval::{
    compare, extract, fingerprint, held_out, is_correct, letter_skew, load_task, paired_table,
    points, sample,
    screen::{screen, screen_table},
    summaries, table,
    tasks::{bigbench_tasks, chance, expand_tasks, task_kind, GENERATIVE},
    Record, Results, Target, Task, TASKS,
};

use super::progress;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    members: super::MemberArgs,
    /// Tasks (repeatable): mmlu, boolq, piqa, commonsenseqa, openbookqa, nq-open, asdiv,
    /// bigbench:NAME (a task.json under DATA/bigbench), jsonl:PATH (your own data).
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
    /// Examples per task.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Answered examples shown before each question.
    #[arg(long, default_value_t = 3)]
    shots: usize,
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
    #[arg(long, conflicts_with_all = ["thresholds", "union_top_ks", "no_single", "plot", "plot_paired", "confidence", "learn_weights"])]
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

fn data_dir(args: &EvalArgs) -> PathBuf {
    args.data.clone().unwrap_or_else(|| {
        std::env::var_os("GAC_CACHE")
            .map_or_else(|| PathBuf::from(".cache"), PathBuf::from)
            .join("data")
    })
}

/// Prints every task that can be loaded from the data folder, with its size, and those that
/// cannot, with why.
fn list_tasks(args: &EvalArgs) -> Result<()> {
    let data = data_dir(args);
    let mut names: Vec<String> = TASKS.iter().map(|(n, _)| n.to_string()).collect();
    let (bigbench, left_out) = bigbench_tasks(&data.join("bigbench"));
    names.extend(bigbench);
    let show = |name: &str, task: &Task| {
        println!(
            "{name:<64} {:>6} questions, {}",
            task.examples.len(),
            task_kind(task)
        )
    };
    let choices = |task: &Task| matches!(task.examples[0].target, Target::Choice { .. });
    for name in names.iter().chain(&left_out) {
        match load_task(name, &data, args.seed) {
            Ok(task) => {
                show(name, &task);
                // A multiple-choice BIG-bench task may also have short answers.
                let generative = format!("{name}{GENERATIVE}");
                if name.starts_with("bigbench:") && choices(&task) {
                    match load_task(&generative, &data, args.seed) {
                        Ok(other) if !choices(&other) => show(&generative, &other),
                        _ => {}
                    }
                }
            }
            Err(e) => println!("{name:<64} unavailable: {e:#}"),
        }
    }
    println!("{:<64} your own questions (see the README)", "jsonl:PATH");
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    if args.list_tasks {
        return list_tasks(&args);
    }
    let tasks: Vec<Task> = expand_tasks(&args.tasks, &data_dir(&args))?
        .iter()
        .map(|t| load_task(t, &data_dir(&args), args.seed))
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
    for m in &mut config.members {
        if m.runtime == RuntimeKind::LlamaCpp {
            m.threads = Some(args.threads);
            m.device_top_k = args.device_top_k.or(m.device_top_k);
        }
        m.context = args.context.or(m.context);
    }
    config.validate()?;
    for &t in &args.thresholds {
        if !(0.0..=1.0).contains(&t) {
            bail!("invalid threshold: {t} is outside [0, 1]");
        }
    }
    let n = config.members.len();
    if let Some(g) = args.gates.iter().find(|&&g| g >= n) {
        bail!(
            "invalid --gate: member {g} does not exist (members are 0..{})",
            n - 1
        );
    }
    let mut results = Results::open(&args.out)?;
    let configs = configurations(&config, &args)?;
    let mut slots: Vec<Option<Box<dyn Member>>> =
        super::load_members(&config, false, args.prompt_cache)?
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
        let members: Vec<Box<dyn Member>> = c
            .members
            .iter()
            .map(|&i| slots[i].take().expect("member in its slot"))
            .collect();
        let mut ensemble = Ensemble::new(members, c.weights.clone(), c.mode)?;
        let per_task = c.learned.then_some(&learned[..]);
        let scored = |t: &Task| sample(t.examples.len(), args.limit, args.shots, args.seed);
        let outcome = run_config(
            &mut ensemble,
            c,
            &tasks,
            &args,
            &mut results,
            &scored,
            per_task,
        );
        for (&i, m) in c.members.iter().zip(ensemble.into_members()) {
            slots[i] = Some(m);
        }
        current.extend(outcome?);
    }
    let ignored = results.records().len().saturating_sub(current.len());
    if ignored > 0 {
        eprintln!(
            "gac eval: {ignored} records in {} belong to other setups or samples and are not counted",
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

/// One configuration: which members, combined how, and the fingerprint of its setup.
#[derive(Clone)]
struct Config {
    name: String,
    members: Vec<usize>,
    weights: Option<Vec<f32>>,
    mode: Mode,
    schedule: Schedule,
    union_top_k: Option<usize>,
    weighting: Weighting,
    /// Weights learned per task (`--learn-weights`) replace `weights`.
    learned: bool,
    setup: String,
}

/// Each member alone, the average (with the configuration's weights), each top-k union, the
/// gated ensembles of --threshold (gate = member 0) and the configuration's own [gate].
fn configurations(config: &EnsembleConfig, args: &EvalArgs) -> Result<Vec<Config>> {
    let n = config.members.len();
    let all: Vec<usize> = (0..n).collect();
    let weights = Some(config.weights());
    let (own, own_schedule) = (config.mode()?, config.schedule()?);
    let make = |name: String, members: Vec<usize>, weights: Option<Vec<f32>>, mode, top_k| {
        let schedule = match mode == own {
            true => own_schedule,
            false => Schedule::Lazy,
        };
        let setup = setup_fingerprint(config, &members, &weights, (mode, schedule), top_k, args);
        Config {
            name,
            members,
            weights,
            mode,
            schedule,
            union_top_k: top_k,
            weighting: Weighting::Fixed,
            learned: false,
            setup,
        }
    };
    // A variant of the average: same members and mode, its own name and setup.
    let variant = |name: &str, what: &str| {
        let mut c = make(
            name.into(),
            (0..n).collect(),
            weights.clone(),
            Mode::Average,
            None,
        );
        c.setup = fingerprint(&format!("{} {what}", c.setup));
        c
    };
    let mut configs = Vec::new();
    if !args.no_single || n == 1 {
        for i in 0..n {
            configs.push(make(
                format!("member:{i}"),
                vec![i],
                None,
                Mode::Average,
                None,
            ));
        }
    }
    if n > 1 && !args.screen {
        configs.push(make(
            "average".into(),
            all.clone(),
            weights.clone(),
            Mode::Average,
            None,
        ));
        for &k in &args.union_top_ks {
            let name = format!("average:top{k}");
            configs.push(make(
                name,
                all.clone(),
                weights.clone(),
                Mode::Average,
                Some(k),
            ));
        }
        if args.confidence {
            let mut c = variant("average:confidence", "weighting=confidence");
            c.weighting = Weighting::Confidence;
            configs.push(c);
        }
        if let Some(held) = args.learn_weights {
            let mut c = variant("average:learned", &format!("weights=learned:{held}"));
            c.learned = true;
            configs.push(c);
        }
        let gates = match args.gates.is_empty() {
            true => vec![0],
            false => args.gates.clone(),
        };
        let mut gated = Vec::new();
        for &gate in &gates {
            let mut unsure = vec![WhenUnsure::Average];
            if args.defer {
                unsure.extend((0..n).filter(|&k| k != gate).map(WhenUnsure::Defer));
            }
            for &threshold in &args.thresholds {
                for &when_unsure in &unsure {
                    gated.push(Mode::Gated {
                        gate,
                        threshold,
                        when_unsure,
                    });
                }
            }
        }
        if own != Mode::Average && !gated.contains(&own) {
            gated.push(own);
        }
        for mode in gated {
            configs.push(make(
                gated_name(mode),
                all.clone(),
                weights.clone(),
                mode,
                None,
            ));
        }
    }
    Ok(configs)
}

/// Runs each member alone on `held` questions of each task kept apart from the scored sample and
/// the shots (as `member:I:held-out`), and returns per task each member's weight: its accuracy
/// there (plus 0.01, so that no weight is 0). Their records go to `current`.
fn learn_weights(
    members: &[Config],
    slots: &mut [Option<Box<dyn Member>>],
    tasks: &[Task],
    held: usize,
    args: &EvalArgs,
    results: &mut Results,
    current: &mut Vec<Record>,
) -> Result<Vec<Vec<f32>>> {
    let questions = |t: &Task| {
        let len = t.examples.len();
        let shots = sample(len, args.limit, args.shots, args.seed).1;
        (
            held_out(len, args.limit, args.shots, held, args.seed),
            shots,
        )
    };
    let mut weights = vec![Vec::new(); tasks.len()];
    let mut asked = vec![0; tasks.len()];
    for (i, member) in members.iter().enumerate() {
        let config = Config {
            name: format!("{}:held-out", member.name),
            setup: member.setup.clone(),
            ..member.clone()
        };
        let alone = vec![slots[i].take().expect("member in its slot")];
        let mut ensemble = Ensemble::new(alone, None, Mode::Average)?;
        let records = run_config(
            &mut ensemble,
            &config,
            tasks,
            args,
            results,
            &questions,
            None,
        );
        slots[i] = ensemble.into_members().pop();
        let records = records?;
        for (t, task) in tasks.iter().enumerate() {
            let of: Vec<&Record> = records.iter().filter(|r| r.task == task.name).collect();
            let right = of.iter().filter(|r| r.correct).count();
            asked[t] = of.len();
            weights[t].push(right as f32 / of.len().max(1) as f32 + 0.01);
        }
        current.extend(records);
    }
    for ((task, w), asked) in tasks.iter().zip(&weights).zip(asked) {
        let shown: Vec<String> = w.iter().map(|x| format!("{x:.2}")).collect();
        let note = match asked {
            0 => " (no question left apart from the sample and the shots: equal weights)".into(),
            n => format!(" (from {n} held-out questions)"),
        };
        eprintln!(
            "gac eval: learned weights for {}: {}{note}",
            task.name,
            shown.join(", ")
        );
    }
    Ok(weights)
}

/// `gated:T` for gate 0 averaging when unsure, else `gated:T:gate=G[:member=K]`.
fn gated_name(mode: Mode) -> String {
    let Mode::Gated {
        gate,
        threshold,
        when_unsure,
    } = mode
    else {
        return "average".into();
    };
    match (gate, when_unsure) {
        (0, WhenUnsure::Average) => format!("gated:{threshold}"),
        (g, WhenUnsure::Average) => format!("gated:{threshold}:gate={g}"),
        (g, WhenUnsure::Defer(k)) => format!("gated:{threshold}:gate={g}:member={k}"),
    }
}

/// Everything besides the question that decides an answer, as a fingerprint.
fn setup_fingerprint(
    config: &EnsembleConfig,
    members: &[usize],
    weights: &Option<Vec<f32>>,
    mode: (Mode, Schedule),
    union_top_k: Option<usize>,
    args: &EvalArgs,
) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|&i| {
            let m = &config.members[i];
            let size = std::fs::metadata(&m.path).map_or(0, |md| md.len());
            let file = m.path.file_name().unwrap_or_default().to_string_lossy();
            let top_k = m
                .device_top_k
                .map_or(String::new(), |k| format!(":device_top_k={k}"));
            format!(
                "{:?}:{file}:{size}:gpu={:?}:layers={:?}:threads={:?}:ctx={:?}{top_k}",
                m.runtime, m.gpu, m.gpu_layers, m.threads, m.context
            )
        })
        .collect();
    fingerprint(&format!(
        "members=[{}] weights={weights:?} mode={mode:?} union_top_k={union_top_k:?} max_tokens={} prompt_cache={} stop={STOPS:?}",
        members.join(", "),
        args.max_tokens,
        args.prompt_cache,
    ))
}

/// Where an answer ends.
const STOPS: [&str; 2] = ["\n\n", "Question:"];

/// Which questions of a task to ask, and which to show as shots.
type Questions<'a> = dyn Fn(&Task) -> (Vec<usize>, Vec<usize>) + 'a;

/// Evaluates one configuration on every task's sample; returns the sample's records, those of
/// earlier runs of the same setup reused. A failed generation is recorded as such and the run
/// goes on.
fn run_config(
    ensemble: &mut Ensemble,
    config: &Config,
    tasks: &[Task],
    args: &EvalArgs,
    results: &mut Results,
    questions: &Questions<'_>,
    per_task_weights: Option<&[Vec<f32>]>,
) -> Result<Vec<Record>> {
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        stop: STOPS.iter().map(|s| s.to_string()).collect(),
        union_top_k: config.union_top_k,
        schedule: config.schedule,
        weighting: config.weighting,
        ..GenerateOptions::default()
    };
    let (name, setup) = (config.name.as_str(), config.setup.as_str());
    let mut current = Vec::new();
    for (t, task) in tasks.iter().enumerate() {
        if let Some(weights) = per_task_weights {
            ensemble.set_weights(weights[t].clone())?;
        }
        let (chosen, shot_ids) = questions(task);
        let shots: Vec<_> = shot_ids.iter().map(|&i| &task.examples[i]).collect();
        let mut todo = Vec::new();
        for i in chosen {
            let example = &task.examples[i];
            let prompt = task.prompt(&shots, example);
            let question = fingerprint(&format!("{prompt}\n{:?}", example.target));
            match results.get(setup, &task.name, &example.id, &question) {
                Some(done) => current.push(done.clone()),
                None => todo.push((example, prompt, question)),
            }
        }
        let (total, start) = (todo.len(), Instant::now());
        let (mut right, mut failed) = (0usize, 0usize);
        let bar = progress::bar("eval", total, &format!("{name} {}", task.name));
        for (example, prompt, question) in todo {
            let mut record = Record::unanswered(name, setup, &task.name, &example.id, &question);
            match ensemble.generate(&prompt, &options, &mut |_| {}) {
                Ok(g) => {
                    let extracted = extract(&g.text, &example.target);
                    record.correct = is_correct(&extracted, &example.target);
                    record.extracted = extracted.to_string();
                    record.output = g.text;
                    record.tokens = g.stats.tokens;
                    record.ms_per_token = g.stats.ms_per_token();
                    record.ensembled = g.stats.ensembled_fraction();
                }
                Err(e) => {
                    bar.suspend(|| {
                        eprintln!("gac eval: {name} {} example {}: {e}", task.name, example.id)
                    });
                    record.error = Some(e.to_string());
                    failed += 1;
                }
            }
            right += usize::from(record.correct);
            results.add(record.clone())?;
            current.push(record);
            bar.inc(1);
            let done = bar.position() as f64;
            bar.set_message(format!(
                "accuracy {:.1}% errors {failed}",
                100.0 * right as f64 / done
            ));
        }
        bar.finish_and_clear();
        if total > 0 {
            eprintln!(
                "gac eval: {name} {}: {total} answered in {:.0} s, accuracy {:.1}%, errors {failed}",
                task.name,
                start.elapsed().as_secs_f64(),
                100.0 * right as f64 / total as f64
            );
        }
    }
    Ok(current)
}
