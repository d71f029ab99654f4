//! The configurations one `gac eval` run compares, and the fingerprint of each setup.

use anyhow::{bail, Result};
use gac_core::{Mode, Schedule, Weighting, WhenUnsure};
use gac_examples::config::{EnsembleConfig, Plan};
use gac_examples::eval::fingerprint;

use super::run::STOPS;
use super::EvalArgs;

/// One configuration: which members, combined how, and the fingerprint of its setup.
#[derive(Clone)]
pub(super) struct Config {
    pub(super) name: String,
    pub(super) members: Vec<usize>,
    pub(super) weights: Option<Vec<f32>>,
    pub(super) mode: Mode,
    pub(super) schedule: Schedule,
    pub(super) union_top_k: Option<usize>,
    pub(super) weighting: Weighting,
    /// Weights learned per task (`--learn-weights`) replace `weights`.
    pub(super) learned: bool,
    pub(super) setup: String,
}

impl Config {
    /// A configuration of these members, weights and mode (fixed weighting), its setup
    /// fingerprinted from the plan and the run's flags.
    pub(super) fn new(
        (plan, args): (&Plan, &EvalArgs),
        name: String,
        members: Vec<usize>,
        weights: Option<Vec<f32>>,
        (mode, schedule): (Mode, Schedule),
        union_top_k: Option<usize>,
    ) -> Self {
        let setup = setup_fingerprint(
            &plan.config,
            &members,
            &weights,
            (mode, schedule),
            union_top_k,
            args,
        );
        Self {
            name,
            members,
            weights,
            mode,
            schedule,
            union_top_k,
            weighting: Weighting::Fixed,
            learned: false,
            setup,
        }
    }
}

/// Each member alone, the average (with the configuration's weights), each top-k union, the
/// selective mode, the gated ensembles of --threshold (gate = member 0) and the
/// configuration's own combination (its mode, top-k union and weighting).
pub(super) fn configurations(plan: &Plan, args: &EvalArgs) -> Result<Vec<Config>> {
    let config = &plan.config;
    let n = config.members.len();
    let all: Vec<usize> = (0..n).collect();
    let own = &plan.combination;
    let weights = Some(own.weights.clone());
    let make = |name: String, members: Vec<usize>, weights: Option<Vec<f32>>, mode, top_k| {
        let schedule = match mode == own.mode {
            true => own.schedule,
            false => Schedule::Lazy,
        };
        Config::new(
            (plan, args),
            name,
            members,
            weights,
            (mode, schedule),
            top_k,
        )
    };
    // A variant: its own name and setup.
    let variant = |name: &str, what: &str, mode: Mode, top_k: Option<usize>| {
        let mut c = make(name.into(), all.clone(), weights.clone(), mode, top_k);
        c.setup = fingerprint(&format!("{} {what}", c.setup));
        c
    };
    let confident = |name: &str, mode: Mode, top_k: Option<usize>| {
        let mut c = variant(name, "weighting=confidence", mode, top_k);
        c.weighting = Weighting::Confidence;
        c
    };
    for &k in &args.union_top_ks {
        if let Err(gac_core::Error::Setting { message, .. }) =
            gac_core::ensemble::validate_union_top_k(Some(k))
        {
            bail!("invalid --union-top-k: {message}");
        }
    }
    // A value given twice would count every question twice and narrow the intervals.
    for (flag, values) in [
        (
            "--threshold",
            args.thresholds.iter().map(f32::to_string).collect(),
        ),
        ("--gate", args.gates.iter().map(usize::to_string).collect()),
        (
            "--union-top-k",
            args.union_top_ks
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>(),
        ),
    ] {
        if let Some((i, v)) = values
            .iter()
            .enumerate()
            .find(|(i, v)| values[..*i].contains(v))
        {
            bail!("{flag} {v} is given twice (its {} and an earlier one): each configuration is evaluated once", ordinal(i + 1));
        }
    }
    let mut configs = Vec::new();
    if !args.no_single || n == 1 {
        for i in 0..n {
            configs.push(make(
                format!("member:{i}"),
                vec![i],
                None,
                Mode::Average,
                None,
            ));
        }
    }
    if n > 1 && !args.screen {
        configs.push(make(
            "average".into(),
            all.clone(),
            weights.clone(),
            Mode::Average,
            None,
        ));
        for &k in &args.union_top_ks {
            let name = format!("average:top{k}");
            configs.push(make(
                name,
                all.clone(),
                weights.clone(),
                Mode::Average,
                Some(k),
            ));
        }
        if args.confidence {
            configs.push(confident("average:confidence", Mode::Average, None));
        }
        if let Some(held) = args.learn_weights {
            let what = format!("weights=learned:{held}");
            let mut c = variant("average:learned", &what, Mode::Average, None);
            c.learned = true;
            configs.push(c);
        }
        if args.selective {
            configs.push(make(
                "selective".into(),
                all.clone(),
                weights.clone(),
                Mode::Selective,
                None,
            ));
        }
        let gates = match args.gates.is_empty() {
            true => vec![0],
            false => args.gates.clone(),
        };
        let mut gated = Vec::new();
        for &gate in &gates {
            let mut unsure = vec![WhenUnsure::Average];
            if args.defer {
                unsure.extend((0..n).filter(|&k| k != gate).map(WhenUnsure::Defer));
            }
            for &threshold in &args.thresholds {
                for &when_unsure in &unsure {
                    gated.push(Mode::Gated {
                        gate,
                        threshold,
                        when_unsure,
                    });
                }
            }
        }
        for mode in gated {
            configs.push(make(
                mode_name(mode),
                all.clone(),
                weights.clone(),
                mode,
                None,
            ));
        }
        // The configuration's own combination, where it is none of the above.
        let name = combination_name(own.mode, own.union_top_k, own.weighting);
        if !configs.iter().any(|c| c.name == name) {
            configs.push(match own.weighting {
                Weighting::Confidence => confident(&name, own.mode, own.union_top_k),
                Weighting::Fixed => make(name, all, weights, own.mode, own.union_top_k),
            });
        }
    }
    Ok(configs)
}

