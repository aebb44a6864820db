//! The FUSE file system: one file, `disk.img`, whose reads and writes become
//! array requests on the calling worker's own queue; and the block locks that
//! keep read-modify-writes of partial blocks apart.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use augur_feature_store::Op;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request as FuseRequest, WriteFlags,
};

use crate::array::AlignedBuf;
use crate::array::{Array, Completion, Queue, Request};

use super::{BLOCK, DISK_NAME, MAX_IO};

const ROOT_INO: INodeNo = INodeNo::ROOT;
const DISK_INO: INodeNo = INodeNo(2);
/// Attributes never change behind the kernel's back (the size is fixed).
const TTL: Duration = Duration::from_secs(3600);
/// Number of stripes of the block lock table.
const LOCK_STRIPES: usize = 1024;
/// Discards and write-zeroes are split into requests of at most this size
/// (the array's lengths are 32-bit, and zeroing by writes allocates a buffer).
const ZERO_CHUNK: u64 = 16 << 20;
/// io_uring entries of each worker's queue (one FUSE request at a time).
const RING_ENTRIES: u32 = 128;
/// Spare buffers a worker keeps for reuse.
const SPARE_BUFS: usize = 4;

/// A lock per block, striped: writes hold their blocks' stripes while they
/// run (exclusive where they read-modify-write, shared elsewhere).
pub(super) struct BlockLocks {
    stripes: Box<[RwLock<()>]>,
}

enum BlockGuard<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

impl BlockLocks {
    fn new() -> Self {
        BlockLocks {
            stripes: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Locks blocks `first..end` (block numbers), exclusively those in
    /// `exclusive`. Stripes are taken in ascending order, so writers never
    /// deadlock.
    fn lock(&self, first: u64, end: u64, exclusive: &[u64]) -> Vec<BlockGuard<'_>> {
        let n = LOCK_STRIPES as u64;
        let mut want: Vec<(usize, bool)> = if end - first >= n {
            (0..LOCK_STRIPES).map(|s| (s, false)).collect()
        } else {
            (first..end).map(|b| ((b % n) as usize, false)).collect()
        };
        want.extend(exclusive.iter().map(|b| ((b % n) as usize, true)));
        // Exclusive sorts after shared for the same stripe; keep the last.
        want.sort_unstable();
        let mut guards = Vec::with_capacity(want.len());
        for (i, &(s, excl)) in want.iter().enumerate() {
            if want.get(i + 1).is_some_and(|&(t, _)| t == s) {
                continue;
            }
            let l = &self.stripes[s];
            guards.push(if excl {
                BlockGuard::Exclusive(l.write().unwrap_or_else(|p| p.into_inner()))
            } else {
                BlockGuard::Shared(l.read().unwrap_or_else(|p| p.into_inner()))
            });
        }
        guards
    }
}

/// Distinguishes file systems, so a thread's queue belongs to one array.
static NEXT_FS_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_QUEUE_ID: AtomicU32 = AtomicU32::new(0);

/// One FUSE worker thread's state: its queue on the array and spare buffers.
struct Worker {
    fs_id: u64,
    queue: Queue,
    spare: Vec<AlignedBuf>,
    done: Vec<Completion>,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

impl Worker {
    /// A buffer of `len` bytes (contents unspecified), reusing a spare one.
    fn buf(&mut self, len: usize) -> AlignedBuf {
        match self.spare.iter().position(|b| b.capacity() >= len) {
            Some(i) => {
                let mut b = self.spare.swap_remove(i);
                b.set_len(len);
                b
            }
            None => AlignedBuf::new(len),
        }
    }

    fn give_back(&mut self, buf: Option<AlignedBuf>) {
        if let Some(b) = buf
            && self.spare.len() < SPARE_BUFS
            && b.capacity() <= MAX_IO as usize + 2 * BLOCK as usize
        {
            self.spare.push(b);
        }
    }

