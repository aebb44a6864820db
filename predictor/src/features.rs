//! Feature encodings: LinnOS digits and Heimdall raw features + MinMax scaler.
//!
//! Everything here works on a [`HistorySnapshot`] (one replica's pending
//! counters and its last completed reads, newest first) and never allocates,
//! so it can run on the I/O path.
//!
//! # LinnOS encoding (31 inputs)
//!
//! Five pending counts, each in 4 KiB pages capped at 999 and written as 3
//! decimal digits (most significant first), then four latencies in µs capped
//! at 9999 and written as 4 decimal digits (most significant first):
//!
//! | inputs  | value                                                        |
//! |---------|--------------------------------------------------------------|
//! | 0..3    | `min(pending_pages, 999)` (pending now, at this read's issue) |
//! | 3..15   | `min(recent[j].pending_pages_at_issue, 999)` for j = 0..4     |
//! | 15..31  | `min(recent[j].latency_us, 9999)` for j = 0..4                |
//!
//! `recent[0]` is the newest completed read. A history entry `j >= len` (the
//! replica has completed fewer than 4 reads) encodes as all-zero digits,
//! whatever the snapshot holds there. Example: pending 42 pages, one completed
//! read issued at 7 pages that took 1234 µs gives
//! `0 4 2 | 0 0 7 | 0 0 0 | 0 0 0 | 0 0 0 | 1 2 3 4 | 0 0 0 0 | ...`.
//!
//! # LinnOS extended (39 inputs, `linnos-ext`)
//!
//! The 31 LinnOS inputs, then two signals LinnOS cannot see, each in µs,
//! capped at 9999 and written as 4 decimal digits:
//!
//! | inputs | value |
//! |--------|-------|
//! | 31..35 | age of the replica's oldest pending I/O ([`HistorySnapshot::oldest_pending_us`]) |
//! | 35..39 | worst latency of the last 57 to 64 completed reads, none older than ~268 ms ([`HistorySnapshot::read_max_us`]) |
//!
//! LinnOS learns of a stall only when a slow read completes, and forgets it
//! after four fast ones. A read stuck behind an erase shows up in the age
//! while it waits; the read maximum remembers a garbage-collection window
//! across the fast reads between its erases, and, being counted in reads,
//! keeps remembering it while the router sends the replica no reads. An
//! Augur extension, not part of the LinnOS paper. (Feature-set code 3; code
//! 2 was an earlier variant and is refused.)
//!
//! # LinnOS with write latencies (47 inputs, `linnos-write`)
//!
//! The 39 `linnos-ext` inputs, then two write latencies in µs, capped at
//! 9999 and written as 4 decimal digits (0 while the replica has completed
//! no write):
//!
//! | inputs | value |
//! |--------|-------|
//! | 39..43 | latency of the replica's newest completed write ([`HistorySnapshot::write_recent_us`]`[0]`) |
//! | 43..47 | least latency among its last four completed writes |
//!
//! Garbage collection is triggered by written volume and slows every write
//! it overlaps, including those between its erases, while most reads in the
//! window still run at full speed. A read learns of a GC window only when
//! one stuck behind an erase ages or completes (hundreds of µs to ms); the
//! writes, which every replica takes, tell within a few of them: one slow
//! write may be queueing, four slow ones are the device. An Augur extension
//! (feature-set code 4).
//!
//! # Heimdall encoding (12 inputs)
//!
//! Raw (unscaled) features, all integer-valued:
//!
//! | input | value                                                                  |
//! |-------|------------------------------------------------------------------------|
//! | 0     | op: 0 (the predictor only sees reads)                                  |
//! | 1     | size of this read, bytes                                               |
//! | 2     | queue length now: `pending_ios`                                        |
//! | 3+3j  | `recent[j].pending_ios_at_issue` (j = 0..3)                             |
//! | 4+3j  | `recent[j].latency_us`                                                 |
//! | 5+3j  | throughput `recent[j].size_bytes / max(recent[j].latency_us, 1)` (integer division, bytes/µs) |
//!
//! Missing entries (`j >= len`) are zero. The f32 path scales them with the
//! model's [`MinMax`] (clamped to `[0, 1]`); the integer path uses
//! [`IntScaler`] (see [`crate::infer`]).

