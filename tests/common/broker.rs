//! The shared broker, seen from outside: `rabbitmqctl` for what the AMQP protocol cannot do
//! (list and close other clients' connections, stop and start the app).

use std::process::Command;

/// Runs `rabbitmqctl` and returns its standard output; panics (failing the test) when it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The broker's pids of the connections whose client name contains `name`. RabbitMQ 3.10's
/// `close_connection` takes the connection's pid, not its name.
pub fn connections_named(name: &str) -> Vec<String> {
    rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .lines()
    .filter(|line| line.contains(name))
    .filter_map(|line| line.split('\t').next().map(str::to_owned))
    .collect()
}
