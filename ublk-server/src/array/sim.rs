//! The queue on the simulated clock: replica I/O and timers as events on a
//! heap, in simulated time, with no io_uring, no sleeping and no data.
//!
//! The request state machine (`queue.rs`), the router, the feature store,
//! the predictor, the emulators and fault injection are the same code as on
//! the real clock; only this file differs. A replica I/O completes at the
//! time its emulator gives ([`crate::emu::FlashEmu::submit`]); a hedge timer
//! fires at its threshold; a routing batch that asked the predictor moves
//! the clock on by the array's [`crate::route::PredictCost`], unless its
//! predictions went to the (simulated) GPU: then its reads wait parked for
//! the modelled round trip while the queue goes on (`parked.rs`).
//!
//! [`Queue::poll`] with `wait` moves the clock to the earliest pending event
//! (or to the end of the timeout, if that comes first), runs every event due
//! by then, and returns. Events due at the same time run in the order they
//! were scheduled, so a run is a function of its inputs alone.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::parked::UD_GPU_ANSWER;
use super::slots::{UD_HEDGE, UD_IO};
use super::{Completion, Queue};
use crate::emu::SimTime;

/// Pending events of a simulated queue: (time, order scheduled, user data).
pub(crate) struct SimEvents {
    heap: BinaryHeap<Reverse<(u64, u64, u64)>>,
    seq: u64,
    time: Arc<SimTime>,
}

impl SimEvents {
    pub(super) fn new(time: Arc<SimTime>) -> Self {
        SimEvents {
            heap: BinaryHeap::new(),
            seq: 0,
            time,
        }
    }

    /// The simulated time now.
    pub(super) fn now_ns(&self) -> u64 {
        self.time.now_ns()
    }

    /// Schedules `user` (a `slots::ud` value) at `at`.
    pub(super) fn schedule(&mut self, at: u64, user: u64) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, user)));
    }

    /// Moves the clock on by `ns` (the thread was busy predicting).
    pub(super) fn charge(&self, ns: u64) {
        if ns > 0 {
            self.time.advance_by(ns);
        }
    }

    /// True when an event is due now.
    pub(super) fn has_due(&self) -> bool {
        self.heap
            .peek()
            .is_some_and(|Reverse((t, _, _))| *t <= self.now_ns())
    }

    /// The next due event, if any.
    fn pop_due(&mut self) -> Option<u64> {
        if self.has_due() {
            self.heap.pop().map(|Reverse((_, _, user))| user)
        } else {
            None
        }
    }

    /// When the next event is due.
    fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }
}

impl Queue {
    fn sim(&mut self) -> &mut SimEvents {
        match &mut self.io {
            super::queue::Io::Sim(sim) => sim,
            super::queue::Io::Ring(_) => unreachable!("simulator path taken on the real clock"),
        }
    }

    /// A prepared replica I/O (see `Queue::issue`) completes, successfully,
    /// when its emulator said: at `emu_done_ns`, or now for a replica that
    /// is not emulated.
    pub(super) fn sim_submit(&mut self, sub: usize) {
        let now = self.inner.now_ns();
        let s = &mut self.subs[sub];
        s.res = s.expect;
        let at = s.emu_done_ns.max(now);
        self.sim().schedule(at, super::slots::ud(UD_IO, sub, 0));
    }

    /// [`Queue::poll`] on the simulated clock.
    pub(super) fn poll_sim(
        &mut self,
        out: &mut Vec<Completion>,
        wait: bool,
        timeout_ns: Option<u64>,
    ) -> usize {
        self.dispatch_incoming();
        self.process_failed_now();
        self.run_due();
        // Waiting with nothing in flight still lets time pass, up to the
        // timeout (an open-loop generator waits so for its next arrival).
        if self.ready.is_empty() && wait {
            let sim = self.sim();
            let now = sim.now_ns();
            let limit = timeout_ns.map(|t| now.saturating_add(t));
            let target = match (sim.next_at(), limit) {
                (Some(e), Some(l)) => e.min(l),
                (Some(e), None) => e,
                (None, Some(l)) => l,
                (None, None) => now,
            };
            sim.time.advance_to(target);
            self.run_due();
        }
        let n = self.ready.len();
        self.active -= n.min(self.active);
        self.beat.in_flight(self.active);
        out.append(&mut self.ready);
        n
    }

    /// Runs every event due now, and those they make due now.
    fn run_due(&mut self) {
        while let Some(user) = self.sim().pop_due() {
            let idx = (user & 0xFFFF_FFFF) as usize;
            let kind = (user >> 32) & 0xFF;
            let generation = (user >> 40) as u32;
            match kind {
                UD_IO => {
                    let res = self.subs[idx].res;
                    self.finish_sub(idx, res);
                }
                UD_HEDGE => self.on_hedge_timer(idx, generation),
                UD_GPU_ANSWER => self.on_gpu_timer(kind, idx, generation),
                _ => tracing::error!("unexpected simulator event {user:#x}"),
            }
            self.process_failed_now();
        }
    }
}