use augur_feature_store::{HISTORY_LEN, HistorySnapshot, WRITE_HISTORY_LEN};

/// Number of LinnOS inputs (5 pending counts x 3 digits + 4 latencies x 4 digits).
pub const LINNOS_INPUTS: usize = 31;
/// Number of `linnos-ext` inputs (LinnOS + 4 digits each of the oldest
/// pending age and the recent read maximum).
pub const LINNOS_EXT_INPUTS: usize = LINNOS_INPUTS + 8;
/// Number of `linnos-write` inputs (`linnos-ext` + 4 digits each of the
/// newest write latency and the least of the last four).
pub const LINNOS_WRITE_INPUTS: usize = LINNOS_EXT_INPUTS + 8;
/// Number of Heimdall inputs.
pub const HEIMDALL_INPUTS: usize = 12;
/// Largest number of inputs of any feature set.
pub const MAX_INPUTS: usize = LINNOS_WRITE_INPUTS;

/// LinnOS cap on pending counts (pages).
pub const LINNOS_PENDING_CAP: u32 = 999;
/// LinnOS cap on latencies (µs).
pub const LINNOS_LATENCY_CAP: u32 = 9999;

/// Number of past reads the Heimdall encoding looks at.
pub const HEIMDALL_HISTORY: usize = 3;
/// Fixed-point resolution of the Heimdall integer inputs: a scaled feature
/// `v` in `[0, 1]` is the integer `round(v * 1024)` in `0..=1024`.
pub const HEIMDALL_INT_ONE: u32 = 1024;
/// log2 of [`HEIMDALL_INT_ONE`].
pub const HEIMDALL_INT_SHIFT: i32 = 10;

// The encodings index `recent` up to these lengths.
const _: () = assert!(HISTORY_LEN >= 4 && HISTORY_LEN >= HEIMDALL_HISTORY);
const _: () = assert!(WRITE_HISTORY_LEN >= 4);

/// Which feature encoding a model consumes. Stored in the model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FeatureSet {
    /// LinnOS: 31 decimal digits of pending counts and latencies.
    LinnOs,
    /// LinnOS plus the oldest pending age and the recent read maximum (39 inputs).
    LinnOsExt,
    /// `linnos-ext` plus the newest and the least recent write latency (47 inputs).
    LinnOsWrite,
    /// Heimdall: 12 raw features, MinMax-scaled with a scaler stored in the model.
    Heimdall,
}

impl FeatureSet {
    /// Number of model inputs: 31 (LinnOS), 39 (extended), 47 (with write
    /// latencies) or 12 (Heimdall).
    pub const fn n_inputs(self) -> usize {
        match self {
            FeatureSet::LinnOs => LINNOS_INPUTS,
            FeatureSet::LinnOsExt => LINNOS_EXT_INPUTS,
            FeatureSet::LinnOsWrite => LINNOS_WRITE_INPUTS,
            FeatureSet::Heimdall => HEIMDALL_INPUTS,
        }
    }

