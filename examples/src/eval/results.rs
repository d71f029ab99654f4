//! Results of an evaluation: one JSON line per example and configuration, appended as they are
//! finished, so a run that stops can continue without redoing them. A record is reused only for
//! the same setup and the same question asked the same way; one run at a time writes a file.
//! A failed generation is kept in the file (the failure history) but never reused: a later run
//! asks that question again, and a failure is never counted as an answer.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gac_core::select::SplitMix64;
use serde::{Deserialize, Serialize};

/// One scored example (or one that failed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The configuration (`member:0`, `average`, `gated:0.5`, ...).
    pub config: String,
    /// Fingerprint of everything besides the question that decides the answer: the members
    /// (runtime, file, size, placement, threads, context), mode, weights, token limit, cache.
    #[serde(default)]
    pub setup: String,
    /// The task name.
    pub task: String,
    /// The example's id within the task.
    pub id: String,
    /// Fingerprint of the question as asked (the whole few-shot prompt) and its gold answer.
    #[serde(default)]
    pub question: String,
    /// The generated text.
    pub output: String,
    /// The extracted answer.
    pub extracted: String,
    /// Whether it was correct (never, for a failed generation).
    pub correct: bool,
    /// Tokens generated.
    pub tokens: usize,
    /// Decode ms/token of this generation.
    pub ms_per_token: f64,
    /// Fraction of steps ensembled.
    pub ensembled: f64,
    /// Why the generation failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Record {
    /// A record of this example with no answer yet (nothing generated, not correct).
    pub fn unanswered(config: &str, setup: &str, task: &str, id: &str, question: &str) -> Self {
        Self {
            config: config.into(),
            setup: setup.into(),
            task: task.into(),
            id: id.into(),
            question: question.into(),
            output: String::new(),
            extracted: String::new(),
            correct: false,
            tokens: 0,
            ms_per_token: 0.0,
            ensembled: 0.0,
            error: None,
        }
    }

    /// What identifies the answer: the same key means the same answer would be generated.
    fn key(&self) -> Key {
        (
            self.setup.clone(),
            self.task.clone(),
            self.id.clone(),
            self.question.clone(),
        )
    }
}

/// (setup, task, id, question).
type Key = (String, String, String, String);

/// A stable 16-hex-digit fingerprint of a text (64-bit FNV-1a).
pub fn fingerprint(text: &str) -> String {
    format!("{:016x}", crate::eval::tasks::fnv1a(text.as_bytes()))
}

/// The results file, locked for as long as this value lives: what is done, and an appender
/// for the rest.
pub struct Results {
    path: PathBuf,
    file: File,
    done: HashMap<Key, usize>,
    records: Vec<Record>,
}

impl Results {
    /// Opens (or creates) a results file, locks it against other runs, and reads what earlier
    /// runs finished. A line that cannot be read (a run killed mid-write) is skipped with a
    /// warning, never removed.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "{} is being written by another `gac eval` run; wait for it to finish or choose another --out",
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut records = Vec::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => records.push(r),
                Err(e) => eprintln!(
                    "gac eval: warning: {}:{}: skipping unreadable result ({e})",
                    path.display(),
                    i + 1
                ),
            }
        }
        let done = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.error.is_none())
            .map(|(i, r)| (r.key(), i))
            .collect();
        // After a torn last line, start the next record on a line of its own.
        if bytes.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
            records,
        })
    }

    /// The answer to this example asked this way in this setup, if an earlier run made one
    /// (failures are not answers).
    pub fn get(&self, setup: &str, task: &str, id: &str, question: &str) -> Option<&Record> {
        let key = (setup.into(), task.into(), id.into(), question.into());
        self.done.get(&key).map(|&i| &self.records[i])
    }

    /// Every record in the file, those of other setups and samples included.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Appends a record and flushes it to disk.
    pub fn add(&mut self, record: Record) -> Result<()> {
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        if record.error.is_none() {
            self.done.insert(record.key(), self.records.len());
        }
        self.records.push(record);
        Ok(())
    }
}

