//! The step loop of one generation: evaluate the members a step needs, combine, pick, queue the
//! chosen token for every member, stream the text and check the stop rules.

use std::time::Instant;

use crate::combine::{scatter_add, Mode, Schedule, WhenUnsure};
use crate::pick::Picker;
use crate::text::{find_stop, held_back, Utf8Stream};
use crate::union::{Union, UnionId, END};
use crate::{Error, Result};

use super::types::Outcome;
use super::worker::{Cmd, Piece, Reply, Worker, HEAD_FLOOR};
use super::{Finish, GenerateOptions, MemberStats, Stats, StepStats};

pub(super) struct Run<'a> {
    pub(super) workers: Vec<Worker>,
    pub(super) weights: &'a [f32],
    pub(super) mode: Mode,
    pub(super) union: &'a Union,
    /// Union-space accumulator (plus the sink slot); all zero between steps.
    pub(super) acc: Vec<f32>,
    /// Union ids written in `acc` by the sparse paths.
    pub(super) touched: Vec<u32>,
    /// A member's top-k (probability, token) pairs, for the top-k union.
    pub(super) top: Vec<(f32, u32)>,
    /// Combine only each member's k most probable tokens.
    pub(super) union_top_k: Option<usize>,
    /// When gated mode evaluates the non-gate members.
    pub(super) schedule: Schedule,
    /// This step's normalized weights, parallel to the members combined.
    pub(super) step_weights: Vec<f32>,
    pub(super) picker: Picker,
    pub(super) stats: Stats,
}

