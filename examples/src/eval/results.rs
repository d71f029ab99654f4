//! Results of an evaluation: one JSON line per example and configuration, appended as they are
//! finished, so a run that stops can continue without redoing them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
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
        let mut records = Vec::new();
        if path.exists() {
            let reader = BufReader::new(
                File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
            );
            for (i, line) in reader.lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Record>(&line) {
                    Ok(r) => records.push(r),
                    Err(e) => eprintln!(
                        "gac eval: warning: {}:{}: skipping unreadable result ({e})",
                        path.display(),
                        i + 1
                    ),
                }
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
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
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

    /// A markdown table: accuracy per task and on average, ms/token and fraction ensembled, one
    /// row per configuration (in first-seen order), counting only `tasks`.
    pub fn table(&self, configs: &[String], tasks: &[String]) -> String {
        let mut out = format!(
            "| configuration | {} | average | ms/token | steps ensembled |\n",
            tasks.join(" | ")
        );
        out.push_str(&format!(
            "|---|{}---:|---:|---:|\n",
            "---:|".repeat(tasks.len())
        ));
        for config in configs {
            let rows: Vec<&Record> = self
                .records
                .iter()
                .filter(|r| &r.config == config && tasks.contains(&r.task))
                .collect();
            let mut cells = Vec::new();
            let mut accuracies = Vec::new();
            for task in tasks {
                let of_task: Vec<&&Record> = rows.iter().filter(|r| &r.task == task).collect();
                if of_task.is_empty() {
                    cells.push("–".to_string());
                    continue;
                }
                let acc = 100.0 * of_task.iter().filter(|r| r.correct).count() as f64
                    / of_task.len() as f64;
                accuracies.push(acc);
                cells.push(format!("{acc:.1} (n={})", of_task.len()));
            }
            let mean = |v: Vec<f64>| {
                if v.is_empty() {
                    0.0
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            };
            let tokens: usize = rows.iter().map(|r| r.tokens).sum();
            let ms = rows
                .iter()
                .map(|r| r.ms_per_token * r.tokens as f64)
                .sum::<f64>()
                / tokens.max(1) as f64;
            let ensembled = mean(rows.iter().map(|r| r.ensembled).collect());
            out.push_str(&format!(
                "| {config} | {} | {:.1} | {ms:.1} | {:.1}% |\n",
                cells.join(" | "),
                mean(accuracies),
                100.0 * ensembled
            ));
        }
        out
    }
}

impl Results {
    /// One point per configuration for [`crate::eval::plot::svg`]: mean accuracy over `tasks`
    /// and token-weighted ms/token.
    pub fn points(&self, configs: &[String], tasks: &[String]) -> Vec<crate::eval::plot::Point> {
        configs
            .iter()
            .filter_map(|config| {
                let rows: Vec<&Record> = self
                    .records
                    .iter()
                    .filter(|r| &r.config == config && tasks.contains(&r.task))
                    .collect();
                let accuracies: Vec<f64> = tasks
                    .iter()
                    .filter_map(|t| {
                        let of: Vec<&&Record> = rows.iter().filter(|r| &r.task == t).collect();
                        (!of.is_empty()).then(|| {
                            100.0 * of.iter().filter(|r| r.correct).count() as f64 / of.len() as f64
                        })
                    })
                    .collect();
                let tokens: usize = rows.iter().map(|r| r.tokens).sum();
                (!accuracies.is_empty()).then(|| crate::eval::plot::Point {
                    label: config.clone(),
                    ms_per_token: rows
                        .iter()
                        .map(|r| r.ms_per_token * r.tokens as f64)
                        .sum::<f64>()
                        / tokens.max(1) as f64,
                    accuracy: accuracies.iter().sum::<f64>() / accuracies.len() as f64,
                })
            })
            .collect()
    }
}

/// Picks `limit` examples to evaluate and `shots` others to show, deterministically for a seed.
pub fn sample(len: usize, limit: usize, shots: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..len).collect();
    let mut state = seed;
    for i in (1..len).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        order.swap(i, (z % (i as u64 + 1)) as usize);
    }
    let shots = shots.min(len.saturating_sub(1));
    let limit = limit.min(len - shots);
    let shot_ids = order[limit..limit + shots].to_vec();
    order.truncate(limit);
    (order, shot_ids)
}
