//! Prometheus metrics: `--metrics ADDR` serves the text exposition format
//! at `/metrics`, off the I/O threads.
//!
//! Nothing here runs on the data path. The I/O threads only bump their own
//! queue's counters and latency buckets (atomics, see [`crate::array`]); a
//! scrape adds them up, like `augur ctl stats` does, and encodes them with
//! `prometheus-client`. Names follow the Prometheus conventions (base units,
//! `_total` counters, `_info` for labels that name things):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `augur_requests_total` | `op` | requests completed by the array |
//! | `augur_failed_requests_total` | | requests no replica could serve |
//! | `augur_reads_completed_total` | `replica` | reads a replica answered |
//! | `augur_read_latency_seconds` | `replica` | histogram of those reads' replica latency |
//! | `augur_replica_read_bytes_total`, `augur_replica_written_bytes_total` | `replica` | bytes moved |
//! | `augur_replica_errors_total` | `replica` | replica I/O errors |
//! | `augur_replica_up` | `replica` | 1 live, 0 failed |
//! | `augur_replica_pending_ios` | `replica` | I/Os in flight now |
//! | `augur_reroutes_total`, `augur_hedges_total`, `augur_hedge_wins_total` | | routing |
//! | `augur_stalls_total`, `augur_missed_wakeups_total`, `augur_cq_overflows_total` | | requests older than `--stall-after` (each dumped once to the log), completions no wake-up reported, io_uring CQ overflows collected; the first two stay 0 on a healthy run |
//! | `augur_predictions_total` | `device` | reads scored by the predictor, on `cpu` or `gpu` |
//! | `augur_prediction_batches_total` | `device` | predictor batches, on `cpu` or `gpu` (`--predict-on`) |
//! | `augur_gpu_missed_batches_total`, `augur_gpu_backoffs_total`, `augur_gpu_busy_batches_total` | | GPU batches past their deadline (scored on the CPU); `auto+contention` back-offs; batches kept on the CPU because the GPU's backlog would have made them late |
//! | `augur_predicted_slow_total`, `augur_prediction_judged_reads_total`, `augur_prediction_observed_slow_total`, `augur_prediction_false_submits_total`, `augur_prediction_correct_total` | | the predictor judged against observed latency |
//! | `augur_replica_pending_regions` | `replica` | regions it lacks until a resync or rebuild copies them |
//! | `augur_sync_running` | `kind` | 1 while a `resync`, `rebuild` or `scrub` runs |
//! | `augur_sync_done_regions`, `augur_sync_total_regions` | | how far the running one is |
//! | `augur_synced_regions_total` | | regions resynced or rebuilt since start |
//! | `augur_scrub_mismatches` | | mismatching regions the last scrub found |
//! | `augur_bitmap_dirty_regions`, `augur_bitmap_regions` | | the write-intent bitmap |
//! | `augur_model_info` | `id`, `source`, `features` | the active model |
//! | `augur_policy_info` | `policy` | the active policy |
//! | `augur_uptime_seconds` | | since the daemon started |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::array::lat_bucket_top;
use crate::control::Daemon;

/// The largest `le` bound exported, µs (16.8 s); longer reads land in `+Inf`.
const MAX_LE_US: u64 = 1 << 24;

/// Parses `--metrics ADDR`: `HOST:PORT`, or a bare `PORT` / `:PORT` on the
/// loopback address (metrics are not served beyond the host unless asked).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let port_only = t.strip_prefix(':').unwrap_or(t);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    t.parse()
        .map_err(|_| format!("'{s}' is not an address (write 9187, :9187 or 127.0.0.1:9187)"))
}

