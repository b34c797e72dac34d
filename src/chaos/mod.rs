//! Fault injection with history checking (`shoal chaos`): real server processes,
//! concurrent client workloads, a seeded schedule of faults (kill -9, SIGSTOP,
//! partitions through per-link proxies, whole-cluster restarts), and checkers that judge
//! the recorded histories. Everything it starts is stopped when it returns, also on
//! failure.

pub mod bank;
pub mod checker;
pub mod cluster;
pub mod nemesis;
pub mod network;
pub mod redis;
pub mod workload;

use checker::{CheckOptions, Verdict};
use cluster::{Cluster, ClusterError};
use nemesis::{FaultKind, PlannedFault};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use workload::{Hold, RegisterRecord, RunClock, SeenEvent, SetRecord};

#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Nodes in the cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seed of the fault schedule and the workloads; random if not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Faults to draw from (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Where histories, node logs and the report go (default: a new temporary folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The `shoal` binary to run as servers (default: this one).
    #[arg(long)]
    pub server_binary: Option<PathBuf>,
    /// An extra `shoal server` argument for every node, repeatable; e.g.
    /// `--server-arg=--snapshot-count=200` makes lagging nodes catch up by snapshot.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Start the cluster cut into ranges between the workloads' keys (each register,
    /// each pair of bank accounts, the set and the lock in ranges of their own), and
    /// split ranges past 50 keys: every workload then crosses ranges.
    #[arg(long)]
    pub split: bool,
}

/// Where `--split` cuts the keyspace: 10 data ranges, one per register, two bank
/// accounts per range, the lock and the set in their own.
fn split_keys() -> Vec<String> {
    let mut keys = bank::split_keys();
    keys.push("chaos/lock".to_string());
    keys.extend((0..REGISTER_KEYS).map(register_key));
    keys.push(workload::SET_PREFIX.to_string());
    keys
}

fn register_key(index: usize) -> String {
    format!("chaos/register/{index}")
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// Counts of one workload's operations.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counts {
    pub attempted: usize,
    pub ok: usize,
    pub failed: usize,
    pub indeterminate: usize,
}

/// The verdict on one workload.
#[derive(Debug, serde::Serialize)]
pub struct WorkloadVerdict {
    pub workload: &'static str,
    pub passed: bool,
    pub counts: Counts,
    pub detail: String,
}

#[derive(Debug, serde::Serialize)]
pub struct FaultRecord {
    pub started_ms: u64,
    pub ended_ms: u64,
    pub description: String,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub duration_s: u64,
    pub faults: Vec<FaultRecord>,
    pub verdicts: Vec<WorkloadVerdict>,
    /// Data ranges the cluster held at the end (from a node's `/v1/ranges`).
    pub ranges: Option<usize>,
    pub out: PathBuf,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|verdict| verdict.passed)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "chaos run: seed {} ({} nodes, {} s); replay with --seed {}",
            self.seed, self.nodes, self.duration_s, self.seed
        )?;
        writeln!(f, "faults:")?;
        for fault in &self.faults {
            writeln!(
                f,
                "  {:>7} ms - {:>7} ms  {}",
                fault.started_ms, fault.ended_ms, fault.description
            )?;
        }
        for verdict in &self.verdicts {
            let counts = &verdict.counts;
            writeln!(
                f,
                "{:<10} {}  attempted {} ok {} failed {} indeterminate {}",
                verdict.workload,
                if verdict.passed { "PASS" } else { "FAIL" },
                counts.attempted,
                counts.ok,
                counts.failed,
                counts.indeterminate
            )?;
            for line in verdict.detail.lines() {
                writeln!(f, "           {line}")?;
            }
        }
        if let Some(ranges) = self.ranges {
            writeln!(f, "data ranges at the end: {ranges}")?;
        }
        writeln!(f, "histories and node logs: {}", self.out.display())
    }
}

