//! The exchanges, queues and bindings intake relies on, declared at start unless ops own them.
//! Declaring is idempotent: the same declaration again is a no-op on the broker.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::config::AmqpConfig;

/// Routing keys the intake queue takes from the main exchange.
pub const INTAKE_BINDINGS: [&str; 2] = ["callback.#", "contact.#"];

/// Declares the main exchange, the dead-letter exchange and queue, and the intake queue.
///
/// Quorum queues, because they are replicated and durable: an accepted request survives a
/// broker node loss. The intake queue dead-letters into the DLX too, so anything the broker
/// itself gives up on ends in the same dead queue as what the worker refuses.
pub async fn declare(channel: &Channel, config: &AmqpConfig) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            config.dead_letter_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            config.dead_letter_queue.as_str().into(),
            durable_queue,
            quorum_arguments(None),
        )
        .await?;
    channel
        .queue_bind(
            config.dead_letter_queue.as_str().into(),
            config.dead_letter_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    channel
        .queue_declare(
            config.queue.as_str().into(),
            durable_queue,
            quorum_arguments(Some(&config.dead_letter_exchange)),
        )
        .await?;
    for routing_key in INTAKE_BINDINGS {
        channel
            .queue_bind(
                config.queue.as_str().into(),
                config.exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

fn quorum_arguments(dead_letter_exchange: Option<&str>) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dlx) = dead_letter_exchange {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
    }
    arguments
}

/// Deletes what [`declare`] made: for the demo and tests, which use throwaway names.
pub async fn delete(channel: &Channel, config: &AmqpConfig) -> lapin::Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    for queue in [&config.queue, &config.dead_letter_queue] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [
        &config.exchange,
        &config.dead_letter_exchange,
        &config.events_exchange,
    ] {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}
