//! Few-shot generative evaluation in the style of lm-evaluation-harness: a task gives a few-shot
//! prompt, the model generates until a stop string or a length limit, an answer is extracted and
//! scored by exact match; results go to a resumable JSONL file and a markdown table.

pub mod paired;
pub mod plot;
pub mod results;
pub mod score;
pub mod screen;
pub mod tasks;

pub use paired::{compare, paired_table, Paired};
pub use results::{
    fingerprint, held_out, points, sample, sample_at, sample_shots_at, summaries, table, Record,
    Results, Summary,
};
pub use score::{extract, is_correct, Extracted};
pub use tasks::{letter_skew, load_task, DataPaths, Example, Target, Task, TASKS};
