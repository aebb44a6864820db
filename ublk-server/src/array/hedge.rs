//! The latency window behind hedging: a rolling percentile of recent read
//! latencies, after which a hedged read sends its second copy.

/// Rolling percentile of recent read latencies, for hedging.
pub(super) struct LatencyWindow {
    samples: Vec<u64>,
    next: usize,
    filled: bool,
    since: u32,
    pub(super) threshold_ns: u64,
    pct: f64,
    scratch: Vec<u64>,
}

const WINDOW: usize = 2048;
/// Hedge delay used until the window has enough samples.
const DEFAULT_HEDGE_NS: u64 = 2_000_000;
const MIN_HEDGE_NS: u64 = 20_000;

impl LatencyWindow {
    pub(super) fn new(pct: f64) -> Self {
        LatencyWindow {
            samples: vec![0; WINDOW],
            next: 0,
            filled: false,
            since: 0,
            threshold_ns: DEFAULT_HEDGE_NS,
            pct,
            scratch: Vec::with_capacity(WINDOW),
        }
    }

    /// Follows a new percentile from the next recomputation on (a policy
    /// with a percentile of its own was swapped in).
    pub(super) fn set_pct(&mut self, pct: f64) {
        self.pct = pct;
    }

    pub(super) fn record(&mut self, ns: u64) {
        self.samples[self.next] = ns;
        self.next = (self.next + 1) % WINDOW;
        if self.next == 0 {
            self.filled = true;
        }
        self.since += 1;
        let have = if self.filled { WINDOW } else { self.next };
        if have >= 128 && self.since >= 256 {
            self.since = 0;
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.samples[..have]);
            let k = ((have as f64 * self.pct / 100.0) as usize).min(have - 1);
            let (_, v, _) = self.scratch.select_nth_unstable(k);
            self.threshold_ns = (*v).max(MIN_HEDGE_NS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_follows_the_percentile() {
        let mut w = LatencyWindow::new(95.0);
        assert_eq!(w.threshold_ns, DEFAULT_HEDGE_NS);
        for i in 0..WINDOW as u64 {
            w.record(100_000 + (i % 100) * 1000);
        }
        // p95 of 100..199 us
        assert!(
            (194_000..=196_000).contains(&w.threshold_ns),
            "{}",
            w.threshold_ns
        );
        for _ in 0..WINDOW {
            w.record(1);
        }
        assert_eq!(w.threshold_ns, MIN_HEDGE_NS);
    }
}
