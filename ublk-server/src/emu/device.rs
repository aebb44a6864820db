//! The emulated device: [`FlashEmu`] computes completion times for I/Os.

use super::Op;
use super::profile::Profile;
use augur_rng::Rng;

/// Channel stripe: I/O at `offset` is served by channel `(offset >> 16) % channels`.
pub const CHANNEL_STRIPE_BYTES: u64 = 64 * 1024;

/// What the emulator decided for one I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The I/O completes at this time (ns, same clock as `now_ns`).
    CompleteAt(u64),
    /// The I/O fails (EIO): an injected or scripted fault is in force.
    Fail,
}

/// Counters of what one emulator has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmuStats {
    /// I/Os submitted (including failed ones).
    pub ios: u64,
    /// GC windows started.
    pub gc_windows: u64,
    /// Noisy-neighbour busy periods begun up to the latest `now_ns` seen.
    pub busy_periods: u64,
    /// I/Os that returned [`Outcome::Fail`].
    pub failed: u64,
    /// Bytes written (writes only) that counted towards GC.
    pub bytes_written: u64,
}

/// Noisy-neighbour busy periods as a pure function of time: the stream is
/// generated lazily, so a copy advanced further gives the same periods.
#[derive(Clone, Copy, Debug)]
struct NoisyTrack {
    rng: Rng,
    mean_gap_ns: f64,
    mean_dur_ns: f64,
    cur_start: u64,
    cur_end: u64,
    next_start: u64,
    periods: u64,
}

impl NoisyTrack {
    fn new(mut rng: Rng, mean_gap_ns: f64, mean_dur_ns: f64) -> Self {
        let next_start = rng.exponential(mean_gap_ns) as u64;
        NoisyTrack {
            rng,
            mean_gap_ns,
            mean_dur_ns,
            cur_start: 0,
            cur_end: 0,
            next_start,
            periods: 0,
        }
    }

    /// Generates periods until the latest one starting at or before `t` is current.
    fn advance(&mut self, t: u64) {
        while self.next_start <= t {
            self.cur_start = self.next_start;
            let dur = (self.rng.exponential(self.mean_dur_ns) as u64).max(1);
            self.cur_end = self.cur_start.saturating_add(dur);
            let gap = (self.rng.exponential(self.mean_gap_ns) as u64).max(1);
            self.next_start = self.cur_end.saturating_add(gap);
            self.periods += 1;
        }
    }

    /// End of the busy period covering `t`, if any (call after `advance(t)`).
    fn busy_until(&self, t: u64) -> Option<u64> {
        (self.cur_start <= t && t < self.cur_end && self.periods > 0).then_some(self.cur_end)
    }
}

/// Precomputed GC parameters (ns, bytes).
#[derive(Clone, Copy, Debug)]
struct GcParams {
    trigger_bytes: f64,
    trigger_jitter: f64,
    duration_ns: f64,
    duration_jitter: f64,
    read_stall: bool,
    write_slowdown: f64,
    read_block_fraction: Option<f64>,
    erase_ns: Option<f64>,
    erase_gap_ns: Option<f64>,
}

/// Precomputed noisy-neighbour slowdown.
#[derive(Clone, Copy, Debug)]
struct NoisyParams {
    slowdown: f64,
}

/// Where and when one I/O would run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    channel: Option<usize>,
    complete: u64,
}

/// One emulated device. Deterministic: same profile, seed and sequence of
/// `(now_ns, op, offset, len)` calls give the same outcomes. No threads, no
/// sleeping: it only computes completion times; the caller delays completions.
/// `now_ns` must never go backwards between calls.
#[derive(Clone, Debug)]
pub struct FlashEmu {
    profile: Profile,
    // Service-time parameters in ns.
    read_base_ns: f64,
    read_ns_per_byte: f64,
    write_base_ns: f64,
    write_ns_per_byte: f64,
    flush_ns: f64,
    discard_ns: f64,
    jitter: f64,
    /// Per-channel time (ns) until which the channel is busy.
    busy_until: Vec<u64>,
    /// Jitter stream (one normal draw per I/O when `jitter > 0`).
    jitter_rng: Rng,
    // GC state.
    gc: Option<GcParams>,
    gc_rng: Rng,
    since_gc: u64,
    next_threshold: u64,
    gc_start: u64,
    gc_end: u64,
    /// Channels the current GC window erases (with `read_block_fraction`).
    gc_busy: Vec<bool>,
    // Noisy neighbour.
    noisy: Option<(NoisyParams, NoisyTrack)>,
    // Faults.
    fail_after_ios: Option<u64>,
    fail_at_ns: Option<u64>,
    failed_flag: bool,
    stats: EmuStats,
    /// The most recent GC windows, `(start, end)` in ns, oldest first (at
    /// most [`GC_LOG_LEN`]; back-to-back windows are merged into one).
    gc_log: std::collections::VecDeque<(u64, u64)>,
}

