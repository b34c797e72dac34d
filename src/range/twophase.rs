//! The pieces of a transaction over several ranges that are pure functions of Shoal's
//! operations: which part of a span a range holds, how one range evaluates its part of
//! the compares and checks its part of the operations at prepare, how the parts'
//! outcomes decide the transaction's path, and how the ranges' partial results merge
//! into one result. The state machine (prepare, commit, rollback) and the coordinator
//! (`crate::txn`) both use them, so they agree by construction.
//!
//! Positions: compares and operations are numbered depth first over the whole tree,
//! both branches of every transaction (`for_each_compare`, `for_each_op`), the same on
//! every node.

use super::kv::{self, KvError};
use crate::proto::shoal::command::{CompareOutcome, PrepareResult};
use crate::proto::shoal::kv::{
    op, op_result, Compare, DeleteResult, OpResult, PutResult, Read, ReadResult, Span, Txn, TxnResult,
};
use crate::storage::mvcc::{MvccRead, Record};
use crate::storage::KeyRange;
use std::collections::HashMap;

/// The part of `span` inside `within`, as a span; `None` if they do not meet.
pub fn intersect(span: &Span, within: &KeyRange) -> Option<Span> {
    let keys = kv::key_range(span);
    let start = keys.start.clone().max(within.start.clone());
    let end = match (&keys.end, &within.end) {
        (Some(a), Some(b)) => Some(a.clone().min(b.clone())),
        (Some(a), None) | (None, Some(a)) => Some(a.clone()),
        (None, None) => None,
    };
    match end {
        Some(end) if start >= end => None,
        Some(end) => Some(Span {
            key: start.into(),
            end: end.into(),
        }),
        // Spans always end (an etcd "to the end" span ends at its namespace's end).
        None => None,
    }
}

/// Visits every compare of the tree, depth first, both branches.
pub fn for_each_compare<'a>(txn: &'a Txn, visit: &mut dyn FnMut(u32, &'a Compare)) {
    fn walk<'a>(txn: &'a Txn, next: &mut u32, visit: &mut dyn FnMut(u32, &'a Compare)) {
        for compare in &txn.compare {
            visit(*next, compare);
            *next += 1;
        }
        for operation in txn.success.iter().chain(&txn.failure) {
            if let Some(op::Op::Txn(nested)) = &operation.op {
                walk(nested, next, visit);
            }
        }
    }
    walk(txn, &mut 0, visit);
}

/// Visits every operation of the tree, depth first, both branches.
pub fn for_each_op<'a>(txn: &'a Txn, visit: &mut dyn FnMut(u32, &'a op::Op)) {
    fn walk<'a>(txn: &'a Txn, next: &mut u32, visit: &mut dyn FnMut(u32, &'a op::Op)) {
        for operation in txn.success.iter().chain(&txn.failure) {
            let Some(inner) = &operation.op else { continue };
            visit(*next, inner);
            *next += 1;
            if let op::Op::Txn(nested) = inner {
                walk(nested, next, visit);
            }
        }
    }
    walk(txn, &mut 0, visit);
}

/// Every compare's outcome over the keys `within` holds of it (compares whose keys are
/// all elsewhere are left out).
pub fn evaluate_compares(view: &dyn MvccRead, txn: &Txn, within: &KeyRange) -> Result<Vec<CompareOutcome>, KvError> {
    let mut outcomes = Vec::new();
    let mut failure = None;
    for_each_compare(txn, &mut |index, compare| {
        if failure.is_some() {
            return;
        }
        let Some(part) = intersect(compare.span.as_ref().unwrap_or(&Span::default()), within) else {
            return;
        };
        match kv::compare_part(view, compare, &part) {
            Ok((has_keys, holds)) => outcomes.push(CompareOutcome { index, has_keys, holds }),
            Err(error) => failure = Some(error),
        }
    });
    match failure {
        Some(error) => Err(error),
        None => Ok(outcomes),
    }
}

/// Whether each compare holds, from the ranges' outcomes: over every key of its span
/// (ranges with none of its keys do not count); a span with no key at all compares as
/// etcd compares a missing key.
pub fn combine_compares(txn: &Txn, results: &[PrepareResult]) -> Vec<bool> {
    let mut parts: HashMap<u32, Vec<&CompareOutcome>> = HashMap::new();
    for result in results {
        for outcome in &result.compares {
            parts.entry(outcome.index).or_default().push(outcome);
        }
    }
    let mut holds = Vec::new();
    for_each_compare(txn, &mut |index, compare| {
        let mine = parts.get(&index).map(Vec::as_slice).unwrap_or(&[]);
        let with_keys: Vec<&&CompareOutcome> = mine.iter().filter(|outcome| outcome.has_keys).collect();
        holds.push(if with_keys.is_empty() {
            kv::compare_missing(compare)
        } else {
            with_keys.iter().all(|outcome| outcome.holds)
        });
    });
    holds
}