    /// Submits `reqs` (tagged 0..n) and waits until all have completed.
    /// Returns the completions in request order, or the first error.
    fn run(&mut self, reqs: Vec<Request>) -> Result<Vec<Completion>, Errno> {
        let n = reqs.len();
        for r in reqs {
            self.queue.submit(r);
        }
        self.done.clear();
        // Woken at least every tick while waiting, to see a stall.
        let tick = self.queue.stall_tick().map(|t| t.as_nanos() as u64);
        while self.done.len() < n {
            if let Err(e) = self.queue.poll(&mut self.done, true, tick) {
                tracing::error!("array queue poll failed: {e}");
                return Err(Errno::EIO);
            }
            if self.done.len() < n && tick.is_some() {
                let waiting = (n - self.done.len()).to_string();
                self.queue
                    .check_stall(&[("frontend", "fuse".into()), ("waiting_for", waiting)]);
            }
        }
        let mut out: Vec<Completion> = self.done.drain(..).collect();
        out.sort_by_key(|c| c.user);
        if let Some(c) = out.iter().find(|c| c.result < 0) {
            let err = Errno::from_i32(-c.result);
            for c in out {
                self.give_back(c.buf);
            }
            return Err(err);
        }
        Ok(out)
    }

    /// Reads `len` bytes at the block-aligned `offset`.
    fn read_blocks(&mut self, offset: u64, len: u32) -> Result<AlignedBuf, Errno> {
        let buf = self.buf(len as usize);
        let mut c = self.run(vec![Request {
            op: Op::Read,
            offset,
            len,
            buf: Some(buf),
            user: 0,
        }])?;
        c.pop().and_then(|c| c.buf).ok_or(Errno::EIO)
    }
}

/// The file system: a root directory holding `disk.img`.
pub(super) struct AugurFs {
    array: Array,
    id: u64,
    size: u64,
    locks: BlockLocks,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

impl AugurFs {
    pub(super) fn new(array: Array) -> Self {
        // SAFETY: getuid/getgid cannot fail and have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        AugurFs {
            size: array.size(),
            array,
            id: NEXT_FS_ID.fetch_add(1, Relaxed),
            locks: BlockLocks::new(),
            uid,
            gid,
            mounted_at: SystemTime::now(),
        }
    }

