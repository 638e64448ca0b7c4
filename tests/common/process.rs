//! Runs the real `callkeeper` binary as a child process, as operators run it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct WorkerProcess {
    child: Child,
    config: PathBuf,
    log: Option<PathBuf>,
    rust_log: String,
}

impl WorkerProcess {
    /// Starts `callkeeper run --config <config>`; output goes to `log` (appended) or nowhere.
    pub fn start(config: &Path, log: Option<&Path>, rust_log: &str) -> Self {
        let child = spawn(config, log, rust_log);
        Self {
            child,
            config: config.to_path_buf(),
            log: log.map(Path::to_path_buf),
            rust_log: rust_log.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = spawn(&self.config, self.log.as_deref(), &self.rust_log);
    }

    /// SIGTERM and wait for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, log: Option<&Path>, rust_log: &str) -> Child {
    let (stdout, stderr) = match log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    Command::new(env!("CARGO_BIN_EXE_callkeeper"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("callkeeper binary starts")
}

/// Everything a worker process needs, made fresh: names, database, config file on a free port,
/// and a verifying receiver for its webhooks.
pub struct Prepared {
    pub dir: tempfile::TempDir,
    pub names: String,
    pub api: String,
    pub config_path: PathBuf,
    pub receiver: callkeeper::notify::receiver::Receiver,
    pub webhooks:
        tokio::sync::mpsc::UnboundedReceiver<callkeeper::notify::receiver::ReceivedWebhook>,
}

pub async fn prepare(queue_toml: &str) -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let secret = super::new_secret();
    let (receiver, webhooks) = callkeeper::notify::receiver::Receiver::start(vec![secret.clone()])
        .await
        .unwrap();
    let names = super::unique_names();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config_path = dir.path().join("callkeeper.toml");
    let text = super::config_text(
        &names,
        &dir.path().join("ck.db"),
        &receiver.url(),
        &secret,
        port,
        queue_toml,
    );
    std::fs::write(&config_path, text).unwrap();
    Prepared {
        api: format!("http://127.0.0.1:{port}"),
        dir,
        names,
        config_path,
        receiver,
        webhooks,
    }
}
