//! A linearizability checker for histories of single-key registers.
//!
//! Each key is an independent register (initially absent) with three operations:
//! read, write (a value or a delete) and compare-and-set. A history records, for every
//! client operation, when it was invoked, when it returned (if it did) and what the
//! client saw. The history is linearizable if every operation can be given one instant
//! between its invocation and its return at which it took effect, such that replaying
//! the operations in that order on a register gives every observed output.
//!
//! Per-key partitioning is sound for independent registers, and it keeps each search
//! small. The search is Wing & Gong's, with Lowe's memoization (as in Porcupine): walk
//! the invocation and return events in time order; at each point try to linearize an
//! operation that has been invoked; if the next event is the return of an operation not
//! yet linearized, backtrack. A set of (linearized operations, register value) already
//! explored is never explored again.
//!
//! Operations whose outcome is unknown (the client timed out or lost its connection)
//! may have taken effect at any instant after their invocation, or never: their return
//! is at infinity, they match any output, and the search may leave them out. A read
//! with an unknown outcome has no effect and is dropped.
//!
//! When a key's history is not linearizable, the checker shrinks it greedily: it drops
//! one operation at a time as long as what remains is still not linearizable. Note that
//! a sub-history of a linearizable register history need not be linearizable (dropping a
//! write can leave a read unexplained), which is why every shrinking step is checked
//! again: the result is a set of real operations that admits no linearization.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What a client asked for, on one key (a register).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Input {
    Read,
    /// `None` deletes the key.
    Write(Option<String>),
    /// Sets `new` if the value is `expected`.
    Cas {
        expected: Option<String>,
        new: Option<String>,
    },
}

/// What the client observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Output {
    /// The value seen (`None`: absent).
    Read(Option<String>),
    Written,
    /// Whether the compare-and-set swapped.
    Cas(bool),
    /// Timed out or lost: it may or may not have taken effect.
    Unknown,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Operation {
    /// Unique in the history.
    pub id: usize,
    /// The client that ran it (for explanations).
    pub process: u64,
    pub key: String,
    pub input: Input,
    /// Invocation time, nanoseconds on one monotonic clock.
    pub call: u64,
    /// Completion time; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    pub output: Output,
}

impl Operation {
    fn is_unknown(&self) -> bool {
        self.output == Output::Unknown || self.ret.is_none()
    }
}

#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    Violation(Box<Violation>),
    /// The search ran out of its step budget: nothing could be concluded.
    Inconclusive {
        key: String,
        steps: u64,
    },
}

#[derive(Debug)]
pub struct Violation {
    pub key: String,
    /// A small sub-history of this key that admits no linearization, by call time.
    pub minimal: Vec<Operation>,
    pub explanation: String,
}

#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub max_steps_per_key: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_steps_per_key: 10_000_000,
        }
    }
}

/// Histories of more operations than this are not shrunk (each shrinking step is a
/// full search); their explanation shows the operations around the failure instead.
const MINIMIZE_OPS_MAX: usize = 300;

/// Checks every key separately.
pub fn check(history: &[Operation], options: &CheckOptions) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for operation in history {
        if operation.input == Input::Read && operation.is_unknown() {
            continue; // a read that may not have happened changed nothing
        }
        by_key.entry(&operation.key).or_default().push(operation.clone());
    }
    for (key, mut operations) in by_key {
        operations.sort_by_key(|operation| operation.call);
        match search(&operations, options.max_steps_per_key) {
            Search::Linearizable => {}
            Search::OutOfSteps(steps) => {
                return Verdict::Inconclusive {
                    key: key.to_string(),
                    steps,
                }
            }
            Search::Stuck(stuck) => {
                let (minimal, stuck) = minimize(operations, stuck, options.max_steps_per_key);
                let explanation = explain(&minimal, &stuck);
                return Verdict::Violation(Box::new(Violation {
                    key: key.to_string(),
                    minimal,
                    explanation,
                }));
            }
        }
    }
    Verdict::Linearizable
}

/// Where the search got furthest before every order failed.
#[derive(Clone, Debug)]
struct Stuck {
    /// Operations linearized, in order, at the deepest point.
    linearized: Vec<usize>,
    /// The register value there.
    value: Option<String>,
    /// The operation whose return came with no way to have linearized it.
    blocked: usize,
}

enum Search {
    Linearizable,
    Stuck(Stuck),
    OutOfSteps(u64),
}