/// Per configuration (in the given order): accuracy per task, mean accuracy over tasks,
/// token-weighted ms/token, mean fraction ensembled and failed generations, over `records`
/// (the current sample's) of `tasks`. A failed generation is counted apart, never as an answer.
pub fn summaries(records: &[Record], configs: &[String], tasks: &[String]) -> Vec<Summary> {
    configs
        .iter()
        .map(|config| {
            let rows: Vec<&Record> = records
                .iter()
                .filter(|r| &r.config == config && tasks.contains(&r.task))
                .collect();
            let per_task: Vec<Option<(f64, usize)>> = tasks
                .iter()
                .map(|t| {
                    let of: Vec<&&Record> = rows
                        .iter()
                        .filter(|r| &r.task == t && r.error.is_none())
                        .collect();
                    let right = of.iter().filter(|r| r.correct).count();
                    (!of.is_empty()).then(|| (100.0 * right as f64 / of.len() as f64, of.len()))
                })
                .collect();
            let accuracies: Vec<f64> = per_task.iter().flatten().map(|(a, _)| *a).collect();
            let answered: Vec<&&Record> = rows.iter().filter(|r| r.error.is_none()).collect();
            let tokens: usize = answered.iter().map(|r| r.tokens).sum();
            Summary {
                config: config.clone(),
                accuracy: mean(&accuracies),
                ms_per_token: answered
                    .iter()
                    .map(|r| r.ms_per_token * r.tokens as f64)
                    .sum::<f64>()
                    / tokens.max(1) as f64,
                ensembled: mean(&answered.iter().map(|r| r.ensembled).collect::<Vec<_>>()),
                errors: rows.len() - answered.len(),
                per_task,
            }
        })
        .collect()
}

/// A markdown table of [`summaries`].
pub fn table(records: &[Record], configs: &[String], tasks: &[String]) -> String {
    let mut out = format!(
        "| configuration | {} | average | ms/token | steps ensembled | errors |\n",
        tasks.join(" | ")
    );
    out.push_str(&format!(
        "|---|{}---:|---:|---:|---:|\n",
        "---:|".repeat(tasks.len())
    ));
    for s in summaries(records, configs, tasks) {
        let cells: Vec<String> = s
            .per_task
            .iter()
            .map(|c| c.map_or("–".to_string(), |(acc, n)| format!("{acc:.1} (n={n})")))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1}% | {} |\n",
            s.config,
            cells.join(" | "),
            s.accuracy,
            s.ms_per_token,
            100.0 * s.ensembled,
            s.errors
        ));
    }
    out
}

/// One point per configuration with results, for [`crate::eval::plot::plot_points`].
pub fn points(
    records: &[Record],
    configs: &[String],
    tasks: &[String],
) -> Vec<crate::eval::plot::Point> {
    summaries(records, configs, tasks)
        .into_iter()
        .filter(|s| s.per_task.iter().any(Option::is_some))
        .map(|s| crate::eval::plot::Point {
            label: s.config,
            ms_per_token: s.ms_per_token,
            accuracy: s.accuracy,
        })
        .collect()
}

/// Aggregated results of one configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The configuration.
    pub config: String,
    /// Per task: accuracy in percent and the number of answered examples, if any.
    pub per_task: Vec<Option<(f64, usize)>>,
    /// Mean accuracy over the tasks with results.
    pub accuracy: f64,
    /// Token-weighted decode ms/token.
    pub ms_per_token: f64,
    /// Mean fraction of steps ensembled.
    pub ensembled: f64,
    /// Generations that failed (not in the accuracies).
    pub errors: usize,
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// `n` examples kept apart from [`sample_at`]'s (neither evaluated nor shown, nor skipped by
/// its `offset`), from the same order: fewer when the task has too few questions.
pub fn held_out(
    len: usize,
    offset: usize,
    limit: usize,
    shots: usize,
    n: usize,
    seed: u64,
) -> Vec<usize> {
    let (chosen, shown) = sample_at(len, offset, limit, shots, seed);
    let taken = offset.min(len) + chosen.len() + shown.len();
    let mut order = sample(len, len, 0, seed).0;
    order.truncate((taken + n).min(len));
    order.split_off(taken.min(order.len()))
}

/// [`sample_at`] with the shots taken from position `shots_at` of the same order instead of
/// right after the sample (and left out of it): with an earlier run's shots, a score on other
/// questions under the same prompts.
pub fn sample_shots_at(
    len: usize,
    offset: usize,
    limit: usize,
    shots: usize,
    shots_at: usize,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let order = sample(len, len, 0, seed).0;
    let shot_ids = order[shots_at.min(len)..shots_at.saturating_add(shots).min(len)].to_vec();
    let chosen = (order.iter().skip(offset))
        .filter(|i| !shot_ids.contains(i))
        .take(limit)
        .copied()
        .collect();
    (chosen, shot_ids)
}

/// Picks `limit` examples to evaluate and `shots` others to show, deterministically for a seed.
pub fn sample(len: usize, limit: usize, shots: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    sample_at(len, 0, limit, shots, seed)
}

/// [`sample`] past the first `offset` examples of the same order (which it neither evaluates
/// nor shows): with `offset` at least an earlier run's `limit + shots`, questions that run
/// never saw. Fewer, or none, when the task has too few questions.
pub fn sample_at(
    len: usize,
    offset: usize,
    limit: usize,
    shots: usize,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..len).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut order = order.split_off(offset.min(len));
    let rest = order.len();
    let shots = shots.min(rest.saturating_sub(1));
    let limit = limit.min(rest - shots);
    let shot_ids = order[limit..limit + shots].to_vec();
    order.truncate(limit);
    (order, shot_ids)
}