    /// Runs `f` with this thread's worker, creating its queue on first use.
    fn with_worker<R>(&self, f: impl FnOnce(&mut Worker) -> Result<R, Errno>) -> Result<R, Errno> {
        WORKER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|w| w.fs_id != self.id) {
                let qid = NEXT_QUEUE_ID.fetch_add(1, Relaxed);
                let queue = self.array.queue(qid, RING_ENTRIES).map_err(|e| {
                    tracing::error!("cannot open an array queue: {e}");
                    Errno::EIO
                })?;
                tracing::debug!("FUSE worker queue {qid} opened");
                *slot = Some(Worker {
                    fs_id: self.id,
                    queue,
                    spare: Vec::new(),
                    done: Vec::new(),
                });
            }
            match slot.as_mut() {
                Some(w) => f(w),
                None => Err(Errno::EIO),
            }
        })
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, nlink, size) = match ino {
            ROOT_INO => (FileType::Directory, 0o755, 2, 0),
            DISK_INO => (FileType::RegularFile, 0o644, 1, self.size),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size / 512,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    fn do_read(&self, offset: u64, size: u32) -> Result<(AlignedBuf, usize, usize), Errno> {
        let end = offset.saturating_add(size as u64).min(self.size);
        if offset >= end {
            return Ok((AlignedBuf::new(0), 0, 0));
        }
        let a0 = offset / BLOCK * BLOCK;
        let a1 = end.div_ceil(BLOCK) * BLOCK;
        let len = u32::try_from(a1 - a0).map_err(|_| Errno::EINVAL)?;
        let buf = self.with_worker(|w| w.read_blocks(a0, len))?;
        let start = (offset - a0) as usize;
        Ok((buf, start, start + (end - offset) as usize))
    }

    /// Writes `data` at `offset`; returns the bytes written (short at the
    /// end of the device).
    fn do_write(&self, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        if offset >= self.size {
            return Err(Errno::ENOSPC);
        }
        let len = (data.len() as u64).min(self.size - offset);
        if len == 0 {
            return Ok(0);
        }
        let data = &data[..len as usize];
        let end = offset + len;
        let a0 = offset / BLOCK * BLOCK;
        let a1 = end.div_ceil(BLOCK) * BLOCK;
        let span = u32::try_from(a1 - a0).map_err(|_| Errno::EINVAL)?;
        let (first, last) = (a0 / BLOCK, a1 / BLOCK - 1);
        let head_partial = offset != a0 || (first == last && end != a1);
        let tail_partial = end != a1 && last != first;
        let mut rmw = Vec::with_capacity(2);
        if head_partial {
            rmw.push(first);
        }
        if tail_partial {
            rmw.push(last);
        }
        let _guards = self.locks.lock(first, last + 1, &rmw);
        self.with_worker(|w| {
            let mut buf = w.buf(span as usize);
            if !rmw.is_empty() {
                let reads = rmw
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| {
                        let rb = w.buf(BLOCK as usize);
                        Request {
                            op: Op::Read,
                            offset: b * BLOCK,
                            len: BLOCK as u32,
                            buf: Some(rb),
                            user: i as u64,
                        }
                    })
                    .collect();
                let old = w.run(reads)?;
                for (c, &b) in old.into_iter().zip(&rmw) {
                    let Some(ob) = c.buf else {
                        return Err(Errno::EIO);
                    };
                    let at = ((b - first) * BLOCK) as usize;
                    buf[at..at + BLOCK as usize].copy_from_slice(&ob);
                    w.give_back(Some(ob));
                }
            }
            let at = (offset - a0) as usize;
            buf[at..at + data.len()].copy_from_slice(data);
            let mut c = w.run(vec![Request {
                op: Op::Write,
                offset: a0,
                len: span,
                buf: Some(buf),
                user: 0,
            }])?;
            w.give_back(c.pop().and_then(|c| c.buf));
            Ok(len as u32)
        })
    }

    /// Discards (punch-hole) or zeroes `offset..offset+len`: partial edge
    /// blocks are zeroed by read-modify-write, whole blocks go to the array
    /// as `op` (discard or write-zeroes) in chunks.
    fn do_zero(&self, op: Op, offset: u64, len: u64) -> Result<(), Errno> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(());
        }
        let a0 = offset / BLOCK * BLOCK;
        let a1 = end.div_ceil(BLOCK) * BLOCK;
        let (first, last) = (a0 / BLOCK, a1 / BLOCK - 1);
        // Whole blocks inside the range.
        let m0 = offset.div_ceil(BLOCK) * BLOCK;
        let m1 = end / BLOCK * BLOCK;
        let mut rmw = Vec::with_capacity(2);
        if offset != a0 || (first == last && end != a1) {
            rmw.push(first);
        }
        if end != a1 && last != first {
            rmw.push(last);
        }
        let _guards = self.locks.lock(first, last + 1, &rmw);
        self.with_worker(|w| {
            for &b in &rmw {
                let bstart = b * BLOCK;
                let mut blk = w.read_blocks(bstart, BLOCK as u32)?;
                let z0 = offset.max(bstart) - bstart;
                let z1 = end.min(bstart + BLOCK) - bstart;
                blk[z0 as usize..z1 as usize].fill(0);
                let mut c = w.run(vec![Request {
                    op: Op::Write,
                    offset: bstart,
                    len: BLOCK as u32,
                    buf: Some(blk),
                    user: 0,
                }])?;
                w.give_back(c.pop().and_then(|c| c.buf));
            }
            let mut at = m0;
            while at < m1 {
                let n = (m1 - at).min(ZERO_CHUNK);
                w.run(vec![Request {
                    op,
                    offset: at,
                    len: n as u32,
                    buf: None,
                    user: 0,
                }])?;
                at += n;
            }
            Ok(())
        })
    }

    fn do_flush(&self) -> Result<(), Errno> {
        self.with_worker(|w| {
            w.run(vec![Request {
                op: Op::Flush,
                offset: 0,
                len: 0,
                buf: None,
                user: 0,
            }])
            .map(|_| ())
        })
    }
}

