//! The queue threads: one per ublk queue, each owning that queue's libublk
//! ring and its own array queue, sleeping in one place for both.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use augur_feature_store::Op;
use io_uring::{opcode, types};
use libublk::io::{UblkDev, UblkQueue};
use libublk::{BufDesc, BufDescList, UblkError, UblkIORes, UblkUringData, sys};

use crate::array::AlignedBuf;
use crate::array::{Completion, Queue, Request};

use super::serve::{QueueSetup, Shared};
use super::ublk_cause;

/// `user_data` of the eventfd read in the libublk ring: the target-I/O bit
/// (so libublk does not count it as a ublk command) and tag 0xffff.
const EVENTFD_USER_DATA: u64 = UblkUringData::Target as u64 | 0xffff;
/// `user_data` of the stall tick in the libublk ring (tag 0xfffe).
const TIMER_USER_DATA: u64 = UblkUringData::Target as u64 | 0xfffe;
/// How long a queue waits at exit for array requests still running.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One tag's state.
pub(super) struct TagSlot {
    /// The tag's full-size buffer; `None` while it travels in an array request.
    buf: Option<AlignedBuf>,
    /// The buffer address the kernel holds for this tag: it copies the next
    /// write's data there.
    kernel_addr: *const u8,
    /// The operation in flight and its length.
    op: Op,
    len: u32,
}

/// A queue thread's state besides the libublk queue itself.
pub(super) struct QueueLoop {
    qid: u16,
    array: Queue,
    efd: OwnedFd,
    /// Where the eventfd read lands: leaked, so it stays valid for as long
    /// as the kernel may write to it (until the ring is gone).
    efd_buf: *mut u64,
    tags: Vec<TagSlot>,
    /// Full-size buffers the array released, for hedged reads that won.
    spares: Vec<AlignedBuf>,
    done: Vec<Completion>,
    cqes: Vec<(u64, i32)>,
    max_io: usize,
    read_armed: bool,
    /// The stall tick (a plain timeout in the libublk ring while array
    /// requests run; `None`: stall detection is off): its timespec (read by
    /// the kernel when the timeout is submitted, boxed so it stays put),
    /// and whether it is pending.
    tick: Option<Box<types::Timespec>>,
    timer_armed: bool,
    /// The last tick found completions waiting that no eventfd wake-up had
    /// reported yet (one more such tick, and the wake-up was lost).
    suspect: bool,
    /// Ticks that found a lost wake-up.
    missed: u64,
    wakeups: u64,
    batches: u64,
    biggest_batch: usize,
    /// Requests finished after the kernel took the queue's commands back
    /// (their answers cannot be delivered).
    unanswered: usize,
}

