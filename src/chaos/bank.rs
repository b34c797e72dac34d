//! The bank workload: clients move money between accounts with compare-and-set
//! transactions (on a split cluster the accounts live in different ranges, so each
//! transfer is a two-phase commit); readers read every account in one request, now and
//! at past revisions. Money is neither made nor lost: every read, at any revision, must
//! find every account and sum to the opening total, with no balance below zero.

use super::workload::{channel, classify, Failure, RunClock};
use crate::proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

pub const PREFIX: &str = "chaos/bank/";
pub const ACCOUNTS: usize = 8;
pub const OPENING_BALANCE: i64 = 100;
/// Longest a client waits for one operation; after that its outcome is unknown.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

pub fn account_key(account: usize) -> String {
    format!("{PREFIX}{account:02}")
}

/// Where a split cluster cuts the accounts: two accounts per range.
pub fn split_keys() -> Vec<String> {
    (2..ACCOUNTS).step_by(2).map(account_key).collect()
}

#[derive(Default, serde::Serialize)]
pub struct BankRecord {
    pub transfers_attempted: usize,
    pub transfers_ok: usize,
    /// Compare failed: someone else moved money first (a definite no).
    pub transfers_conflicted: usize,
    pub transfers_failed: usize,
    pub transfers_unknown: usize,
    pub reads: Vec<BankRead>,
    pub failed_reads: usize,
}

/// One read of every account.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BankRead {
    pub at_ms: u64,
    /// The revision asked for (0: the newest).
    pub asked: i64,
    pub serializable: bool,
    /// The revision the answer is at.
    pub revision: i64,
    pub accounts: usize,
    pub total: i64,
    pub lowest: i64,
}

/// Opens every account with the opening balance, in one transaction (retried: it
/// writes the same values each time, and nothing else writes them yet).
pub async fn open_accounts(endpoints: &[String]) -> Result<(), String> {
    let mut last_error = String::new();
    for attempt in 0..20 {
        let mut kv = KvClient::new(channel(&endpoints[attempt % endpoints.len()]));
        let success = (0..ACCOUNTS)
            .map(|account| put_op(account_key(account), OPENING_BALANCE))
            .collect();
        let request = TxnRequest {
            success,
            ..Default::default()
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, kv.txn(request)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) => last_error = status.to_string(),
            Err(_) => last_error = "timed out".to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("opening the bank accounts: {last_error}"))
}

fn put_op(key: String, balance: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: Bytes::from(key),
            value: Bytes::from(balance.to_string()),
            ..Default::default()
        })),
    }
}

