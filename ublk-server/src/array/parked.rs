//! Routing batches whose predictions run on another thread (the GPU): the
//! queue parks the batch's reads and goes on with its other work; the
//! answer wakes it, and it routes and issues them then.
//!
//! On the real clock the GPU thread writes the queue's eventfd, which a read
//! on the queue's own io_uring is waiting on: its completion wakes a thread
//! asleep in [`Queue::poll`], and (through the ring's registered eventfd) a
//! ublk queue thread asleep on its own ring. A ring timeout per batch is its
//! deadline: a batch not answered by then is scored on the CPU. On the
//! simulated clock the answer is an event the batch's modelled round trip
//! later; the queue is free meanwhile, as the real one is.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{opcode, types};

use super::queue::Io;
use super::slots::ud;
use super::{ArrayError, Queue};
use crate::route::{OffloadPlan, PendingScores, Wake};

/// user_data kinds of the offload's ring entries and simulator events.
pub(super) const UD_GPU_WAKE: u64 = 4;
pub(super) const UD_GPU_DEADLINE: u64 = 5;
pub(super) const UD_GPU_ANSWER: u64 = 6;

/// One parked routing batch.
pub(super) struct Parked {
    pub(super) active: bool,
    pub(super) generation: u32,
    /// The slots of its reads, in the plan's order.
    slots: Vec<usize>,
    plan: OffloadPlan,
    pending: Option<Box<dyn PendingScores>>,
    /// The policy's slow threshold when the batch started.
    slow_us: u32,
    /// Its deadline, for the ring timeout (read by the kernel at submission).
    ts: Box<types::Timespec>,
}

/// What wakes a queue when an offloaded batch is answered.
pub(super) struct QueueWake {
    /// Handed to the predictor with each batch.
    pub(super) wake: Arc<dyn Wake>,
    /// The eventfd behind it (real clock).
    efd: Option<Arc<EventFd>>,
    /// Where the ring's read of the eventfd lands.
    buf: Box<u64>,
    /// That read is in the ring.
    pub(super) armed: bool,
}

/// An eventfd the GPU thread writes to wake a queue.
pub(super) struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> std::io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd this
        // struct owns. EAGAIN (counter saturated) still leaves it readable.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        self.signal();
    }
}

/// The simulated clock needs no wake-up: the answer is a scheduled event.
struct SimWake;

impl Wake for SimWake {
    fn wake(&self) {}
}

impl Queue {
    /// The wake-up this queue hands out, made at the first offloaded batch.
    fn waker(&mut self) -> Result<Arc<dyn Wake>, ArrayError> {
        if let Some(w) = &self.waker {
            return Ok(w.wake.clone());
        }
        let (wake, efd): (Arc<dyn Wake>, _) = if self.io.is_sim() {
            (Arc::new(SimWake), None)
        } else {
            let e = Arc::new(EventFd::new().map_err(ArrayError::Ring)?);
            (e.clone(), Some(e))
        };
        self.waker = Some(QueueWake {
            wake: wake.clone(),
            efd,
            buf: Box::new(0),
            armed: false,
        });
        Ok(wake)
    }