pub(super) fn run_queue(qid: u16, dev: &UblkDev, setup: QueueSetup, shared: &Shared) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => q,
        Err(e) => {
            shared.queue_failed(dev, format!("ublk queue {qid}: {}", ublk_cause(&e)));
            return;
        }
    };
    // libublk's per-tag buffers: named by the first FETCH of each tag, then
    // replaced by the tag's own buffer at its first commit. They must outlive
    // the queue's commands, i.e. this function.
    let reg_bufs = dev.alloc_queue_io_bufs();
    let max_io = dev.dev_info.max_io_buf_bytes as usize;
    let depth = dev.dev_info.queue_depth as usize;
    let tags: Vec<TagSlot> = (0..depth)
        .map(|t| TagSlot {
            buf: Some(AlignedBuf::new(max_io)),
            kernel_addr: reg_bufs[t].as_ptr(),
            op: Op::Flush,
            len: 0,
        })
        .collect();
    let q = match q.submit_fetch_commands_unified(BufDescList::Slices(Some(&reg_bufs))) {
        Ok(q) => q,
        Err(e) => {
            shared.queue_failed(dev, format!("ublk queue {qid}: {}", ublk_cause(&e)));
            return;
        }
    };
    let tick = setup.array.stall_tick().map(|t| {
        Box::new(
            types::Timespec::new()
                .sec(t.as_secs())
                .nsec(t.subsec_nanos()),
        )
    });
    let mut lp = QueueLoop {
        qid,
        array: setup.array,
        efd: setup.efd,
        efd_buf: Box::into_raw(Box::new(0u64)),
        tags,
        spares: Vec::new(),
        done: Vec::new(),
        cqes: Vec::with_capacity(depth + 1),
        max_io,
        read_armed: false,
        tick,
        timer_armed: false,
        suspect: false,
        missed: 0,
        wakeups: 0,
        batches: 0,
        biggest_batch: 0,
        unanswered: 0,
    };
    lp.arm_read(&q);
    lp.run(&q);
    lp.drain();
    tracing::info!(
        "queue {qid}: {} wake-ups, {} with new requests, up to {} requests routed in one batch",
        lp.wakeups,
        lp.batches,
        lp.biggest_batch
    );
    if lp.missed > 0 {
        tracing::warn!(
            "queue {qid}: {} time(s) the stall tick found finished replica I/O no eventfd wake-up had reported",
            lp.missed
        );
    }
    if lp.unanswered > 0 {
        tracing::warn!(
            "queue {qid}: {} request(s) finished after the device had taken them back",
            lp.unanswered
        );
    }
    // Drop order: the array queue waits for its replica I/O, then the tag
    // buffers, the libublk queue and its registration buffers go.
    drop(lp);
    drop(q);
    drop(reg_bufs);
}

impl QueueLoop {
    /// Queues a read of the eventfd in the libublk ring: it completes (and
    /// empties the counter) once the array ring has posted a completion.
    fn arm_read(&mut self, q: &UblkQueue) {
        let sqe = opcode::Read::new(types::Fd(self.efd.as_raw_fd()), self.efd_buf.cast(), 8)
            .build()
            .user_data(EVENTFD_USER_DATA);
        match q.ublk_submit_sqe_sync(sqe) {
            Ok(()) => self.read_armed = true,
            Err(e) => tracing::error!(
                "queue {}: cannot arm the eventfd read: {}",
                self.qid,
                ublk_cause(&e)
            ),
        }
    }

