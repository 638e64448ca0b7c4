-- The gauges are refreshed every 10 s while the worker fires callbacks; their queries must cost
-- what the answer needs, not what the store holds. Before these indexes, the oldest open
-- callback and the at-risk count read every open row and the SLA counts sorted a day of rows:
-- 0.6 s of one core per refresh at 200,000 callbacks (BENCHMARKS.md).

-- The oldest open callback of a queue still waiting for its first attempt: one seek. The
-- partial index holds only those.
CREATE INDEX callbacks_untried_queue_requested_at ON callbacks (queue, requested_at)
    WHERE state IN ('scheduled', 'due', 'claimed') AND first_attempt_at IS NULL;

-- Open callbacks warned at risk and not tried yet: the index holds only those.
CREATE INDEX callbacks_at_risk ON callbacks (queue)
    WHERE state IN ('scheduled', 'due', 'claimed') AND at_risk_notified = 1
      AND sla = 'pending' AND first_attempt_at IS NULL;

-- A queue's SLA outcomes over a period, counted from the index alone. It replaces
-- (queue, requested_at), whose reads (the SLA report by queue) it serves as well.
DROP INDEX callbacks_queue_requested_at;
CREATE INDEX callbacks_queue_requested_at_sla ON callbacks (queue, requested_at, sla);
