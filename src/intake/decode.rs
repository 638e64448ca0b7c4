//! Turns one message body into an [`Inbound`] command, or a [`Rejection`] saying why it can never
//! be applied. Pure (no I/O, no clock), so every rule is a table test.
//!
//! Details in rejections go to dead-letter headers and logs, so they never echo a producer's
//! value that could hold a phone number: phone-like values are masked, long ones are cut.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::inbound::{
    AttemptReport, CallbackRequest, CancelTarget, Command, EventKey, Inbound, Rejection,
};
use crate::domain::{
    mask_phone, CallInfo, CallbackId, CancelReason, Customer, Outcome, Phone, Priority, QueueName,
    Window,
};
use crate::schedule::Rules;

/// Bodies above this are refused before parsing, so one huge message cannot hog memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `data.context` is handed to agents verbatim; this keeps webhooks and rows small.
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;

/// The machine codes sent as `x-callkeeper-reason`.
pub mod reason {
    pub const TOO_LARGE: &str = "too_large";
    pub const EMPTY_BODY: &str = "empty_body";
    pub const NOT_UTF8: &str = "not_utf8";
    pub const UNSUPPORTED_CONTENT_TYPE: &str = "unsupported_content_type";
    pub const INVALID_JSON: &str = "invalid_json";
    pub const MISSING_FIELD: &str = "missing_field";
    pub const UNSUPPORTED_SPECVERSION: &str = "unsupported_specversion";
    pub const UNSUPPORTED_TYPE: &str = "unsupported_type";
    pub const INVALID_TIME: &str = "invalid_time";
    pub const INVALID_DATA: &str = "invalid_data";
    pub const INVALID_PHONE: &str = "invalid_phone";
    pub const UNKNOWN_QUEUE: &str = "unknown_queue";
    pub const INVALID_PRIORITY: &str = "invalid_priority";
    pub const INVALID_WINDOW: &str = "invalid_window";
    pub const INVALID_TIMEZONE: &str = "invalid_timezone";
    pub const INVALID_CONTEXT: &str = "invalid_context";
    pub const INVALID_CALLBACK_ID: &str = "invalid_callback_id";
    pub const INVALID_REASON: &str = "invalid_reason";
    pub const INVALID_OUTCOME: &str = "invalid_outcome";
}

use reason::*;

type Decoded<T> = Result<T, Rejection>;

/// The event types callkeeper understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Requested,
    Cancelled,
    OptedOut,
    Attempted,
}

impl EventType {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "callback.requested" => Some(Self::Requested),
            "callback.cancelled" => Some(Self::Cancelled),
            "contact.opted_out" => Some(Self::OptedOut),
            "callback.attempted" => Some(Self::Attempted),
            _ => None,
        }
    }
}

/// Decodes a CloudEvents 1.0 structured-JSON message. `content_type` is the AMQP property;
/// absent is accepted because many producers do not set it.
pub fn decode(body: &[u8], content_type: Option<&str>, rules: &Rules) -> Decoded<Inbound> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Rejection::new(
            TOO_LARGE,
            format!(
                "body is {} bytes; the limit is {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(EMPTY_BODY, "body is empty"));
    }
    check_content_type(content_type)?;
    let text = std::str::from_utf8(body).map_err(|e| {
        Rejection::new(
            NOT_UTF8,
            format!("body is not UTF-8 (bad byte at offset {})", e.valid_up_to()),
        )
    })?;
    // serde_json stops at 128 levels of nesting with an error, so hostile input cannot
    // overflow the stack here or in the recursive walks below.
    let event: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::new(INVALID_JSON, format!("body is not valid JSON: {e}")))?;
    let Value::Object(event) = event else {
        return Err(Rejection::new(
            MISSING_FIELD,
            "event must be a JSON object with specversion, id, source and type",
        ));
    };

    let specversion = attribute(&event, "specversion")?;
    if specversion != "1.0" {
        return Err(Rejection::new(
            UNSUPPORTED_SPECVERSION,
            format!(
                "specversion {} is not supported; only \"1.0\" is",
                echo(specversion)
            ),
        ));
    }
    let id = attribute(&event, "id")?;
    let source = attribute(&event, "source")?;
    let type_name = attribute(&event, "type")?;
    let event_type = EventType::parse(type_name).ok_or_else(|| {
        Rejection::new(
            UNSUPPORTED_TYPE,
            format!(
                "type {} is not one of callback.requested, callback.cancelled, \
                 contact.opted_out, callback.attempted",
                echo(type_name)
            ),
        )
    })?;
    if let Some(time) = present(&event, "time") {
        if time.as_str().and_then(parse_time).is_none() {
            return Err(Rejection::new(
                INVALID_TIME,
                "time must be an RFC 3339 timestamp",
            ));
        }
    }
    let data = match present(&event, "data") {
        Some(Value::Object(data)) => data,
        Some(_) => return Err(Rejection::new(INVALID_DATA, "data must be a JSON object")),
        None => return Err(Rejection::new(INVALID_DATA, "data is missing")),
    };

    let command = match event_type {
        EventType::Requested => Command::Request(request(data, rules)?),
        EventType::Cancelled => cancel(data, rules)?,
        EventType::OptedOut => Command::OptOut {
            phone: required_phone(data, "phone")?,
        },
        EventType::Attempted => attempt(data)?,
    };
    Ok(Inbound {
        key: EventKey {
            source: source.to_owned(),
            id: id.to_owned(),
        },
        fingerprint: fingerprint(type_name, data),
        command,
    })
}