/// How many GC windows a [`FlashEmu`] remembers for [`FlashEmu::gc_windows`].
pub const GC_LOG_LEN: usize = 4096;

/// Converts a (validated, non-negative) f64 ns value to u64, at least 1.
fn ns(v: f64) -> u64 {
    (v.round() as u64).max(1)
}

impl FlashEmu {
    /// A fresh device: idle channels, GC progress randomised from `seed`.
    /// The profile is expected to be valid ([`Profile::validate`]); values
    /// that are not are clamped to something harmless rather than panicking.
    pub fn new(profile: Profile, seed: u64) -> Self {
        let mut master = seed ^ 0xA076_1D64_78BD_642F;
        let jitter_rng = Rng::new(augur_rng::splitmix64(&mut master));
        let mut gc_rng = Rng::new(augur_rng::splitmix64(&mut master));
        let noisy_rng = Rng::new(augur_rng::splitmix64(&mut master));

        let gc = profile.gc.as_ref().map(|g| GcParams {
            trigger_bytes: (g.trigger_mib * 1024.0 * 1024.0).max(1.0),
            trigger_jitter: g.trigger_jitter.clamp(0.0, 0.999),
            duration_ns: g.duration_ms.max(0.0) * 1e6,
            duration_jitter: g.duration_jitter.clamp(0.0, 1.0),
            read_stall: g.read_stall,
            write_slowdown: g.write_slowdown.max(1.0),
            read_block_fraction: g.read_block_fraction,
            erase_ns: g.erase_ms.map(|e| e * 1e6),
            erase_gap_ns: g.erase_gap_ms.map(|e| e * 1e6),
        });
        let (since_gc, next_threshold) = match &gc {
            Some(g) => {
                let threshold = Self::draw_threshold(g, &mut gc_rng);
                // Start part-way to the first threshold so replicas do not
                // GC in lock-step even from a cold start.
                let since = (gc_rng.next_f64() * threshold as f64) as u64;
                (since, threshold)
            }
            None => (0, u64::MAX),
        };
        let noisy = profile.noisy_neighbor.as_ref().map(|n| {
            (
                NoisyParams {
                    slowdown: n.slowdown.max(1.0),
                },
                NoisyTrack::new(
                    noisy_rng,
                    n.mean_interval_ms.max(1e-6) * 1e6,
                    n.mean_duration_ms.max(1e-6) * 1e6,
                ),
            )
        });
        let (fail_after_ios, fail_at_ns) = match &profile.fault {
            Some(f) => (f.after_ios, f.at_ms.map(|ms| (ms.max(0.0) * 1e6) as u64)),
            None => (None, None),
        };
        FlashEmu {
            read_base_ns: profile.read_base_us * 1e3,
            read_ns_per_byte: profile.read_us_per_kib * 1e3 / 1024.0,
            write_base_ns: profile.write_base_us * 1e3,
            write_ns_per_byte: profile.write_us_per_kib * 1e3 / 1024.0,
            flush_ns: profile.flush_us * 1e3,
            discard_ns: profile.discard_us * 1e3,
            jitter: profile.jitter.max(0.0),
            busy_until: vec![0; profile.channels.max(1) as usize],
            jitter_rng,
            gc,
            gc_rng,
            since_gc,
            next_threshold,
            gc_start: 0,
            gc_end: 0,
            gc_busy: vec![false; profile.channels.max(1) as usize],
            noisy,
            fail_after_ios,
            fail_at_ns,
            failed_flag: false,
            stats: EmuStats::default(),
            gc_log: std::collections::VecDeque::new(),
            profile,
        }
    }

    /// Becomes a device of `profile` from `now_ns` on (for demonstrations of
    /// a device that changes under a running array): channels keep their
    /// queued work, counters and an injected failure carry over, GC and
    /// noisy-neighbour state start afresh from `seed`.
    pub fn set_profile(&mut self, profile: Profile, seed: u64, now_ns: u64) {
        let mut next = FlashEmu::new(profile, seed);
        let busiest = self.busy_until.iter().copied().max().unwrap_or(0);
        if next.busy_until.len() == self.busy_until.len() {
            next.busy_until.copy_from_slice(&self.busy_until);
        } else {
            next.busy_until.fill(busiest);
        }
        if let Some((_, track)) = &mut next.noisy {
            track.advance(now_ns);
        }
        next.stats = self.stats;
        next.gc_log = std::mem::take(&mut self.gc_log);
        next.failed_flag = self.failed_flag;
        next.fail_after_ios = next.fail_after_ios.or(self.fail_after_ios);
        next.fail_at_ns = next.fail_at_ns.or(self.fail_at_ns);
        *self = next;
    }

