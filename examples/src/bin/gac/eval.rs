//! `gac eval`: few-shot generative evaluation of members and ensembles, side by side.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use gac_core::{Ensemble, GenerateOptions, Member, Mode, WhenUnsure};
use gac_examples::eval::plot::svg;
use gac_examples::eval::{extract, is_correct, load_task, sample, Record, Results, Task};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    members: super::MemberArgs,
    /// Tasks (repeatable): mmlu, boolq, piqa, commonsenseqa, openbookqa, nq-open, asdiv,
    /// bigbench:NAME (a task.json under DATA/bigbench), jsonl:PATH (your own data).
    #[arg(long = "task", value_name = "NAME", required = true)]
    tasks: Vec<String>,
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
    /// Gate thresholds to evaluate (gate = member 0); repeatable.
    #[arg(long = "threshold", value_name = "T")]
    thresholds: Vec<f32>,
    /// Also evaluate the average over each member's K most probable tokens only (the top-k
    /// union); repeatable.
    #[arg(long = "union-top-k", value_name = "K")]
    union_top_ks: Vec<usize>,
    /// Skip the members-alone configurations.
    #[arg(long)]
    no_single: bool,
    /// Token limit per answer.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Results file (JSON lines; an existing file is resumed, finished examples are skipped).
    #[arg(long, value_name = "FILE", default_value = "gac-eval.jsonl")]
    out: PathBuf,
    /// Also draw accuracy against ms/token per configuration into this SVG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// CPU threads per member.
    #[arg(long, default_value_t = 1)]
    threads: i32,
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

pub fn eval(args: EvalArgs) -> Result<()> {
    let tasks: Vec<Task> = args
        .tasks
        .iter()
        .map(|t| load_task(t, &data_dir(&args)))
        .collect::<Result<_>>()?;
    let mut config = args.members.config()?;
    for m in &mut config.members {
        m.threads = Some(args.threads);
    }
    config.validate()?;
    for &t in &args.thresholds {
        if !(0.0..=1.0).contains(&t) {
            bail!("invalid threshold: {t} is outside [0, 1]");
        }
    }
    let mut results = Results::open(&args.out)?;
    let mut slots: Vec<Option<Box<dyn Member>>> =
        super::load_members(&config, false, args.prompt_cache)?
            .into_iter()
            .map(Some)
            .collect();
    let n = slots.len();
    let all: Vec<usize> = (0..n).collect();
    let config = |name: String, members: Vec<usize>, mode, union_top_k| Config {
        name,
        members,
        mode,
        union_top_k,
    };
    let mut configs: Vec<Config> = Vec::new();
    if !args.no_single || n == 1 {
        for i in 0..n {
            configs.push(config(format!("member:{i}"), vec![i], Mode::Average, None));
        }
    }
    if n > 1 {
        configs.push(config("average".into(), all.clone(), Mode::Average, None));
        for &k in &args.union_top_ks {
            configs.push(config(
                format!("average:top{k}"),
                all.clone(),
                Mode::Average,
                Some(k),
            ));
        }
        for &threshold in &args.thresholds {
            let mode = Mode::Gated {
                gate: 0,
                threshold,
                when_unsure: WhenUnsure::Average,
            };
            configs.push(config(
                format!("gated:{threshold}"),
                all.clone(),
                mode,
                None,
            ));
        }
    }
    for config in &configs {
        let members: Vec<Box<dyn Member>> = config
            .members
            .iter()
            .map(|&i| slots[i].take().expect("member in its slot"))
            .collect();
        let mut ensemble = Ensemble::new(members, None, config.mode)?;
        let outcome = run_config(&mut ensemble, config, &tasks, &args, &mut results);
        for (&i, m) in config.members.iter().zip(ensemble.into_members()) {
            slots[i] = Some(m);
        }
        outcome?;
    }
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let task_names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    println!("{}", results.table(&names, &task_names));
    if let Some(plot) = &args.plot {
        let title = format!(
            "accuracy (mean over {} tasks) vs ms/token",
            task_names.len()
        );
        std::fs::write(plot, svg(&title, &results.points(&names, &task_names)))
            .with_context(|| format!("cannot write {}", plot.display()))?;
        eprintln!("gac eval: plot in {}", plot.display());
    }
    eprintln!("gac eval: per-example results in {}", args.out.display());
    Ok(())
}

/// One configuration: which members, combined how.
struct Config {
    name: String,
    members: Vec<usize>,
    mode: Mode,
    union_top_k: Option<usize>,
}

fn run_config(
    ensemble: &mut Ensemble,
    config: &Config,
    tasks: &[Task],
    args: &EvalArgs,
    results: &mut Results,
) -> Result<()> {
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        stop: vec!["\n\n".into(), "Question:".into()],
        union_top_k: config.union_top_k,
        ..GenerateOptions::default()
    };
    let config = config.name.as_str();
    for task in tasks {
        let (chosen, shot_ids) = sample(task.examples.len(), args.limit, args.shots, args.seed);
        let shots: Vec<_> = shot_ids.iter().map(|&i| &task.examples[i]).collect();
        let todo: Vec<usize> = chosen
            .into_iter()
            .filter(|&i| !results.is_done(config, &task.name, &task.examples[i].id))
            .collect();
        let (total, start) = (todo.len(), Instant::now());
        let (mut right, mut seen) = (0usize, 0usize);
        for (k, i) in todo.into_iter().enumerate() {
            let example = &task.examples[i];
            let prompt = task.prompt(&shots, example);
            let g = ensemble.generate(&prompt, &options, &mut |_| {})?;
            let extracted = extract(&g.text, &example.target);
            let correct = is_correct(&extracted, &example.target);
            (right, seen) = (right + usize::from(correct), seen + 1);
            results.add(Record {
                config: config.to_string(),
                task: task.name.clone(),
                id: example.id.clone(),
                output: g.text.clone(),
                extracted: extracted.to_string(),
                correct,
                tokens: g.stats.tokens,
                ms_per_token: g.stats.ms_per_token(),
                ensembled: g.stats.ensembled_fraction(),
            })?;
            let elapsed = start.elapsed().as_secs_f64();
            let eta = elapsed / (k + 1) as f64 * (total - k - 1) as f64;
            eprint!(
                "\rgac eval: {config} {} {}/{total} accuracy {:.1}% ETA {:.0}m{:02.0}s   ",
                task.name,
                k + 1,
                100.0 * right as f64 / seen as f64,
                (eta / 60.0).floor(),
                eta % 60.0
            );
            std::io::stderr().flush().ok();
        }
        if total > 0 {
            eprintln!();
        }
    }
    Ok(())
}