/// Clients per workload.
const REGISTER_CLIENTS: u64 = 5;
const REGISTER_KEYS: usize = 4;
const SET_CLIENTS: u64 = 3;
const REDIS_REGISTER_CLIENTS: u64 = 3;
const REDIS_REGISTER_KEYS: usize = 2;
const REDIS_SET_CLIENTS: u64 = 2;
const WATCHERS: usize = 2;
const LOCK_CONTENDERS: u64 = 3;
const BANK_CLIENTS: u64 = 3;
const BANK_READERS: u64 = 2;
/// Quiet time before the first fault (the cluster settles) and after the last.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(args: &ChaosArgs) -> Result<Report, ChaosError> {
    if args.nodes < 3 {
        return Err(ChaosError::Setup("--nodes must be at least 3".into()));
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let out = match &args.out {
        Some(out) => out.clone(),
        None => std::env::temp_dir().join(format!("shoal-chaos-{seed}")),
    };
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    let binary = match &args.server_binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe()?,
    };
    let kinds: Vec<FaultKind> = if args.faults.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        args.faults.clone()
    };
    let duration = Duration::from_secs(args.duration);
    let plan = nemesis::schedule(seed, args.nodes, &kinds, SETTLE, duration.saturating_sub(SETTLE));
    eprintln!(
        "chaos: seed {seed}, {} nodes, {} s, {} faults planned",
        args.nodes,
        args.duration,
        plan.len()
    );

    let mut server_args = args.server_args.clone();
    if args.split {
        server_args.push("--range-max-keys=50".to_string());
        server_args.push(format!("--experimental-initial-split-keys={}", split_keys().join(",")));
    }
    let mut cluster = Cluster::start(&binary, args.nodes, &out, &server_args).await?;
    let endpoints = cluster.endpoints();
    bank::open_accounts(&endpoints).await.map_err(ChaosError::Setup)?;
    let start_revision = workload::current_revision(&endpoints[0])
        .await
        .map_err(|status| ChaosError::Setup(format!("reading the start revision: {status}")))?
        + 1;
    let clock = RunClock::new();
    let stop = Arc::new(AtomicBool::new(false));
    let registers = Arc::new(Mutex::new(RegisterRecord::default()));
    let set = Arc::new(Mutex::new(SetRecord::default()));
    let holds: Arc<Mutex<Vec<Hold>>> = Arc::new(Mutex::new(Vec::new()));
    let watched: Vec<Arc<Mutex<Vec<SeenEvent>>>> = (0..WATCHERS).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();

    let mut tasks = tokio::task::JoinSet::new();
    let keys: Vec<String> = (0..REGISTER_KEYS).map(register_key).collect();
    for process in 0..REGISTER_CLIENTS {
        tasks.spawn(workload::register_client(
            process,
            endpoints.clone(),
            keys.clone(),
            seed,
            clock.clone(),
            stop.clone(),
            registers.clone(),
        ));
    }
    for process in 0..SET_CLIENTS {
        tasks.spawn(workload::set_client(
            process,
            endpoints.clone(),
            stop.clone(),
            set.clone(),
        ));
    }
    let redis_ports: Vec<u16> = cluster.nodes.iter().map(|node| node.redis_port).collect();
    let redis_registers = Arc::new(Mutex::new(RegisterRecord::default()));
    let redis_set = Arc::new(Mutex::new(SetRecord::default()));
    let redis_keys: Vec<String> = (0..REDIS_REGISTER_KEYS)
        .map(|index| format!("chaos:register:{index}"))
        .collect();
    for process in 0..REDIS_REGISTER_CLIENTS {
        tasks.spawn(redis::register_client(
            process,
            redis_ports.clone(),
            redis_keys.clone(),
            seed,
            clock.clone(),
            stop.clone(),
            redis_registers.clone(),
        ));
    }
    for process in 0..REDIS_SET_CLIENTS {
        tasks.spawn(redis::set_client(
            process,
            redis_ports.clone(),
            stop.clone(),
            redis_set.clone(),
        ));
    }
    let bank = Arc::new(Mutex::new(bank::BankRecord::default()));
    for process in 0..BANK_CLIENTS {
        tasks.spawn(bank::transfer_client(
            process,
            endpoints.clone(),
            seed,
            stop.clone(),
            bank.clone(),
        ));
    }
    for process in 0..BANK_READERS {
        tasks.spawn(bank::reader(
            process,
            endpoints.clone(),
            seed,
            clock.clone(),
            stop.clone(),
            bank.clone(),
        ));
    }
    for contender in 0..LOCK_CONTENDERS {
        tasks.spawn(workload::lock_contender(
            contender,
            endpoints.clone(),
            clock.clone(),
            stop.clone(),
            holds.clone(),
        ));
    }
    // Watchers outlive the writers: they stop only after catching up with the end.
    let stop_watching = Arc::new(AtomicBool::new(false));
    let mut watch_tasks = Vec::new();
    for (index, seen) in watched.iter().enumerate() {
        let mut rotated = endpoints.clone();
        rotated.rotate_left(index % endpoints.len());
        watch_tasks.push(tokio::spawn(workload::watcher(
            rotated,
            start_revision,
            stop_watching.clone(),
            seen.clone(),
        )));
    }

    let faults = run_faults(&mut cluster, &plan, &clock, duration).await?;
    // Heal everything and let the cluster settle before the final reads.
    cluster.heal_all()?;
    // A node that fell far behind may need a large snapshot first.
    cluster.wait_ready(Duration::from_secs(120)).await?;
    tokio::time::sleep(SETTLE).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;

    let mut verdicts = Vec::new();
    let register_record = std::mem::take(&mut *registers.lock().map_err(|_| ChaosError::Setup("poisoned".into()))?);
    verdicts.push(check_registers(&register_record, "registers"));
    let set_record = std::mem::take(&mut *set.lock().map_err(|_| ChaosError::Setup("poisoned".into()))?);
    let final_set = workload::read_set(&endpoints[0])
        .await
        .map_err(|status| ChaosError::Setup(format!("reading the final set: {status}")))?;
    verdicts.push(check_set(&set_record, &final_set, "set"));
    let redis_register_record = std::mem::take(
        &mut *redis_registers
            .lock()
            .map_err(|_| ChaosError::Setup("poisoned".into()))?,
    );
    verdicts.push(check_registers(&redis_register_record, "redis registers"));
    let redis_set_record = std::mem::take(&mut *redis_set.lock().map_err(|_| ChaosError::Setup("poisoned".into()))?);
    let final_redis_set = redis::read_set(redis_ports[0])
        .await
        .map_err(|error| ChaosError::Setup(format!("reading the final Redis set: {error}")))?;
    verdicts.push(check_set(&redis_set_record, &final_redis_set, "redis set"));
    let history = workload::committed_history(&endpoints[0], start_revision)
        .await
        .map_err(ChaosError::Setup)?;
    let mut watcher_histories = Vec::new();
    for (index, seen) in watched.iter().enumerate() {
        // Give the watcher time to catch up with the end of the history, then stop it.
        let last = history.last().map_or(0, |event| event.revision);
        for _ in 0..150 {
            let caught_up = seen
                .lock()
                .map(|seen| seen.last().map_or(0, |event| event.revision) >= last)
                .unwrap_or(true);
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let events = seen.lock().map(|seen| seen.clone()).unwrap_or_default();
        watcher_histories.push((index, events));
    }
    stop_watching.store(true, Ordering::Relaxed);
    for task in watch_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    verdicts.push(check_watchers(&history, &watcher_histories, &register_record));
    let holds = holds.lock().map(|holds| holds.clone()).unwrap_or_default();
    verdicts.push(check_locks(&holds));
    let mut bank_record = std::mem::take(&mut *bank.lock().map_err(|_| ChaosError::Setup("poisoned".into()))?);
    let final_read = bank::final_read(&endpoints[0], &clock)
        .await
        .map_err(|status| ChaosError::Setup(format!("reading the bank accounts: {status}")))?;
    bank_record.reads.push(final_read);
    verdicts.push(check_bank(&bank_record));
    let ranges = count_ranges(&cluster).await;

    write_json(&out.join("registers.json"), &register_record.operations)?;
    write_json(&out.join("acked-writes.json"), &register_record.acked_writes)?;
    write_json(&out.join("set.json"), &(&set_record, &final_set))?;
    write_json(&out.join("redis-registers.json"), &redis_register_record.operations)?;
    write_json(&out.join("redis-set.json"), &(&redis_set_record, &final_redis_set))?;
    write_json(&out.join("committed-history.json"), &history)?;
    write_json(&out.join("watchers.json"), &watcher_histories)?;
    write_json(&out.join("locks.json"), &holds)?;
    write_json(&out.join("bank.json"), &bank_record)?;
    write_json(&out.join("faults.json"), &faults)?;
    let report = Report {
        seed,
        nodes: args.nodes,
        duration_s: args.duration,
        faults,
        verdicts,
        ranges,
        out: out.clone(),
    };
    std::fs::File::create(out.join("report.txt"))?.write_all(report.to_string().as_bytes())?;
    drop(cluster);
    Ok(report)
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer(file, value).map_err(std::io::Error::other)
}

