//! Results of an evaluation: one JSON line per example and configuration, appended as they are
//! finished, so a run that stops can continue without redoing them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gac_core::pick::SplitMix64;
use serde::{Deserialize, Serialize};

/// One scored example.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The configuration (`member:0`, `average`, `gated:0.5`, ...).
    pub config: String,
    /// The task name.
    pub task: String,
    /// The example's id within the task.
    pub id: String,
    /// The generated text.
    pub output: String,
    /// The extracted answer.
    pub extracted: String,
    /// Whether it was correct.
    pub correct: bool,
    /// Tokens generated.
    pub tokens: usize,
    /// Decode ms/token of this generation.
    pub ms_per_token: f64,
    /// Fraction of steps ensembled.
    pub ensembled: f64,
}

/// The results file: what is done, and an appender for the rest.
pub struct Results {
    path: PathBuf,
    file: File,
    done: HashSet<(String, String, String)>,
    /// Every record, those of earlier runs first.
    pub records: Vec<Record>,
}

impl Results {
    /// Opens (or creates) a results file and reads what earlier runs finished. A line that
    /// cannot be read (a run killed mid-write) is skipped with a warning, never removed.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = if path.exists() {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        } else {
            Vec::new()
        };
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
            .map(|r| (r.config.clone(), r.task.clone(), r.id.clone()))
            .collect();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
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

    /// Whether this example was already scored in this configuration.
    pub fn is_done(&self, config: &str, task: &str, id: &str) -> bool {
        self.done
            .contains(&(config.to_string(), task.to_string(), id.to_string()))
    }

    /// Appends a record and flushes it to disk.
    pub fn add(&mut self, record: Record) -> Result<()> {
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.done.insert((
            record.config.clone(),
            record.task.clone(),
            record.id.clone(),
        ));
        self.records.push(record);
        Ok(())
    }

    /// Per configuration (in the given order): accuracy per task, mean accuracy over tasks,
    /// token-weighted ms/token and mean fraction ensembled, counting only `tasks`.
    pub fn summaries(&self, configs: &[String], tasks: &[String]) -> Vec<Summary> {
        configs
            .iter()
            .map(|config| {
                let rows: Vec<&Record> = self
                    .records
                    .iter()
                    .filter(|r| &r.config == config && tasks.contains(&r.task))
                    .collect();
                let per_task: Vec<Option<(f64, usize)>> = tasks
                    .iter()
                    .map(|t| {
                        let of: Vec<&&Record> = rows.iter().filter(|r| &r.task == t).collect();
                        let right = of.iter().filter(|r| r.correct).count();
                        (!of.is_empty()).then(|| (100.0 * right as f64 / of.len() as f64, of.len()))
                    })
                    .collect();
                let accuracies: Vec<f64> = per_task.iter().flatten().map(|(a, _)| *a).collect();
                let tokens: usize = rows.iter().map(|r| r.tokens).sum();
                Summary {
                    config: config.clone(),
                    accuracy: mean(&accuracies),
                    ms_per_token: rows
                        .iter()
                        .map(|r| r.ms_per_token * r.tokens as f64)
                        .sum::<f64>()
                        / tokens.max(1) as f64,
                    ensembled: mean(&rows.iter().map(|r| r.ensembled).collect::<Vec<_>>()),
                    per_task,
                }
            })
            .collect()
    }

    /// A markdown table of [`Results::summaries`].
    pub fn table(&self, configs: &[String], tasks: &[String]) -> String {
        let mut out = format!(
            "| configuration | {} | average | ms/token | steps ensembled |\n",
            tasks.join(" | ")
        );
        out.push_str(&format!(
            "|---|{}---:|---:|---:|\n",
            "---:|".repeat(tasks.len())
        ));
        for s in self.summaries(configs, tasks) {
            let cells: Vec<String> = s
                .per_task
                .iter()
                .map(|c| c.map_or("–".to_string(), |(acc, n)| format!("{acc:.1} (n={n})")))
                .collect();
            out.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1}% |\n",
                s.config,
                cells.join(" | "),
                s.accuracy,
                s.ms_per_token,
                100.0 * s.ensembled
            ));
        }
        out
    }

    /// One point per configuration with results, for [`crate::eval::plot::svg`].
    pub fn points(&self, configs: &[String], tasks: &[String]) -> Vec<crate::eval::plot::Point> {
        self.summaries(configs, tasks)
            .into_iter()
            .filter(|s| s.per_task.iter().any(Option::is_some))
            .map(|s| crate::eval::plot::Point {
                label: s.config,
                ms_per_token: s.ms_per_token,
                accuracy: s.accuracy,
            })
            .collect()
    }
}

/// Aggregated results of one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The configuration.
    pub config: String,
    /// Per task: accuracy in percent and the number of examples, if any were scored.
    pub per_task: Vec<Option<(f64, usize)>>,
    /// Mean accuracy over the tasks with results.
    pub accuracy: f64,
    /// Token-weighted decode ms/token.
    pub ms_per_token: f64,
    /// Mean fraction of steps ensembled.
    pub ensembled: f64,
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Picks `limit` examples to evaluate and `shots` others to show, deterministically for a seed.
pub fn sample(len: usize, limit: usize, shots: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..len).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let shots = shots.min(len.saturating_sub(1));
    let limit = limit.min(len - shots);
    let shot_ids = order[limit..limit + shots].to_vec();
    order.truncate(limit);
    (order, shot_ids)
}