    fn run(&mut self, q: &UblkQueue) {
        loop {
            self.cqes.clear();
            let cqes = &mut self.cqes;
            let r = q.flush_and_wake_io_tasks(
                |user_data, cqe, _last| cqes.push((user_data, cqe.result())),
                1,
            );
            match r {
                Ok(_) => {}
                Err(UblkError::QueueIsDown) => break,
                Err(UblkError::IOError(e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // The kernel still holds this queue's buffers; freeing
                    // them would let it write into freed memory. Exit, and
                    // leave the device to `--recover`.
                    eprintln!(
                        "augur serve: queue {}: ublk ring failed: {}; exiting (the device stays for --recover)",
                        self.qid,
                        ublk_cause(&e)
                    );
                    std::process::exit(1);
                }
            }
            self.wakeups += 1;
            let mut new = 0;
            let (mut by_eventfd, mut by_timer) = (false, false);
            for i in 0..self.cqes.len() {
                let (user_data, res) = self.cqes[i];
                if user_data & UblkUringData::Target as u64 != 0 {
                    if user_data == EVENTFD_USER_DATA {
                        self.read_armed = false;
                        by_eventfd = true;
                    } else if user_data == TIMER_USER_DATA {
                        self.timer_armed = false;
                        by_timer = true;
                    }
                    continue;
                }
                // UBLK_IO_RES_ABORT: the queue is stopping (libublk tracks it).
                if res == sys::UBLK_IO_RES_OK as i32 {
                    self.start(q, (user_data & 0xffff) as u16);
                    new += 1;
                }
            }
            if new > 0 {
                self.batches += 1;
                self.biggest_batch = self.biggest_batch.max(new);
            }
            if by_eventfd || new > 0 {
                self.suspect = false;
                self.reap(q);
            } else if by_timer {
                self.on_tick(q);
            }
            if !q.is_stopping() {
                if !self.read_armed {
                    self.arm_read(q);
                }
                if !self.timer_armed && self.tick.is_some() && self.array.in_flight() > 0 {
                    self.arm_timer(q);
                }
            }
        }
    }

    /// The stall tick fired with nothing else to do: look for a stall, and
    /// for completions that wait in the array ring with no eventfd wake-up.
    /// A completion can land just before a tick while its wake-up is still
    /// on the way, so only completions still unreported one whole tick
    /// later count as a lost wake-up; those are then reaped (and counted,
    /// never silently).
    fn on_tick(&mut self, q: &UblkQueue) {
        let waiting = self.array.has_completions();
        let state = [
            ("frontend", "ublk".to_string()),
            ("eventfd_read_armed", self.read_armed.to_string()),
            ("completions_unreported_last_tick", self.suspect.to_string()),
            ("queue_stopping", q.is_stopping().to_string()),
        ];
        self.array.check_stall(&state);
        if !waiting {
            self.suspect = false;
        } else if self.suspect {
            self.suspect = false;
            self.missed += 1;
            self.array.note_missed_wakeup(1);
            self.reap(q);
        } else {
            self.suspect = true;
        }
    }

    /// Queues the stall tick (a plain timeout) in the libublk ring.
    fn arm_timer(&mut self, q: &UblkQueue) {
        let Some(ts) = self.tick.as_deref() else {
            return;
        };
        let sqe = opcode::Timeout::new(ts as *const types::Timespec)
            .build()
            .user_data(TIMER_USER_DATA);
        match q.ublk_submit_sqe_sync(sqe) {
            Ok(()) => self.timer_armed = true,
            Err(e) => tracing::error!(
                "queue {}: cannot arm the stall tick: {}",
                self.qid,
                ublk_cause(&e)
            ),
        }
    }

    /// Routes and issues what was submitted, reaps what finished and answers
    /// the kernel for every finished request. Returns how many finished.
    fn reap(&mut self, q: &UblkQueue) -> usize {
        loop {
            self.array.set_eventfd_enabled(false);
            let r = self.array.poll(&mut self.done, false, None);
            self.array.set_eventfd_enabled(true);
            if let Err(e) = r {
                tracing::error!("queue {}: array poll failed: {e}", self.qid);
                break;
            }
            // Posted after the last look, before notifications came back on.
            if !self.array.has_completions() {
                break;
            }
        }
        self.array.take_released(&mut self.spares);
        let mut done = std::mem::take(&mut self.done);
        let n = done.len();
        for c in done.drain(..) {
            self.finish(q, c);
        }
        self.done = done;
        n
    }

    /// A new ublk command for `tag`: hand it to the array (or answer it now).
    fn start(&mut self, q: &UblkQueue, tag: u16) {
        if tag as usize >= self.tags.len() {
            tracing::error!("queue {}: command for unknown tag {tag}", self.qid);
            return;
        }
        let iod = q.get_iod(tag);
        let ublk_op = iod.op_flags & 0xff;
        let offset = iod.start_sector << 9;
        let bytes = (iod.nr_sectors as u64) << 9;
        let (op, data) = match ublk_op {
            sys::UBLK_IO_OP_READ => (Op::Read, true),
            sys::UBLK_IO_OP_WRITE => (Op::Write, true),
            sys::UBLK_IO_OP_FLUSH => (Op::Flush, false),
            sys::UBLK_IO_OP_DISCARD => (Op::Discard, false),
            sys::UBLK_IO_OP_WRITE_ZEROES => (Op::WriteZeroes, false),
            other => {
                tracing::debug!("queue {}: unsupported ublk op {other}", self.qid);
                self.commit(q, tag, -libc::EOPNOTSUPP);
                return;
            }
        };
        let len = match u32::try_from(bytes) {
            Ok(l) if !data || (l as usize) <= self.max_io => l,
            _ => {
                self.commit(q, tag, -libc::EINVAL);
                return;
            }
        };
        let slot = &mut self.tags[tag as usize];
        let buf = if data {
            let mut b = match slot.buf.take() {
                Some(b) => b,
                None => AlignedBuf::new(self.max_io),
            };
            b.set_len(len as usize);
            if op == Op::Write && slot.kernel_addr != b.as_ptr() {
                // SAFETY: `kernel_addr` is the buffer the kernel named for
                // this tag (libublk's registration buffer, alive for the
                // whole queue, of max_io bytes >= len); it just copied this
                // write's data there and nobody writes it until we commit.
                // `b` is a different allocation of at least len bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(slot.kernel_addr, b.as_mut_ptr(), len as usize)
                };
            }
            Some(b)
        } else {
            None
        };
        slot.op = op;
        slot.len = len;
        self.array.submit(Request {
            op,
            offset,
            len: if op == Op::Flush { 0 } else { len },
            buf,
            user: tag as u64,
        });
    }