    /// Short lowercase name: `"linnos"`, `"linnos-ext"`, `"linnos-write"`
    /// or `"heimdall"`.
    pub fn name(self) -> &'static str {
        match self {
            FeatureSet::LinnOs => "linnos",
            FeatureSet::LinnOsExt => "linnos-ext",
            FeatureSet::LinnOsWrite => "linnos-write",
            FeatureSet::Heimdall => "heimdall",
        }
    }

    /// Parse a name as printed by [`FeatureSet::name`] (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "linnos" => Some(FeatureSet::LinnOs),
            "linnos-ext" => Some(FeatureSet::LinnOsExt),
            "linnos-write" => Some(FeatureSet::LinnOsWrite),
            "heimdall" => Some(FeatureSet::Heimdall),
            _ => None,
        }
    }

    /// Code of this feature set in the model file.
    pub const fn code(self) -> u8 {
        match self {
            FeatureSet::LinnOs => 0,
            FeatureSet::Heimdall => 1,
            FeatureSet::LinnOsExt => 3,
            FeatureSet::LinnOsWrite => 4,
        }
    }

    /// Code 2 was an earlier `linnos-ext` whose last four inputs were a
    /// time-windowed maximum over reads and writes; such models are refused.
    pub const RETIRED_CODE: u8 = 2;

    /// Inverse of [`FeatureSet::code`].
    pub const fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(FeatureSet::LinnOs),
            1 => Some(FeatureSet::Heimdall),
            3 => Some(FeatureSet::LinnOsExt),
            4 => Some(FeatureSet::LinnOsWrite),
            _ => None,
        }
    }

    /// log2 of the integer input scale: integer input `x` stands for the real
    /// input `x / 2^input_exp`. LinnOS digits are exact (0); Heimdall inputs
    /// are fixed point with 10 fractional bits.
    pub const fn input_exp(self) -> i32 {
        match self {
            FeatureSet::LinnOs | FeatureSet::LinnOsExt | FeatureSet::LinnOsWrite => 0,
            FeatureSet::Heimdall => HEIMDALL_INT_SHIFT,
        }
    }

    /// Largest absolute value of an integer input (9 for LinnOS digits,
    /// 1024 for Heimdall fixed point).
    pub const fn max_int_input(self) -> i32 {
        match self {
            FeatureSet::LinnOs | FeatureSet::LinnOsExt | FeatureSet::LinnOsWrite => 9,
            FeatureSet::Heimdall => HEIMDALL_INT_ONE as i32,
        }
    }
}

impl std::fmt::Display for FeatureSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the predictor knows about the read about to be issued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadInfo {
    /// Size of the read in bytes.
    pub size_bytes: u32,
}

/// Write the `N` decimal digits of `v` (already capped below `10^N`), most
/// significant first.
#[inline(always)]
fn digits<const N: usize>(mut v: u32, out: &mut [i32]) {
    for k in (0..N).rev() {
        out[k] = (v % 10) as i32;
        v /= 10;
    }
}

/// Number of real history entries (clamped to the array length).
#[inline(always)]
fn hist_len(h: &HistorySnapshot) -> usize {
    (h.len as usize).min(HISTORY_LEN)
}

/// LinnOS digits as integers (the integer path's input): each in `0..=9`.
/// Layout as in the module docs.
#[inline]
pub fn encode_linnos_int(h: &HistorySnapshot, out: &mut [i32; LINNOS_INPUTS]) {
    let n = hist_len(h);
    digits::<3>(h.pending_pages.min(LINNOS_PENDING_CAP), &mut out[0..3]);
    for j in 0..4 {
        let (p, l) = if j < n {
            let c = &h.recent[j];
            (
                c.pending_pages_at_issue.min(LINNOS_PENDING_CAP),
                c.latency_us.min(LINNOS_LATENCY_CAP),
            )
        } else {
            (0, 0)
        };
        digits::<3>(p, &mut out[3 + 3 * j..6 + 3 * j]);
        digits::<4>(l, &mut out[15 + 4 * j..19 + 4 * j]);
    }
}

/// `linnos-ext` digits as integers: the LinnOS digits, then
/// `min(oldest_pending_us, 9999)` and `min(read_max_us, 9999)` as 4
/// digits each (most significant first).
#[inline]
pub fn encode_linnos_ext_int(h: &HistorySnapshot, out: &mut [i32; LINNOS_EXT_INPUTS]) {
    let mut base = [0i32; LINNOS_INPUTS];
    encode_linnos_int(h, &mut base);
    out[..LINNOS_INPUTS].copy_from_slice(&base);
    digits::<4>(
        h.oldest_pending_us.min(LINNOS_LATENCY_CAP),
        &mut out[LINNOS_INPUTS..LINNOS_INPUTS + 4],
    );
    digits::<4>(
        h.read_max_us.min(LINNOS_LATENCY_CAP),
        &mut out[LINNOS_INPUTS + 4..],
    );
}

