//! A small webhook endpoint that verifies Standard Webhooks signatures: what a real receiver
//! does, for tests and `callkeeper demo`. Its answers can be scripted (statuses, `Retry-After`,
//! redirects, delays) to exercise the notifier's retry rules against a real HTTP server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::signing;

/// One verified request, as the receiver saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedWebhook {
    /// The `webhook-id` header.
    pub webhook_id: String,
    /// The request path (`/agents`, `/supervisors`), telling which endpoint was called.
    pub path: String,
    /// The body's `type` (`callback.due`, …); empty when absent.
    pub notice_type: String,
    pub body: serde_json::Value,
    /// The `webhook-timestamp` header.
    pub timestamp: i64,
    /// The status this request was answered with.
    pub answered: u16,
}

/// A scripted answer: a status, extra headers, and optionally a delay before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: None,
        }
    }

    /// 429 with `Retry-After` (seconds or an HTTP date).
    pub fn too_many(retry_after: impl Into<String>) -> Self {
        Self::status(429).header("retry-after", retry_after)
    }

    /// 301 to `location`.
    pub fn redirect(location: impl Into<String>) -> Self {
        Self::status(301).header("location", location)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Waits this long before answering (for timeout and slow-endpoint tests).
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

impl From<u16> for Answer {
    fn from(status: u16) -> Self {
        Self::status(status)
    }
}

struct Shared {
    secrets: Vec<SecretString>,
    /// Answers for the next requests, in order; then 204.
    script: Mutex<VecDeque<Answer>>,
    /// Delay for every answer without its own.
    delay: Mutex<Duration>,
    rejected: AtomicUsize,
    received: mpsc::UnboundedSender<ReceivedWebhook>,
}

/// A running receiver on `127.0.0.1`; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver on a free port that accepts webhooks signed with any of `secrets`.
    /// Every verified request is sent on the returned channel.
    pub async fn start(
        secrets: Vec<SecretString>,
    ) -> anyhow::Result<(Receiver, mpsc::UnboundedReceiver<ReceivedWebhook>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            secrets,
            script: Mutex::new(VecDeque::new()),
            delay: Mutex::new(Duration::ZERO),
            rejected: AtomicUsize::new(0),
            received: tx,
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the webhook receiver")?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/", post(receive))
            .route("/{*path}", post(receive))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
            if let Err(err) = served {
                debug!(error = %err, "Webhook receiver stopped with an error.");
            }
        });
        let receiver = Receiver {
            addr,
            shared,
            stop,
            server: Some(server),
        };
        Ok((receiver, rx))
    }

    /// The URL to configure as a webhook endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers the next requests with these, in order (after any already queued); then 204.
    pub fn respond_next<A: Into<Answer>>(&self, answers: impl IntoIterator<Item = A>) {
        let mut script = self.shared.script.lock().expect("script lock");
        script.extend(answers.into_iter().map(Into::into));
    }

    /// Waits this long before every answer that has no delay of its own.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().expect("delay lock") = delay;
    }

    /// Requests refused because their signature or timestamp did not verify.
    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// Stops accepting requests; requests being answered are finished.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops and waits until the server has finished.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    let Ok(body) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not UTF-8").into_response();
    };
    let webhook_id = header("webhook-id");
    let verified = signing::verify(
        &shared.secrets,
        webhook_id,
        header("webhook-timestamp"),
        header("webhook-signature"),
        body,
        Utc::now(),
        signing::DEFAULT_TOLERANCE,
    );
    if let Err(err) = verified {
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        debug!(webhook_id, error = %err, "Webhook refused: signature does not verify.");
        return (StatusCode::UNAUTHORIZED, err.to_string()).into_response();
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    let answer = shared
        .script
        .lock()
        .expect("script lock")
        .pop_front()
        .unwrap_or(Answer::status(204));
    let delay = answer
        .delay
        .unwrap_or_else(|| *shared.delay.lock().expect("delay lock"));
    // Reported on arrival, so a test sees tries the sender gave up waiting for.
    let _ = shared.received.send(ReceivedWebhook {
        webhook_id: webhook_id.to_owned(),
        path: uri.path().to_owned(),
        notice_type: json["type"].as_str().unwrap_or_default().to_owned(),
        timestamp: header("webhook-timestamp")
            .trim()
            .parse()
            .unwrap_or_default(),
        body: json,
        answered: answer.status,
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = status.into_response();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name),
            axum::http::HeaderValue::try_from(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
