//! The member side of the step loop: one thread per member, driven by commands, replying with
//! the member's distribution after each evaluation (softmax computed on the member's thread).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use crate::combine::softmax;
use crate::member::{Evaluation, Member};
use crate::select::HEAD_FLOOR;
use crate::{Error, Result};

use super::MemberStats;

/// A token queued for a member: its own id, or text it must encode itself.
pub(super) enum Piece {
    Id(u32),
    Text(Box<[u8]>),
}

/// A member's distribution after an evaluation; the buffers travel between threads and are
/// reused, so the loop allocates nothing proportional to a vocabulary.
pub(super) struct Dist {
    /// Probabilities over the member's vocabulary; zero outside `head` unless `full`.
    pub(super) probs: Vec<f32>,
    /// The ids that can decide a greedy pick (see [`crate::select::MemberInput::head`]).
    pub(super) head: Vec<u32>,
    /// No id outside `head` is more probable than this.
    pub(super) floor: f32,
    /// `probs` is the whole distribution (the member gave logits, not only its head).
    pub(super) full: bool,
    /// The most mass outside `head` (see [`crate::select::MemberInput::outside`]).
    pub(super) outside: f32,
}

impl Dist {
    /// Zeroed buffers for a vocabulary of this size.
    pub(super) fn new(vocab_len: usize) -> Self {
        Self {
            probs: vec![0.0; vocab_len],
            head: Vec::new(),
            floor: HEAD_FLOOR,
            full: false,
            outside: 1.0,
        }
    }

    /// The softmax of `logits`; returns the largest probability.
    fn set_logits(&mut self, name: &str, logits: &[f32]) -> Result<f32> {
        if logits.len() != self.probs.len() {
            return Err(Error::member(
                name,
                format!(
                    "{} logits for a vocabulary of {}",
                    logits.len(),
                    self.probs.len()
                ),
            ));
        }
        let top = softmax(logits, &mut self.probs, HEAD_FLOOR, &mut self.head)
            .ok_or_else(|| Error::member(name, "logits are not finite (NaN or inf)"))?;
        self.floor = HEAD_FLOOR;
        self.full = true;
        self.outside = f32::INFINITY;
        Ok(top)
    }

    /// A member's head alone (zeros elsewhere); returns the largest probability.
    fn set_head(&mut self, name: &str, head: &[(u32, f32)]) -> Result<f32> {
        match self.full {
            true => self.probs.fill(0.0),
            false => self.head.iter().for_each(|&j| self.probs[j as usize] = 0.0),
        }
        self.head.clear();
        self.full = false;
        let (mut top, mut floor) = (0.0f32, 1.0f32);
        for &(id, p) in head {
            let slot = self.probs.get_mut(id as usize).ok_or_else(|| {
                Error::member(
                    name,
                    format!("its head names id {id}, outside its vocabulary"),
                )
            })?;
            if !(0.0..=1.0 + 1e-3).contains(&p) || *slot != 0.0 {
                return Err(Error::member(
                    name,
                    format!("its head gives id {id} the probability {p} (or lists it twice)"),
                ));
            }
            *slot = p;
            self.head.push(id);
            (top, floor) = (top.max(p), floor.min(p));
        }
        if head.is_empty() {
            return Err(Error::member(name, "its head is empty"));
        }
        self.floor = floor;
        // What the head leaves of 1, with room for rounding.
        let listed: f32 = head.iter().map(|&(_, p)| p).sum();
        self.outside = (1.0 - listed).max(0.0) + 1e-5;
        Ok(top)
    }
}

pub(super) enum Cmd {
    /// Push the pieces, evaluate, and send back the distribution in these buffers.
    Eval(Vec<Piece>, Dist),
    /// Send back the whole distribution of the position just evaluated (the member gave only
    /// its head).
    Full(Dist),
    /// Push the pieces of a step that skipped the member; no reply (an error is kept for the
    /// next command's reply).
    Idle(Vec<Piece>),
    /// Push the pieces and send back every id pushed since the prompt.
    Flush(Vec<Piece>),
}

pub(super) enum WorkerReply {
    Evaluated {
        dist: Dist,
        top: f32,
        timing: Timing,
    },
    Flushed(Vec<u32>),
}

#[derive(Default)]
pub(super) struct Timing {
    push: Duration,
    eval: Duration,
    softmax: Duration,
    /// Positions the evaluation took from the member's cache.
    reused: usize,
    /// The member gave only its head.
    head: bool,
    /// This was a [`Cmd::Full`] after a head.
    full_after_head: bool,
}

