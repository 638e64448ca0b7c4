-- Retry rules per outcome, the per-number daily attempt cap, and personal callbacks' fallback
-- to the queue.

-- Attempts per retryable outcome, so the lifecycle rules can check `retry_limits` without a
-- query. Existing callbacks get their counts from the attempts already recorded.
ALTER TABLE callbacks ADD COLUMN no_answer_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE callbacks ADD COLUMN busy_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE callbacks ADD COLUMN voicemail_attempts INTEGER NOT NULL DEFAULT 0;
UPDATE callbacks SET
    no_answer_attempts = (SELECT COUNT(*) FROM attempts a
                          WHERE a.callback_id = callbacks.id AND a.outcome = 'no_answer'),
    busy_attempts      = (SELECT COUNT(*) FROM attempts a
                          WHERE a.callback_id = callbacks.id AND a.outcome = 'busy'),
    voicemail_attempts = (SELECT COUNT(*) FROM attempts a
                          WHERE a.callback_id = callbacks.id AND a.outcome = 'voicemail')
WHERE attempts > 0;

-- When a personal callback was offered to the whole queue; NULL while its agent has it alone.
ALTER TABLE callbacks ADD COLUMN offered_to_queue_at INTEGER;
-- Personal callbacks already due have no fire time for their fallback yet: look at them now.
UPDATE callbacks SET next_fire_at = COALESCE(MIN(next_fire_at, due_at), due_at)
WHERE state = 'due' AND agent_id IS NOT NULL;

-- The number called, on each attempt, so the per-number cap over every callback of that
-- number is one index range: attempts to this phone after a moment.
ALTER TABLE attempts ADD COLUMN phone TEXT;
UPDATE attempts SET phone = (SELECT c.phone FROM callbacks c WHERE c.id = attempts.callback_id);
CREATE INDEX attempts_phone_at ON attempts (phone, at);
