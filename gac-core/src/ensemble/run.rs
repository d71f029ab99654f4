//! The step loop of one generation: evaluate the members a step needs, combine, pick, queue the
//! chosen token for every member, stream the text and check the stop rules.

use std::time::{Duration, Instant};

use crate::constraint::Constraint;
use crate::member::Interrupt;
use crate::select::{Candidates, Chain, Filled, MemberInput, Scatter};
use crate::select::{Mode, Schedule, Signal, Weighting};
use crate::text::{find_stop, held_back, Utf8Stream};
use crate::union::{Union, UnionId, END};
use crate::{Error, Result};

use super::types::Outcome;
use super::worker::{Cmd, Piece, Worker, WorkerReply};
use super::{Finish, GenerateOptions, MemberStats, Observer, Stats, StepStats, TokenLogprob};

/// A picked token, with its probability when logprobs are asked for.
type Picked = (UnionId, Option<TokenLogprob>);

pub(super) struct Run<'a> {
    pub(super) workers: Vec<Worker>,
    pub(super) weights: &'a [f32],
    pub(super) union: &'a Union,
    /// This step's candidates (allocated once, at union size).
    pub(super) candidates: Candidates,
    /// Which members decide a step and how a token is chosen from them.
    pub(super) chain: Chain,
    /// When gated mode evaluates the non-gate members.
    pub(super) schedule: Schedule,
    /// Fixed weights or confidence-weighted.
    pub(super) weighting: Weighting,
    /// How many alternatives to report with each token's probability, if any.
    pub(super) logprobs: Option<usize>,
    /// The grammar the output must match, if any.
    pub(super) constraint: Option<Constraint>,
    /// Set from another thread: stop at the next step.
    pub(super) interrupt: Interrupt,
    pub(super) stats: Stats,
}