/// `linnos-ext` digits as f32 (training and the f32 path).
#[inline]
pub fn encode_linnos_ext(h: &HistorySnapshot, out: &mut [f32; LINNOS_EXT_INPUTS]) {
    let mut d = [0i32; LINNOS_EXT_INPUTS];
    encode_linnos_ext_int(h, &mut d);
    for (o, v) in out.iter_mut().zip(d) {
        *o = v as f32;
    }
}

/// `linnos-write` digits as integers: the `linnos-ext` digits, then the
/// newest write latency and the least of the last four, capped at 9999, as
/// 4 digits each (0 without writes).
#[inline]
pub fn encode_linnos_write_int(h: &HistorySnapshot, out: &mut [i32; LINNOS_WRITE_INPUTS]) {
    let mut ext = [0i32; LINNOS_EXT_INPUTS];
    encode_linnos_ext_int(h, &mut ext);
    out[..LINNOS_EXT_INPUTS].copy_from_slice(&ext);
    let w = h.writes();
    let newest = w.first().copied().unwrap_or(0);
    let least = w.iter().copied().min().unwrap_or(0);
    digits::<4>(
        newest.min(LINNOS_LATENCY_CAP),
        &mut out[LINNOS_EXT_INPUTS..LINNOS_EXT_INPUTS + 4],
    );
    digits::<4>(
        least.min(LINNOS_LATENCY_CAP),
        &mut out[LINNOS_EXT_INPUTS + 4..],
    );
}

/// `linnos-write` digits as f32 (training and the f32 path).
#[inline]
pub fn encode_linnos_write(h: &HistorySnapshot, out: &mut [f32; LINNOS_WRITE_INPUTS]) {
    let mut d = [0i32; LINNOS_WRITE_INPUTS];
    encode_linnos_write_int(h, &mut d);
    for (o, v) in out.iter_mut().zip(d) {
        *o = v as f32;
    }
}

/// LinnOS digits exactly as in DESIGN.md (values are small integers, 0..9),
/// as f32 for the f32 path and training.
#[inline]
pub fn encode_linnos(h: &HistorySnapshot, out: &mut [f32; LINNOS_INPUTS]) {
    let mut d = [0i32; LINNOS_INPUTS];
    encode_linnos_int(h, &mut d);
    for (o, v) in out.iter_mut().zip(d) {
        *o = v as f32;
    }
}

/// Heimdall raw features as exact integers (layout in the module docs).
#[inline]
pub fn heimdall_raw_int(h: &HistorySnapshot, r: ReadInfo, out: &mut [u32; HEIMDALL_INPUTS]) {
    let n = hist_len(h);
    out[0] = 0; // op: read
    out[1] = r.size_bytes;
    out[2] = h.pending_ios;
    for j in 0..HEIMDALL_HISTORY {
        let (q, l, t) = if j < n {
            let c = &h.recent[j];
            (
                c.pending_ios_at_issue,
                c.latency_us,
                c.size_bytes / c.latency_us.max(1),
            )
        } else {
            (0, 0, 0)
        };
        out[3 + 3 * j] = q;
        out[4 + 3 * j] = l;
        out[5 + 3 * j] = t;
    }
}

/// Heimdall raw features (unscaled): op (0 = read), size, queue length, and
/// for the last 3 completed reads: queue length, latency, throughput.
#[inline]
pub fn heimdall_raw(h: &HistorySnapshot, r: ReadInfo, out: &mut [f32; HEIMDALL_INPUTS]) {
    let mut raw = [0u32; HEIMDALL_INPUTS];
    heimdall_raw_int(h, r, &mut raw);
    for (o, v) in out.iter_mut().zip(raw) {
        *o = v as f32;
    }
}

/// Per-input MinMax scaler (Heimdall), stored in the model:
/// `scaled = clamp((x - min) / (max - min), 0, 1)`, and 0 where `max == min`.
#[derive(Clone, Debug, PartialEq)]
pub struct MinMax {
    /// Per-input minimum seen in training.
    pub min: Vec<f32>,
    /// Per-input maximum seen in training.
    pub max: Vec<f32>,
}

