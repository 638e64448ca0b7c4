//! Keeps the benchmark from rotting: runs `callkeeper-bench --quick` (every scenario at small
//! sizes, against the real RabbitMQ and the real worker binary) and checks that it finished and
//! reported every scenario's figures. Timing is what the bench measures, so nothing here
//! asserts on it.

use std::process::Command;

/// A figure from each scenario, as the report's table rows start.
const EXPECTED_ROWS: &[&str] = &[
    "| backlog | worker: start to all stored |",
    "| backlog | bare consumer (ack only) |",
    "| backlog | ratio worker / ceiling |",
    "| backlog | CPU (user + system): worker while draining |",
    "| backlog | worker runnable but without a core, while draining |",
    "| backlog | CPU: RabbitMQ while feeding the worker / the bare consumer |",
    "| backlog | bare consumer + SQLite alone (broker and store, no client) |",
    "| backlog | lifecycle events still in the outbox when all were stored |",
    "| storm, bare consumer | bare consumer sustained rate |",
    "| storm, bare consumer | queue depth slope |",
    "| storm, bare consumer | CPU while publishing: RabbitMQ / the bench (publishers and consumer) |",
    "| storm | worker sustained rate |",
    "| storm | CPU while publishing: worker / RabbitMQ |",
    "| storm | queue depth: peak / at stop |",
    "| storm | queue depth slope |",
    "| storm | worker runnable but without a core, while publishing |",
    "| storm | lifecycle events still in the outbox when the publishers stopped |",
    "| storm, intake only | worker sustained rate |",
    "| storm, intake only | queue depth slope |",
    "| storm, intake only | worker runnable but without a core, while publishing |",
    "| storm, bare consumer + SQLite alone | bare consumer + SQLite alone sustained rate |",
    "| storm, bare consumer + SQLite alone | queue depth slope |",
    "| ontime | spread lateness p50 / p99 / max |",
    "| ontime | spread: where callbacks over 25 ms late were due |",
    "| ontime | spread deliveries/s |",
    "| ontime | burst deliveries/s |",
    "| ontime | worker CPU from the first due time (user + system) |",
    "| ahead | start to /readyz 200 |",
    "| ahead | peak RSS (VmHWM) / RSS at the end |",
    "| ahead | lateness of callbacks due meanwhile p50 / max |",
];

#[test]
fn quick_bench_runs_every_scenario() {
    let output = Command::new(env!("CARGO_BIN_EXE_callkeeper-bench"))
        .arg("--quick")
        .output()
        .expect("the bench binary starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "callkeeper-bench --quick failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    for row in EXPECTED_ROWS {
        assert!(stdout.contains(row), "the report lacks `{row}`:\n{stdout}");
    }
    // Every figure row carries a value, and every target row says whether it was met.
    let targets: Vec<&str> = stdout
        .lines()
        .filter(|line| line.ends_with("| yes |") || line.ends_with("| no |"))
        .collect();
    assert_eq!(targets.len(), 7, "one row per target:\n{stdout}");
    assert!(
        !stdout.contains("| ? |")
            && !stdout.contains("none delivered")
            && !stdout.contains("unknown (no /proc)")
            // The tests' broker is local, so its CPU is always there to read.
            && !stdout.contains("not measured (no local process)")
            && !stdout.contains("not measured (no schedstat)")
            && !stdout.contains("the store could not be read"),
        "a figure is missing its value:\n{stdout}"
    );
}
