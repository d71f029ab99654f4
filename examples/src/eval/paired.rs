//! Does an ensemble beat its better member? For each ensemble configuration, the accuracy
//! difference to the better single member (the member with the best mean accuracy over the
//! whole run), per task and over all examples, with a 95% paired bootstrap interval over the
//! examples and McNemar's exact test on the discordant answers.

use std::collections::HashMap;

use gac_core::select::SplitMix64;
use serde::Serialize;

use super::results::{summaries, Record};

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 2000;

/// One comparison of a configuration with the better member, on one task or on all of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    /// The ensemble configuration.
    pub config: String,
    /// The better member it is compared with.
    pub baseline: String,
    /// The task, or `all` for every example of every task.
    pub task: String,
    /// Examples answered by both.
    pub n: usize,
    /// Accuracy difference in percentage points (configuration minus member).
    pub difference: f64,
    /// 95% paired bootstrap interval of the difference, in points.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
    /// Examples the configuration got right and the member wrong.
    pub wins: usize,
    /// Examples the member got right and the configuration wrong.
    pub losses: usize,
    /// Two-sided exact McNemar p-value (binomial test of `wins` against `wins + losses`).
    pub p_value: f64,
}

/// Every non-member configuration against the better member, per task and then over all;
/// empty without a member and another configuration. Bootstrap draws come from `seed`.
pub fn compare(records: &[Record], configs: &[String], tasks: &[String], seed: u64) -> Vec<Paired> {
    let best = summaries(records, configs, tasks)
        .into_iter()
        .filter(|s| s.config.starts_with("member:") && s.per_task.iter().any(Option::is_some))
        .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
        .map(|s| s.config);
    let Some(best) = best else {
        return Vec::new();
    };
    // Failures are not answers: a question is paired only where both configurations answered.
    let correct: HashMap<(&str, &str, &str), bool> = records
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| {
            (
                (r.config.as_str(), r.task.as_str(), r.id.as_str()),
                r.correct,
            )
        })
        .collect();
    let mut out = Vec::new();
    for config in configs.iter().filter(|c| !c.starts_with("member:")) {
        let mut all = Vec::new();
        for task in tasks {
            let pairs: Vec<(bool, bool)> = records
                .iter()
                .filter(|r| r.config == *config && r.task == *task && r.error.is_none())
                .filter_map(|r| {
                    let base = correct.get(&(best.as_str(), task.as_str(), r.id.as_str()))?;
                    Some((r.correct, *base))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            all.extend_from_slice(&pairs);
            out.push(paired(config, &best, task, &pairs, seed));
        }
        if !all.is_empty() {
            out.push(paired(config, &best, "all", &all, seed));
        }
    }
    out
}

/// The comparison of (configuration correct, member correct) pairs.
pub fn paired(
    config: &str,
    baseline: &str,
    task: &str,
    pairs: &[(bool, bool)],
    seed: u64,
) -> Paired {
    let score = |(a, b): &(bool, bool)| f64::from(u8::from(*a)) - f64::from(u8::from(*b));
    let n = pairs.len();
    let difference = 100.0 * pairs.iter().map(score).sum::<f64>() / n as f64;
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let total: f64 = (0..n)
                .map(|_| score(&pairs[(rng.next_u64() % n as u64) as usize]))
                .sum();
            100.0 * total / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((RESAMPLES - 1) as f64 * q).round() as usize];
    let wins = pairs.iter().filter(|(a, b)| *a && !*b).count();
    let losses = pairs.iter().filter(|(a, b)| !*a && *b).count();
    Paired {
        config: config.into(),
        baseline: baseline.into(),
        task: task.into(),
        n,
        difference,
        low: at(0.025),
        high: at(0.975),
        wins,
        losses,
        p_value: mcnemar_exact(wins, losses),
    }
}

/// Two-sided exact McNemar test: twice the binomial(b + c, 1/2) probability of a split at least
/// as uneven as (b, c), at most 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let ln_fact = |k: usize| (1..=k).map(|i| (i as f64).ln()).sum::<f64>();
    let ln_n = ln_fact(n);
    let tail: f64 = (0..=b.min(c))
        .map(|k| (ln_n - ln_fact(k) - ln_fact(n - k) - n as f64 * std::f64::consts::LN_2).exp())
        .sum();
    (2.0 * tail).min(1.0)
}

/// The comparisons as a markdown table.
pub fn paired_table(rows: &[Paired]) -> String {
    let mut out = String::from(
        "| configuration | vs | task | n | difference (points) | 95% interval | right only here | right only in vs | McNemar p |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:+.1} | {:+.1} to {:+.1} | {} | {} | {:.3} |\n",
            r.config,
            r.baseline,
            r.task,
            r.n,
            r.difference,
            r.low,
            r.high,
            r.wins,
            r.losses,
            r.p_value
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_by_hand() {
        // b = 1, c = 9: 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        // b = 0, c = 5: 2 / 32.
        assert!((mcnemar_exact(5, 0) - 2.0 / 32.0).abs() < 1e-12);
        // Even splits are not evidence of anything.
        assert_eq!(mcnemar_exact(4, 4), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // b = 41, c = 58 (the Gemma example): 0.10735 (exact sum of binomial terms,
        // computed apart with Python's math.comb).
        assert!((mcnemar_exact(41, 58) - 0.107_351_586_5).abs() < 1e-9);
    }

    #[test]
    fn the_bootstrap_interval_holds_the_difference_and_tightens_with_n() {
        // 10 pairs: 3 wins, 1 loss, 6 ties: +20 points.
        let mut pairs = vec![(true, false); 3];
        pairs.push((false, true));
        pairs.extend(vec![(true, true); 3]);
        pairs.extend(vec![(false, false); 3]);
        let small = paired("average", "member:1", "t", &pairs, 1);
        assert_eq!((small.n, small.wins, small.losses), (10, 3, 1));
        assert!((small.difference - 20.0).abs() < 1e-9);
        assert!(small.low <= 20.0 && 20.0 <= small.high, "{small:?}");
        assert!(small.low < 0.0 && small.high >= 40.0, "{small:?}");
        let many: Vec<_> = pairs.iter().cycle().take(1000).copied().collect();
        let large = paired("average", "member:1", "t", &many, 1);
        assert!((large.difference - 20.0).abs() < 1e-9);
        // Standard error sqrt(0.4 - 0.04) / sqrt(1000) = 1.9 points: about +-3.7 at 95%.
        assert!(large.low > 15.0 && large.high < 25.0, "{large:?}");
        // 300 wins, 100 losses: 2.59e-24 (math.comb again).
        assert!(
            (large.p_value / 2.591_886_9e-24 - 1.0).abs() < 1e-6,
            "{}",
            large.p_value
        );
        assert_eq!(
            paired("average", "member:1", "t", &pairs, 1),
            small,
            "the same seed, the same interval"
        );
    }
}