impl Run<'_> {
    /// Evaluates these members in parallel; meanwhile, restricts the candidates to what the
    /// grammar allows at this step (it depends only on the text so far).
    fn evaluate(&mut self, which: &[usize], step: usize) -> Result<()> {
        for &i in which {
            self.workers[i].send_eval()?;
        }
        let restricted = self.restrict(step);
        for &i in which {
            self.workers[i].receive(&mut self.stats.members[i])?;
        }
        restricted
    }

    /// Restricts the candidates to the union tokens the grammar allows at this step.
    fn restrict(&mut self, step: usize) -> Result<()> {
        if let Some(c) = &mut self.constraint {
            let t = Instant::now();
            self.candidates.restrict(c.allowed(step)?);
            self.stats.constraint_time += t.elapsed();
        }
        Ok(())
    }

    /// The gate's confidence: its top probability, or under a grammar the largest share of
    /// the mass it gives the allowed tokens. A gate that gave only its head is asked for its
    /// whole distribution only where the head cannot tell whether that share is above
    /// `threshold`. The time counts as the combine's, the gate's evaluation apart.
    fn gate_confidence(&mut self, gate: usize, threshold: f32) -> Result<f32> {
        if self.constraint.is_none() {
            return Ok(self.workers[gate].top);
        }
        let started = Instant::now();
        let mut evaluating = Duration::ZERO;
        self.scatter(&[gate], Some(Scatter::Full));
        let (mut best, mut total) = self.candidates.best_and_total();
        let dist = self.workers[gate].dist.as_ref().expect("evaluated");
        if !dist.full {
            // What the head leaves out may hold allowed tokens, each below the head's floor.
            let low = best / (total + dist.outside);
            let high = best.max(dist.floor) / total;
            if total <= 0.0 || (low > threshold) != (high > threshold) {
                let t = Instant::now();
                self.fetch_whole(&[gate])?;
                evaluating = t.elapsed();
                self.scatter(&[gate], Some(Scatter::Whole));
                (best, total) = self.candidates.best_and_total();
            }
        }
        self.stats.combine_time += started.elapsed() - evaluating;
        Ok(match total > 0.0 {
            true => best / total,
            false => 0.0,
        })
    }

    /// Sends each of these members its command, then waits for every answer.
    fn in_parallel(&mut self, which: &[usize], send: fn(&mut Worker) -> Result<()>) -> Result<()> {
        for &i in which {
            send(&mut self.workers[i])?;
        }
        for &i in which {
            self.workers[i].receive(&mut self.stats.members[i])?;
        }
        Ok(())
    }

    /// Combines these members' last distributions (weights renormalized over them) and picks,
    /// or takes `taken` where the step's token is already decided; with the token's
    /// probability when logprobs are asked for.
    fn choose(&mut self, which: &[usize], step: usize, taken: Option<UnionId>) -> Result<Picked> {
        let started = Instant::now();
        let mut evaluating = Duration::ZERO;
        let mut filled = self.scatter(which, None);
        if filled == Filled::NeedsFull {
            let t = Instant::now();
            // The heads do not decide this greedy step, some are shorter than the top-k
            // union's K, or they hold no token the grammar allows: those members evaluate
            // their whole distribution, for this step alone.
            let inputs = inputs_of(
                &self.workers,
                self.weights,
                self.weighting,
                self.union,
                which,
            );
            let heads: Vec<usize> = which
                .iter()
                .zip(&inputs)
                .filter(|(_, m)| {
                    self.chain.needs_whole(m) || (self.candidates.restricted() && !m.full)
                })
                .map(|(&i, _)| i)
                .collect();
            self.fetch_whole(&heads)?;
            evaluating = t.elapsed();
            filled = self.scatter(which, None);
        }
        if filled != Filled::Mass {
            return Err(Error::ZeroMass { step });
        }
        // A greedy pick may be decided on the heads: it is made first, then the whole combined
        // distribution is filled in for the report, so asking for logprobs changes no pick.
        let report_whole = self.logprobs.is_some() && self.chain.decides_on_heads();
        let mut top = match report_whole {
            true => None,
            false => self.logprobs.map(|n| self.top_logprobs(n)),
        };
        let t = Instant::now();
        let x = match taken {
            Some(x) => Some(x),
            None => self.chain.choose(&mut self.candidates),
        };
        self.stats.pick_time += t.elapsed();
        let x = x.ok_or(Error::ZeroMass { step })?;
        if let (true, Some(n)) = (report_whole, self.logprobs) {
            evaluating += self.fill_whole(which)?;
            top = Some(self.top_logprobs(n));
        }
        // The members' evaluations are theirs, not the combine's.
        self.stats.combine_time += started.elapsed() - evaluating;
        Ok((
            x,
            top.map(|(total, top)| TokenLogprob {
                token: x,
                logprob: (self.candidates.mass(x.0) / total).ln(),
                top,
            }),
        ))
    }

    /// Fills the candidates with these members' whole distributions, asking each member that
    /// gave only its head for the rest; returns the time the members took.
    fn fill_whole(&mut self, which: &[usize]) -> Result<Duration> {
        let t = Instant::now();
        let heads: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.workers[i].dist.as_ref().is_some_and(|d| !d.full))
            .collect();
        self.fetch_whole(&heads)?;
        let evaluating = t.elapsed();
        self.scatter(which, Some(Scatter::Whole));
        Ok(evaluating)
    }

    /// Asks these members, which gave only their heads, for their whole distributions of the
    /// same position, in parallel.
    fn fetch_whole(&mut self, members: &[usize]) -> Result<()> {
        self.in_parallel(members, Worker::send_full)
    }

    /// Puts these members' last distributions into the candidates, as the chain scatters them
    /// or as `how` says.
    fn scatter(&mut self, which: &[usize], how: Option<Scatter>) -> Filled {
        let inputs = inputs_of(
            &self.workers,
            self.weights,
            self.weighting,
            self.union,
            which,
        );
        match how {
            Some(how) => self.candidates.scatter(how, &inputs),
            None => self.chain.scatter(&mut self.candidates, &inputs),
        }
    }

    /// The scattered candidates' total mass and their `n` most probable, as log-probabilities.
    /// Where whole distributions were scattered, the total counts the special tokens' mass
    /// too, so a member's probabilities are reported as they are, not renormalized (an
    /// ensemble of which this one is a member weighs them as it weighs a member of its own).
    fn top_logprobs(&mut self, n: usize) -> (f32, Vec<(UnionId, f32)>) {
        let total = self.candidates.list().iter().map(|x| x.0).sum::<f32>()
            + self.candidates.special_mass();
        let top = (self.candidates.top(n).iter())
            .map(|&(p, u)| (UnionId(u), (p / total).ln()))
            .collect();
        (total, top)
    }

    /// The union token every member with weight finds most probable, each ranked on its own
    /// distribution as the chain ranks it, if they agree (selective mode's signal). Members
    /// whose heads cannot decide give their whole distributions, in parallel. The time counts
    /// as the combine's, the members' evaluations apart.
    fn agreed(&mut self, all: &[usize]) -> Result<Option<UnionId>> {
        let started = Instant::now();
        let how = self.chain.argmax_scatter();
        let voters: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| self.weights[i] > 0.0)
            .collect();
        let mut best = Vec::with_capacity(voters.len());
        let mut whole = Vec::new();
        for &i in &voters {
            match self.scatter(&[i], Some(how)) {
                Filled::NeedsFull => whole.push(i),
                Filled::Mass => best.push(self.candidates.best()),
                Filled::Empty => best.push(None),
            }
        }
        let t = Instant::now();
        self.fetch_whole(&whole)?;
        let evaluating = t.elapsed();
        for &i in &whole {
            let filled = self.scatter(&[i], Some(how));
            best.push(
                (filled == Filled::Mass)
                    .then(|| self.candidates.best())
                    .flatten(),
            );
        }
        self.stats.combine_time += started.elapsed() - evaluating;
        let first = best.first().copied().flatten();
        Ok(first
            .filter(|_| best.iter().all(|b| *b == first))
            .map(UnionId))
    }

    /// One step: evaluates the members it needs and picks a token; returns it (with its
    /// probability if asked for), whether the step was ensembled and the gate's confidence.
    fn step(&mut self, all: &[usize], step: usize) -> Result<(Picked, bool, Option<f32>)> {
        let (which, ensembled, confidence) = match self.chain.mode() {
            Mode::Average => {
                self.evaluate(all, step)?;
                let (which, ensembled) = self.chain.deciders(all, Signal::None);
                (which, ensembled, None)
            }
            Mode::Selective => {
                self.evaluate(all, step)?;
                let agreed = self.agreed(all)?;
                let signal = Signal::Agreed(agreed.is_some());
                let (which, ensembled) = self.chain.deciders(all, signal);
                if let Some(x) = agreed {
                    // The agreed token, with its probability under the average if asked for.
                    let logprob = match self.logprobs {
                        Some(_) => self.choose(&which, step, Some(x))?.1,
                        None => None,
                    };
                    return Ok(((x, logprob), ensembled, None));
                }
                (which, ensembled, None)
            }
            Mode::Gated {
                gate, threshold, ..
            } => {
                let eager = self.schedule == Schedule::Eager;
                let gate_only = [gate];
                self.evaluate(if eager { all } else { &gate_only }, step)?;
                let top = self.gate_confidence(gate, threshold)?;
                let (which, ensembled) = self.chain.deciders(all, Signal::GateTop(top));
                if !eager {
                    let rest: Vec<usize> = which.iter().copied().filter(|&i| i != gate).collect();
                    for i in all.iter().filter(|i| !which.contains(i)) {
                        self.workers[*i].send_idle()?;
                    }
                    self.evaluate(&rest, step)?;
                }
                (which, ensembled, Some(top))
            }
        };
        let x = self.choose(&which, step, None)?;
        Ok((x, ensembled, confidence))
    }

    pub(super) fn generate(
        &mut self,
        options: &GenerateOptions,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        let all: Vec<usize> = (0..self.workers.len()).collect();
        self.stats.members = self
            .workers
            .iter()
            .map(|w| MemberStats {
                name: w.name.clone(),
                ..MemberStats::default()
            })
            .collect();
        let stops: Vec<Vec<u8>> = options.stop.iter().map(|s| s.as_bytes().to_vec()).collect();
        let mut bytes = Vec::new();
        let mut tokens = Vec::new();
        let mut logprobs = Vec::new();
        let mut released = 0;
        let mut stream = Utf8Stream::default();
        let mut finish = Finish::MaxTokens;
        let started = Instant::now();
        for step in 0..options.max_tokens {
            if observer.cancelled() || self.interrupt.is_set() {
                finish = Finish::Cancelled;
                break;
            }
            let step_start = Instant::now();
            let ((x, logprob), ensembled, gate_confidence) = match self.step(&all, step) {
                Err(Error::ContextFull { .. }) => {
                    finish = Finish::ContextFull;
                    break;
                }
                Err(Error::Interrupted { .. }) => {
                    finish = Finish::Cancelled;
                    break;
                }
                other => other?,
            };
            let t = Instant::now();
            self.stats.steps += 1;
            self.stats.ensembled_steps += usize::from(ensembled);
            self.stats.per_step.push(StepStats {
                token: x,
                ensembled,
                gate_confidence,
                time: step_start.elapsed(),
            });
            if step == 0 {
                self.stats.first_step_time = started.elapsed();
            }
            if x == END {
                finish = Finish::End;
                logprobs.extend(logprob);
                self.stats.combine_time += t.elapsed();
                break;
            }
            if let Some(c) = &mut self.constraint {
                c.advance(x, step)?;
            }
            observer.token(x, logprob.as_ref());
            logprobs.extend(logprob);
            tokens.push(x);
            self.stats.tokens += 1;
            let piece = self.union.bytes(x);
            for (i, w) in self.workers.iter_mut().enumerate() {
                w.pending.push(match self.union.member_token(i, x) {
                    Some(id) => Piece::Id(id),
                    None => Piece::Text(piece.into()),
                });
            }
            let new_from = bytes.len();
            bytes.extend_from_slice(piece);
            let stop = find_stop(&bytes, &stops, new_from);
            let end = stop.unwrap_or(bytes.len() - held_back(&bytes, &stops));
            if end > released {
                if let Some(s) = stream.push(&bytes[released..end]) {
                    observer.text(s);
                }
                released = end;
            }
            self.stats.combine_time += t.elapsed();
            if stop.is_some() {
                finish = Finish::Stop;
                break;
            }
            if self
                .constraint
                .as_ref()
                .is_some_and(Constraint::is_complete)
            {
                finish = Finish::End;
                break;
            }
        }
        if finish != Finish::Stop && released < bytes.len() {
            if let Some(s) = stream.push(&bytes[released..]) {
                observer.text(s);
            }
            released = bytes.len();
        }
        if let Some(s) = stream.finish() {
            observer.text(s);
        }
        let text = String::from_utf8_lossy(&bytes[..released]).into_owned();
        Ok(Outcome {
            text,
            bytes,
            tokens,
            logprobs,
            finish,
        })
    }

    /// Pushes every queued token, so each member's context spells all generated bytes, and
    /// returns the ids each member received after the prompt. A member whose context cannot
    /// take the last tokens gets an empty list: the generation itself is complete.
    pub(super) fn flush(&mut self) -> Result<Vec<Vec<u32>>> {
        for w in &mut self.workers {
            let pieces = std::mem::take(&mut w.pending);
            w.tx.send(Cmd::Flush(pieces))
                .map_err(|_| w.disconnected())?;
        }
        let mut out = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            match w.rx.recv().map_err(|_| w.disconnected())? {
                Ok(WorkerReply::Flushed(ids)) => out.push(ids),
                Err(Error::ContextFull { .. }) => out.push(Vec::new()),
                Err(e) => return Err(e),
                Ok(WorkerReply::Evaluated { .. }) => unreachable!("no evaluation is in flight"),
            }
        }
        Ok(out)
    }
}

/// These members' last distributions as the selection reads them, with their weights (times
/// their confidence at this step, if so weighted) renormalized over them.
fn inputs_of<'a>(
    workers: &'a [Worker],
    weights: &[f32],
    weighting: Weighting,
    union: &'a Union,
    which: &[usize],
) -> Vec<MemberInput<'a>> {
    let weight = |i: usize| match weighting {
        Weighting::Fixed => f64::from(weights[i]),
        Weighting::Confidence => f64::from(weights[i]) * f64::from(workers[i].top),
    };
    // In f64: large f32 weights must not overflow their sum and normalize to 0.
    let total: f64 = which.iter().map(|&i| weight(i)).sum();
    which
        .iter()
        .map(|&i| {
            let dist = workers[i].dist.as_ref().expect("evaluated");
            MemberInput {
                probs: &dist.probs,
                head: &dist.head,
                floor: dist.floor,
                full: dist.full,
                outside: dist.outside,
                projection: union.projection(i),
                weight: match total > 0.0 {
                    true => (weight(i) / total) as f32,
                    false => 1.0 / which.len() as f32,
                },
                max_fold: union.max_fold(i),
                folds: union.folds(i),
            }
        })
        .collect()
}
