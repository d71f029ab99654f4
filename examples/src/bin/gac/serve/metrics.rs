//! The server's counters, rendered as Prometheus text at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How a request ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Generated and answered.
    Ok,
    /// Refused before generating (bad input, auth, unknown route or model).
    Invalid,
    /// Refused because every slot was busy and the queue full (429).
    Rejected,
    /// The client went away; its generation stopped.
    Cancelled,
    /// A member failed.
    Failed,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::Invalid, "invalid"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Cancelled, "cancelled"),
    (Outcome::Failed, "failed"),
];

/// Counters and gauges, updated from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    outcomes: [AtomicU64; 5],
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    steps: AtomicU64,
    ensembled_steps: AtomicU64,
    /// Decode time after each generation's first step, in microseconds.
    decode_micros: AtomicU64,
    /// Requests waiting for a slot.
    pub queued: AtomicU64,
    /// Slots generating.
    pub busy: AtomicU64,
}

impl Metrics {
    /// Counts a request's outcome.
    pub fn finished(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Adds one generation's work.
    pub fn generated(&self, g: &gac_core::Generation) {
        let s = &g.stats;
        let prompt = s.members.first().map_or(0, |m| m.prompt_tokens);
        self.prompt_tokens.fetch_add(prompt as u64, Relaxed);
        self.generated_tokens.fetch_add(s.tokens as u64, Relaxed);
        self.steps.fetch_add(s.steps as u64, Relaxed);
        self.ensembled_steps
            .fetch_add(s.ensembled_steps as u64, Relaxed);
        let decode: Duration = s.total_time.saturating_sub(s.first_step_time);
        self.decode_micros
            .fetch_add(decode.as_micros() as u64, Relaxed);
    }

    /// The Prometheus text exposition of every metric; `slots` is the number of slots.
    pub fn render(&self, slots: usize) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let requests: Vec<(String, f64)> = OUTCOMES
            .iter()
            .map(|&(o, label)| {
                (
                    format!("{{outcome=\"{label}\"}}"),
                    self.outcomes[o as usize].load(Relaxed) as f64,
                )
            })
            .collect();
        let one = |v: f64| [(String::new(), v)];
        let get = |a: &AtomicU64| a.load(Relaxed) as f64;
        metric(
            "gac_requests_total",
            "counter",
            "Requests by outcome.",
            &requests,
        );
        metric(
            "gac_prompt_tokens_total",
            "counter",
            "Prompt tokens (in member 0's tokens).",
            &one(get(&self.prompt_tokens)),
        );
        metric(
            "gac_generated_tokens_total",
            "counter",
            "Generated tokens.",
            &one(get(&self.generated_tokens)),
        );
        metric(
            "gac_steps_total",
            "counter",
            "Ensemble steps.",
            &one(get(&self.steps)),
        );
        metric(
            "gac_ensembled_steps_total",
            "counter",
            "Steps that combined more than one member.",
            &one(get(&self.ensembled_steps)),
        );
        let steps = get(&self.steps);
        metric(
            "gac_ensembled_fraction",
            "gauge",
            "Fraction of steps ensembled so far.",
            &one(if steps > 0.0 {
                get(&self.ensembled_steps) / steps
            } else {
                0.0
            }),
        );
        metric(
            "gac_decode_seconds_total",
            "counter",
            "Time generating after each request's first step.",
            &one(get(&self.decode_micros) / 1e6),
        );
        let tokens = get(&self.generated_tokens);
        metric(
            "gac_ms_per_token",
            "gauge",
            "Mean decode time per generated token so far.",
            &one(if tokens > 0.0 {
                get(&self.decode_micros) / 1e3 / tokens
            } else {
                0.0
            }),
        );
        metric(
            "gac_queue_depth",
            "gauge",
            "Requests waiting for a slot.",
            &one(get(&self.queued)),
        );
        metric(
            "gac_slots_busy",
            "gauge",
            "Slots generating.",
            &one(get(&self.busy)),
        );
        metric("gac_slots_total", "gauge", "Slots.", &one(slots as f64));
        out
    }
}