/// The branch each transaction on the chosen path takes, as etcd decides them (the
/// same order as the state machine's compare path), from every compare's outcome.
pub fn path(txn: &Txn, compares: &[bool]) -> Vec<bool> {
    /// Index of the first compare of each transaction of the tree, in visiting order.
    fn walk(txn: &Txn, next_compare: &mut usize, compares: &[bool], chosen: bool, path: &mut Vec<bool>) {
        let first = *next_compare;
        *next_compare += txn.compare.len();
        let succeeded = compares[first..*next_compare].iter().all(|holds| *holds);
        if chosen {
            path.push(succeeded);
        }
        // Nested transactions of both branches are numbered; only the chosen branch's
        // (on a chosen transaction) are on the path.
        for (branch_succeeds, ops) in [(true, &txn.success), (false, &txn.failure)] {
            for operation in ops {
                if let Some(op::Op::Txn(nested)) = &operation.op {
                    walk(
                        nested,
                        next_compare,
                        compares,
                        chosen && succeeded == branch_succeeds,
                        path,
                    );
                }
            }
        }
    }
    let mut path = Vec::new();
    walk(txn, &mut 0, compares, true, &mut path);
    path
}

/// The first refusal among the operations on the chosen path, if any.
pub fn refusal_on_path<'a>(
    txn: &Txn,
    path: &[bool],
    results: &'a [PrepareResult],
) -> Option<&'a crate::proto::shoal::command::CommandError> {
    let refused: HashMap<u32, &crate::proto::shoal::command::CommandError> = results
        .iter()
        .flat_map(|result| &result.refusals)
        .filter_map(|refusal| refusal.error.as_ref().map(|error| (refusal.index, error)))
        .collect();
    if refused.is_empty() {
        return None;
    }
    let on_path = ops_on_path(txn, path);
    let mut first = None;
    for_each_op(txn, &mut |index, _| {
        if first.is_none() && on_path.contains(&index) {
            first = refused.get(&index).copied();
        }
    });
    first
}

/// Positions of the operations on the chosen path.
fn ops_on_path(txn: &Txn, path: &[bool]) -> std::collections::HashSet<u32> {
    fn walk(
        txn: &Txn,
        next_op: &mut u32,
        path: &[bool],
        position: &mut usize,
        chosen: bool,
        on: &mut std::collections::HashSet<u32>,
    ) {
        let succeeded = if chosen {
            let taken = path.get(*position).copied().unwrap_or(false);
            *position += 1;
            taken
        } else {
            false
        };
        for (branch_succeeds, ops) in [(true, &txn.success), (false, &txn.failure)] {
            let branch_chosen = chosen && succeeded == branch_succeeds;
            for operation in ops {
                let Some(inner) = &operation.op else { continue };
                if branch_chosen {
                    on.insert(*next_op);
                }
                *next_op += 1;
                if let op::Op::Txn(nested) = inner {
                    walk(nested, next_op, path, position, branch_chosen, on);
                }
            }
        }
    }
    let mut on = std::collections::HashSet::new();
    walk(txn, &mut 0, path, &mut 0, true, &mut on);
    on
}

/// Merges the ranges' partial results of one transaction (each ran the chosen path on
/// its own keys, in key order of the ranges) into the result of the whole, every
/// revision reported as the transaction's.
pub fn merge(parts: Vec<TxnResult>, requests: &Txn, path: &[bool], revision: i64) -> TxnResult {
    let mut position = 0;
    merge_txn(parts, requests, path, &mut position, revision)
}

fn merge_txn(parts: Vec<TxnResult>, request: &Txn, path: &[bool], position: &mut usize, revision: i64) -> TxnResult {
    let succeeded = path.get(*position).copied().unwrap_or(false);
    *position += 1;
    let ops = if succeeded { &request.success } else { &request.failure };
    let mut columns: Vec<Vec<OpResult>> = ops.iter().map(|_| Vec::new()).collect();
    for part in parts {
        for (column, result) in columns.iter_mut().zip(part.results) {
            column.push(result);
        }
    }
    let mut results = Vec::with_capacity(ops.len());
    for (operation, column) in ops.iter().zip(columns) {
        let Some(inner) = &operation.op else { continue };
        let merged = match inner {
            op::Op::Put(_) => {
                let prev_kv = column.into_iter().find_map(|result| match result.result {
                    Some(op_result::Result::Put(put)) => put.prev_kv,
                    _ => None,
                });
                op_result::Result::Put(PutResult { prev_kv, revision })
            }
            op::Op::Delete(_) | op::Op::RevokeLease(_) => {
                let mut merged = DeleteResult {
                    deleted: 0,
                    prev_kvs: Vec::new(),
                    revision,
                };
                for result in column {
                    if let Some(op_result::Result::Delete(part)) = result.result {
                        merged.deleted += part.deleted;
                        merged.prev_kvs.extend(part.prev_kvs);
                    }
                }
                op_result::Result::Delete(merged)
            }
            op::Op::Read(read) => {
                let parts = column
                    .into_iter()
                    .filter_map(|result| match result.result {
                        Some(op_result::Result::Read(part)) => Some(part),
                        _ => None,
                    })
                    .collect();
                op_result::Result::Read(merge_reads(parts, read, revision))
            }
            op::Op::Txn(nested) => {
                let parts = column
                    .into_iter()
                    .filter_map(|result| match result.result {
                        Some(op_result::Result::Txn(part)) => Some(part),
                        _ => None,
                    })
                    .collect();
                op_result::Result::Txn(merge_txn(parts, nested, path, position, revision))
            }
        };
        results.push(OpResult { result: Some(merged) });
    }
    TxnResult {
        succeeded,
        results,
        revision,
    }
}