async fn run_faults(
    cluster: &mut Cluster,
    plan: &[PlannedFault],
    clock: &RunClock,
    duration: Duration,
) -> Result<Vec<FaultRecord>, ChaosError> {
    let mut records = Vec::new();
    for fault in plan {
        tokio::time::sleep_until((clock.origin() + fault.start).into()).await;
        let started_ms = clock.nanos() / 1_000_000;
        let (active, description) = nemesis::inject(cluster, fault).await?;
        eprintln!("chaos: {started_ms:>7} ms  {description}");
        tokio::time::sleep(fault.duration).await;
        nemesis::heal(cluster, active).await?;
        records.push(FaultRecord {
            started_ms,
            ended_ms: clock.nanos() / 1_000_000,
            description,
        });
    }
    tokio::time::sleep_until((clock.origin() + duration).into()).await;
    Ok(records)
}

fn check_registers(record: &RegisterRecord, workload: &'static str) -> WorkloadVerdict {
    let operations = &record.operations;
    let counts = Counts {
        attempted: operations.len() + record.definite_failures,
        ok: operations.iter().filter(|operation| operation.ret.is_some()).count(),
        failed: record.definite_failures,
        indeterminate: operations.iter().filter(|operation| operation.ret.is_none()).count(),
    };
    let (passed, detail) = match checker::check(operations, &CheckOptions::default()) {
        Verdict::Linearizable => (true, "linearizable".to_string()),
        Verdict::Violation(violation) => (false, violation.to_string()),
        Verdict::Inconclusive { key, steps } => (
            false,
            format!("inconclusive: the search for key {key} gave up after {steps} steps"),
        ),
    };
    WorkloadVerdict {
        workload,
        passed,
        counts,
        detail,
    }
}

