//! kill -9 the worker repeatedly while thousands of requests are published: afterwards every
//! confirmed request exists exactly once and got its due webhook (re-sends only under the same
//! `webhook-id`).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use callkeeper::ivr::IvrPublisher;
use common::process::WorkerProcess;
use serde_json::json;

const REQUESTS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_storm_loses_nothing_and_calls_nobody_twice() {
    let prepared = common::process::prepare(
        r#"
        sla = { normal = "4h", high = "1h", urgent = "15m" }
    "#,
    )
    .await;
    let common::process::Prepared {
        dir: _dir,
        names,
        api,
        config_path,
        receiver,
        mut webhooks,
    } = prepared;

    let mut worker = WorkerProcess::start(&config_path, None, "warn");
    assert!(common::wait_ready(&api).await, "worker became ready");

    // Publish with confirms from a separate task while this one kills and restarts the worker.
    let publisher = {
        let names = names.clone();
        tokio::spawn(async move {
            let ivr = IvrPublisher::connect(common::AMQP_URL, &names)
                .await
                .unwrap();
            let mut phones = Vec::with_capacity(REQUESTS);
            for i in 0..REQUESTS {
                let phone = format!("+3161{i:07}");
                ivr.publish(
                    "callback.requested",
                    json!({ "phone": phone, "queue": "support" }),
                )
                .await
                .unwrap();
                phones.push(phone);
            }
            phones
        })
    };
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(400 + 250 * round)).await;
        worker.kill9();
        worker.restart();
    }
    let phones: HashSet<String> = publisher.await.unwrap().into_iter().collect();
    assert_eq!(phones.len(), REQUESTS);
    assert!(
        common::wait_ready(&api).await,
        "worker ready after the last restart"
    );

    // Every confirmed request is stored exactly once.
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut stored = common::list_all(&http, &api).await;
    while stored.len() < REQUESTS && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stored = common::list_all(&http, &api).await;
    }
    assert_eq!(stored.len(), REQUESTS, "every confirmed request stored");
    let stored_phones: Vec<String> = stored
        .iter()
        .map(|c| c["phone"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<&String> = stored_phones.iter().collect();
    assert_eq!(stored_phones.len(), REQUESTS, "no callback stored twice");
    assert_eq!(unique.len(), REQUESTS);
    assert!(stored_phones.iter().all(|p| phones.contains(p)));

    // Every callback got its due webhook; any re-send carries the same webhook-id.
    let mut due_ids: HashMap<String, HashSet<String>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while due_ids.len() < REQUESTS {
        match tokio::time::timeout_at(deadline, webhooks.recv()).await {
            Ok(Some(webhook)) if webhook.notice_type == "callback.due" => {
                let callback = webhook.body["data"]["callback_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                due_ids
                    .entry(callback)
                    .or_default()
                    .insert(webhook.webhook_id);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert_eq!(
        due_ids.len(),
        REQUESTS,
        "every callback got its due webhook"
    );
    let resent_under_new_id: Vec<_> = due_ids.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        resent_under_new_id.is_empty(),
        "a callback was notified under two webhook-ids: {resent_under_new_id:?}"
    );

    worker.terminate();
    drop(receiver);
    common::delete_topology(&names).await;
}