impl Run<'_> {
    /// Evaluates these members in parallel.
    fn evaluate(&mut self, which: &[usize]) -> Result<()> {
        for &i in which {
            self.workers[i].send_eval()?;
        }
        for &i in which {
            self.workers[i].receive(&mut self.stats.members[i])?;
        }
        Ok(())
    }

    /// Combines these members' last distributions (weights renormalized over them) and picks.
    fn choose(&mut self, which: &[usize], step: usize) -> Result<UnionId> {
        // In f64: large f32 weights must not overflow their sum and normalize to 0.
        let total: f64 = which.iter().map(|&i| f64::from(self.weights[i])).sum();
        self.step_weights.clear();
        self.step_weights
            .extend(which.iter().map(|&i| match total > 0.0 {
                true => (f64::from(self.weights[i]) / total) as f32,
                false => 1.0 / which.len() as f32,
            }));
        if let Some(k) = self.union_top_k {
            if let Some(x) = self.choose_top_k(which, k) {
                return Ok(x);
            }
            // Every member's head was special tokens only: fall back to the full distributions.
        } else if self.picker.is_greedy() {
            if let Some(x) = self.greedy_on_heads(which) {
                return Ok(x);
            }
        }
        for (&i, &w) in which.iter().zip(&self.step_weights) {
            let probs = &self.workers[i].dist.as_ref().expect("evaluated").probs;
            scatter_add(&mut self.acc, self.union.projection(i), probs, w);
        }
        let t = Instant::now();
        let x = self.picker.pick(&self.acc[..self.union.len()]);
        self.stats.pick_time += t.elapsed();
        self.acc.fill(0.0);
        x.ok_or(Error::ZeroMass { step })
    }

    /// The top-k union: each member's k most probable tokens that can be written (from its
    /// head; special tokens carry no mass and do not take a place), weighted and summed in
    /// union space; the pick sees nothing else. `None` when no member has such a token.
    fn choose_top_k(&mut self, which: &[usize], k: usize) -> Option<UnionId> {
        let sink = self.union.sink() as u32;
        self.touched.clear();
        for (&i, &w) in which.iter().zip(&self.step_weights) {
            let dist = self.workers[i].dist.as_ref().expect("evaluated");
            let projection = self.union.projection(i);
            self.top.clear();
            self.top.extend(
                dist.head
                    .iter()
                    .filter(|&&j| projection[j as usize] != sink)
                    .map(|&j| (dist.probs[j as usize], j)),
            );
            if self.top.len() > k {
                self.top
                    .select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                self.top.truncate(k);
            }
            for &(p, j) in &self.top {
                let u = projection[j as usize];
                if self.acc[u as usize] == 0.0 {
                    self.touched.push(u);
                }
                self.acc[u as usize] += w * p;
            }
        }
        let t = Instant::now();
        let x = if self.picker.is_greedy() {
            let best = self.touched.iter().copied().max_by(|&a, &b| {
                self.acc[a as usize]
                    .total_cmp(&self.acc[b as usize])
                    .then(b.cmp(&a))
            });
            best.map(UnionId)
        } else {
            self.picker.pick(&self.acc[..self.union.len()])
        };
        self.stats.pick_time += t.elapsed();
        for &u in &self.touched {
            self.acc[u as usize] = 0.0;
        }
        x
    }

    /// The exact greedy pick computed from the members' heads only, or `None` when the margin
    /// is too thin to be sure (then the caller combines the full distributions).
    fn greedy_on_heads(&mut self, which: &[usize]) -> Option<UnionId> {
        let sink = self.union.sink() as u32;
        self.touched.clear();
        for (&i, &w) in which.iter().zip(&self.step_weights) {
            let dist = self.workers[i].dist.as_ref().expect("evaluated");
            let projection = self.union.projection(i);
            for &j in &dist.head {
                let u = projection[j as usize];
                if u == sink {
                    continue;
                }
                let slot = &mut self.acc[u as usize];
                if *slot == 0.0 {
                    self.touched.push(u);
                }
                *slot += w * dist.probs[j as usize];
            }
        }
        let t = Instant::now();
        let (mut best, mut best_p, mut second_p) = (0u32, 0.0f32, 0.0f32);
        for &u in &self.touched {
            let p = self.acc[u as usize];
            if p > best_p || (p == best_p && u < best) {
                second_p = best_p;
                best_p = p;
                best = u;
            } else if p > second_p {
                second_p = p;
            }
            self.acc[u as usize] = 0.0;
        }
        self.stats.pick_time += t.elapsed();
        // A union token's true mass exceeds its head mass by at most this much: each member
        // adds less than HEAD_FLOOR for every one of its ids outside the head that maps to it.
        let tails: f32 = which
            .iter()
            .zip(&self.step_weights)
            .map(|(&i, w)| w * HEAD_FLOOR * self.union.max_fold(i) as f32)
            .sum();
        (best_p - second_p > tails && best_p > tails).then_some(UnionId(best))
    }

    /// One step: evaluates the members it needs and picks a token; returns it, whether the
    /// step was ensembled and the gate's confidence.
    fn step(&mut self, all: &[usize], step: usize) -> Result<(UnionId, bool, Option<f32>)> {
        let (which, ensembled, confidence) = match self.mode {
            Mode::Average => {
                self.evaluate(all)?;
                (all.to_vec(), all.len() > 1, None)
            }
            Mode::Gated {
                gate,
                threshold,
                when_unsure,
            } => {
                let eager = self.schedule == Schedule::Eager;
                let gate_only = [gate];
                self.evaluate(if eager { all } else { &gate_only })?;
                let top = self.workers[gate].top;
                let confident = top > threshold;
                let which: Vec<usize> = match (confident, when_unsure) {
                    (true, _) => vec![gate],
                    (false, WhenUnsure::Average) => all.to_vec(),
                    (false, WhenUnsure::Defer(k)) => vec![k],
                };
                if !eager {
                    let rest: Vec<usize> = which.iter().copied().filter(|&i| i != gate).collect();
                    for i in all.iter().filter(|i| !which.contains(i)) {
                        self.workers[*i].send_idle()?;
                    }
                    self.evaluate(&rest)?;
                }
                (which, !confident, Some(top))
            }
        };
        let t = Instant::now();
        let x = self.choose(&which, step)?;
        self.stats.combine_time += t.elapsed();
        Ok((x, ensembled, confidence))
    }

    pub(super) fn generate(
        &mut self,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
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
        let mut released = 0;
        let mut stream = Utf8Stream::default();
        let mut finish = Finish::MaxTokens;
        let started = Instant::now();
        for step in 0..options.max_tokens {
            let step_start = Instant::now();
            let (x, ensembled, gate_confidence) = match self.step(&all, step) {
                Err(Error::ContextFull { .. }) => {
                    finish = Finish::ContextFull;
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
                self.stats.combine_time += t.elapsed();
                break;
            }
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
                    on_text(s);
                }
                released = end;
            }
            self.stats.combine_time += t.elapsed();
            if stop.is_some() {
                finish = Finish::Stop;
                break;
            }
        }
        if finish != Finish::Stop && released < bytes.len() {
            if let Some(s) = stream.push(&bytes[released..]) {
                on_text(s);
            }
            released = bytes.len();
        }
        if let Some(s) = stream.finish() {
            on_text(s);
        }
        let text = String::from_utf8_lossy(&bytes[..released]).into_owned();
        Ok((text, bytes, tokens, finish))
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
                Ok(Reply::Flushed(ids)) => out.push(ids),
                Err(Error::ContextFull { .. }) => out.push(Vec::new()),
                Err(e) => return Err(e),
                Ok(Reply::Evaluated { .. }) => unreachable!("no evaluation is in flight"),
            }
        }
        Ok(out)
    }
}
