//! `gac eval --list-tasks`: every task the data folder holds.

use anyhow::Result;
use gac_examples::eval::tasks::{bigbench_tasks, task_kind, GENERATIVE};
use gac_examples::eval::{load_task, Target, Task, TASKS};

use super::{data_paths, EvalArgs};

/// Prints every task that can be loaded from the data folder and the BIG-bench folder, with its
/// size, and those that cannot, with why.
pub(super) fn list_tasks(args: &EvalArgs) -> Result<()> {
    let data = data_paths(args);
    let mut names: Vec<String> = TASKS.iter().map(|(n, _)| n.to_string()).collect();
    let (bigbench, left_out) = bigbench_tasks(&data.bigbench);
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
    match data.bigbench_missing() {
        Some(why) => println!("{:<64} {why}", "bigbench:NAME"),
        None => println!(
            "{:<64} BIG-bench tasks above are read from {}",
            "bigbench:NAME",
            data.bigbench.display()
        ),
    }
    println!("{:<64} your own questions (see docs/eval.md)", "jsonl:PATH");
    Ok(())
}