fn check_set(record: &SetRecord, final_set: &[u64], workload: &'static str) -> WorkloadVerdict {
    let attempted: HashSet<u64> = record.attempted.iter().copied().collect();
    let mut seen = HashSet::new();
    let duplicates: Vec<u64> = final_set
        .iter()
        .filter(|element| !seen.insert(**element))
        .copied()
        .collect();
    let lost: Vec<u64> = record
        .acknowledged
        .iter()
        .filter(|element| !seen.contains(element))
        .copied()
        .collect();
    let invented: Vec<u64> = final_set
        .iter()
        .filter(|element| !attempted.contains(element))
        .copied()
        .collect();
    let passed = duplicates.is_empty() && lost.is_empty() && invented.is_empty();
    let detail = if passed {
        format!(
            "{} elements in the final list; every acknowledged append is there, none twice",
            final_set.len()
        )
    } else {
        format!("lost acknowledged: {lost:?}; duplicated: {duplicates:?}; never attempted: {invented:?}")
    };
    WorkloadVerdict {
        workload,
        passed,
        counts: Counts {
            attempted: record.attempted.len(),
            ok: record.acknowledged.len(),
            failed: record.attempted.len() - record.acknowledged.len() - record.unknown.len(),
            indeterminate: record.unknown.len(),
        },
        detail,
    }
}