    /// Parks the reads in `self.read_slots` / `self.reads` while another
    /// thread scores every candidate of theirs, if the policy's predictor
    /// says that pays. False: route them here.
    pub(super) fn try_park(
        &mut self,
        policy: &crate::route::Policy,
        now: u64,
        slow_us: u32,
    ) -> bool {
        if policy.predictor().is_none() {
            return false;
        }
        let wake = match self.waker() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot wait for offloaded predictions: {e}; scoring on the CPU");
                return false;
            }
        };
        let idx = match self.free_parked.pop() {
            Some(i) => i,
            None => {
                self.parked.push(Parked {
                    active: false,
                    generation: 0,
                    slots: Vec::new(),
                    plan: OffloadPlan::default(),
                    pending: None,
                    slow_us: 0,
                    ts: Box::new(types::Timespec::new()),
                });
                self.parked.len() - 1
            }
        };
        let inner = self.inner.clone();
        let p = &mut self.parked[idx];
        let Some(pending) =
            policy.start_offloaded(inner.as_ref(), now, &self.reads, &wake, &mut p.plan)
        else {
            self.free_parked.push(idx);
            return false;
        };
        p.active = true;
        p.generation = p.generation.wrapping_add(1) & 0xFF_FFFF;
        p.slow_us = slow_us;
        p.slots.clear();
        p.slots.extend_from_slice(&self.read_slots);
        let deadline = pending.deadline_ns();
        let modelled = pending.modelled_ns();
        p.pending = Some(pending);
        let generation = p.generation;
        self.parked_live += 1;
        match &mut self.io {
            Io::Sim(sim) => {
                let at = now.saturating_add(modelled.unwrap_or(0));
                sim.schedule(at, ud(UD_GPU_ANSWER, idx, generation));
            }
            Io::Ring(_) => {
                let p = &mut self.parked[idx];
                *p.ts = types::Timespec::new()
                    .sec(deadline / 1_000_000_000)
                    .nsec((deadline % 1_000_000_000) as u32);
                let e = opcode::Timeout::new(&*p.ts as *const types::Timespec)
                    .build()
                    .user_data(ud(UD_GPU_DEADLINE, idx, generation));
                self.push(e);
                self.arm_gpu_wake();
            }
        }
        true
    }

    /// Puts the read of the wake-up eventfd into the ring, once.
    fn arm_gpu_wake(&mut self) {
        let Some(w) = self.waker.as_mut() else {
            return;
        };
        let Some(efd) = &w.efd else {
            return;
        };
        if w.armed {
            return;
        }
        w.armed = true;
        let ptr = (&mut *w.buf as *mut u64).cast::<u8>();
        let e = opcode::Read::new(types::Fd(efd.0.as_raw_fd()), ptr, 8)
            .build()
            .user_data(ud(UD_GPU_WAKE, 0, 0));
        self.push(e);
    }

    /// The eventfd read completed: collect every answered batch, and wait
    /// again while any is still out.
    pub(super) fn on_gpu_wake(&mut self) {
        if let Some(w) = self.waker.as_mut() {
            w.armed = false;
        }
        for idx in 0..self.parked.len() {
            if self.parked[idx].active {
                self.finish_parked(idx, false);
            }
        }
        if self.parked_live > 0 {
            self.arm_gpu_wake();
        }
    }

    /// A batch's deadline (real clock) or modelled answer (simulated) came.
    pub(super) fn on_gpu_timer(&mut self, kind: u64, idx: usize, generation: u32) {
        let live = self
            .parked
            .get(idx)
            .is_some_and(|p| p.active && p.generation == generation);
        if live {
            self.finish_parked(idx, kind == UD_GPU_DEADLINE);
        }
    }

    /// Routes and issues a parked batch's reads once its scores are there
    /// (or, with `give_up`, after scoring it on the CPU). False when it is
    /// still waiting.
    fn finish_parked(&mut self, idx: usize, give_up: bool) -> bool {
        let p = &mut self.parked[idx];
        let Some(pending) = p.pending.as_mut() else {
            return false;
        };
        let (inputs, scores) = p.plan.io();
        let n = inputs.len() as u64;
        let on = if give_up {
            pending.give_up(inputs, scores)
        } else {
            match pending.try_take(inputs, scores) {
                Some(on) => on,
                None => return false,
            }
        };
        p.pending = None;
        p.active = false;
        let slow_us = p.slow_us;
        let mut routes = std::mem::take(&mut self.routes);
        p.plan.finish(&mut routes);
        let slots = std::mem::take(&mut p.slots);
        self.parked_live -= 1;
        self.free_parked.push(idx);
        self.count_placed(n, on);
        self.issue_routed(&slots, &routes, slow_us);
        self.routes = routes;
        self.parked[idx].slots = slots;
        true
    }

    /// Scores every parked batch on the CPU and issues it (the queue is
    /// going away), then lets the eventfd read complete so its buffer can
    /// be freed. Returns whether that read is still in the ring.
    pub(super) fn unpark_all(&mut self) -> bool {
        for idx in 0..self.parked.len() {
            if self.parked[idx].active {
                self.finish_parked(idx, true);
            }
        }
        match &self.waker {
            Some(w) if w.armed => {
                if let Some(e) = &w.efd {
                    e.signal();
                }
                true
            }
            _ => false,
        }
    }

    /// True while the ring's read of the wake-up eventfd is outstanding.
    pub(super) fn gpu_wake_armed(&self) -> bool {
        self.waker.as_ref().is_some_and(|w| w.armed)
    }
}
