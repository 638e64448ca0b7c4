//! The binary's configuration gate: a bad config is explained and refused with exit code 64
//! before anything connects; the shipped example passes.

use std::process::Command;

fn callkeeper(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_callkeeper"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn the_example_config_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/callkeeper.toml");
    let (code, text) = callkeeper(&["check-config", "--config", example]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("OK"), "{text}");
}

#[test]
fn a_bad_config_is_explained_and_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
        [amqp]
        url = "http://localhost"
        [queues.support]
        webhook_url = "not a url"
        signing_secrets = ["plain"]
        sla = { normal = "4h", high = "1h", urgent = "15m" }
        "#,
    )
    .unwrap();
    for command in ["check-config", "run"] {
        let (code, text) = callkeeper(&[command, "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(64), "{command}: {text}");
        for problem in [
            "amqp.url",
            "queues.support.webhook_url",
            "queues.support.signing_secrets[0]",
        ] {
            assert!(
                text.contains(problem),
                "{command} does not explain {problem}: {text}"
            );
        }
    }
}

#[test]
fn environment_overrides_are_validated_too() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/callkeeper.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_callkeeper"))
        .args(["check-config", "--config", example])
        .env("CALLKEEPER__QUEUES__SUPPORT__MAX_ATTEMPTS", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_attempts"));
}
