//! A minimal IVR-side publisher: sends CloudEvents to callkeeper's exchange with publisher
//! confirms. Used by `callkeeper demo`, the tests and the benchmarks — the same path an IVR takes.

use anyhow::Context as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use uuid::Uuid;

pub struct IvrPublisher {
    // Held so the channel's connection stays open.
    _connection: Connection,
    channel: Channel,
    exchange: String,
}

impl IvrPublisher {
    pub async fn connect(url: &str, exchange: &str) -> anyhow::Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            _connection: connection,
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Publishes a CloudEvent of `event_type` with `data`, a fresh id and source `ivr-demo`;
    /// returns the event id. Waits for the broker's confirm.
    pub async fn publish(&self, event_type: &str, data: Value) -> anyhow::Result<String> {
        let id = Uuid::now_v7().to_string();
        let event = cloud_event(event_type, &id, data);
        self.publish_raw(
            event_type,
            event.to_string().as_bytes(),
            Some("application/cloudevents+json"),
        )
        .await?;
        Ok(id)
    }

    /// Publishes any bytes with `routing_key`, for events built by hand (and bad ones).
    pub async fn publish_raw(
        &self,
        routing_key: &str,
        body: &[u8],
        content_type: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(content_type) = content_type {
            properties = properties.with_content_type(content_type.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "broker did not confirm the publish");
        Ok(())
    }
}

/// A structured-mode CloudEvent with source `ivr-demo`.
pub fn cloud_event(event_type: &str, id: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "ivr-demo",
        "type": event_type,
        "time": chrono::Utc::now().to_rfc3339(),
        "datacontenttype": "application/json",
        "data": data,
    })
}