/// Accepts `application/cloudevents+json` and `application/json`, with parameters; a charset,
/// when given, must be UTF-8.
fn check_content_type(content_type: Option<&str>) -> Decoded<()> {
    let Some(raw) = content_type.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let mut parts = raw.split(';');
    let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let charset_ok = parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    if (media == "application/cloudevents+json" || media == "application/json") && charset_ok {
        Ok(())
    } else {
        Err(Rejection::new(
            UNSUPPORTED_CONTENT_TYPE,
            format!(
                "content type {} is not supported; use application/cloudevents+json \
                 (structured mode, UTF-8)",
                echo(raw)
            ),
        ))
    }
}

/// A required CloudEvents attribute: a non-empty string.
fn attribute<'a>(event: &'a Map<String, Value>, name: &str) -> Decoded<&'a str> {
    match present(event, name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(Rejection::new(
            MISSING_FIELD,
            format!("{name} is missing or not a non-empty string"),
        )),
    }
}

/// A field's value; JSON `null` counts as absent, as producers often write unset fields so.
fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn request(data: &Map<String, Value>, rules: &Rules) -> Decoded<CallbackRequest> {
    let phone = required_phone(data, "phone")?;
    let queue = optional_queue(data, rules)?
        .ok_or_else(|| Rejection::new(MISSING_FIELD, "data.queue is missing"))?;
    let priority = match present(data, "priority") {
        None => Priority::default(),
        Some(value) => value.as_str().and_then(Priority::parse).ok_or_else(|| {
            Rejection::new(
                INVALID_PRIORITY,
                "data.priority must be one of normal, high, urgent",
            )
        })?,
    };
    let window = present(data, "window").map(window).transpose()?;
    let customer = present(data, "customer").map(customer).transpose()?;
    let agent_id = optional_string(data, "agent_id")?.filter(|s| !s.is_empty());
    let context = match present(data, "context") {
        None => None,
        Some(value @ Value::Object(_)) => {
            let size = value.to_string().len();
            if size > MAX_CONTEXT_BYTES {
                return Err(Rejection::new(
                    INVALID_CONTEXT,
                    format!("data.context is {size} bytes; the limit is {MAX_CONTEXT_BYTES}"),
                ));
            }
            Some(value.clone())
        }
        Some(_) => {
            return Err(Rejection::new(
                INVALID_CONTEXT,
                "data.context must be a JSON object",
            ))
        }
    };
    let call = present(data, "call").map(call).transpose()?;
    Ok(CallbackRequest {
        queue,
        phone,
        priority,
        window,
        customer,
        agent_id,
        context,
        call,
    })
}

fn cancel(data: &Map<String, Value>, rules: &Rules) -> Decoded<Command> {
    let callback_id = optional_callback_id(data)?;
    // Every field present is checked even when the id decides the target: a malformed field
    // is a producer bug worth surfacing.
    let phone = present(data, "phone")
        .map(|_| required_phone(data, "phone"))
        .transpose()?;
    let queue = optional_queue(data, rules)?;
    let reason = match present(data, "reason") {
        // Producers that do not say why still mean "cancel".
        None => CancelReason::Other,
        Some(value) => value
            .as_str()
            .and_then(CancelReason::parse)
            // Opting out is its own event type, with its own effect.
            .filter(|r| *r != CancelReason::OptedOut)
            .ok_or_else(|| {
                Rejection::new(
                    INVALID_REASON,
                    "data.reason must be one of customer_reached, customer_request, other",
                )
            })?,
    };
    let target = match (callback_id, phone) {
        (Some(id), _) => CancelTarget::Id(id),
        (None, Some(phone)) => CancelTarget::Phone { phone, queue },
        (None, None) => {
            return Err(Rejection::new(
                MISSING_FIELD,
                "callback.cancelled needs data.callback_id or data.phone",
            ))
        }
    };
    Ok(Command::Cancel { target, reason })
}

