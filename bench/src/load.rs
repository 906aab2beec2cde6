//! The load: C concurrent clients, keep-alive or one connection per request, each request's
//! outcome classified, its latency recorded and the answering pid noted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::http::{self, Class};

/// Width of a time bucket of the plot and of the per-bucket counts.
pub const BUCKET_MS: u64 = 100;
/// At most this many failures are kept with their timing (all are counted).
const MAX_FAILURE_RECORDS: usize = 20_000;
/// Upper bound of requests of one client, whatever the duration.
const MAX_REQUESTS_PER_CLIENT: u64 = 50_000_000;

/// How a client uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Requests back to back on one connection (a new one only after a close or failure).
    KeepAlive,
    /// A new connection for every request (`Connection: close`).
    NewConn,
}

/// A group of identical clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    /// Name in the report.
    pub name: String,
    /// Request path, e.g. `/pid`.
    pub path: String,
    /// Number of concurrent clients.
    pub clients: usize,
    /// Connection mode.
    pub mode: Mode,
    /// The clients start spread evenly over this many ms from t0 (thousands of connects at
    /// once would overflow the accept backlog and fail a first request on a retried SYN).
    #[serde(default)]
    pub ramp_ms: u64,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The server.
    pub addr: SocketAddr,
    /// The client groups.
    pub groups: Vec<Group>,
    /// Time zero of the scenario.
    pub t0: Instant,
    /// No request starts after this instant.
    pub stop_at: Instant,
    /// Per-request timeout (connect, and send + full response).
    pub timeout: Duration,
    /// A client stops at its first refused connection (the shutdown scenario).
    pub stop_on_refused: bool,
    /// Set: no request starts any more, before `stop_at` (a run whose length is the time its
    /// upgrades take).
    pub stop: Option<Arc<AtomicBool>>,
}

/// A failed request, with its timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// Index of the client group.
    pub group: usize,
    /// Failure class.
    pub class: Class,
    /// Start of the request, ms since t0.
    pub start_ms: f64,
    /// When the failure was seen, ms since t0.
    pub end_ms: f64,
    /// Requests already answered on this connection before (0: fresh connection).
    pub reused: u32,
    /// The pid that last answered on this connection, if known.
    pub conn_pid: Option<u32>,
}

/// Counts of one time bucket.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Successful responses finished in the bucket.
    pub ok: u64,
    /// Failures seen in the bucket.
    pub failed: u64,
}

/// What was seen of one answering pid.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PidSeen {
    /// First response from it, ms since t0.
    pub first_ms: f64,
    /// Last response from it, ms since t0.
    pub last_ms: f64,
    /// Responses from it.
    pub count: u64,
}

/// The outcome of one group.
#[derive(Debug, Clone)]
pub struct GroupStats {
    /// Successful requests.
    pub ok: u64,
    /// Failures per class (index: `Class::index`).
    pub failed: [u64; 7],
    /// Latency of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Connections opened.
    pub connections: u64,
    /// Idle connections found closed by the server before their next request (dropped, and
    /// the request sent on a new connection, as a pooling client does).
    pub closed_while_idle: u64,
}

impl GroupStats {
    fn new() -> Self {
        GroupStats {
            ok: 0,
            failed: [0; 7],
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            connections: 0,
            closed_while_idle: 0,
        }
    }

    fn merge(&mut self, other: &GroupStats) {
        self.ok += other.ok;
        for (a, b) in self.failed.iter_mut().zip(other.failed) {
            *a += b;
        }
        let _ = self.latency_us.add(&other.latency_us);
        self.connections += other.connections;
        self.closed_while_idle += other.closed_while_idle;
    }

    /// All failures.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().sum()
    }
}

/// The outcome of a load run.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Per group.
    pub groups: Vec<GroupStats>,
    /// Per `BUCKET_MS` since t0.
    pub buckets: Vec<Bucket>,
    /// Per answering pid.
    pub pids: BTreeMap<u32, PidSeen>,
    /// The failures (at most `MAX_FAILURE_RECORDS`), by start time.
    pub failures: Vec<Failure>,
    /// Wall time from t0 to the last client's end.
    pub elapsed: Duration,
}

impl LoadOutcome {
    /// All groups merged.
    pub fn total(&self) -> GroupStats {
        let mut total = GroupStats::new();
        for g in &self.groups {
            total.merge(g);
        }
        total
    }
}

struct Client {
    group: usize,
    stats: GroupStats,
    buckets: Vec<Bucket>,
    pids: BTreeMap<u32, PidSeen>,
    failures: Vec<Failure>,
}

fn ms(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1000.0
}

