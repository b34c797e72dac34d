//! `shoal bench`: a load generator for the etcd v3 API, usable against Shoal or any etcd.
//!
//! Closed loop (every client sends its next request when the previous one answers) or
//! open loop (`--rate`: requests are due on a fixed schedule and latency counts from when
//! a request was due, so a stalled server cannot hide its stall — no coordinated
//! omission). Latencies go into HDR histograms.

pub mod keys;
pub mod workload;

use hdrhistogram::Histogram;
use keys::{Distribution, KeyChooser};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use workload::{Mix, Op, Outcome, Shape};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Comma-separated client URLs; connections are spread over them.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub endpoints: String,
    /// gRPC connections (HTTP/2 connections) to open.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Concurrent clients, spread over the connections.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Stop after this many operations (instead of after --duration).
    #[arg(long)]
    pub total: Option<u64>,
    /// Seconds to run (after the warm-up), unless --total is given.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Target operations per second over all clients (open loop); 0 = as fast as
    /// the server answers (closed loop).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Operations and weights, e.g. `put`, `get:90,put:10`. Ops: put, get (linearizable),
    /// sget (serializable), range, cas (txn compare-and-swap), delete, txn (a Txn putting
    /// two keys half the key space apart).
    #[arg(long, default_value = "put")]
    pub workload: String,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    pub key_distribution: Distribution,
    /// Bytes per key (prefix included).
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Keys per `range` operation.
    #[arg(long, default_value_t = 10)]
    pub range_keys: u64,
    /// Key prefix, so a benchmark does not touch other data.
    #[arg(long, default_value = "bench/")]
    pub prefix: String,
    /// Write every key once before the run (reads then find data).
    #[arg(long)]
    pub preload: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Invalid(String),
    #[error("endpoint {url}: {source}")]
    Endpoint {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("preloading keys: {0}")]
    Preload(tonic::Status),
}

/// Results of one run.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub workload: String,
    pub clients: usize,
    pub connections: usize,
    pub key_distribution: Distribution,
    pub value_size: usize,
    pub seconds: f64,
    pub operations: u64,
    pub ops_per_second: f64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub cas_conflicts: u64,
    pub latency_ms: Latency,
    pub per_op: BTreeMap<String, u64>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// What one client measured.
struct ClientTally {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    cas_conflicts: u64,
    per_op: BTreeMap<Op, u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("constant, valid bounds"))
}

fn error_kind(status: &tonic::Status) -> String {
    let message: String = status.message().chars().take(80).collect();
    format!("{:?}: {message}", status.code())
}

pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let mix = Mix::parse(&args.workload).map_err(BenchError::Invalid)?;
    if args.clients == 0 || args.connections == 0 || args.key_space == 0 {
        return Err(BenchError::Invalid(
            "--clients, --connections and --key-space must be > 0".into(),
        ));
    }
    if args.total.is_none() && args.duration <= 0.0 {
        return Err(BenchError::Invalid("--duration must be > 0".into()));
    }
    let endpoints: Vec<&str> = args
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(BenchError::Invalid("--endpoints is empty".into()));
    }
    let mut channels = Vec::new();
    for index in 0..args.connections {
        let url = endpoints[index % endpoints.len()];
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|source| BenchError::Endpoint {
                url: url.into(),
                source,
            })?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|source| BenchError::Endpoint {
                url: url.into(),
                source,
            })?;
        channels.push(channel);
    }
    let shape = Shape {
        prefix: args.prefix.clone(),
        key_size: args.key_size,
        value: vec![b'v'; args.value_size].into(),
        range_keys: args.range_keys,
        key_space: args.key_space,
    };
    if args.preload {
        preload(args, &channels, &shape).await?;
    }

    let chooser = KeyChooser::new(args.key_distribution, args.key_space);
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup.max(0.0));
    let stop_at = match args.total {
        Some(_) => None,
        None => Some(measure_from + Duration::from_secs_f64(args.duration)),
    };
    let remaining = Arc::new(AtomicU64::new(args.total.unwrap_or(u64::MAX)));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..args.clients {
        let mut client = workload::Client::new(channels[index % channels.len()].clone(), shape.clone());
        let mix = mix.clone();
        let chooser = chooser.clone();
        let remaining = remaining.clone();
        let completed = completed.clone();
        // Open loop: this client's share of the rate, starting staggered.
        let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.clients as f64 / args.rate as f64));
        let measured_total = args.total.is_some();
        let stagger = index as f64 / args.clients as f64;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(index as u64 + 1);
            let mut tally = ClientTally {
                histogram: histogram(),
                errors: BTreeMap::new(),
                cas_conflicts: 0,
                per_op: BTreeMap::new(),
            };
            let mut due = started + interval.map_or(Duration::ZERO, |every| every.mul_f64(stagger));
            loop {
                if stop_at.is_some_and(|stop| Instant::now() >= stop) {
                    break;
                }
                if measured_total
                    && remaining
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
                        .is_err()
                {
                    break;
                }
                let sent_at = match interval {
                    Some(every) => {
                        tokio::time::sleep_until(due).await;
                        let sent_at = due;
                        due += every;
                        sent_at
                    }
                    None => Instant::now(),
                };
                let op = mix.choose(&mut rng);
                let key = chooser.next(&mut rng);
                let outcome = client.run(op, key).await;
                let finished = Instant::now();
                completed.fetch_add(1, Ordering::Relaxed);
                if sent_at < measure_from && !measured_total {
                    continue;
                }
                match outcome {
                    Ok(outcome) => {
                        let micros = finished.duration_since(sent_at).as_micros().max(1) as u64;
                        tally.histogram.saturating_record(micros);
                        *tally.per_op.entry(op).or_default() += 1;
                        if matches!(outcome, Outcome::CasConflict) {
                            tally.cas_conflicts += 1;
                        }
                    }
                    Err(status) => *tally.errors.entry(error_kind(&status)).or_default() += 1,
                }
            }
            tally
        }));
    }

    let progress = tokio::spawn(show_progress(
        completed.clone(),
        started,
        args.total,
        args.warmup + args.duration,
        args.json,
    ));
    let mut tallies = Vec::new();
    for task in tasks {
        if let Ok(tally) = task.await {
            tallies.push(tally);
        }
    }
    progress.abort();
    let _ = progress.await;
    let finished = Instant::now();
    let measured_from = if args.total.is_some() { started } else { measure_from };
    Ok(summarize(
        args,
        finished.duration_since(measured_from).as_secs_f64(),
        tallies,
    ))
}