/// The collector a scrape runs: reads the daemon's array and model.
#[derive(Debug)]
struct Scrape(Arc<Daemon>);

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// One counter family with one label.
fn counters_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in rows {
        let labels = [(label, l.as_str())];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family with one label.
fn gauges_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: &[(String, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in rows {
        let labels = [(label, l.as_str())];
        ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &self.0;
        let a = d.array();
        let s = a.stats();
        let reps = a.replica_status();
        let lat = a.read_latency();
        let idx = |i: usize| i.to_string();
        let sync = a.sync_status();
        gauges_by(
            &mut e,
            "augur_replica_pending_regions",
            "Regions the replica lacks until a resync or rebuild copies them.",
            "replica",
            &reps
                .iter()
                .enumerate()
                .map(|(i, r)| (idx(i), r.pending_regions as i64))
                .collect::<Vec<_>>(),
        )?;
        gauges_by(
            &mut e,
            "augur_sync_running",
            "1 while a resync, rebuild or scrub runs.",
            "kind",
            &[
                crate::array::SyncKind::Resync,
                crate::array::SyncKind::Rebuild,
                crate::array::SyncKind::Scrub,
            ]
            .iter()
            .map(|k| {
                let name = serde_json::to_value(k)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                (name, i64::from(sync.running && sync.kind == Some(*k)))
            })
            .collect::<Vec<_>>(),
        )?;
        for (name, help, v) in [
            (
                "augur_sync_done_regions",
                "Regions the running resync, rebuild or scrub has done.",
                sync.done_regions,
            ),
            (
                "augur_sync_total_regions",
                "Regions the running resync, rebuild or scrub covers.",
                sync.total_regions,
            ),
            (
                "augur_scrub_mismatches",
                "Mismatching regions the last scrub found.",
                sync.last_scrub.as_ref().map_or(0, |r| r.mismatches),
            ),
        ] {
            let g = ConstGauge::new(v as i64);
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        counter(
            &mut e,
            "augur_synced_regions",
            "Regions resynced or rebuilt since start.",
            sync.synced_regions_total,
        )?;
        if let Some(b) = a.bitmap_status() {
            for (name, help, v) in [
                (
                    "augur_bitmap_dirty_regions",
                    "Write-intent bitmap regions dirty now.",
                    b.dirty,
                ),
                (
                    "augur_bitmap_regions",
                    "Write-intent bitmap regions.",
                    b.regions,
                ),
            ] {
                let g = ConstGauge::new(v as i64);
                g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        counters_by(
            &mut e,
            "augur_requests",
            "Requests completed by the array, by op.",
            "op",
            &[
                ("read".into(), s.reads),
                ("write".into(), s.writes),
                ("flush".into(), s.flushes),
                ("discard".into(), s.discards),
                ("write_zeroes".into(), s.write_zeroes),
            ],
        )?;
        counters_by(
            &mut e,
            "augur_prediction_batches",
            "Predictor batches, by the device that scored them.",
            "device",
            &[("cpu".into(), s.cpu_batches), ("gpu".into(), s.gpu_batches)],
        )?;
        counter(
            &mut e,
            "augur_gpu_missed_batches",
            "Batches sent to the GPU that missed their deadline and were scored on the CPU.",
            s.gpu_missed_batches,
        )?;
        counter(
            &mut e,
            "augur_gpu_backoffs",
            "Times auto+contention backed off from a busy GPU to the CPU.",
            d.offload().status().backoffs,
        )?;
        counter(
            &mut e,
            "augur_gpu_busy_batches",
            "Batches kept on the CPU because the GPU's backlog would have made their answer late.",
            d.offload().status().kept_busy,
        )?;
        counter(
            &mut e,
            "augur_failed_requests",
            "Requests no replica could serve.",
            s.failed_requests,
        )?;
        counters_by(
            &mut e,
            "augur_reads_completed",
            "Reads a replica answered.",
            "replica",
            &lat.iter()
                .enumerate()
                .map(|(i, h)| (idx(i), h.count()))
                .collect::<Vec<_>>(),
        )?;
        {
            let mut m = e.encode_descriptor(
                "augur_read_latency_seconds",
                "Replica read latency (the replica's own time, as the model's labels).",
                None,
                MetricType::Histogram,
            )?;
            for (i, h) in lat.iter().enumerate() {
                // One bucket per power of two of microseconds (the encoder
                // takes each bucket's own count and sums them up itself).
                let mut buckets = Vec::new();
                let mut acc = 0u64;
                for (b, &c) in h.counts.iter().enumerate() {
                    acc += c;
                    let top = lat_bucket_top(b);
                    if (top + 1).is_power_of_two() && top < MAX_LE_US {
                        buckets.push(((top + 1) as f64 * 1e-6, acc));
                        acc = 0;
                    }
                }
                buckets.push((f64::INFINITY, acc));
                let cum = h.count();
                let r = idx(i);
                let labels = [("replica", r.as_str())];
                m.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        h.sum_us as f64 * 1e-6,
                        cum,
                        &buckets,
                        None,
                    )?;
            }
        }
        let per = |f: &dyn Fn(&crate::array::ReplicaCounts) -> u64| {
            reps.iter()
                .enumerate()
                .map(|(i, r)| (idx(i), f(&r.counts)))
                .collect::<Vec<_>>()
        };
        counters_by(
            &mut e,
            "augur_replica_read_bytes",
            "Bytes read from a replica.",
            "replica",
            &per(&|c| c.read_bytes),
        )?;
        counters_by(
            &mut e,
            "augur_replica_written_bytes",
            "Bytes written to a replica.",
            "replica",
            &per(&|c| c.written_bytes),
        )?;
        counters_by(
            &mut e,
            "augur_replica_errors",
            "Replica I/O errors.",
            "replica",
            &per(&|c| c.errors),
        )?;
        gauges_by(
            &mut e,
            "augur_replica_up",
            "1 while the replica serves I/O, 0 once failed.",
            "replica",
            &reps
                .iter()
                .enumerate()
                .map(|(i, r)| (idx(i), i64::from(r.live)))
                .collect::<Vec<_>>(),
        )?;
        gauges_by(
            &mut e,
            "augur_replica_pending_ios",
            "I/Os in flight to the replica.",
            "replica",
            &(0..reps.len())
                .map(|i| (idx(i), i64::from(a.pending_ios(i))))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut e,
            "augur_reroutes",
            "Reads sent to a replica other than their primary.",
            s.rerouted,
        )?;
        counter(
            &mut e,
            "augur_hedges",
            "Hedged second copies sent.",
            s.hedges,
        )?;
        counter(
            &mut e,
            "augur_hedge_wins",
            "Hedged copies that answered first.",
            s.hedge_wins,
        )?;
        counter(
            &mut e,
            "augur_stalls",
            "Requests in flight longer than the stall threshold (each logged once with a dump).",
            s.stalls,
        )?;
        counter(
            &mut e,
            "augur_missed_wakeups",
            "Completions a queue's tick found with no wake-up reported.",
            s.missed_wakeups,
        )?;
        counter(
            &mut e,
            "augur_cq_overflows",
            "Times a queue collected completions from its io_uring's overflow list.",
            s.cq_overflows,
        )?;
        counters_by(
            &mut e,
            "augur_predictions",
            "Reads scored by the predictor, by the device that scored them.",
            "device",
            &[("cpu".into(), s.cpu_items), ("gpu".into(), s.gpu_items)],
        )?;
        counter(
            &mut e,
            "augur_predicted_slow",
            "Predictions that said slow.",
            s.predicted_slow,
        )?;
        counter(
            &mut e,
            "augur_prediction_judged_reads",
            "Reads answered by a replica the predictor scored.",
            s.judged_reads,
        )?;
        counter(
            &mut e,
            "augur_prediction_observed_slow",
            "Judged reads over the model's slow threshold.",
            s.observed_slow,
        )?;
        counter(
            &mut e,
            "augur_prediction_false_submits",
            "Judged reads predicted fast that were slow.",
            s.false_submits,
        )?;
        counter(
            &mut e,
            "augur_prediction_correct",
            "Judged reads whose prediction held.",
            s.correct_predictions,
        )?;
        let model = d.model();
        let features = model.predictor.model().feature_set().name();
        {
            let m =
                e.encode_descriptor("augur_model", "The active model.", None, MetricType::Info)?;
            let labels = [
                ("id", model.id.as_str()),
                ("source", model.source.as_str()),
                ("features", features),
            ];
            let mut m = m;
            m.encode_info(&labels)?;
        }
        {
            let policy = a.policy();
            let mut m = e.encode_descriptor(
                "augur_policy",
                "The active routing policy.",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("policy", policy.name())])?;
        }
        let up = ConstGauge::new(d.uptime().as_secs_f64());
        up.encode(e.encode_descriptor(
            "augur_uptime_seconds",
            "Seconds since the daemon started.",
            None,
            up.metric_type(),
        )?)
    }
}

/// The exposition text of one scrape.
pub fn render(daemon: &Arc<Daemon>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Scrape(daemon.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg) {
        tracing::warn!("encoding metrics: {e}");
    }
    out
}

/// The HTTP endpoint; dropping it stops serving.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `daemon`'s metrics at `http://ADDR/metrics`.
    pub fn start(daemon: Arc<Daemon>, addr: SocketAddr) -> Result<MetricsServer, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("augur-metrics".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let req = match server.recv_timeout(Duration::from_millis(200)) {
                            Ok(Some(r)) => r,
                            Ok(None) => continue,
                            Err(e) => {
                                tracing::warn!("metrics endpoint: {e}");
                                continue;
                            }
                        };
                        let path = req.url().split('?').next().unwrap_or("");
                        let resp = if path == "/metrics" {
                            tiny_http::Response::from_string(render(&daemon)).with_header(
                                tiny_http::Header::from_bytes(
                                    &b"Content-Type"[..],
                                    &b"text/plain; version=0.0.4; charset=utf-8"[..],
                                )
                                .expect("a valid header"),
                            )
                        } else {
                            tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                        };
                        let _ = req.respond(resp);
                    }
                })
                .map_err(|e| format!("starting the metrics thread: {e}"))?
        };
        tracing::info!("metrics at http://{addr}/metrics");
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::{AlignedBuf, ArrayConfig, ReplicaSpec, Request};
    use crate::control::{DaemonInfo, ModelEntry};
    use crate::route::Policy;
    use augur_feature_store::Op;
    use std::io::{Read, Write};

    /// A daemon over two plain files with `n` reads done.
    fn daemon(n: u64) -> (tempfile::TempDir, Arc<Daemon>) {
        let d = tempfile::tempdir().unwrap();
        let specs = ["a", "b"]
            .iter()
            .map(|f| ReplicaSpec::parse(d.path().join(f).to_str().unwrap()).unwrap())
            .collect();
        let mut cfg = ArrayConfig::new(specs);
        cfg.create_size = Some(1 << 20);
        let model = ModelEntry::new(
            augur_predictor::ModelPredictor::load("default").unwrap(),
            "default",
        );
        let array = crate::Array::open(
            cfg,
            Policy::from_name("linnos", Some(model.predictor.clone())).unwrap(),
        )
        .unwrap();
        let mut q = array.queue(0, 64).unwrap();
        let mut done = Vec::new();
        for i in 0..n {
            q.submit(Request {
                op: Op::Read,
                offset: (i % 256) * 4096,
                len: 4096,
                buf: Some(AlignedBuf::new(4096)),
                user: i,
            });
            while q.in_flight() > 0 {
                q.poll(&mut done, true, None).unwrap();
            }
        }
        drop(q);
        let info = DaemonInfo {
            frontend: "fuse",
            name: "t".into(),
            device: "t".into(),
        };
        (
            d,
            Arc::new(Daemon::new(
                info,
                array,
                model,
                augur_gpu_batcher::Offload::cpu(),
            )),
        )
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn a_scrape_shows_what_the_array_counted() {
        let (_d, daemon) = daemon(100);
        let t = render(&daemon);
        assert_eq!(value(&t, "augur_requests_total{op=\"read\"}"), 100.0);
        let per: f64 = (0..2)
            .map(|r| {
                value(
                    &t,
                    &format!("augur_reads_completed_total{{replica=\"{r}\"}}"),
                )
            })
            .sum();
        assert_eq!(per, 100.0);
        for r in 0..2 {
            let count = value(
                &t,
                &format!("augur_read_latency_seconds_count{{replica=\"{r}\"}}"),
            );
            let inf = value(
                &t,
                &format!("augur_read_latency_seconds_bucket{{replica=\"{r}\",le=\"+Inf\"}}"),
            );
            assert_eq!(count, inf);
            // Buckets are cumulative and never decrease.
            let mut last = 0.0;
            for l in t.lines().filter(|l| {
                l.starts_with(&format!(
                    "augur_read_latency_seconds_bucket{{replica=\"{r}\""
                ))
            }) {
                let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
                assert!(v >= last, "{l}");
                last = v;
            }
        }
        assert_eq!(value(&t, "augur_predictions_total{device=\"cpu\"}"), 100.0);
        assert_eq!(value(&t, "augur_predictions_total{device=\"gpu\"}"), 0.0);
        assert_eq!(
            value(&t, "augur_prediction_batches_total{device=\"cpu\"}"),
            100.0
        );
        assert_eq!(value(&t, "augur_gpu_missed_batches_total"), 0.0);
        assert_eq!(value(&t, "augur_replica_up{replica=\"1\"}"), 1.0);
        let id = daemon.model().id;
        assert!(
            t.contains(&format!(
                "augur_model_info{{id=\"{id}\",source=\"default\",features=\"linnos-write\"}} 1"
            )),
            "{t}"
        );
        assert!(t.contains("augur_policy_info{policy=\"linnos\"} 1"), "{t}");
    }

    #[test]
    fn the_endpoint_serves_metrics_and_404_elsewhere() {
        let (_d, daemon) = daemon(3);
        let srv = MetricsServer::start(daemon, parse_addr("0").unwrap()).unwrap();
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(srv.addr()).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/metrics");
        assert!(
            ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
            "{ok}"
        );
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("augur_requests_total{op=\"read\"} 3"), "{ok}");
        assert!(get("/").contains(" 404 "));
    }

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9187").unwrap().to_string(), "127.0.0.1:9187");
        assert_eq!(parse_addr(":9187").unwrap().to_string(), "127.0.0.1:9187");
        assert_eq!(parse_addr("0.0.0.0:1").unwrap().to_string(), "0.0.0.0:1");
        assert!(
            parse_addr("localhost:x")
                .unwrap_err()
                .contains("not an address")
        );
    }
}