/// One read's parts from ranges in key order: keys concatenated (then sorted and cut
/// as the read asks), counts added.
pub fn merge_reads(parts: Vec<ReadResult>, read: &Read, revision: i64) -> ReadResult {
    let mut merged = ReadResult {
        kvs: Vec::new(),
        more: false,
        count: 0,
        revision,
    };
    for part in parts {
        merged.count += part.count;
        merged.more |= part.more;
        merged.kvs.extend(part.kvs);
    }
    kv::sort_and_limit(&mut merged, read);
    merged
}

/// A record as etcd sees a missing key in a compare.
pub fn missing() -> Record {
    Record::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shoal::kv::{compare, Op};
    use crate::range::ops;

    fn compare_key(key: &str) -> Compare {
        Compare {
            result: compare::Result::Equal as i32,
            target: compare::Target::Version as i32,
            span: Some(ops::span(key.as_bytes().to_vec(), Vec::new())),
            operand: Some(compare::Operand::Version(0)),
        }
    }

    fn nested(compares: Vec<Compare>) -> Op {
        Op {
            op: Some(op::Op::Txn(Txn {
                compare: compares,
                success: vec![Op {
                    op: Some(op::Op::Put(ops::put(b"n".to_vec(), b"v".to_vec()))),
                }],
                failure: Vec::new(),
                unknown_leases: Vec::new(),
            })),
        }
    }

    #[test]
    fn spans_are_cut_to_the_range_that_holds_them() {
        let range = KeyRange::new(b"c".to_vec(), Some(b"m".to_vec()));
        let cut = intersect(&ops::span(b"a".to_vec(), b"f".to_vec()), &range).unwrap();
        assert_eq!((cut.key.as_ref(), cut.end.as_ref()), (&b"c"[..], &b"f"[..]));
        assert!(intersect(&ops::span(b"n".to_vec(), b"z".to_vec()), &range).is_none());
        let single = intersect(&ops::span(b"d".to_vec(), Vec::new()), &range).unwrap();
        assert_eq!((single.key.as_ref(), single.end.as_ref()), (&b"d"[..], &b"d\0"[..]));
        let unbounded = KeyRange::new(b"m".to_vec(), None);
        let tail = intersect(&ops::span(b"a".to_vec(), b"z".to_vec()), &unbounded).unwrap();
        assert_eq!((tail.key.as_ref(), tail.end.as_ref()), (&b"m"[..], &b"z"[..]));
    }

    /// The path follows etcd: the top compares pick a branch, and only the nested
    /// transactions of the chosen branch are on the path, each with its own compares.
    #[test]
    fn the_path_takes_nested_transactions_of_the_chosen_branch_only() {
        let txn = Txn {
            compare: vec![compare_key("a"), compare_key("b")],
            success: vec![nested(vec![compare_key("c")])],
            failure: vec![nested(vec![compare_key("d")])],
            unknown_leases: Vec::new(),
        };
        // Compares numbered: a=0, b=1, c=2 (success's nested), d=3 (failure's nested).
        assert_eq!(path(&txn, &[true, true, false, true]), vec![true, false]);
        assert_eq!(path(&txn, &[true, false, true, true]), vec![false, true]);
        let on = ops_on_path(&txn, &[true, false]);
        // Ops numbered: success's txn=0, its put=1, failure's txn=2, its put=3.
        assert_eq!(
            on,
            [0u32].into_iter().collect(),
            "the nested txn's failure branch is empty"
        );
        let on = ops_on_path(&txn, &[false, true]);
        assert_eq!(on, [2u32, 3].into_iter().collect());
    }

    #[test]
    fn compare_parts_combine_over_the_keys_that_exist() {
        let txn = Txn {
            compare: vec![compare_key("a")],
            ..Default::default()
        };
        let part = |has_keys, holds| PrepareResult {
            compares: vec![CompareOutcome {
                index: 0,
                has_keys,
                holds,
            }],
            refusals: Vec::new(),
        };
        assert_eq!(
            combine_compares(&txn, &[part(true, true), part(false, false)]),
            vec![true]
        );
        assert_eq!(
            combine_compares(&txn, &[part(true, true), part(true, false)]),
            vec![false]
        );
        // No key anywhere: a version compare against 0 holds for a missing key.
        assert_eq!(combine_compares(&txn, &[part(false, false)]), vec![true]);
    }
}