impl Client {
    fn bucket(&mut self, t_ms: f64) -> &mut Bucket {
        let i = (t_ms as u64 / BUCKET_MS) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, Bucket::default());
        }
        &mut self.buckets[i]
    }

    fn fail(
        &mut self,
        spec: &LoadSpec,
        class: Class,
        start: Instant,
        reused: u32,
        pid: Option<u32>,
    ) {
        let end_ms = ms(spec.t0, Instant::now());
        self.stats.failed[class.index()] += 1;
        self.bucket(end_ms).failed += 1;
        if self.failures.len() < MAX_FAILURE_RECORDS {
            self.failures.push(Failure {
                group: self.group,
                class,
                start_ms: ms(spec.t0, start),
                end_ms,
                reused,
                conn_pid: pid,
            });
        }
    }

    fn ok(&mut self, spec: &LoadSpec, start: Instant, body: &[u8]) -> Option<u32> {
        let end = Instant::now();
        let end_ms = ms(spec.t0, end);
        self.stats.ok += 1;
        let us = end.duration_since(start).as_micros() as u64;
        self.stats.latency_us.saturating_record(us.max(1));
        self.bucket(end_ms).ok += 1;
        let pid = std::str::from_utf8(body).ok()?.trim().parse::<u32>().ok()?;
        let seen = self.pids.entry(pid).or_insert(PidSeen {
            first_ms: end_ms,
            last_ms: end_ms,
            count: 0,
        });
        seen.first_ms = seen.first_ms.min(end_ms);
        seen.last_ms = seen.last_ms.max(end_ms);
        seen.count += 1;
        Some(pid)
    }
}

async fn client(spec: LoadSpec, group: usize) -> Client {
    let g = &spec.groups[group];
    let close = g.mode == Mode::NewConn;
    let request = http::request(&g.path, close);
    let mut me = Client {
        group,
        stats: GroupStats::new(),
        buckets: Vec::new(),
        pids: BTreeMap::new(),
        failures: Vec::new(),
    };
    let mut buf = Vec::with_capacity(1024);
    let mut conn = None;
    let mut served = 0u32;
    let mut conn_pid = None;
    for _ in 0..MAX_REQUESTS_PER_CLIENT {
        let start = Instant::now();
        if start >= spec.stop_at
            || spec
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            break;
        }
        if conn.as_ref().is_some_and(http::closed_while_idle) {
            me.stats.closed_while_idle += 1;
            conn = None;
        }
        if conn.is_none() {
            match http::connect(spec.addr, spec.timeout).await {
                Ok(stream) => {
                    me.stats.connections += 1;
                    conn = Some(stream);
                    served = 0;
                    conn_pid = None;
                }
                Err(class) => {
                    me.fail(&spec, class, start, 0, None);
                    if class == Class::Refused && spec.stop_on_refused {
                        break;
                    }
                    // A pause against a hot loop of refused connects, not a wait for an event.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            }
        }
        let Some(stream) = conn.as_mut() else {
            continue;
        };
        match http::exchange(stream, &request, &mut buf, spec.timeout).await {
            Ok(response) if (200..300).contains(&response.status) => {
                let pid = me.ok(&spec, start, &response.body);
                conn_pid = pid.or(conn_pid);
                served += 1;
                if response.close || close {
                    conn = None;
                }
            }
            Ok(response) => {
                me.fail(&spec, Class::Non2xx, start, served, conn_pid);
                if response.close || close {
                    conn = None;
                }
            }
            Err(class) => {
                me.fail(&spec, class, start, served, conn_pid);
                conn = None;
            }
        }
    }
    me
}

/// Runs the load until `spec.stop_at` (or `spec.stop`), then waits for the requests in flight.
pub async fn run(spec: LoadSpec) -> LoadOutcome {
    let mut tasks = Vec::new();
    for (i, g) in spec.groups.iter().enumerate() {
        for k in 0..g.clients {
            let start = spec.t0 + Duration::from_millis(g.ramp_ms * k as u64 / g.clients as u64);
            let spec = spec.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                client(spec, i).await
            }));
        }
    }
    let mut outcome = LoadOutcome {
        groups: spec.groups.iter().map(|_| GroupStats::new()).collect(),
        buckets: Vec::new(),
        pids: BTreeMap::new(),
        failures: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let Ok(c) = task.await else { continue };
        outcome.groups[c.group].merge(&c.stats);
        if outcome.buckets.len() < c.buckets.len() {
            outcome.buckets.resize(c.buckets.len(), Bucket::default());
        }
        for (a, b) in outcome.buckets.iter_mut().zip(&c.buckets) {
            a.ok += b.ok;
            a.failed += b.failed;
        }
        for (pid, seen) in c.pids {
            match outcome.pids.entry(pid) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(seen);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let e = o.get_mut();
                    e.first_ms = e.first_ms.min(seen.first_ms);
                    e.last_ms = e.last_ms.max(seen.last_ms);
                    e.count += seen.count;
                }
            }
        }
        outcome.failures.extend(c.failures);
    }
    outcome.failures.truncate(MAX_FAILURE_RECORDS);
    outcome
        .failures
        .sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    outcome.elapsed = spec.t0.elapsed();
    outcome
}