impl MinMax {
    /// Fit on rows of `n` raw features each (per-column min and max).
    /// An empty set of rows gives min = max = 0 everywhere.
    pub fn fit<'a>(n: usize, rows: impl IntoIterator<Item = &'a [f32]>) -> MinMax {
        let mut min = vec![f32::INFINITY; n];
        let mut max = vec![f32::NEG_INFINITY; n];
        for row in rows {
            for ((lo, hi), &v) in min.iter_mut().zip(max.iter_mut()).zip(row) {
                if v.is_finite() {
                    *lo = lo.min(v);
                    *hi = hi.max(v);
                }
            }
        }
        for (lo, hi) in min.iter_mut().zip(max.iter_mut()) {
            if !lo.is_finite() || !hi.is_finite() {
                *lo = 0.0;
                *hi = 0.0;
            }
        }
        MinMax { min, max }
    }

    /// Number of inputs this scaler covers.
    pub fn len(&self) -> usize {
        self.min.len()
    }

    /// True when it covers no input.
    pub fn is_empty(&self) -> bool {
        self.min.is_empty()
    }

    /// Scale `x` in place (see the type docs). Extra elements beyond the
    /// scaler's length are left alone.
    #[inline]
    pub fn apply(&self, x: &mut [f32]) {
        for ((v, &lo), &hi) in x.iter_mut().zip(&self.min).zip(&self.max) {
            let span = hi - lo;
            *v = if span > 0.0 {
                ((*v - lo) / span).clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
    }

    /// The integer scaler the integer path uses (see [`IntScaler`]).
    pub fn to_int(&self) -> IntScaler {
        let mut s = IntScaler {
            lo: [0; HEIMDALL_INPUTS],
            span: [1; HEIMDALL_INPUTS],
        };
        for (k, (&lo, &hi)) in self
            .min
            .iter()
            .zip(&self.max)
            .enumerate()
            .take(HEIMDALL_INPUTS)
        {
            let l = (lo as f64).floor().clamp(0.0, u32::MAX as f64);
            let h = (hi as f64).ceil().clamp(0.0, u32::MAX as f64);
            s.lo[k] = l as u32;
            s.span[k] = ((h - l) as u64).max(1);
        }
        s
    }
}

/// Integer form of a Heimdall [`MinMax`] scaler, derived from it:
/// `lo = clamp(floor(min), 0, 2^32-1)`, `span = max(1, clamp(ceil(max), 0, 2^32-1) - lo)`.
/// The integer input is `q = min(1024, ((raw - lo saturating at 0) * 1024 + span / 2) / span)`
/// in u64 arithmetic (integer division truncates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntScaler {
    /// Per-input integer lower bound.
    pub lo: [u32; HEIMDALL_INPUTS],
    /// Per-input integer span (>= 1).
    pub span: [u64; HEIMDALL_INPUTS],
}