/// A combination's configuration name: its mode's, then `:topK` for a top-k union and
/// `:confidence` for confidence weighting (`average:top10`, `selective:confidence`).
pub(super) fn combination_name(
    mode: Mode,
    union_top_k: Option<usize>,
    weighting: Weighting,
) -> String {
    let mut name = mode_name(mode);
    if let Some(k) = union_top_k {
        name += &format!(":top{k}");
    }
    if weighting == Weighting::Confidence {
        name += ":confidence";
    }
    name
}

/// "1st", "2nd", "3rd", "4th", ...
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// `average`, `selective`, or `gated:T` for gate 0 averaging when unsure, else
/// `gated:T:gate=G[:member=K]`.
fn mode_name(mode: Mode) -> String {
    let Mode::Gated {
        gate,
        threshold,
        when_unsure,
    } = mode
    else {
        return mode.name().into();
    };
    match (gate, when_unsure) {
        (0, WhenUnsure::Average) => format!("gated:{threshold}"),
        (g, WhenUnsure::Average) => format!("gated:{threshold}:gate={g}"),
        (g, WhenUnsure::Defer(k)) => format!("gated:{threshold}:gate={g}:member={k}"),
    }
}

/// Everything besides the question that decides an answer, as a fingerprint.
fn setup_fingerprint(
    config: &EnsembleConfig,
    members: &[usize],
    weights: &Option<Vec<f32>>,
    mode: (Mode, Schedule),
    union_top_k: Option<usize>,
    args: &EvalArgs,
) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|&i| {
            let m = &config.members[i];
            let size = std::fs::metadata(m.file()).map_or(0, |md| md.len());
            let file = m.file().file_name().unwrap_or_default().to_string_lossy();
            let top_k = match (m.device_top_k, &m.url) {
                (Some(k), _) => format!(":device_top_k={k}"),
                (None, Some(url)) => format!(":url={url}:n_probs={:?}", m.n_probs),
                (None, None) => String::new(),
            };
            format!(
                "{:?}:{file}:{size}:gpu={:?}:layers={:?}:threads={:?}:ctx={:?}{top_k}",
                m.runtime, m.gpu, m.gpu_layers, m.threads, m.context
            )
        })
        .collect();
    // Only a run with a grammar says so: the setups of earlier runs stay as they were.
    let grammar = match args.grammar() {
        Ok(Some(g)) => format!(" grammar={g:?}"),
        _ => String::new(),
    };
    fingerprint(&format!(
        "members=[{}] weights={weights:?} mode={mode:?} union_top_k={union_top_k:?} max_tokens={} prompt_cache={} stop={STOPS:?}{grammar}",
        members.join(", "),
        args.max_tokens,
        args.prompt_cache,
    ))
}
