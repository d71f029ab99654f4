//! Slots and the queue in front of them: each slot is one ensemble (its llama.cpp members share
//! the loaded weights with the other slots' members, its mistral.rs members share one engine),
//! a request takes a free slot or waits in a bounded queue, and a full queue refuses at once.
//! A generation runs on a blocking thread; it stops within a step once its client is gone.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use gac_core::{Ensemble, Generation, Interrupt, Observer, Prompt, TokenLogprob, UnionId};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::api::{Job, RequestInput};
use super::error::ApiError;
use super::metrics::{Metrics, Outcome};

/// The slots, the queue and the counters.
pub struct Pool {
    free: Mutex<Vec<Ensemble>>,
    permits: Arc<Semaphore>,
    slots: usize,
    queue: usize,
    pub metrics: Metrics,
}

/// A slot held by one request; dropping it gives the slot back.
pub struct Lease {
    pool: Arc<Pool>,
    ensemble: Option<Ensemble>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(e) = self.ensemble.take() {
            self.pool.free.lock().expect("slot list").push(e);
        }
        self.pool.metrics.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request as queued while it lives; one dropped before it got a slot (its client
/// went away) counts as cancelled.
struct Queued<'a> {
    metrics: &'a Metrics,
    served: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
        if !self.served {
            self.metrics.finished(Outcome::Cancelled);
        }
    }
}

/// What a streaming generation sends to its response as it runs.
pub enum Event {
    /// Text that is final, with the logprobs of the tokens picked since the last piece.
    Text(String, Vec<TokenLogprob>),
    /// The end: the whole generation, or why it failed.
    Done(Box<Result<Generation, ApiError>>),
}

/// Sets the flag when dropped: the request's handler or stream is gone (its client
/// disconnected, or the answer is complete).
pub struct CancelOnDrop(pub Interrupt);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

impl Pool {
    /// A pool of these ensembles (one per slot) with a queue of `queue` waiting requests.
    pub fn new(slots: Vec<Ensemble>, queue: usize) -> Self {
        let n = slots.len();
        Self {
            free: Mutex::new(slots),
            permits: Arc::new(Semaphore::new(n)),
            slots: n,
            queue,
            metrics: Metrics::default(),
        }
    }

    /// Refuses every request from now on, those waiting in the queue included (503); the
    /// slots in use finish their generations.
    pub fn close(&self) {
        self.permits.close();
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// A free slot, waiting in the queue if there is room; 429 when there is none.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, ApiError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(ApiError::unavailable("the server is shutting down"))
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let depth = &self.metrics.queued;
                let room = depth.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q < self.queue as u64).then_some(q + 1)
                });
                if room.is_err() {
                    return Err(ApiError::busy(self.slots, self.queue));
                }
                let mut queued = Queued {
                    metrics: &self.metrics,
                    served: false,
                };
                let permit = self.permits.clone().acquire_owned().await;
                queued.served = true;
                permit.map_err(|_| ApiError::unavailable("the server is shutting down"))?
            }
        };
        self.metrics.busy.fetch_add(1, Ordering::Relaxed);
        let ensemble = self.free.lock().expect("slot list").pop();
        Ok(Lease {
            pool: self.clone(),
            ensemble,
            _permit: permit,
        })
    }
}

/// Streams a generation's text and logprobs to a channel; cancelled when the flag is set or
/// the receiver is gone.
struct Watcher {
    events: Option<mpsc::UnboundedSender<Event>>,
    cancel: Interrupt,
    logprobs: Vec<TokenLogprob>,
}

impl Observer for Watcher {
    fn text(&mut self, text: &str) {
        if let Some(events) = &self.events {
            let logprobs = std::mem::take(&mut self.logprobs);
            let _ = events.send(Event::Text(text.to_string(), logprobs));
        }
    }

    fn token(&mut self, _token: UnionId, logprob: Option<&TokenLogprob>) {
        if let (Some(_), Some(lp)) = (&self.events, logprob) {
            self.logprobs.push(lp.clone());
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_set() || self.events.as_ref().is_some_and(|e| e.is_closed())
    }
}

impl Lease {
    /// Runs the job on this slot (on the calling thread, which may block). `events` receives
    /// the text as it is generated; `cancel` (this request's own flag) stops the generation
    /// at the next step, or at once where a member waits on its server.
    pub fn run(
        mut self,
        job: &Job,
        events: Option<mpsc::UnboundedSender<Event>>,
        cancel: Interrupt,
    ) -> Result<Generation, ApiError> {
        let ensemble = self
            .ensemble
            .as_mut()
            .ok_or_else(|| ApiError::internal("no ensemble in a free slot"))?;
        ensemble.set_interrupt(cancel.clone());
        ensemble.set_weights(job.combination.weights.clone())?;
        ensemble.set_mode(job.combination.mode)?;
        let mut watcher = Watcher {
            events,
            cancel,
            logprobs: Vec::new(),
        };
        let prompt = match &job.input {
            RequestInput::Text(text) => Prompt::Text(text),
            RequestInput::Chat(messages) => Prompt::Chat(messages),
            RequestInput::Served(pieces) => Prompt::Served(pieces),
        };
        let result = ensemble.generate_with(prompt, &job.options, &mut watcher);
        if let Ok(g) = &result {
            self.pool.metrics.generated(g);
        }
        result.map_err(ApiError::from)
    }
}