    fn draw_threshold(g: &GcParams, rng: &mut Rng) -> u64 {
        let f = 1.0 + g.trigger_jitter * rng.next_signed_unit();
        ns(g.trigger_bytes * f)
    }

    /// The profile this device was built from.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Whether an I/O submitted at `now_ns` (as the next one) would fail.
    fn would_fail(&self, now_ns: u64) -> bool {
        self.failed_flag
            || self.fail_after_ios.is_some_and(|n| self.stats.ios >= n)
            || self.fail_at_ns.is_some_and(|t| now_ns >= t)
    }

    /// End of the GC window covering `t`, if any.
    fn gc_covering(&self, t: u64) -> Option<u64> {
        (self.gc_start <= t && t < self.gc_end).then_some(self.gc_end)
    }

    /// Channel for an offset.
    fn channel_of(&self, offset: u64) -> usize {
        ((offset / CHANNEL_STRIPE_BYTES) % self.busy_until.len() as u64) as usize
    }

    /// Computes when an I/O arriving at `now_ns` would complete, drawing
    /// jitter from `rng` (a copy, for peeking, or the real stream).
    fn plan(&self, now_ns: u64, op: Op, offset: u64, len: u32, rng: &mut Rng) -> Plan {
        let len = len as f64;
        let (channel, mut start, mut svc) = match op {
            Op::Read => {
                let ch = self.channel_of(offset);
                let mut start = now_ns.max(self.busy_until[ch]);
                if let Some(g) = &self.gc
                    && g.read_stall
                    && let Some(end) = self.gc_covering(start)
                {
                    // Without read_block_fraction/erase_ms every read waits
                    // for the window's end. With them, the window erases
                    // some channels in cycles of `erase` busy then
                    // `erase_gap` idle (reads run in between): a
                    // read *arriving* on such a channel mid-erase waits for
                    // that erase to finish.
                    if g.read_block_fraction.is_none() {
                        start = end;
                    } else if self.gc_busy[ch] && now_ns >= self.gc_start {
                        let wait = match g.erase_ns {
                            Some(e) => {
                                let e = (e as u64).max(1);
                                let gap = g.erase_gap_ns.map_or(e, |x| x as u64);
                                let phase = (now_ns - self.gc_start) % (e + gap);
                                (phase < e).then(|| now_ns + (e - phase))
                            }
                            None => Some(end),
                        };
                        if let Some(t) = wait {
                            start = start.max(end.min(t));
                        }
                    }
                }
                (
                    Some(ch),
                    start,
                    self.read_base_ns + self.read_ns_per_byte * len,
                )
            }
            Op::Write => {
                let ch = self.channel_of(offset);
                let start = now_ns.max(self.busy_until[ch]);
                let mut svc = self.write_base_ns + self.write_ns_per_byte * len;
                if let Some(g) = &self.gc
                    && self.gc_covering(start).is_some()
                {
                    svc *= g.write_slowdown;
                }
                (Some(ch), start, svc)
            }
            Op::Discard | Op::WriteZeroes => {
                let ch = self.channel_of(offset);
                (Some(ch), now_ns.max(self.busy_until[ch]), self.discard_ns)
            }
            Op::Flush => {
                // Waits for everything already queued, holds no channel.
                let drained = self.busy_until.iter().copied().max().unwrap_or(0);
                (None, now_ns.max(drained), self.flush_ns)
            }
        };
        if let Some((np, track)) = &self.noisy {
            let mut t = *track;
            t.advance(start);
            if t.busy_until(start).is_some() {
                svc *= np.slowdown;
            }
        }
        if self.jitter > 0.0 {
            svc *= (self.jitter * rng.standard_normal()).exp();
        }
        start = start.saturating_add(ns(svc));
        Plan {
            channel,
            complete: start,
        }
    }

    /// Accounts one I/O arriving at `now_ns` and returns when it completes
    /// (or that it fails). O(1) (flushes O(channels)), no allocation.
    pub fn submit(&mut self, now_ns: u64, op: Op, offset: u64, len: u32) -> Outcome {
        if let Some((_, track)) = &mut self.noisy {
            track.advance(now_ns);
            self.stats.busy_periods = track.periods;
        }
        if self.would_fail(now_ns) {
            self.failed_flag = true;
            self.stats.ios += 1;
            self.stats.failed += 1;
            return Outcome::Fail;
        }
        self.stats.ios += 1;
        let mut rng = self.jitter_rng;
        let plan = self.plan(now_ns, op, offset, len, &mut rng);
        self.jitter_rng = rng;
        if let Some(ch) = plan.channel {
            self.busy_until[ch] = plan.complete;
        }
        if op == Op::Write {
            self.account_written(now_ns, len as u64);
        }
        Outcome::CompleteAt(plan.complete)
    }