impl IntScaler {
    /// Scale raw integer features to fixed point `0..=1024`.
    #[inline]
    pub fn apply(&self, raw: &[u32; HEIMDALL_INPUTS], out: &mut [i32]) {
        for k in 0..HEIMDALL_INPUTS {
            let d = raw[k].saturating_sub(self.lo[k]) as u64;
            let q = (d * HEIMDALL_INT_ONE as u64 + self.span[k] / 2) / self.span[k];
            out[k] = q.min(HEIMDALL_INT_ONE as u64) as i32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_feature_store::Completed;

    fn snap(pending: u32, hist: &[(u32, u32)]) -> HistorySnapshot {
        let mut s = HistorySnapshot {
            pending_pages: pending,
            ..Default::default()
        };
        for (j, &(p, l)) in hist.iter().enumerate() {
            s.recent[j] = Completed {
                latency_us: l,
                pending_pages_at_issue: p,
                pending_ios_at_issue: p / 2,
                size_bytes: 4096,
            };
        }
        s.len = hist.len() as u8;
        s
    }

    #[test]
    fn linnos_known_history() {
        let s = snap(42, &[(7, 1234), (999, 56), (1500, 20000), (0, 9999)]);
        let mut d = [0i32; LINNOS_INPUTS];
        encode_linnos_int(&s, &mut d);
        #[rustfmt::skip]
        let want = [
            0, 4, 2,
            0, 0, 7,   9, 9, 9,   9, 9, 9,   0, 0, 0,
            1, 2, 3, 4,   0, 0, 5, 6,   9, 9, 9, 9,   9, 9, 9, 9,
        ];
        assert_eq!(d, want);
        let mut f = [0f32; LINNOS_INPUTS];
        encode_linnos(&s, &mut f);
        assert!(f.iter().zip(want).all(|(a, b)| *a == b as f32));
    }

    #[test]
    fn linnos_ext_appends_capped_age_and_read_max() {
        let mut s = snap(42, &[(7, 1234)]);
        for (age, wl, tail) in [
            (0, 0, [0, 0, 0, 0, 0, 0, 0, 0]),
            (873, 96, [0, 8, 7, 3, 0, 0, 9, 6]),
            (123_456, 10_000, [9, 9, 9, 9, 9, 9, 9, 9]),
        ] {
            s.oldest_pending_us = age;
            s.read_max_us = wl;
            let mut base = [0i32; LINNOS_INPUTS];
            encode_linnos_int(&s, &mut base);
            let mut d = [0i32; LINNOS_EXT_INPUTS];
            encode_linnos_ext_int(&s, &mut d);
            assert_eq!(d[..LINNOS_INPUTS], base);
            assert_eq!(d[LINNOS_INPUTS..], tail);
            let mut f = [0f32; LINNOS_EXT_INPUTS];
            encode_linnos_ext(&s, &mut f);
            assert!(f.iter().zip(d).all(|(a, b)| *a == b as f32));
        }
        // The plain LinnOS encoding ignores the age.
        let mut a = [0i32; LINNOS_INPUTS];
        encode_linnos_int(&s, &mut a);
        s.oldest_pending_us = 0;
        s.read_max_us = 0;
        let mut b = [0i32; LINNOS_INPUTS];
        encode_linnos_int(&s, &mut b);
        assert_eq!(a, b);
        assert_eq!(FeatureSet::parse("linnos-ext"), Some(FeatureSet::LinnOsExt));
        assert_eq!(
            FeatureSet::from_code(FeatureSet::LinnOsExt.code()),
            Some(FeatureSet::LinnOsExt)
        );
        assert_eq!(FeatureSet::LinnOsExt.n_inputs(), 39);
    }

    #[test]
    fn linnos_write_appends_newest_and_least_write_latency() {
        let mut s = snap(42, &[(7, 1234)]);
        s.oldest_pending_us = 873;
        s.read_max_us = 96;
        let mut ext = [0i32; LINNOS_EXT_INPUTS];
        encode_linnos_ext_int(&s, &mut ext);
        for (writes, tail) in [
            (&[][..], [0, 0, 0, 0, 0, 0, 0, 0]),
            (&[120][..], [0, 1, 2, 0, 0, 1, 2, 0]),
            (&[95, 310, 40, 77][..], [0, 0, 9, 5, 0, 0, 4, 0]),
            (&[12_000, 10_500][..], [9, 9, 9, 9, 9, 9, 9, 9]),
        ] {
            s.write_recent_us = [0; WRITE_HISTORY_LEN];
            s.write_recent_us[..writes.len()].copy_from_slice(writes);
            s.write_len = writes.len() as u8;
            let mut d = [0i32; LINNOS_WRITE_INPUTS];
            encode_linnos_write_int(&s, &mut d);
            assert_eq!(d[..LINNOS_EXT_INPUTS], ext);
            assert_eq!(d[LINNOS_EXT_INPUTS..], tail, "writes {writes:?}");
            let mut f = [0f32; LINNOS_WRITE_INPUTS];
            encode_linnos_write(&s, &mut f);
            assert!(f.iter().zip(d).all(|(a, b)| *a == b as f32));
        }
        // Entries beyond write_len are not writes.
        s.write_recent_us = [300, 5, 5, 5];
        s.write_len = 1;
        let mut d = [0i32; LINNOS_WRITE_INPUTS];
        encode_linnos_write_int(&s, &mut d);
        assert_eq!(d[LINNOS_EXT_INPUTS..], [0, 3, 0, 0, 0, 3, 0, 0]);
        assert_eq!(
            FeatureSet::parse("linnos-write"),
            Some(FeatureSet::LinnOsWrite)
        );
        assert_eq!(
            FeatureSet::from_code(FeatureSet::LinnOsWrite.code()),
            Some(FeatureSet::LinnOsWrite)
        );
        assert_eq!(FeatureSet::LinnOsWrite.n_inputs(), 47);
    }

    #[test]
    fn linnos_short_history_is_zero_padded() {
        // Entries beyond len must be ignored even if the snapshot has data there.
        let mut s = snap(5, &[(12, 345), (6, 78)]);
        s.recent[2].latency_us = 5555;
        s.recent[2].pending_pages_at_issue = 555;
        let mut d = [7i32; LINNOS_INPUTS];
        encode_linnos_int(&s, &mut d);
        #[rustfmt::skip]
        let want = [
            0, 0, 5,
            0, 1, 2,   0, 0, 6,   0, 0, 0,   0, 0, 0,
            0, 3, 4, 5,   0, 0, 7, 8,   0, 0, 0, 0,   0, 0, 0, 0,
        ];
        assert_eq!(d, want);
        let empty = HistorySnapshot::default();
        encode_linnos_int(&empty, &mut d);
        assert_eq!(d, [0; LINNOS_INPUTS]);
    }

    #[test]
    fn linnos_all_caps() {
        let s = snap(u32::MAX, &[(u32::MAX, u32::MAX); 4]);
        let mut d = [0i32; LINNOS_INPUTS];
        encode_linnos_int(&s, &mut d);
        assert_eq!(d, [9; LINNOS_INPUTS]);
    }

    #[test]
    fn heimdall_known_history() {
        let mut s = snap(0, &[(10, 100), (20, 0), (30, 300), (40, 400)]);
        s.pending_ios = 3;
        s.recent[0].size_bytes = 8192;
        let mut raw = [0u32; HEIMDALL_INPUTS];
        heimdall_raw_int(&s, ReadInfo { size_bytes: 65536 }, &mut raw);
        assert_eq!(raw, [0, 65536, 3, 5, 100, 81, 10, 0, 4096, 15, 300, 13]);
        let mut f = [0f32; HEIMDALL_INPUTS];
        heimdall_raw(&s, ReadInfo { size_bytes: 65536 }, &mut f);
        assert_eq!(f[5], 81.0);
    }

    #[test]
    fn minmax_scales_and_clamps() {
        let rows: Vec<Vec<f32>> = vec![vec![0.0, 5.0], vec![10.0, 5.0]];
        let mm = MinMax::fit(2, rows.iter().map(|r| r.as_slice()));
        assert_eq!(mm.min, vec![0.0, 5.0]);
        let mut x = [5.0, 7.0];
        mm.apply(&mut x);
        assert_eq!(x, [0.5, 0.0]);
        let mut x = [20.0, 1.0];
        mm.apply(&mut x);
        assert_eq!(x, [1.0, 0.0]);
    }

    #[test]
    fn feature_set_names() {
        for fs in [FeatureSet::LinnOs, FeatureSet::Heimdall] {
            assert_eq!(FeatureSet::parse(fs.name()), Some(fs));
            assert_eq!(FeatureSet::from_code(fs.code()), Some(fs));
        }
        assert_eq!(FeatureSet::LinnOs.n_inputs(), 31);
        assert_eq!(FeatureSet::Heimdall.n_inputs(), 12);
        assert_eq!(FeatureSet::parse("x"), None);
    }
}
