//! Events in from RabbitMQ. STUB.
