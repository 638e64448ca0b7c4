//! `callkeeper demo`: the whole flow in one command, for a newcomer. It starts the worker on a
//! scratch database and scratch RabbitMQ names, a local receiver that verifies and prints each
//! webhook, and publishes four sample requests: one answered, one missed, one duplicate, one bad.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use lapin::options::BasicGetOptions;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::clock::SystemClock;
use crate::config::Config;
use crate::ivr::IvrPublisher;
use crate::notify::receiver::Receiver;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const ANSWERED: &str = "+31612345678";
const MISSED: &str = "+31687654321";
const LIMIT: Duration = Duration::from_secs(75);

pub async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let scratch = std::env::temp_dir().join(format!("callkeeper-demo-{suffix}"));
    std::fs::create_dir_all(&scratch)?;
    let secret: SecretString = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    )
    .into();
    let (receiver, mut webhooks) = Receiver::start(vec![secret.clone()]).await?;
    let http_port = free_port()?;
    let names = format!("callkeeper.demo.{}", &suffix[suffix.len() - 8..]);
    let config = Config::from_toml_with_env(
        &format!(
            r#"
            drain_timeout = "5s"
            # The demo runs at any hour; real callees are protected by the 08:00-21:00 default.
            [calling_window.default]
            every_day = ["00:00-24:00"]
            [amqp]
            url = "{AMQP_URL}"
            exchange = "{names}"
            queue = "{names}.intake"
            dead_letter_exchange = "{names}.dlx"
            dead_letter_queue = "{names}.dead"
            [store]
            url = "sqlite://{db}"
            [http]
            listen = "127.0.0.1:{http_port}"
            public_url = "http://127.0.0.1:{http_port}"
            api_tokens = ["demo-token"]
            [notify]
            retry_base = "1s"
            [queues.demo]
            webhook_url = "{url}/agents"
            escalation_url = "{url}/supervisors"
            signing_secrets = ["{secret}"]
            initial_delay = "2s"
            at_risk_lead = "8s"
            sla = {{ normal = "20s", high = "15s", urgent = "10s" }}
            "#,
            db = scratch.join("demo.db").display(),
            url = receiver.url(),
            secret = secret.expose_secret(),
        ),
        [],
    )?;

    println!(
        "callkeeper demo — a worker on a scratch database, a webhook receiver, four requests."
    );
    println!("Queue 'demo': first call 2 s after the request, SLA 20 s (normal) / 15 s (high), at-risk 8 s before.\n");
    let running = crate::app::start(config.clone(), Arc::new(SystemClock)).await?;
    let shutdown = running.shutdown_token();
    let worker = tokio::spawn(running.run_until(std::future::pending()));
    wait_until_ready(http_port).await?;

    let ivr = IvrPublisher::connect(AMQP_URL, &names).await?;
    let context = json!({ "ivr_path": ["billing", "late payment"], "reason": "Direct debit failed twice", "account": "NL-20931" });
    ivr.publish(
        "callback.requested",
        json!({
            "phone": ANSWERED, "queue": "demo", "customer": { "name": "Ada", "language": "nl" },
            "context": context, "call": { "id": "call-1", "waited_seconds": 312 }
        }),
    )
    .await?;
    say(
        started,
        "published: Ada asks for a callback (will be answered)",
    );
    ivr.publish("callback.requested", json!({
        "phone": ANSWERED, "queue": "demo", "context": { "ivr_path": ["billing"], "reason": "Still waiting" }
    })).await?;
    say(
        started,
        "published: Ada asks again (duplicate: merged, no second callback)",
    );
    ivr.publish(
        "callback.requested",
        json!({ "phone": MISSED, "queue": "demo", "priority": "high" }),
    )
    .await?;
    say(started, "published: Bram asks for a callback (nobody will call him: watch it go at-risk, then missed)");
    ivr.publish_raw("callback.requested", br#"{"specversion":"1.0","id":"bad-1","source":"ivr-demo","type":"callback.requested","data":{"phone":"0612","queue":"demo"}}"#, Some("application/json")).await?;
    say(
        started,
        "published: a request with a bad phone number (dead-lettered)",
    );

    let http = reqwest::Client::new();
    let mut missed_seen = 0;
    let outcome = tokio::time::timeout(LIMIT, async {
        while let Some(webhook) = webhooks.recv().await {
            let data = &webhook.body["data"];
            say(
                started,
                &format!(
                "webhook {:<19} → {:<12} signature verified; requests={} priority={} context={}",
                webhook.notice_type,
                webhook.path,
                data["requests"],
                data["priority"].as_str().unwrap_or("?"),
                data["context"],
            ),
            );
            if webhook.notice_type == "callback.due" && data["phone"] == ANSWERED {
                answer(&http, data, started).await?;
            }
            if webhook.notice_type == "callback.missed" {
                missed_seen += 1;
                if missed_seen == 2 {
                    return anyhow::Ok(());
                }
            }
        }
        anyhow::bail!("the receiver stopped")
    })
    .await;

    show_dead_letter(&names, started).await?;
    shutdown.cancel();
    let _ = worker.await;
    cleanup(&config.amqp).await;
    let _ = std::fs::remove_dir_all(&scratch);
    match outcome {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the demo did not finish within {LIMIT:?}"),
    }?;
    println!("\nDone: one callback completed within its SLA, one missed and escalated, a duplicate merged, a bad request dead-lettered.");
    Ok(())
}

/// What an agent desktop does on `callback.due`: claim, call, report.
async fn answer(http: &reqwest::Client, data: &Value, started: Instant) -> anyhow::Result<()> {
    let claim = data["claim_url"].as_str().context("claim_url")?;
    let response = http
        .post(claim)
        .bearer_auth("demo-token")
        .json(&json!({ "agent_id": "agent-7" }))
        .send()
        .await?;
    say(
        started,
        &format!("agent-7 claims the callback → HTTP {}", response.status()),
    );
    let attempt = data["attempt_url"].as_str().context("attempt_url")?;
    let response = http
        .post(attempt)
        .bearer_auth("demo-token")
        .json(&json!({ "agent_id": "agent-7", "outcome": "connected", "note": "Explained the failed debit" }))
        .send()
        .await?;
    let body: Value = response.json().await?;
    say(
        started,
        &format!(
            "agent-7 reports 'connected' → state={} sla={}",
            body["state"], body["sla"]
        ),
    );
    Ok(())
}

async fn show_dead_letter(names: &str, started: Instant) -> anyhow::Result<()> {
    let connection = lapin::Connection::connect(AMQP_URL, Default::default()).await?;
    let channel = connection.create_channel().await?;
    let message = channel
        .basic_get(
            format!("{names}.dead").as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await?;
    if let Some(message) = message {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let text = |key: &str| {
            headers
                .inner()
                .get(key)
                .and_then(|v| v.as_long_string())
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        let (reason, detail) = (text("x-callkeeper-reason"), text("x-callkeeper-detail"));
        say(
            started,
            &format!("dead-lettered: reason={reason} detail={detail}"),
        );
    }
    Ok(())
}

async fn cleanup(config: &crate::config::AmqpConfig) {
    let Ok(connection) = lapin::Connection::connect(AMQP_URL, Default::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = crate::intake::topology::delete(&channel, config).await;
    }
}

async fn wait_until_ready(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/readyz");
    for _ in 0..100 {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the worker did not become ready (is RabbitMQ running on 127.0.0.1:5672?)")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn say(started: Instant, line: &str) {
    println!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
}