pub(super) fn worker(member: &mut dyn Member, rx: Receiver<Cmd>, tx: Sender<Result<WorkerReply>>) {
    let mut generated = Vec::new();
    let name = member.name().to_string();
    let mut deferred = None;
    for cmd in rx {
        let idle = matches!(cmd, Cmd::Idle(_));
        let reply = catch_unwind(AssertUnwindSafe(|| match deferred.take() {
            Some(e) => Err(e),
            None => handle(member, &name, cmd, &mut generated),
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::member(&name, format!("panicked: {what}")))
        });
        if idle {
            deferred = reply.err();
            continue;
        }
        let failed = reply.is_err();
        if tx.send(reply).is_err() || failed {
            return;
        }
    }
}

pub(super) fn handle(
    member: &mut dyn Member,
    name: &str,
    cmd: Cmd,
    generated: &mut Vec<u32>,
) -> Result<WorkerReply> {
    let mut timing = Timing::default();
    let pieces = match &cmd {
        Cmd::Eval(pieces, _) | Cmd::Idle(pieces) | Cmd::Flush(pieces) => &pieces[..],
        Cmd::Full(_) => &[],
    };
    let t = Instant::now();
    let before = generated.len();
    for piece in pieces {
        match piece {
            Piece::Id(id) => generated.push(*id),
            Piece::Text(bytes) => generated.extend(member.encode(bytes)?),
        }
    }
    member.push(&generated[before..])?;
    timing.push = t.elapsed();
    match cmd {
        Cmd::Idle(_) => {
            member.idle();
            Ok(WorkerReply::Flushed(Vec::new()))
        }
        Cmd::Flush(_) => Ok(WorkerReply::Flushed(std::mem::take(generated))),
        Cmd::Eval(_, mut dist) => {
            let t = Instant::now();
            let evaluation = member.evaluate()?;
            timing.eval = t.elapsed();
            let t = Instant::now();
            let top = match evaluation {
                Evaluation::Logits(logits) => dist.set_logits(name, logits)?,
                Evaluation::Head(head) => {
                    timing.head = true;
                    dist.set_head(name, head)?
                }
            };
            timing.softmax = t.elapsed();
            timing.reused = member.reused();
            Ok(WorkerReply::Evaluated { dist, top, timing })
        }
        Cmd::Full(mut dist) => {
            let t = Instant::now();
            let logits = member.logits()?;
            timing.eval = t.elapsed();
            timing.full_after_head = true;
            let t = Instant::now();
            let top = dist.set_logits(name, logits)?;
            timing.softmax = t.elapsed();
            Ok(WorkerReply::Evaluated { dist, top, timing })
        }
    }
}

pub(super) struct Worker {
    pub(super) name: String,
    pub(super) tx: Sender<Cmd>,
    pub(super) rx: Receiver<Result<WorkerReply>>,
    pub(super) dist: Option<Dist>,
    pub(super) top: f32,
    pub(super) pending: Vec<Piece>,
}

impl Worker {
    pub(super) fn disconnected(&self) -> Error {
        Error::member(&self.name, "its worker thread stopped")
    }

    /// Tells a member the gate skipped it, handing over what it has to push.
    pub(super) fn send_idle(&mut self) -> Result<()> {
        let pieces = std::mem::take(&mut self.pending);
        self.tx
            .send(Cmd::Idle(pieces))
            .map_err(|_| self.disconnected())
    }

    pub(super) fn send_eval(&mut self) -> Result<()> {
        let dist = self.dist.take().expect("one evaluation at a time");
        let pieces = std::mem::take(&mut self.pending);
        self.tx
            .send(Cmd::Eval(pieces, dist))
            .map_err(|_| self.disconnected())
    }

    /// Asks for the whole distribution of the position just evaluated.
    pub(super) fn send_full(&mut self) -> Result<()> {
        let dist = self.dist.take().expect("one evaluation at a time");
        self.tx
            .send(Cmd::Full(dist))
            .map_err(|_| self.disconnected())
    }

    pub(super) fn receive(&mut self, stats: &mut MemberStats) -> Result<()> {
        match self.rx.recv().map_err(|_| self.disconnected())?? {
            WorkerReply::Evaluated { dist, top, timing } => {
                self.dist = Some(dist);
                self.top = top;
                stats.head_evals += usize::from(timing.head);
                if timing.full_after_head {
                    stats.full_after_head += 1;
                    stats.full_after_head_time += timing.eval;
                } else if stats.prompt_time.is_zero() && stats.decode_evals == 0 {
                    stats.prompt_time = timing.eval;
                    stats.prompt_reused = timing.reused;
                } else {
                    stats.decode_evals += 1;
                    stats.decode_time += timing.eval;
                }
                stats.softmax_time += timing.softmax;
                stats.push_time += timing.push;
                Ok(())
            }
            WorkerReply::Flushed(_) => unreachable!("flush replies are read in flush()"),
        }
    }
}
