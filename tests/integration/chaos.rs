//! A bounded chaos run on every change: three schedules of 30 s on 3 nodes, every fault
//! kind, every checker. Seeds are random (new schedules each run) and printed: a
//! failure names the seed that replays it (`shoal chaos --seed <seed>`). The last
//! schedule keeps a short Raft log, so nodes that fall behind catch up by snapshot
//! while faults go on.

use std::process::Command;
use std::time::Duration;

#[test]
fn three_fault_schedules_find_no_violation() {
    for run in 0..3 {
        let seed: u64 = rand::random();
        let out = tempfile::tempdir().unwrap();
        eprintln!(
            "chaos schedule {run}: seed {seed}{}",
            if run == 2 { " (short log)" } else { "" }
        );
        let short_log: &[&str] = if run == 2 {
            &[
                "--server-arg=--snapshot-count=300",
                "--server-arg=--snapshot-catchup-entries=50",
            ]
        } else {
            &[]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["chaos", "--nodes", "3", "--duration", "30"])
            .args(["--seed", &seed.to_string()])
            .args(short_log)
            .args(crate::SPLIT.then_some("--split"))
            .arg("--out")
            .arg(out.path())
            .spawn()
            .expect("starting shoal chaos");
        // The run bounds itself (30 s of faults, then bounded healing and checks); this
        // is the backstop if it ever hangs.
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                // SIGTERM first: the harness then stops the servers it started.
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                std::thread::sleep(Duration::from_secs(5));
                let _ = child.kill();
                let _ = child.wait();
                panic!("chaos run with seed {seed} did not finish in 240 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let report = std::fs::read_to_string(out.path().join("report.txt")).unwrap_or_default();
        assert!(status.success(), "chaos run with seed {seed} failed:\n{report}");
        for workload in [
            "registers",
            "set",
            "watch",
            "lock",
            "bank",
            "redis registers",
            "redis set",
        ] {
            assert!(
                report
                    .lines()
                    .any(|line| line.starts_with(workload) && line.contains("PASS")),
                "{workload} missing from the report:\n{report}"
            );
        }
        assert!(report.contains("faults:"), "{report}");
        if crate::SPLIT {
            let ranges: usize = report
                .lines()
                .find_map(|line| line.strip_prefix("data ranges at the end: "))
                .and_then(|count| count.trim().parse().ok())
                .unwrap_or(0);
            assert!(ranges >= 8, "the data should span at least 8 ranges:\n{report}");
        }
    }
}