fn mod_revision_is(key: String, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: Bytes::from(key),
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

/// Every account's (balance, mod revision) at `revision` (0: newest), and the
/// revision of the answer.
async fn read_accounts(
    kv: &mut KvClient<Channel>,
    revision: i64,
    serializable: bool,
) -> Result<(Vec<(String, i64, i64)>, i64), tonic::Status> {
    let response = kv
        .range(RangeRequest {
            key: Bytes::from_static(PREFIX.as_bytes()),
            range_end: crate::client::prefix_range_end(PREFIX.as_bytes()).into(),
            revision,
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    let accounts = response
        .kvs
        .iter()
        .map(|kv| {
            let balance = String::from_utf8_lossy(&kv.value).parse().unwrap_or(i64::MIN);
            (String::from_utf8_lossy(&kv.key).into_owned(), balance, kv.mod_revision)
        })
        .collect();
    Ok((accounts, response.header.map_or(0, |header| header.revision)))
}

/// Moves a random amount between two random accounts, again and again, moving to the
/// next member after a failure.
pub async fn transfer_client(
    process: u64,
    endpoints: Vec<String>,
    seed: u64,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<BankRecord>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xba2c ^ process.wrapping_mul(0x9e37_79b9));
    let mut member = process as usize % endpoints.len();
    let mut kv = KvClient::new(channel(&endpoints[member]));
    while !stop.load(Ordering::Relaxed) {
        let from = rng.gen_range(0..ACCOUNTS);
        let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
        let attempt = tokio::time::timeout(OPERATION_TIMEOUT, transfer(&mut kv, from, to, &mut rng)).await;
        let outcome = match attempt {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(Failure::Unknown),
        };
        let failed = outcome.is_err();
        if let Ok(mut record) = record.lock() {
            match outcome {
                Ok(None) => {}
                Ok(Some(succeeded)) => {
                    record.transfers_attempted += 1;
                    if succeeded {
                        record.transfers_ok += 1;
                    } else {
                        record.transfers_conflicted += 1;
                    }
                }
                Err(failure) => {
                    record.transfers_attempted += 1;
                    match failure {
                        Failure::Definite => record.transfers_failed += 1,
                        Failure::Unknown => record.transfers_unknown += 1,
                    }
                }
            }
        }
        if failed {
            member = (member + 1) % endpoints.len();
            kv = KvClient::new(channel(&endpoints[member]));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One transfer: Some(committed?) or None if `from` had nothing to move.
async fn transfer(
    kv: &mut KvClient<Channel>,
    from: usize,
    to: usize,
    rng: &mut StdRng,
) -> Result<Option<bool>, tonic::Status> {
    let (accounts, _) = read_accounts(kv, 0, false).await?;
    let find = |key: &str| {
        accounts
            .iter()
            .find(|account| account.0 == key)
            .map(|account| (account.1, account.2))
    };
    let (from_key, to_key) = (account_key(from), account_key(to));
    let (Some((from_balance, from_revision)), Some((to_balance, to_revision))) = (find(&from_key), find(&to_key))
    else {
        // A missing account shows in the readers' verdict; nothing to move here.
        return Ok(None);
    };
    if from_balance <= 0 {
        return Ok(None);
    }
    let amount = rng.gen_range(1..=from_balance.min(20));
    let response = kv
        .txn(TxnRequest {
            compare: vec![
                mod_revision_is(from_key.clone(), from_revision),
                mod_revision_is(to_key.clone(), to_revision),
            ],
            success: vec![
                put_op(from_key, from_balance - amount),
                put_op(to_key, to_balance + amount),
            ],
            failure: Vec::new(),
        })
        .await?
        .into_inner();
    Ok(Some(response.succeeded))
}

/// Reads every account again and again: linearizable and serializable reads of the
/// newest state, and reads at a revision already seen (a past snapshot of every range).
pub async fn reader(
    process: u64,
    endpoints: Vec<String>,
    seed: u64,
    clock: RunClock,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<BankRecord>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ead ^ process.wrapping_mul(0x9e37_79b9));
    let mut member = process as usize % endpoints.len();
    let mut kv = KvClient::new(channel(&endpoints[member]));
    let mut seen: Vec<i64> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (asked, serializable) = match rng.gen_range(0..3) {
            0 => (0, false),
            1 => (0, true),
            _ if !seen.is_empty() => (seen[rng.gen_range(0..seen.len())], rng.gen_bool(0.5)),
            _ => (0, false),
        };
        let at_ms = clock.nanos() / 1_000_000;
        match tokio::time::timeout(OPERATION_TIMEOUT, read_accounts(&mut kv, asked, serializable)).await {
            Ok(Ok((accounts, revision))) => {
                if asked == 0 {
                    seen.push(revision);
                }
                if let Ok(mut record) = record.lock() {
                    record
                        .reads
                        .push(summarize(at_ms, asked, serializable, revision, &accounts));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => {
                if let Ok(mut record) = record.lock() {
                    record.failed_reads += 1;
                }
                member = (member + 1) % endpoints.len();
                kv = KvClient::new(channel(&endpoints[member]));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn summarize(at_ms: u64, asked: i64, serializable: bool, revision: i64, accounts: &[(String, i64, i64)]) -> BankRead {
    BankRead {
        at_ms,
        asked,
        serializable,
        revision,
        accounts: accounts.len(),
        total: accounts.iter().map(|account| account.1).sum(),
        lowest: accounts.iter().map(|account| account.1).min().unwrap_or(0),
    }
}

/// A final linearizable read of every account on `endpoint`, after the faults.
pub async fn final_read(endpoint: &str, clock: &RunClock) -> Result<BankRead, tonic::Status> {
    let mut kv = KvClient::new(channel(endpoint));
    let at_ms = clock.nanos() / 1_000_000;
    let (accounts, revision) = read_accounts(&mut kv, 0, false).await?;
    Ok(summarize(at_ms, 0, false, revision, &accounts))
}

/// Problems with the reads, if any: a missing account, a total other than the opening
/// one, a balance below zero.
pub fn problems(reads: &[BankRead]) -> Vec<String> {
    let total = ACCOUNTS as i64 * OPENING_BALANCE;
    reads
        .iter()
        .filter(|read| read.accounts != ACCOUNTS || read.total != total || read.lowest < 0)
        .map(|read| {
            format!(
                "read at {} ms (asked revision {}, {}) at revision {}: {} accounts summing to {} (lowest {}), expected {ACCOUNTS} summing to {total}",
                read.at_ms,
                read.asked,
                if read.serializable { "serializable" } else { "linearizable" },
                read.revision,
                read.accounts,
                read.total,
                read.lowest
            )
        })
        .collect()
}
