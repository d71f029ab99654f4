//! `gac eval --screen`: the members alone on a small sample of many tasks, and which tasks an
//! ensemble of them can help on. The rule (the paper's, and UniTE's): every member above
//! chance, and the members within a given gap of each other.

use serde::Serialize;

use super::results::Summary;

/// One task's screen: each member's accuracy against chance, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Screened {
    /// The task.
    pub task: String,
    /// Questions asked.
    pub n: usize,
    /// The accuracy of guessing, in percent.
    pub chance: f64,
    /// Each member's accuracy in percent.
    pub accuracies: Vec<f64>,
    /// Whether each member is above chance: the one-sided exact binomial p of its number of
    /// right answers under guessing is at most 0.05.
    pub above_chance: Vec<bool>,
    /// The best member's accuracy minus the worst's, in points.
    pub gap: f64,
    /// Every member above chance and the gap at most the allowed one.
    pub candidate: bool,
}

/// The screen of each task from the members' summaries (`members[i].per_task[t]`), the tasks'
/// chance levels (fractions) and the largest gap allowed (points); candidates first, then by
/// how far the weakest member is above chance.
pub fn screen(
    members: &[Summary],
    tasks: &[String],
    chances: &[f64],
    max_gap: f64,
) -> Vec<Screened> {
    let mut rows: Vec<Screened> = tasks
        .iter()
        .enumerate()
        .filter_map(|(t, task)| {
            let results: Vec<(f64, usize)> = members
                .iter()
                .map(|m| m.per_task[t])
                .collect::<Option<_>>()?;
            let n = results.iter().map(|r| r.1).min()?;
            let accuracies: Vec<f64> = results.iter().map(|r| r.0).collect();
            let above_chance: Vec<bool> = results
                .iter()
                .map(|&(accuracy, n)| {
                    let right = (accuracy * n as f64 / 100.0).round() as usize;
                    binomial_tail(right, n, chances[t]) <= 0.05
                })
                .collect();
            let best = accuracies.iter().copied().fold(f64::MIN, f64::max);
            let worst = accuracies.iter().copied().fold(f64::MAX, f64::min);
            let gap = best - worst;
            Some(Screened {
                task: task.clone(),
                n,
                chance: 100.0 * chances[t],
                candidate: above_chance.iter().all(|&a| a) && gap <= max_gap,
                accuracies,
                above_chance,
                gap,
            })
        })
        .collect();
    let margin = |r: &Screened| r.accuracies.iter().copied().fold(f64::MAX, f64::min) - r.chance;
    rows.sort_by(|a, b| {
        b.candidate
            .cmp(&a.candidate)
            .then(margin(b).total_cmp(&margin(a)))
    });
    rows
}

/// The screen as a markdown table, one column per member.
pub fn screen_table(rows: &[Screened], members: &[String]) -> String {
    let mut out = String::from("| task | n | chance |");
    for m in members {
        out.push_str(&format!(" {m} |"));
    }
    out.push_str(" gap | ensemble candidate |\n|---|---:|---:|");
    out.push_str(&"---:|".repeat(members.len()));
    out.push_str("---:|---|\n");
    for r in rows {
        out.push_str(&format!("| {} | {} | {:.1} |", r.task, r.n, r.chance));
        for (a, above) in r.accuracies.iter().zip(&r.above_chance) {
            out.push_str(&format!(
                " {a:.1}{} |",
                if *above { "" } else { " (chance)" }
            ));
        }
        let verdict = match (r.candidate, r.above_chance.iter().all(|&a| a)) {
            (true, _) => "yes",
            (false, true) => "no: members too far apart",
            (false, false) => "no: a member at chance",
        };
        out.push_str(&format!(" {:.1} | {verdict} |\n", r.gap));
    }
    out
}

/// P(X >= k) for X ~ Binomial(n, p): the chance of at least `k` right answers in `n` by
/// guessing with probability `p` each. Summed in log space, so that large `n` does not underflow.
pub fn binomial_tail(k: usize, n: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let ln_fact = |m: usize| (1..=m).map(|i| (i as f64).ln()).sum::<f64>();
    let ln_n = ln_fact(n);
    let terms: Vec<f64> = (k..=n)
        .map(|i| {
            ln_n - ln_fact(i) - ln_fact(n - i) + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()
        })
        .collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln())
        .exp()
        .min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails_match_exact_sums() {
        // Values from Python's math.comb and fractions, summed exactly.
        let cases = [
            (8, 20, 0.25, 0.10181185692272265),
            (10, 20, 0.5, 0.5880985260009766),
            (550, 1000, 0.5, 0.0008652680424881586),
            (920, 1000, 0.9, 0.017611574675836086),
        ];
        for (k, n, p, want) in cases {
            let got = binomial_tail(k, n, p);
            assert!(
                (got - want).abs() < 1e-9 * want.max(1e-3),
                "{k}/{n} at {p}: {got} vs {want}"
            );
        }
        assert_eq!(binomial_tail(3, 20, 0.0), 0.0);
        assert_eq!(binomial_tail(0, 5, 0.3), 1.0);
    }

    fn summary(config: &str, per_task: Vec<Option<(f64, usize)>>) -> Summary {
        Summary {
            config: config.into(),
            per_task,
            accuracy: 0.0,
            ms_per_token: 0.0,
            ensembled: 0.0,
            errors: 0,
        }
    }

    #[test]
    fn candidates_have_every_member_above_chance_and_close() {
        let tasks: Vec<String> = ["close", "far", "at-chance", "unasked"]
            .map(String::from)
            .into();
        let members = [
            summary(
                "member:0",
                vec![Some((60.0, 40)), Some((80.0, 40)), Some((30.0, 40)), None],
            ),
            summary(
                "member:1",
                vec![Some((55.0, 40)), Some((45.0, 40)), Some((70.0, 40)), None],
            ),
        ];
        let rows = screen(&members, &tasks, &[0.25, 0.25, 0.25, 0.25], 10.0);
        let verdicts: Vec<(&str, bool)> = rows
            .iter()
            .map(|r| (r.task.as_str(), r.candidate))
            .collect();
        assert_eq!(
            verdicts,
            [("close", true), ("far", false), ("at-chance", false)]
        );
        // 12 of 40 right at chance 1/4: p = 0.28, not above chance.
        assert_eq!(rows[2].above_chance, [false, true]);
        assert_eq!(rows[1].gap, 35.0);
        let table = screen_table(&rows, &["member:0".into(), "member:1".into()]);
        assert!(
            table.contains("| close | 40 | 25.0 | 60.0 | 55.0 | 5.0 | yes |"),
            "{table}"
        );
        assert!(table.contains("30.0 (chance)") && table.contains("no: members too far apart"));
    }
}