/// The register: applies `operation` to `value`; `None` if its output cannot be what
/// the client observed.
fn step(value: &Option<String>, operation: &Operation) -> Option<Option<String>> {
    let unknown = operation.is_unknown();
    match (&operation.input, &operation.output) {
        (Input::Read, Output::Read(seen)) => (seen == value).then(|| value.clone()),
        (Input::Read, _) => unknown.then(|| value.clone()),
        (Input::Write(new), Output::Written) => Some(new.clone()),
        (Input::Write(new), _) => unknown.then(|| new.clone()),
        (Input::Cas { expected, new }, output) => {
            let swaps = value == expected;
            match output {
                Output::Cas(swapped) if *swapped == swaps => Some(if swaps { new.clone() } else { value.clone() }),
                Output::Cas(_) => None,
                _ if unknown => Some(if swaps { new.clone() } else { value.clone() }),
                _ => None,
            }
        }
    }
}

/// One invocation or return, in a doubly linked list in time order.
#[derive(Clone, Copy, Debug)]
struct Event {
    operation: usize,
    is_call: bool,
    /// Index of the matching return (for calls).
    partner: usize,
    previous: Option<usize>,
    next: Option<usize>,
}

struct EventList {
    events: Vec<Event>,
    head: Option<usize>,
}

impl EventList {
    fn new(operations: &[Operation]) -> Self {
        // (time, order among equal times, operation, is_call). At equal times calls
        // come first: an operation that returns when another is invoked overlaps it.
        let mut points: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(operations.len() * 2);
        for (index, operation) in operations.iter().enumerate() {
            points.push((operation.call, 0, index, true));
            points.push((operation.ret.unwrap_or(u64::MAX), 1, index, false));
        }
        points.sort_by_key(|&(time, order, index, _)| (time, order, index));
        let mut events: Vec<Event> = points
            .iter()
            .enumerate()
            .map(|(position, &(_, _, operation, is_call))| Event {
                operation,
                is_call,
                partner: usize::MAX,
                previous: position.checked_sub(1),
                next: (position + 1 < points.len()).then_some(position + 1),
            })
            .collect();
        let mut call_of = vec![usize::MAX; operations.len()];
        for (position, event) in events.iter().enumerate() {
            if event.is_call {
                call_of[event.operation] = position;
            }
        }
        for position in 0..events.len() {
            if !events[position].is_call {
                let call = call_of[events[position].operation];
                events[call].partner = position;
            }
        }
        let head = (!events.is_empty()).then_some(0);
        Self { events, head }
    }

    fn unlink(&mut self, position: usize) {
        let Event { previous, next, .. } = self.events[position];
        match previous {
            Some(previous) => self.events[previous].next = next,
            None => self.head = next,
        }
        if let Some(next) = next {
            self.events[next].previous = previous;
        }
    }

    fn relink(&mut self, position: usize) {
        let Event { previous, next, .. } = self.events[position];
        match previous {
            Some(previous) => self.events[previous].next = Some(position),
            None => self.head = Some(position),
        }
        if let Some(next) = next {
            self.events[next].previous = Some(position);
        }
    }

    /// Takes an operation's call and return out of the list.
    fn lift(&mut self, call: usize) {
        let partner = self.events[call].partner;
        self.unlink(call);
        self.unlink(partner);
    }

    /// Undoes `lift`, in reverse order.
    fn unlift(&mut self, call: usize) {
        let partner = self.events[call].partner;
        self.relink(partner);
        self.relink(call);
    }
}

fn search(operations: &[Operation], max_steps: u64) -> Search {
    let mut list = EventList::new(operations);
    let words = operations.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut known_left = operations.iter().filter(|operation| !operation.is_unknown()).count();
    let mut value: Option<String> = None;
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    // (call event, value before, known?)
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut deepest = Stuck {
        linearized: Vec::new(),
        value: None,
        blocked: usize::MAX,
    };
    let mut steps = 0u64;
    let mut current = list.head;
    loop {
        if known_left == 0 {
            // Whatever is left had unknown outcomes: it may never have happened.
            return Search::Linearizable;
        }
        steps += 1;
        if steps > max_steps {
            return Search::OutOfSteps(steps);
        }
        let Some(position) = current else {
            // Only reachable if every return was lifted, i.e. all known ops are done.
            return Search::Linearizable;
        };
        let event = list.events[position];
        if event.is_call {
            let operation = &operations[event.operation];
            if let Some(next_value) = step(&value, operation) {
                let mut next_linearized = linearized.clone();
                next_linearized[event.operation / 64] |= 1 << (event.operation % 64);
                if seen.insert((next_linearized.clone(), next_value.clone())) {
                    stack.push((position, std::mem::replace(&mut value, next_value)));
                    linearized = next_linearized;
                    if !operation.is_unknown() {
                        known_left -= 1;
                    }
                    list.lift(position);
                    current = list.head;
                    continue;
                }
            }
            current = event.next;
        } else {
            // This operation returned and nothing placed it before now: back up.
            if stack.len() >= deepest.linearized.len() {
                deepest = Stuck {
                    linearized: stack.iter().map(|(call, _)| list.events[*call].operation).collect(),
                    value: value.clone(),
                    blocked: event.operation,
                };
            }
            let Some((call, previous_value)) = stack.pop() else {
                return Search::Stuck(deepest);
            };
            let operation = list.events[call].operation;
            linearized[operation / 64] &= !(1 << (operation % 64));
            if !operations[operation].is_unknown() {
                known_left += 1;
            }
            value = previous_value;
            list.unlift(call);
            current = list.events[call].next;
        }
    }
}