    /// Adds written volume; each crossed threshold starts (or extends) a GC window.
    fn account_written(&mut self, now_ns: u64, bytes: u64) {
        self.stats.bytes_written += bytes;
        let Some(g) = self.gc else { return };
        self.since_gc += bytes;
        while self.since_gc >= self.next_threshold {
            self.since_gc -= self.next_threshold;
            self.next_threshold = Self::draw_threshold(&g, &mut self.gc_rng);
            let f = 1.0 + g.duration_jitter * self.gc_rng.next_signed_unit();
            let dur = (g.duration_ns * f).round().max(0.0) as u64;
            if now_ns < self.gc_end {
                // Back-to-back: the new window runs right after the current one.
                self.gc_end = self.gc_end.saturating_add(dur);
                if let Some(last) = self.gc_log.back_mut() {
                    last.1 = self.gc_end;
                }
            } else {
                self.gc_start = now_ns;
                self.gc_end = now_ns.saturating_add(dur);
                if self.gc_log.len() == GC_LOG_LEN {
                    self.gc_log.pop_front();
                }
                self.gc_log.push_back((self.gc_start, self.gc_end));
                if let Some(f) = g.read_block_fraction {
                    // A fresh set of erasing channels, at least one.
                    for b in self.gc_busy.iter_mut() {
                        *b = self.gc_rng.next_f64() < f;
                    }
                    if !self.gc_busy.iter().any(|&b| b) {
                        let ch = self.gc_rng.below(self.gc_busy.len() as u64) as usize;
                        self.gc_busy[ch] = true;
                    }
                }
            }
            self.stats.gc_windows += 1;
        }
    }

    /// Oracle: the latency (ns) a read of `len` at `offset` would see if
    /// submitted at `now_ns` as the next I/O, without changing any state.
    /// Exact: it includes the jitter draw the next submit would use, so
    /// `submit(now, Read, off, len)` right after returns `now + peek`.
    /// Returns `u64::MAX` if the read would fail.
    pub fn peek_read_latency(&self, now_ns: u64, offset: u64, len: u32) -> u64 {
        if self.would_fail(now_ns) {
            return u64::MAX;
        }
        let mut rng = self.jitter_rng;
        self.plan(now_ns, Op::Read, offset, len, &mut rng).complete - now_ns
    }

    /// When the stall in force at `now_ns` began: the GC window or
    /// noisy-neighbour busy period covering it (the earlier start if both
    /// do), `None` when neither does. What a perfect stall detector knows.
    pub fn stalled_since(&self, now_ns: u64) -> Option<u64> {
        let gc = self.gc_covering(now_ns).map(|_| self.gc_start);
        let noisy = self.noisy.as_ref().and_then(|(_, track)| {
            let mut t = *track;
            t.advance(now_ns);
            t.busy_until(now_ns).map(|_| t.cur_start)
        });
        match (gc, noisy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True while a GC window or a noisy-neighbour busy period is in force at `now_ns`.
    pub fn is_stalled(&self, now_ns: u64) -> bool {
        self.stalled_until(now_ns).is_some()
    }

    /// When the GC window and/or busy period in force at `now_ns` ends
    /// (the later of the two), or `None` if neither is.
    pub fn stalled_until(&self, now_ns: u64) -> Option<u64> {
        let gc = self.gc_covering(now_ns);
        let noisy = self.noisy.as_ref().and_then(|(_, track)| {
            let mut t = *track;
            t.advance(now_ns);
            t.busy_until(now_ns)
        });
        gc.max(noisy)
    }

    /// Makes the device fail every I/O from now on (fault injection by flag).
    pub fn inject_failure(&mut self) {
        self.failed_flag = true;
    }

    /// Whether the device has failed (injected, or a scripted fault fired).
    pub fn is_failed(&self) -> bool {
        self.failed_flag
    }

    /// The most recent GC windows (at most [`GC_LOG_LEN`]), `(start, end)`
    /// in ns on the array's clock, oldest first; back-to-back windows are
    /// one entry. The last one may still be running.
    pub fn gc_windows(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.gc_log.iter().copied()
    }

    /// Counters so far.
    pub fn stats(&self) -> EmuStats {
        self.stats
    }
}