fn check_watchers(
    history: &[SeenEvent],
    watchers: &[(usize, Vec<SeenEvent>)],
    registers: &RegisterRecord,
) -> WorkloadVerdict {
    let mut problems = Vec::new();
    // Every acknowledged register write is in the committed history, at its revision.
    let committed: BTreeMap<(String, i64), Option<String>> = history
        .iter()
        .map(|event| ((event.key.clone(), event.revision), event.value.clone()))
        .collect();
    for write in &registers.acked_writes {
        if committed.get(&(write.key.clone(), write.revision)) != Some(&Some(write.value.clone())) {
            problems.push(format!(
                "acknowledged write {}={} at revision {} is not in the history",
                write.key, write.value, write.revision
            ));
        }
    }
    if history.windows(2).any(|pair| pair[0].revision > pair[1].revision) {
        problems.push("the committed history goes backwards".to_string());
    }
    for (index, events) in watchers {
        if events.len() != history.len() || events.iter().zip(history).any(|(seen, committed)| seen != committed) {
            let first_difference = events
                .iter()
                .zip(history)
                .position(|(seen, committed)| seen != committed);
            problems.push(format!(
                "watcher {index} saw {} events, the history has {}; first difference at {:?}",
                events.len(),
                history.len(),
                first_difference.map(|position| (position, events.get(position), history.get(position)))
            ));
        }
    }
    let passed = problems.is_empty();
    WorkloadVerdict {
        workload: "watch",
        passed,
        counts: Counts {
            attempted: history.len(),
            ok: watchers.iter().map(|(_, events)| events.len()).sum(),
            failed: 0,
            indeterminate: 0,
        },
        detail: if passed {
            format!(
                "{} watchers saw the {} committed events exactly, in order; all {} acknowledged writes are in it",
                watchers.len(),
                history.len(),
                registers.acked_writes.len()
            )
        } else {
            problems.join("\n")
        },
    }
}

/// Data ranges the first running node lists, if it answers.
async fn count_ranges(cluster: &Cluster) -> Option<usize> {
    let node = cluster.nodes.iter().find(|node| node.is_running())?;
    let (status, body) = crate::http_probe::get(node.metrics_port, "/v1/ranges", Duration::from_secs(2)).await?;
    if status != 200 {
        return None;
    }
    let ranges: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    Some(ranges.len())
}

fn check_bank(record: &bank::BankRecord) -> WorkloadVerdict {
    let problems = bank::problems(&record.reads);
    let passed = problems.is_empty() && record.transfers_ok > 0;
    let past = record.reads.iter().filter(|read| read.asked != 0).count();
    WorkloadVerdict {
        workload: "bank",
        passed,
        counts: Counts {
            attempted: record.transfers_attempted,
            ok: record.transfers_ok,
            failed: record.transfers_failed + record.transfers_conflicted,
            indeterminate: record.transfers_unknown,
        },
        detail: if !problems.is_empty() {
            let shown: Vec<&String> = problems.iter().take(10).collect();
            format!(
                "{} of {} reads broke the total:\n{}",
                problems.len(),
                record.reads.len(),
                shown
                    .iter()
                    .map(|problem| problem.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        } else if record.transfers_ok == 0 {
            "no transfer committed".to_string()
        } else {
            format!(
                "{} reads ({past} at past revisions, {} failed) all found {} accounts summing to {}; {} transfers committed, {} conflicted",
                record.reads.len(),
                record.failed_reads,
                bank::ACCOUNTS,
                bank::ACCOUNTS as i64 * bank::OPENING_BALANCE,
                record.transfers_ok,
                record.transfers_conflicted
            )
        },
    }
}

fn check_locks(holds: &[Hold]) -> WorkloadVerdict {
    let mut problems = Vec::new();
    let mut tokens: Vec<i64> = holds.iter().map(|hold| hold.fencing_token).collect();
    tokens.sort_unstable();
    for pair in tokens.windows(2) {
        if pair[0] == pair[1] {
            problems.push(format!("fencing token {} was handed out twice", pair[0]));
        }
    }
    let contenders: HashSet<u64> = holds.iter().map(|hold| hold.contender).collect();
    for contender in contenders {
        let mine: Vec<i64> = holds
            .iter()
            .filter(|hold| hold.contender == contender)
            .map(|hold| hold.fencing_token)
            .collect();
        if mine.windows(2).any(|pair| pair[0] >= pair[1]) {
            problems.push(format!("contender {contender} saw tokens go backwards: {mine:?}"));
        }
    }
    let passed = problems.is_empty();
    WorkloadVerdict {
        workload: "lock",
        passed,
        counts: Counts {
            attempted: holds.len(),
            ok: holds.len(),
            failed: 0,
            indeterminate: 0,
        },
        detail: if passed {
            format!(
                "{} acquisitions, every fencing token unique and growing per client",
                holds.len()
            )
        } else {
            problems.join("\n")
        },
    }
}
