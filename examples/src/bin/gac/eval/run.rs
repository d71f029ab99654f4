//! Answering a task's questions with one configuration, and learning weights on held-out ones.

use std::time::Instant;

use anyhow::Result;
use gac_core::{Ensemble, GenerateOptions, Member};
use gac_examples::eval::{
    extract, fingerprint, held_out, is_correct, sample_at, Record, Results, Task,
};

use super::configs::Config;
use super::EvalArgs;
use crate::progress;

/// Where an answer ends.
pub(super) const STOPS: [&str; 2] = ["\n\n", "Question:"];

/// Which questions of a task to ask, and which to show as shots.
pub(super) type Questions<'a> = dyn Fn(&Task) -> (Vec<usize>, Vec<usize>) + 'a;

/// Evaluates one configuration, its members taken from `slots` and put back, on every task's
/// questions; returns their records, those of earlier runs of the same setup reused. A failed
/// generation is recorded as such and the run goes on.
pub(super) fn run_config(
    slots: &mut [Option<Box<dyn Member>>],
    config: &Config,
    tasks: &[Task],
    args: &EvalArgs,
    results: &mut Results,
    questions: &Questions<'_>,
    per_task_weights: Option<&[Vec<f32>]>,
) -> Result<Vec<Record>> {
    let members: Vec<Box<dyn Member>> = (config.members.iter())
        .map(|&i| slots[i].take().expect("member in its slot"))
        .collect();
    let mut ensemble = Ensemble::new(members, config.weights.clone(), config.mode)?;
    let records = answer(
        &mut ensemble,
        config,
        tasks,
        args,
        results,
        questions,
        per_task_weights,
    );
    for (&i, m) in config.members.iter().zip(ensemble.into_members()) {
        slots[i] = Some(m);
    }
    records
}

/// [`run_config`]'s work, on its ensemble.
fn answer(
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
        grammar: args.grammar()?,
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
            let answered = bar.position() + 1 - failed as u64;
            results.add(record.clone())?;
            current.push(record);
            bar.inc(1);
            bar.set_message(format!(
                "accuracy {:.1}% errors {failed}",
                100.0 * right as f64 / answered.max(1) as f64
            ));
        }
        bar.finish_and_clear();
        if total > 0 {
            let answered = total - failed;
            eprintln!(
                "gac eval: {name} {}: {answered} answered in {:.0} s, accuracy {:.1}%, errors {failed}{}",
                task.name,
                start.elapsed().as_secs_f64(),
                100.0 * right as f64 / answered.max(1) as f64,
                match failed {
                    0 => "",
                    _ => " (failed questions are asked again on the next run)",
                }
            );
        }
    }
    Ok(current)
}

/// Runs each member alone on `held` questions of each task kept apart from the scored sample and
/// the shots (as `member:I:held-out`), and returns per task each member's weight: its accuracy
/// there (plus 0.01, so that no weight is 0). Their records go to `current`.
pub(super) fn learn_weights(
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
        let shots = sample_at(len, args.offset, args.limit, args.shots, args.seed).1;
        let held = held_out(len, args.offset, args.limit, args.shots, held, args.seed);
        (held, shots)
    };
    let mut weights = vec![Vec::new(); tasks.len()];
    let mut asked = vec![0; tasks.len()];
    for member in members {
        let config = Config {
            name: format!("{}:held-out", member.name),
            setup: member.setup.clone(),
            ..member.clone()
        };
        let records = run_config(slots, &config, tasks, args, results, &questions, None)?;
        for (t, task) in tasks.iter().enumerate() {
            let of: Vec<&Record> = records
                .iter()
                .filter(|r| r.task == task.name && r.error.is_none())
                .collect();
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