fn attempt(data: &Map<String, Value>) -> Decoded<Command> {
    let callback_id = optional_callback_id(data)?
        .ok_or_else(|| Rejection::new(MISSING_FIELD, "data.callback_id is missing"))?;
    let outcome = match present(data, "outcome") {
        None => return Err(Rejection::new(MISSING_FIELD, "data.outcome is missing")),
        Some(value) => value.as_str().and_then(Outcome::parse).ok_or_else(|| {
            Rejection::new(
                INVALID_OUTCOME,
                "data.outcome must be one of connected, no_answer, busy, voicemail, \
                 invalid_number, declined",
            )
        })?,
    };
    let agent_id = match present(data, "agent_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(Rejection::new(
                MISSING_FIELD,
                "data.agent_id is missing or not a non-empty string",
            ))
        }
    };
    let note = optional_string(data, "note")?;
    Ok(Command::Attempt {
        callback_id,
        report: AttemptReport {
            agent_id,
            outcome,
            note,
        },
    })
}

fn required_phone(data: &Map<String, Value>, key: &str) -> Decoded<Phone> {
    match present(data, key) {
        None => Err(Rejection::new(
            MISSING_FIELD,
            format!("data.{key} is missing"),
        )),
        Some(Value::String(raw)) => Phone::parse(raw)
            .map_err(|e| Rejection::new(INVALID_PHONE, format!("data.{key} {}: {e}", echo(raw)))),
        Some(_) => Err(Rejection::new(
            INVALID_PHONE,
            format!("data.{key} must be a string in E.164 form"),
        )),
    }
}

/// `data.queue`, which must name a configured queue.
fn optional_queue(data: &Map<String, Value>, rules: &Rules) -> Decoded<Option<QueueName>> {
    let Some(value) = present(data, "queue") else {
        return Ok(None);
    };
    let Some(raw) = value.as_str() else {
        return Err(Rejection::new(UNKNOWN_QUEUE, "data.queue must be a string"));
    };
    match QueueName::parse(raw) {
        Ok(name) if rules.queue(&name).is_some() => Ok(Some(name)),
        _ => Err(Rejection::new(
            UNKNOWN_QUEUE,
            format!("queue {} is not configured", echo(raw)),
        )),
    }
}

fn optional_callback_id(data: &Map<String, Value>) -> Decoded<Option<CallbackId>> {
    match present(data, "callback_id") {
        None => Ok(None),
        Some(value) => value
            .as_str()
            .and_then(|raw| raw.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                Rejection::new(
                    INVALID_CALLBACK_ID,
                    "data.callback_id must be a callback id (a UUID)",
                )
            }),
    }
}

fn optional_string(object: &Map<String, Value>, key: &str) -> Decoded<Option<String>> {
    match present(object, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::new(
            INVALID_DATA,
            format!("data.{key} must be a string"),
        )),
    }
}

fn window(value: &Value) -> Decoded<Window> {
    let bad = |detail: &str| Rejection::new(INVALID_WINDOW, detail);
    let Value::Object(window) = value else {
        return Err(bad(
            "data.window must be an object with not_before and not_after",
        ));
    };
    let bound = |key: &str| {
        present(window, key)
            .and_then(Value::as_str)
            .and_then(parse_time)
            .ok_or_else(|| {
                Rejection::new(
                    INVALID_WINDOW,
                    format!("data.window.{key} must be an RFC 3339 timestamp"),
                )
            })
    };
    let not_before = bound("not_before")?;
    let not_after = bound("not_after")?;
    if not_before >= not_after {
        return Err(bad("data.window.not_before must be before not_after"));
    }
    Ok(Window {
        not_before,
        not_after,
    })
}