impl Filesystem for AugurFs {
    fn init(&mut self, _req: &FuseRequest, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO) {
            tracing::warn!(
                "the kernel lacks {missing:?}: a loop device on the FUSE file will serialise"
            );
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if let Err(max) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        // Async direct I/O is sent as background requests: let many run.
        let _ = config.set_max_background(256);
        let _ = config.set_congestion_threshold(192);
        Ok(())
    }

    fn lookup(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(DISK_INO) {
            Some(a) if parent == ROOT_INO && name == DISK_NAME => {
                reply.entry(&TTL, &a, Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &FuseRequest, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(a) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // The device has a fixed size; other attribute changes are accepted
        // and forgotten (there is nowhere to keep them).
        if size.is_some_and(|s| s != a.size) {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &a)
    }

    fn open(&self, _req: &FuseRequest, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino {
            DISK_INO => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
            ),
            ROOT_INO => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR);
        }
        match self.do_read(offset, size) {
            Ok((buf, a, b)) => {
                reply.data(&buf[a..b]);
                let _ = self.with_worker(|w| {
                    w.give_back(Some(buf));
                    Ok(())
                });
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR);
        }
        match self.do_write(offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(): nothing is cached here, and durability is fsync's job.
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &FuseRequest, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.size / BLOCK;
        reply.statfs(blocks, 0, 0, 1, 0, BLOCK as u32, 255, BLOCK as u32)
    }

    fn access(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _mask: fuser::AccessFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    /// A block device is always ready: reads and writes never wait for
    /// data to arrive (io_uring asks before each async I/O on the file).
    fn poll(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        let ready = fuser::PollEvents::POLLIN
            | fuser::PollEvents::POLLOUT
            | fuser::PollEvents::POLLRDNORM
            | fuser::PollEvents::POLLWRNORM;
        reply.poll(events & ready)
    }

    fn fallocate(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR);
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let rest = mode & !libc::FALLOC_FL_KEEP_SIZE;
        let beyond = offset.saturating_add(length) > self.size;
        let result = if rest == 0 {
            // Preallocation: every byte of the device already exists.
            if beyond && !keep {
                Err(Errno::ENOSPC)
            } else {
                Ok(())
            }
        } else if rest == libc::FALLOC_FL_PUNCH_HOLE {
            self.do_zero(Op::Discard, offset, length)
        } else if rest == libc::FALLOC_FL_ZERO_RANGE {
            if beyond && !keep {
                Err(Errno::ENOSPC)
            } else {
                self.do_zero(Op::WriteZeroes, offset, length)
            }
        } else {
            Err(Errno::EOPNOTSUPP)
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_table_orders_and_merges() {
        let l = BlockLocks::new();
        // Same stripe twice (block 3 and 3 + LOCK_STRIPES): one guard, exclusive.
        let g = l.lock(3, 4, &[3, 3 + LOCK_STRIPES as u64]);
        assert_eq!(g.len(), 1);
        assert!(matches!(g[0], BlockGuard::Exclusive(_)));
        drop(g);
        let g = l.lock(0, 5000, &[0]);
        assert_eq!(g.len(), LOCK_STRIPES);
        drop(g);
        // Shared locks of different writers coexist.
        let a = l.lock(10, 12, &[]);
        let b = l.lock(11, 13, &[]);
        assert_eq!((a.len(), b.len()), (2, 2));
    }
}
