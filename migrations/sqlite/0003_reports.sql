-- The SLA report reads callbacks by request time, per queue or over all queues.
CREATE INDEX callbacks_queue_requested_at ON callbacks (queue, requested_at);
CREATE INDEX callbacks_requested_at ON callbacks (requested_at);
