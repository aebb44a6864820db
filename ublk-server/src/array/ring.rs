//! The queue's io_uring: replica I/O as SQEs on the queue's own ring, the
//! emulator's completion delays and hedge timers as ring timeouts, and the
//! reaping loop behind [`Queue::poll`]. On the simulated clock each entry
//! point hands over to `sim.rs` instead.

use std::os::unix::io::AsRawFd;

use augur_feature_store::Op;
use io_uring::{IoUring, opcode, squeue, types};

use super::parked::{UD_GPU_DEADLINE, UD_GPU_WAKE};
use super::queue::Io;
use super::slots::{SubKind, UD_DELAY, UD_HEDGE, UD_IO, UD_RETRY, ud};
use super::stall::EventKind;
use super::stats::bump;
use super::{AlignedBuf, Completion, Queue};

impl Queue {
    /// Registers `fd`, an eventfd, on this queue's io_uring: the kernel bumps
    /// it for every completion posted there. A front-end that waits on a ring
    /// of its own (ublk) reads the eventfd from that ring, so one thread
    /// sleeps on both, then calls [`Queue::poll`] without waiting.
    pub fn register_eventfd(&self, fd: std::os::unix::io::RawFd) -> std::io::Result<()> {
        match &self.io {
            Io::Ring(ring) => ring.submitter().register_eventfd(fd),
            Io::Sim(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a queue on the simulated clock has no io_uring",
            )),
        }
    }

    /// Turns the registered eventfd's notifications off or on (a flag in the
    /// ring the kernel reads as it posts each completion). An owner about to
    /// reap anyway turns them off around [`Queue::poll`], so completions of
    /// its own submissions do not wake it a second time; after turning them
    /// back on it checks [`Queue::has_completions`] before sleeping.
    pub fn set_eventfd_enabled(&mut self, on: bool) {
        let Io::Ring(ring) = &mut self.io else {
            return;
        };
        let cq = ring.completion();
        if on {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }

    /// True when completions wait in the ring, not yet reaped by [`Queue::poll`].
    pub fn has_completions(&mut self) -> bool {
        match &mut self.io {
            Io::Ring(ring) => !ring.completion().is_empty() || ring.submission().cq_overflow(),
            Io::Sim(sim) => sim.has_due(),
        }
    }

    /// Routes and issues what was submitted, waits for at least `min_complete`
    /// completions if `wait` (or until `timeout_ns` passes, when given), and
    /// moves every finished request into `out`. Returns how many it moved.
    pub fn poll(
        &mut self,
        out: &mut Vec<Completion>,
        wait: bool,
        timeout_ns: Option<u64>,
    ) -> std::io::Result<usize> {
        self.events.polls += 1;
        self.beat.beat(self.active);
        if self.io.is_sim() {
            return Ok(self.poll_sim(out, wait, timeout_ns));
        }
        self.dispatch_incoming();
        self.process_failed_now();
        if self.ready.is_empty() && wait && (self.active > 0 || self.subs_busy > 0) {
            if let Some(t) = timeout_ns {
                let ts = types::Timespec::new()
                    .sec(t / 1_000_000_000)
                    .nsec((t % 1_000_000_000) as u32);
                let args = types::SubmitArgs::new().timespec(&ts);
                match self.ring().submitter().submit_with_args(1, &args) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(e),
                }
            } else {
                match self.ring().submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(e),
                }
            }
            self.unsubmitted = false;
        } else if self.unsubmitted {
            self.ring().submit()?;
            self.unsubmitted = false;
        }
        loop {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(
                self.ring()
                    .completion()
                    .map(|c| (c.user_data(), c.result())),
            );
            let got = cqes.len();
            for &(user, res) in &cqes {
                self.on_cqe(user, res);
            }
            cqes.clear();
            self.cqes = cqes;
            self.process_failed_now();
            // Completions beyond the CQ's size wait on the kernel's overflow
            // list, which only an io_uring_enter with GETEVENTS moves into
            // the ring (and while it is non-empty new completions queue
            // behind it): enter the kernel for them, never leave them there.
            let overflowed = self.cq_overflowed();
            if self.unsubmitted || overflowed {
                if overflowed {
                    bump(&self.counters.cq_overflows, 1);
                    self.events.push(EventKind::Overflow, 0, 0);
                }
                self.ring().submit()?;
                self.unsubmitted = false;
                continue;
            }
            if got == 0 {
                break;
            }
        }
        let n = self.ready.len();
        self.active -= n.min(self.active);
        self.beat.in_flight(self.active);
        out.append(&mut self.ready);
        Ok(n)
    }

    pub(super) fn arm_hedge(&mut self, idx: usize) {
        let t = self.window.threshold_ns;
        if let Io::Sim(sim) = &mut self.io {
            let at = sim.now_ns() + t;
            sim.schedule(at, ud(UD_HEDGE, idx, self.slots[idx].generation));
            return;
        }
        let s = &mut self.slots[idx];
        *s.ts = types::Timespec::new()
            .sec(t / 1_000_000_000)
            .nsec((t % 1_000_000_000) as u32);
        let e = opcode::Timeout::new(&*s.ts as *const types::Timespec)
            .build()
            .user_data(ud(UD_HEDGE, idx, s.generation));
        self.push(e);
    }

    /// Arms the 1 ms timer after which deferred writes are tried again.
    pub(super) fn arm_retry(&mut self) {
        if self.retry_armed || self.io.is_sim() {
            return;
        }
        self.retry_armed = true;
        *self.retry_ts = types::Timespec::new().nsec(1_000_000);
        let e = opcode::Timeout::new(&*self.retry_ts as *const types::Timespec)
            .build()
            .user_data(ud(UD_RETRY, 0, 0));
        self.push(e);
    }

    /// True when the kernel holds completions on its overflow list (more
    /// finished than the completion queue has room for).
    fn cq_overflowed(&mut self) -> bool {
        match &mut self.io {
            Io::Ring(ring) => ring.submission().cq_overflow(),
            Io::Sim(_) => false,
        }
    }

    /// The io_uring of a real-clock queue; the ring paths are only reached
    /// when the queue has one (`poll` and `submit_io` hand a simulated
    /// queue to `sim.rs` first).
    fn ring(&mut self) -> &mut IoUring {
        match &mut self.io {
            Io::Ring(ring) => ring,
            Io::Sim(_) => unreachable!("io_uring path taken on the simulated clock"),
        }
    }

    /// A hedge timer fired: send the second copy if the read still waits.
    pub(super) fn on_hedge_timer(&mut self, idx: usize, generation: u32) {
        let s = &self.slots[idx];
        if s.active && (s.generation & 0xFF_FFFF) == generation && !s.done && !s.hedged {
            self.fire_hedge(idx);
        }
    }

    pub(super) fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every pointer in `e` (buffers in slots/subs, boxed
            // timespecs) stays valid until its completion is reaped: buffers
            // are only released after their sub-I/O finished, and timespecs
            // are read by the kernel at submission.
            let pushed = unsafe { self.ring().submission().push(&e) };
            if pushed.is_ok() {
                self.unsubmitted = true;
                return;
            }
            if let Err(err) = self.ring().submit() {
                tracing::error!("io_uring submit failed: {err}");
            }
        }
    }

    pub(super) fn process_failed_now(&mut self) {
        while let Some(sub) = self.failed_now.pop() {
            let res = self.subs[sub].res;
            self.finish_sub(sub, res);
        }
    }

    pub(super) fn on_cqe(&mut self, user: u64, res: i32) {
        self.events.push(EventKind::Cqe, user, res);
        let idx = (user & 0xFFFF_FFFF) as usize;
        let kind = (user >> 32) & 0xFF;
        let generation = (user >> 40) as u32;
        match kind {
            UD_IO => {
                let now = self.inner.now_ns();
                let s = &self.subs[idx];
                let res = if res >= 0 && res != s.expect {
                    -libc::EIO
                } else {
                    res
                };
                // Fallbacks for backings without fallocate modes.
                if res == -libc::EOPNOTSUPP {
                    match s.op {
                        Op::Discard => {
                            self.finish_after_delay(idx, 0, now);
                            return;
                        }
                        Op::WriteZeroes => {
                            self.zero_by_write(idx);
                            return;
                        }
                        _ => {}
                    }
                }
                self.finish_after_delay(idx, res, now);
            }
            UD_DELAY => {
                let res = self.subs[idx].res;
                self.finish_sub(idx, res);
            }
            UD_HEDGE => self.on_hedge_timer(idx, generation),
            UD_RETRY => self.retry_deferred(),
            UD_GPU_WAKE => self.on_gpu_wake(),
            UD_GPU_DEADLINE => self.on_gpu_timer(kind, idx, generation),
            _ => tracing::error!("unexpected io_uring completion {user:#x}"),
        }
    }

    pub(super) fn finish_after_delay(&mut self, sub: usize, res: i32, now: u64) {
        let s = &mut self.subs[sub];
        s.res = res;
        if res >= 0 && s.emu_done_ns > now {
            let t = s.emu_done_ns - now;
            *s.ts = types::Timespec::new()
                .sec(t / 1_000_000_000)
                .nsec((t % 1_000_000_000) as u32);
            let e = opcode::Timeout::new(&*s.ts as *const types::Timespec)
                .build()
                .user_data(ud(UD_DELAY, sub, 0));
            s.in_delay = true;
            self.push(e);
        } else {
            self.finish_sub(sub, res);
        }
    }

    /// WRITE_ZEROES on a backing without FALLOC_FL_ZERO_RANGE: write zeroes
    /// from a buffer the sub-I/O owns until it completes.
    pub(super) fn zero_by_write(&mut self, sub: usize) {
        let req = self.subs[sub].req;
        let (offset, len) = (self.slots[req].offset, self.slots[req].len);
        let r = self.subs[sub].replica as usize;
        let backend = self.inner.replicas[r].backend.load();
        let Some(file) = backend.file.as_ref() else {
            self.finish_sub(sub, -libc::EBADF);
            return;
        };
        let fd = types::Fd(file.as_raw_fd());
        drop(backend);
        let mut zeroes = AlignedBuf::new(len as usize);
        let ptr = zeroes.as_mut_ptr();
        let s = &mut self.subs[sub];
        s.buf = Some(zeroes);
        s.expect = len as i32;
        let e = opcode::Write::new(fd, ptr, len)
            .offset(offset)
            .build()
            .user_data(ud(UD_IO, sub, 0));
        self.push(e);
    }

    /// Hands a prepared replica I/O to the ring.
    pub(super) fn submit_io(&mut self, sub: usize) {
        if self.io.is_sim() {
            self.sim_submit(sub);
            return;
        }
        let (r, op, kind, req) = {
            let s = &self.subs[sub];
            (s.replica as usize, s.op, s.kind, s.req)
        };
        let (offset, len) = (self.slots[req].offset, self.slots[req].len);
        let backend = self.inner.replicas[r].backend.load();
        let Some(file) = backend.file.as_ref() else {
            self.subs[sub].res = -libc::EBADF;
            self.failed_now.push(sub);
            return;
        };
        let fd = types::Fd(file.as_raw_fd());
        drop(backend);
        let user = ud(UD_IO, sub, 0);
        let e = match op {
            Op::Read => {
                let ptr = match kind {
                    SubKind::Hedge => self.subs[sub].buf.as_mut().map(|b| b.as_mut_ptr()),
                    _ => self.slots[req].buf.as_mut().map(|b| b.as_mut_ptr()),
                };
                let Some(ptr) = ptr else {
                    self.subs[sub].res = -libc::EINVAL;
                    self.failed_now.push(sub);
                    return;
                };
                opcode::Read::new(fd, ptr, len).offset(offset).build()
            }
            Op::Write => {
                let Some(ptr) = self.slots[req].buf.as_ref().map(|b| b.as_ptr()) else {
                    self.subs[sub].res = -libc::EINVAL;
                    self.failed_now.push(sub);
                    return;
                };
                opcode::Write::new(fd, ptr, len).offset(offset).build()
            }
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Discard => opcode::Fallocate::new(fd, len as u64)
                .offset(offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            Op::WriteZeroes => opcode::Fallocate::new(fd, len as u64)
                .offset(offset)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
        };
        self.push(e.user_data(user));
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Reads parked for an offloaded prediction are routed on the CPU.
        self.unpark_all();
        // Buffers may still be in the kernel's hands: wait for every replica
        // I/O of this queue, and the read of the wake-up eventfd (up to
        // 30 s), before freeing them.
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while (self.subs_busy > 0 || self.gpu_wake_armed() || self.retry_armed)
            && std::time::Instant::now() < deadline
        {
            if self.poll(&mut out, true, Some(10_000_000)).is_err() {
                break;
            }
        }
        if self.subs_busy > 0 || self.gpu_wake_armed() {
            // A replica that never answers: leak the buffers rather than
            // free memory the kernel may still write into.
            tracing::error!(
                "{} replica I/O(s) still running after 30 s; leaking their buffers",
                self.subs_busy
            );
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::take(&mut self.subs));
            std::mem::forget(self.waker.take());
        }
        // Hand this queue's totals to the array and stop being summed.
        let mut open = self
            .inner
            .queue_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.inner.counters.absorb(&self.counters.snapshot());
        self.inner.latency.absorb(&self.latency);
        open.retain(|c| !std::sync::Arc::ptr_eq(&c.counters, &self.counters));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use augur_feature_store::Op;

    use crate::array::{AlignedBuf, Array, ArrayConfig, Completion, ReplicaSpec, Request};
    use crate::emu::Profile;
    use crate::route::Policy;

    /// More completions land at once than the ring's completion queue holds
    /// (a ring of 8 entries has 16 CQ slots; 64 emulated delays expire
    /// together), so the kernel keeps the rest on its overflow list. A
    /// front-end that only ever polls without waiting (ublk, woken by the
    /// eventfd) must still get every one of them: nothing it submits would
    /// otherwise enter the kernel to flush the list, and the requests would
    /// stay in flight forever with the thread asleep.
    #[test]
    fn completions_beyond_the_cq_are_not_stranded() {
        let dir = tempfile::tempdir_in(crate::load::default_replica_dir()).unwrap();
        let specs = (0..2)
            .map(|i| {
                ReplicaSpec::emulated(
                    Profile::builtin("fast-nvme").unwrap(),
                    dir.path().join(format!("r{i}")),
                )
            })
            .collect();
        let mut cfg = ArrayConfig::new(specs);
        cfg.create_size = Some(1 << 20);
        let array = Array::open(cfg, Policy::from_name("primary", None).unwrap()).unwrap();
        let mut q = array.queue(0, 8).unwrap();
        const N: usize = 64;
        for i in 0..N {
            q.submit(Request {
                op: Op::Read,
                offset: (i as u64 % 256) * 4096,
                len: 4096,
                buf: Some(AlignedBuf::new(4096)),
                user: i as u64,
            });
        }
        let mut out: Vec<Completion> = Vec::new();
        q.poll(&mut out, false, None).unwrap();
        // Every emulated delay expires while nobody reaps.
        std::thread::sleep(Duration::from_millis(100));
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < N && Instant::now() < deadline {
            q.poll(&mut out, false, None).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            out.len(),
            N,
            "{} of {N} reads never completed ({} still in flight)",
            N - out.len(),
            q.in_flight()
        );
        assert!(out.iter().all(|c| c.result == 0));
    }
}