/// `operations` are sorted by call time; `stuck` indexes into them.
fn minimize(mut operations: Vec<Operation>, mut stuck: Stuck, max_steps: u64) -> (Vec<Operation>, Stuck) {
    if operations.len() > MINIMIZE_OPS_MAX {
        // Too large to shrink: keep the operations the search was stuck around.
        let mut keep: HashSet<usize> = stuck.linearized.iter().rev().take(8).copied().collect();
        keep.insert(stuck.blocked);
        let ids: HashSet<usize> = keep
            .iter()
            .filter_map(|index| operations.get(*index).map(|op| op.id))
            .collect();
        let blocked_id = operations.get(stuck.blocked).map(|op| op.id);
        let shown: Vec<Operation> = operations.into_iter().filter(|op| ids.contains(&op.id)).collect();
        let blocked = shown.iter().position(|op| Some(op.id) == blocked_id).unwrap_or(0);
        let stuck = Stuck {
            linearized: Vec::new(),
            value: stuck.value,
            blocked,
        };
        return (shown, stuck);
    }
    // Passes until nothing more can go: dropping a read can free the write it saw.
    loop {
        let before = operations.len();
        let mut index = 0;
        while index < operations.len() {
            if observed_by_others(&operations, index) {
                // Dropping the write a read saw would leave that read trivially
                // unexplained ("never written") and hide the real problem.
                index += 1;
                continue;
            }
            let mut candidate = operations.clone();
            candidate.remove(index);
            match search(&candidate, max_steps) {
                Search::Stuck(smaller) => {
                    operations = candidate;
                    stuck = smaller;
                }
                _ => index += 1,
            }
        }
        if operations.len() == before {
            break;
        }
    }
    (operations, stuck)
}

/// Whether another operation observed the value `operations[index]` writes.
fn observed_by_others(operations: &[Operation], index: usize) -> bool {
    let written = match &operations[index].input {
        Input::Write(value) => value,
        Input::Cas { new, .. } => new,
        Input::Read => return false,
    };
    operations.iter().enumerate().any(|(other, operation)| {
        other != index
            && match (&operation.input, &operation.output) {
                (_, Output::Read(seen)) => seen == written,
                (Input::Cas { expected, .. }, _) => expected == written,
                _ => false,
            }
    })
}

fn describe(operation: &Operation) -> String {
    let value = |value: &Option<String>| match value {
        Some(value) => format!("{value:?}"),
        None => "absent".to_string(),
    };
    let input = match &operation.input {
        Input::Read => "read".to_string(),
        Input::Write(Some(new)) => format!("write {new:?}"),
        Input::Write(None) => "delete".to_string(),
        Input::Cas { expected, new } => format!("cas {} -> {}", value(expected), value(new)),
    };
    let output = match &operation.output {
        Output::Read(seen) => format!("saw {}", value(seen)),
        Output::Written => "ok".to_string(),
        Output::Cas(true) => "swapped".to_string(),
        Output::Cas(false) => "did not swap".to_string(),
        Output::Unknown => "unknown outcome".to_string(),
    };
    format!("op {} (client {}): {input}, {output}", operation.id, operation.process)
}