fn customer(value: &Value) -> Decoded<Customer> {
    let Value::Object(customer) = value else {
        return Err(Rejection::new(
            INVALID_DATA,
            "data.customer must be an object",
        ));
    };
    let field = |key: &str| match present(customer, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::new(
            INVALID_DATA,
            format!("data.customer.{key} must be a string"),
        )),
    };
    let timezone = match present(customer, "timezone") {
        None => None,
        Some(Value::String(tz)) if tz.parse::<chrono_tz::Tz>().is_ok() => Some(tz.clone()),
        Some(other) => {
            let shown = other.as_str().map(echo).unwrap_or_else(|| "value".into());
            return Err(Rejection::new(
                INVALID_TIMEZONE,
                format!("data.customer.timezone {shown} is not an IANA time zone"),
            ));
        }
    };
    Ok(Customer {
        id: field("id")?,
        name: field("name")?,
        language: field("language")?,
        timezone,
    })
}

fn call(value: &Value) -> Decoded<CallInfo> {
    let Value::Object(call) = value else {
        return Err(Rejection::new(INVALID_DATA, "data.call must be an object"));
    };
    let id = match present(call, "id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(Rejection::new(
                INVALID_DATA,
                "data.call.id must be a string",
            ))
        }
    };
    let waited_seconds = match present(call, "waited_seconds") {
        None => None,
        Some(value) => Some(value.as_u64().ok_or_else(|| {
            Rejection::new(
                INVALID_DATA,
                "data.call.waited_seconds must be a whole number of seconds",
            )
        })?),
    };
    Ok(CallInfo { id, waited_seconds })
}

/// Quotes a producer's value for a detail text. Anything with many digits could be a phone
/// number and anything long could hide one, so those are masked.
fn echo(raw: &str) -> String {
    let digits = raw.bytes().filter(u8::is_ascii_digit).count();
    let plain = raw.chars().count() <= 48 && digits < 5 && !raw.chars().any(char::is_control);
    if plain {
        format!("'{raw}'")
    } else {
        let shortened: String = raw.chars().filter(|c| !c.is_control()).take(48).collect();
        format!("'{}'", mask_phone(&shortened))
    }
}

/// SHA-256 (hex) over the type and the canonical JSON of `data`: the same key arriving with
/// another fingerprint is a conflict, not a duplicate.
pub fn fingerprint(type_name: &str, data: &Map<String, Value>) -> String {
    let mut canonical = String::new();
    write_canonical_object(&mut canonical, data);
    let mut hasher = Sha256::new();
    hasher.update(type_name.as_bytes());
    // The separator keeps `type` and `data` from running into each other.
    hasher.update([0u8]);
    hasher.update(canonical.as_bytes());
    hasher.finalize().iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// JSON with object keys sorted at every level, written here rather than relying on
/// `Value::to_string`, whose key order changes if any crate turns on `preserve_order`.
fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_canonical_object(out, map),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_canonical_object(out: &mut String, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        write_canonical(out, &map[key]);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_key_order() {
        let a: Value = serde_json::json!({"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": "s"}});
        let b: Value = serde_json::json!({"a": {"x": "s", "y": [1, {"p": 1, "q": 2}]}, "b": 1});
        let (Value::Object(a), Value::Object(b)) = (a, b) else {
            unreachable!()
        };
        assert_eq!(
            fingerprint("callback.requested", &a),
            fingerprint("callback.requested", &b)
        );
        assert_ne!(
            fingerprint("callback.requested", &a),
            fingerprint("callback.cancelled", &a)
        );
    }

    #[test]
    fn canonical_json_is_sorted_and_escaped() {
        let v = serde_json::json!({"z": "a\"b", "a": [null, true, 1.5]});
        let mut out = String::new();
        write_canonical(&mut out, &v);
        assert_eq!(out, r#"{"a":[null,true,1.5],"z":"a\"b"}"#);
    }

    #[test]
    fn echo_masks_phone_like_and_long_values() {
        assert_eq!(echo("Europe/Amsterdam"), "'Europe/Amsterdam'");
        assert_eq!(echo("+31612345678"), "'+3161*****78'");
        assert!(!echo(&"x".repeat(500)).contains(&"x".repeat(49)));
    }

    #[test]
    fn content_types() {
        for ok in [
            None,
            Some(""),
            Some("application/cloudevents+json"),
            Some("application/json"),
            Some("Application/CloudEvents+JSON; charset=UTF-8"),
            Some("application/json;charset=\"utf-8\""),
        ] {
            assert!(check_content_type(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            Some("text/plain"),
            Some("application/xml"),
            Some("application/json; charset=iso-8859-1"),
        ] {
            assert_eq!(
                check_content_type(bad).unwrap_err().reason,
                UNSUPPORTED_CONTENT_TYPE,
                "{bad:?}"
            );
        }
    }
}