    /// An array request finished: put the tag's buffer back and commit.
    fn finish(&mut self, q: &UblkQueue, c: Completion) {
        let tag = c.user as u16;
        let Some(slot) = self.tags.get_mut(tag as usize) else {
            return;
        };
        let res = if c.result < 0 {
            c.result
        } else if matches!(slot.op, Op::Read | Op::Write) {
            slot.len as i32
        } else {
            0
        };
        match c.buf {
            Some(b) if b.capacity() >= self.max_io => slot.buf = Some(b),
            Some(small) => {
                // A hedged copy answered first, in a buffer of its own; the
                // tag's buffer is still being read into by the slower copy.
                let mut b = match self.spares.pop() {
                    Some(s) if s.capacity() >= self.max_io => s,
                    _ => AlignedBuf::new(self.max_io),
                };
                b.set_len(small.len());
                b.copy_from_slice(&small);
                slot.buf = Some(b);
            }
            None => {
                if slot.buf.is_none() {
                    slot.buf = Some(match self.spares.pop() {
                        Some(s) if s.capacity() >= self.max_io => s,
                        _ => AlignedBuf::new(self.max_io),
                    });
                }
            }
        }
        if self.spares.len() > 8 {
            self.spares.truncate(8);
        }
        self.commit(q, tag, res);
    }

    /// COMMIT_AND_FETCH for `tag` with `res`, naming the tag's buffer (from
    /// which the kernel copies read data, and into which it copies the next
    /// write's data).
    fn commit(&mut self, q: &UblkQueue, tag: u16, res: i32) {
        if q.is_stopping() {
            // libublk drops commits once the queue is stopping.
            self.unanswered += 1;
        }
        let slot = &mut self.tags[tag as usize];
        if slot.buf.is_none() {
            slot.buf = Some(AlignedBuf::new(self.max_io));
        }
        let addr = slot.buf.as_ref().map_or(std::ptr::null(), |b| b.as_ptr());
        slot.kernel_addr = addr;
        if let Err(e) =
            q.complete_io_cmd_unified(tag, BufDesc::RawAddress(addr), Ok(UblkIORes::Result(res)))
        {
            tracing::error!(
                "queue {}: committing tag {tag}: {}",
                self.qid,
                ublk_cause(&e)
            );
        }
    }

    /// After the queue is down: let the array finish what it still runs
    /// (nothing to answer: the kernel has taken the commands back).
    fn drain(&mut self) {
        self.unanswered += self.array.in_flight();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.array.in_flight() > 0 && Instant::now() < deadline {
            if self
                .array
                .poll(&mut self.done, true, Some(100_000_000))
                .is_err()
            {
                break;
            }
            self.done.clear();
        }
    }
}