async fn preload(args: &BenchArgs, channels: &[tonic::transport::Channel], shape: &Shape) -> Result<(), BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..args.clients.max(1) {
        let mut client = workload::Client::new(channels[index % channels.len()].clone(), shape.clone());
        let next = next.clone();
        let key_space = args.key_space;
        tasks.push(tokio::spawn(async move {
            loop {
                let key = next.fetch_add(1, Ordering::Relaxed);
                if key >= key_space {
                    return Ok(());
                }
                client.run(Op::Put, key).await?;
            }
        }));
    }
    for task in tasks {
        if let Ok(Err(status)) = task.await {
            return Err(BenchError::Preload(status));
        }
    }
    Ok(())
}

/// A live progress bar on a terminal; a line per second otherwise (and nothing with
/// --json, whose output must stay machine-readable).
async fn show_progress(completed: Arc<AtomicU64>, started: Instant, total: Option<u64>, seconds: f64, json: bool) {
    let terminal = std::io::stderr().is_terminal();
    let tick = if terminal {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(tick).await;
        if json && !terminal {
            continue;
        }
        let now = Instant::now();
        let done = completed.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, done);
        let elapsed = now.duration_since(started).as_secs_f64();
        let fraction = match total {
            Some(total) => done as f64 / total.max(1) as f64,
            None => elapsed / seconds.max(f64::EPSILON),
        }
        .clamp(0.0, 1.0);
        let mut stderr = std::io::stderr().lock();
        if terminal {
            let filled = (fraction * 30.0) as usize;
            let _ = write!(
                stderr,
                "\r[{}{}] {:>3.0}%  {:>10.0} ops/s  {done} done ",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                fraction * 100.0,
                rate
            );
        } else {
            let _ = writeln!(stderr, "t={elapsed:.0}s done={done} rate={rate:.0}/s");
        }
        let _ = stderr.flush();
    }
}

fn summarize(args: &BenchArgs, seconds: f64, tallies: Vec<ClientTally>) -> Report {
    let mut merged = histogram();
    let mut errors_by_kind = BTreeMap::new();
    let mut per_op = BTreeMap::new();
    let mut cas_conflicts = 0;
    for tally in tallies {
        let _ = merged.add(&tally.histogram);
        for (kind, count) in tally.errors {
            *errors_by_kind.entry(kind).or_default() += count;
        }
        for (op, count) in tally.per_op {
            *per_op.entry(op.name().to_string()).or_default() += count;
        }
        cas_conflicts += tally.cas_conflicts;
    }
    let millis = |micros: u64| micros as f64 / 1000.0;
    let operations = merged.len();
    let latency = if operations == 0 {
        Latency::default()
    } else {
        Latency {
            min: millis(merged.min()),
            p50: millis(merged.value_at_quantile(0.50)),
            p90: millis(merged.value_at_quantile(0.90)),
            p99: millis(merged.value_at_quantile(0.99)),
            p999: millis(merged.value_at_quantile(0.999)),
            max: millis(merged.max()),
            mean: merged.mean() / 1000.0,
        }
    };
    Report {
        workload: args.workload.clone(),
        clients: args.clients,
        connections: args.connections,
        key_distribution: args.key_distribution,
        value_size: args.value_size,
        seconds,
        operations,
        ops_per_second: operations as f64 / seconds.max(f64::EPSILON),
        errors: errors_by_kind.values().sum(),
        errors_by_kind,
        cas_conflicts,
        latency_ms: latency,
        per_op,
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "workload {}  clients {}  connections {}  keys {:?}  value {} B",
            self.workload, self.clients, self.connections, self.key_distribution, self.value_size
        )?;
        writeln!(
            f,
            "{} ok operations in {:.2} s: {:.0} ops/s",
            self.operations, self.seconds, self.ops_per_second
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency ms: min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.min, l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )?;
        for (op, count) in &self.per_op {
            writeln!(f, "  {op}: {count}")?;
        }
        if self.cas_conflicts > 0 {
            writeln!(f, "  cas conflicts (compare failed, no write): {}", self.cas_conflicts)?;
        }
        writeln!(f, "errors: {}", self.errors)?;
        for (kind, count) in &self.errors_by_kind {
            writeln!(f, "  {count:>8}  {kind}")?;
        }
        Ok(())
    }
}