fn explain(minimal: &[Operation], stuck: &Stuck) -> String {
    let Some(blocked) = minimal.get(stuck.blocked) else {
        return "no order of these operations consistent with real time explains what the clients saw".to_string();
    };
    let before: Vec<&Operation> = minimal
        .iter()
        .filter(|operation| operation.ret.is_some_and(|ret| ret < blocked.call))
        .collect();
    let mut text = format!(
        "{} cannot take effect anywhere between its call and its return: at best {} operation(s) could be \
         ordered before it, leaving the register {}.",
        describe(blocked),
        stuck.linearized.len(),
        match &stuck.value {
            Some(value) => format!("holding {value:?}"),
            None => "absent".to_string(),
        }
    );
    if !before.is_empty() {
        text.push_str(" Completed before it was called: ");
        text.push_str(
            &before
                .iter()
                .map(|operation| describe(operation))
                .collect::<Vec<_>>()
                .join("; "),
        );
        text.push('.');
    }
    if matches!(blocked.output, Output::Read(_)) {
        text.push_str(" The read saw a value the register could not hold then (a stale read, or a lost write).");
    }
    text.push_str(" No order of the operations below, consistent with real time, explains every output.");
    text
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} is not linearizable. {}", self.key, self.explanation)?;
        let origin = self.minimal.iter().map(|operation| operation.call).min().unwrap_or(0);
        let millis = |time: u64| (time - origin) as f64 / 1e6;
        writeln!(
            f,
            "  {:>6} {:>6} {:>12} {:>12}  operation",
            "id", "client", "called ms", "returned ms"
        )?;
        for operation in &self.minimal {
            let returned = operation
                .ret
                .map_or("never".to_string(), |ret| format!("{:.3}", millis(ret)));
            writeln!(
                f,
                "  {:>6} {:>6} {:>12.3} {:>12}  {}",
                operation.id,
                operation.process,
                millis(operation.call),
                returned,
                describe(operation)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: usize, key: &str, input: Input, call: u64, ret: Option<u64>, output: Output) -> Operation {
        Operation {
            id,
            process: id as u64 % 4,
            key: key.to_string(),
            input,
            call,
            ret,
            output,
        }
    }

    fn some(value: &str) -> Option<String> {
        Some(value.to_string())
    }

    fn write(id: usize, value: &str, call: u64, ret: u64) -> Operation {
        op(id, "x", Input::Write(some(value)), call, Some(ret), Output::Written)
    }

    fn read(id: usize, seen: Option<String>, call: u64, ret: u64) -> Operation {
        op(id, "x", Input::Read, call, Some(ret), Output::Read(seen))
    }

    fn violation(verdict: Verdict) -> Violation {
        match verdict {
            Verdict::Violation(violation) => *violation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = [
            write(0, "a", 0, 10),
            read(1, some("a"), 20, 30),
            write(2, "b", 40, 50),
            read(3, some("b"), 60, 70),
        ];
        assert!(matches!(
            check(&history, &CheckOptions::default()),
            Verdict::Linearizable
        ));
    }

    #[test]
    fn overlapping_writes_may_take_effect_in_either_order() {
        for (first, second) in [("a", "b"), ("b", "a")] {
            let history = [
                write(0, "a", 0, 100),
                write(1, "b", 10, 90),
                read(2, some(first), 20, 30),
                read(3, some(second), 120, 130),
            ];
            assert!(
                matches!(check(&history, &CheckOptions::default()), Verdict::Linearizable),
                "{first} then {second}"
            );
        }
    }

    #[test]
    fn a_stale_read_is_caught_and_explained() {
        let history = [write(0, "a", 0, 10), write(1, "b", 20, 30), read(2, some("a"), 40, 50)];
        let violation = violation(check(&history, &CheckOptions::default()));
        assert_eq!(violation.key, "x");
        assert_eq!(violation.minimal.len(), 3, "{violation}");
        assert!(violation.explanation.contains("op 2"), "{}", violation.explanation);
        assert!(
            violation.explanation.contains("stale read"),
            "{}",
            violation.explanation
        );
        let text = violation.to_string();
        assert!(text.contains("write \"b\"") && text.contains("saw \"a\""), "{text}");
    }

    #[test]
    fn a_lost_write_is_caught() {
        let history = [write(0, "x1", 0, 10), read(1, None, 20, 30)];
        let violation = violation(check(&history, &CheckOptions::default()));
        assert_eq!(violation.minimal.len(), 2);
    }

    #[test]
    fn two_winning_compare_and_sets_from_one_value_are_caught() {
        let cas = |id, new: &str, call, ret| {
            op(
                id,
                "x",
                Input::Cas {
                    expected: some("0"),
                    new: some(new),
                },
                call,
                Some(ret),
                Output::Cas(true),
            )
        };
        let history = [write(0, "0", 0, 10), cas(1, "1", 20, 40), cas(2, "2", 25, 45)];
        let violation = violation(check(&history, &CheckOptions::default()));
        assert_eq!(violation.minimal.len(), 3, "{violation}");
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen_but_not_both() {
        let unknown = op(0, "x", Input::Write(some("a")), 0, None, Output::Unknown);
        let saw_it = [unknown.clone(), read(1, some("a"), 20, 30)];
        assert!(matches!(
            check(&saw_it, &CheckOptions::default()),
            Verdict::Linearizable
        ));
        let never = [unknown.clone(), read(1, None, 20, 30)];
        assert!(matches!(check(&never, &CheckOptions::default()), Verdict::Linearizable));
        let flicker = [unknown, read(1, some("a"), 20, 30), read(2, None, 40, 50)];
        let violation = violation(check(&flicker, &CheckOptions::default()));
        assert!(violation.minimal.iter().any(|operation| operation.id == 2));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut history = vec![
            op(0, "y", Input::Write(some("1")), 0, Some(10), Output::Written),
            op(1, "y", Input::Read, 20, Some(30), Output::Read(some("1"))),
        ];
        history.push(write(2, "a", 0, 10));
        history.push(read(3, some("zzz"), 20, 30));
        let violation = violation(check(&history, &CheckOptions::default()));
        assert_eq!(violation.key, "x");
    }

    /// xorshift64*: a tiny seeded generator, so the test is the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// Simulates a real register with concurrent clients: every operation takes
    /// effect at a random instant inside its interval.
    fn linearizable_history(rng: &mut Rng, clients: u64, per_client: usize, keys: &[&str]) -> Vec<Operation> {
        let mut planned = Vec::new();
        for client in 0..clients {
            let mut time = rng.below(50);
            for step in 0..per_client {
                let call = time;
                let duration = 1 + rng.below(80);
                let point = call + rng.below(duration);
                let key = keys[rng.below(keys.len() as u64) as usize];
                let input = match rng.below(3) {
                    0 => Input::Read,
                    1 => Input::Write(Some(format!("{client}-{step}"))),
                    _ => Input::Cas {
                        expected: Some(format!("{}-{}", rng.below(clients), rng.below(per_client as u64))),
                        new: Some(format!("{client}-{step}c")),
                    },
                };
                // Some writes time out: some of those happened, some did not.
                let lost = !matches!(input, Input::Read) && rng.below(10) == 0;
                let applied = !lost || rng.below(2) == 0;
                planned.push((point, call, call + duration, key, input, lost, applied, client));
                time = call + duration + rng.below(20);
            }
        }
        planned.sort_by_key(|entry| entry.0);
        let mut values: BTreeMap<&str, Option<String>> = BTreeMap::new();
        let mut history = Vec::new();
        for (id, (_, call, ret, key, input, lost, applied, client)) in planned.into_iter().enumerate() {
            let value = values.entry(key).or_default();
            let output = match &input {
                Input::Read => Output::Read(value.clone()),
                Input::Write(new) => {
                    if applied {
                        *value = new.clone();
                    }
                    Output::Written
                }
                Input::Cas { expected, new } => {
                    let swaps = value == expected;
                    if swaps && applied {
                        *value = new.clone();
                    }
                    Output::Cas(swaps)
                }
            };
            let (ret, output) = if lost {
                (None, Output::Unknown)
            } else {
                (Some(ret), output)
            };
            history.push(Operation {
                id,
                process: client,
                key: key.to_string(),
                input,
                call,
                ret,
                output,
            });
        }
        history
    }

    #[test]
    fn simulated_concurrent_histories_pass_and_a_corrupted_read_fails() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut history = linearizable_history(&mut rng, 5, 40, &["a", "b", "c"]);
        assert!(
            matches!(check(&history, &CheckOptions::default()), Verdict::Linearizable),
            "a simulated register history must pass"
        );
        let read = history
            .iter_mut()
            .find(|operation| matches!(operation.output, Output::Read(_)))
            .expect("the history has reads");
        read.output = Output::Read(Some("never-written".to_string()));
        let key = read.key.clone();
        let violation = violation(check(&history, &CheckOptions::default()));
        assert_eq!(violation.key, key);
        assert!(
            violation.minimal.len() <= 3,
            "shrunk to the bad read and little else: {violation}"
        );
    }

    #[test]
    fn a_tiny_budget_is_inconclusive() {
        let mut rng = Rng(7);
        let history = linearizable_history(&mut rng, 5, 40, &["a"]);
        let verdict = check(&history, &CheckOptions { max_steps_per_key: 10 });
        assert!(matches!(verdict, Verdict::Inconclusive { .. }), "{verdict:?}");
    }
}
