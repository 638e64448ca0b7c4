//! The decoder's contract: every permanently bad message gets a reason, no input panics, and no
//! detail ever shows a full phone number.

mod common;

use callkeeper::domain::inbound::{CancelTarget, Command, Rejection};
use callkeeper::domain::{CancelReason, Outcome, Priority};
use callkeeper::intake::decode::{self, reason, MAX_BODY_BYTES};
use common::support_rules;
use proptest::prelude::*;
use serde_json::{json, Value};

const PHONE: &str = "+31612345678";
const CALLBACK_ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

fn event(kind: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": "evt-1",
        "source": "ivr/main",
        "type": kind,
        "time": "2025-03-01T10:00:00Z",
        "data": data,
    })
}

fn requested() -> Value {
    event(
        "callback.requested",
        json!({
            "phone": PHONE,
            "queue": "support",
            "priority": "high",
            "window": {"not_before": "2025-03-01T12:00:00+01:00", "not_after": "2025-03-01T14:00:00Z"},
            "customer": {"id": "c-9", "name": "Ada", "language": "nl", "timezone": "Europe/Amsterdam"},
            "agent_id": "agent-7",
            "context": {"ivr_path": ["1", "3"], "reason": "billing"},
            "call": {"id": "call-1", "waited_seconds": 312},
        }),
    )
}

fn run(value: &Value) -> Result<callkeeper::domain::inbound::Inbound, Rejection> {
    decode::decode(value.to_string().as_bytes(), None, &support_rules())
}

/// Sets `path` (dot-separated, `data.x.y`) in a copy of `base`; `None` removes the key.
fn with(base: &Value, path: &str, value: Option<Value>) -> Value {
    let mut out = base.clone();
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys.pop().unwrap();
    let mut target = &mut out;
    for key in keys {
        target = target.get_mut(key).unwrap();
    }
    let object = target.as_object_mut().unwrap();
    match value {
        Some(v) => {
            object.insert(last.to_owned(), v);
        }
        None => {
            object.remove(last);
        }
    }
    out
}

fn assert_clean(rejection: &Rejection) {
    assert!(!rejection.reason.is_empty());
    assert!(!rejection.detail.is_empty());
    for leak in [PHONE, "31612345678", "612345678"] {
        assert!(
            !rejection.detail.contains(leak),
            "detail leaks a phone number: {}",
            rejection.detail
        );
    }
}

#[test]
fn full_request_decodes() {
    let inbound = run(&requested()).expect("valid");
    assert_eq!(inbound.key.source, "ivr/main");
    assert_eq!(inbound.key.id, "evt-1");
    assert_eq!(inbound.fingerprint.len(), 64);
    let Command::Request(request) = inbound.command else {
        panic!("expected a request");
    };
    assert_eq!(request.phone.as_str(), PHONE);
    assert_eq!(request.queue.as_str(), "support");
    assert_eq!(request.priority, Priority::High);
    let window = request.window.unwrap();
    assert_eq!(window.not_before.to_rfc3339(), "2025-03-01T11:00:00+00:00");
    let customer = request.customer.unwrap();
    assert_eq!(customer.timezone.as_deref(), Some("Europe/Amsterdam"));
    assert_eq!(customer.name.as_deref(), Some("Ada"));
    assert_eq!(request.agent_id.as_deref(), Some("agent-7"));
    assert_eq!(request.context.unwrap()["reason"], "billing");
    assert_eq!(request.call.unwrap().waited_seconds, Some(312));
}

#[test]
fn minimal_request_gets_defaults() {
    let value = json!({
        "specversion": "1.0", "id": "x", "source": "s", "type": "callback.requested",
        "data": {"phone": PHONE, "queue": "support"}
    });
    let Command::Request(request) = run(&value).unwrap().command else {
        panic!("expected a request");
    };
    assert_eq!(request.priority, Priority::Normal);
    assert!(request.window.is_none() && request.customer.is_none() && request.context.is_none());
}

#[test]
fn unknown_extra_fields_are_ignored_everywhere() {
    let mut value = requested();
    value["extension"] = json!("x");
    value["data"]["future_field"] = json!({"nested": [1, 2]});
    value["data"]["customer"]["vip_level"] = json!(3);
    value["data"]["window"]["label"] = json!("afternoon");
    value["data"]["call"]["trunk"] = json!("t1");
    assert!(run(&value).is_ok());
}

#[test]
fn nulls_count_as_absent() {
    let value = with(&requested(), "data.priority", Some(Value::Null));
    let value = with(&value, "data.window", Some(Value::Null));
    let value = with(&value, "time", Some(Value::Null));
    let Command::Request(request) = run(&value).unwrap().command else {
        panic!("expected a request");
    };
    assert_eq!(request.priority, Priority::Normal);
    assert!(request.window.is_none());
}

#[test]
fn content_type_with_parameters_is_accepted() {
    let body = requested().to_string();
    for ct in [
        "application/cloudevents+json; charset=utf-8",
        "application/json",
        "application/cloudevents+json",
    ] {
        assert!(
            decode::decode(body.as_bytes(), Some(ct), &support_rules()).is_ok(),
            "{ct}"
        );
    }
}

#[test]
fn other_event_types_decode() {
    let cancel = event(
        "callback.cancelled",
        json!({"callback_id": CALLBACK_ID, "reason": "customer_reached"}),
    );
    let Command::Cancel { target, reason } = run(&cancel).unwrap().command else {
        panic!("expected a cancel");
    };
    assert!(matches!(target, CancelTarget::Id(_)));
    assert_eq!(reason, CancelReason::CustomerReached);

    let cancel = event(
        "callback.cancelled",
        json!({"phone": PHONE, "queue": "support"}),
    );
    let Command::Cancel { target, reason } = run(&cancel).unwrap().command else {
        panic!("expected a cancel");
    };
    assert!(matches!(target, CancelTarget::Phone { queue: Some(_), .. }));
    assert_eq!(reason, CancelReason::Other, "a missing reason means other");

    let opt_out = event("contact.opted_out", json!({"phone": PHONE}));
    assert!(matches!(
        run(&opt_out).unwrap().command,
        Command::OptOut { .. }
    ));

    let attempt = event(
        "callback.attempted",
        json!({"callback_id": CALLBACK_ID, "outcome": "no_answer", "agent_id": "a1", "note": "rang out"}),
    );
    let Command::Attempt { report, .. } = run(&attempt).unwrap().command else {
        panic!("expected an attempt");
    };
    assert_eq!(report.outcome, Outcome::NoAnswer);
    assert_eq!(report.note.as_deref(), Some("rang out"));
}

#[test]
fn fingerprint_depends_on_payload_not_on_key_order_or_envelope() {
    let a = run(&requested()).unwrap();
    let b = run(&with(&requested(), "time", None)).unwrap();
    assert_eq!(
        a.fingerprint, b.fingerprint,
        "envelope fields are not payload"
    );
    let reordered: Value = serde_json::from_str(
        r#"{"data":{"queue":"support","phone":"+31612345678"},"type":"callback.requested",
            "source":"s","id":"1","specversion":"1.0"}"#,
    )
    .unwrap();
    let plain = event(
        "callback.requested",
        json!({"phone": PHONE, "queue": "support"}),
    );
    assert_eq!(
        run(&reordered).unwrap().fingerprint,
        run(&plain).unwrap().fingerprint
    );
    let other = with(&requested(), "data.priority", Some(json!("urgent")));
    assert_ne!(a.fingerprint, run(&other).unwrap().fingerprint);
}

/// Every permanently bad case, with the reason it must get.
#[test]
fn every_bad_case_has_its_reason() {
    let rules = support_rules();
    let req = requested();
    let attempt = event(
        "callback.attempted",
        json!({"callback_id": CALLBACK_ID, "outcome": "busy", "agent_id": "a1"}),
    );
    let cancel = event(
        "callback.cancelled",
        json!({"callback_id": CALLBACK_ID, "reason": "other"}),
    );
    let big_context: String = "x".repeat(17 * 1024);

    // (name, body, content type, expected reason)
    let mut cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
        (
            "too large",
            vec![b' '; MAX_BODY_BYTES + 1],
            None,
            reason::TOO_LARGE,
        ),
        ("empty", Vec::new(), None, reason::EMPTY_BODY),
        (
            "only whitespace",
            b" \n\t".to_vec(),
            None,
            reason::EMPTY_BODY,
        ),
        (
            "not utf-8",
            vec![b'{', 0xff, 0xfe, b'}'],
            None,
            reason::NOT_UTF8,
        ),
        (
            "xml content type",
            req.to_string().into_bytes(),
            Some("application/xml"),
            reason::UNSUPPORTED_CONTENT_TYPE,
        ),
        (
            "latin-1 charset",
            req.to_string().into_bytes(),
            Some("application/json; charset=iso-8859-1"),
            reason::UNSUPPORTED_CONTENT_TYPE,
        ),
        ("bad json", b"{\"a\":".to_vec(), None, reason::INVALID_JSON),
        (
            "trailing garbage",
            b"{} x".to_vec(),
            None,
            reason::INVALID_JSON,
        ),
        (
            "10,000 nested arrays",
            "[".repeat(10_000).into_bytes(),
            None,
            reason::INVALID_JSON,
        ),
        (
            "10,000 nested objects",
            r#"{"a":"#.repeat(10_000).into_bytes(),
            None,
            reason::INVALID_JSON,
        ),
        ("array", b"[1,2]".to_vec(), None, reason::MISSING_FIELD),
        ("string", b"\"hi\"".to_vec(), None, reason::MISSING_FIELD),
    ];
    let mut json_cases: Vec<(&str, Value, &str)> = vec![
        (
            "no specversion",
            with(&req, "specversion", None),
            reason::MISSING_FIELD,
        ),
        (
            "numeric specversion",
            with(&req, "specversion", Some(json!(1.0))),
            reason::MISSING_FIELD,
        ),
        ("no id", with(&req, "id", None), reason::MISSING_FIELD),
        (
            "empty id",
            with(&req, "id", Some(json!(""))),
            reason::MISSING_FIELD,
        ),
        (
            "numeric id",
            with(&req, "id", Some(json!(7))),
            reason::MISSING_FIELD,
        ),
        (
            "no source",
            with(&req, "source", None),
            reason::MISSING_FIELD,
        ),
        ("no type", with(&req, "type", None), reason::MISSING_FIELD),
        (
            "type not a string",
            with(&req, "type", Some(json!(["x"]))),
            reason::MISSING_FIELD,
        ),
        (
            "specversion 0.3",
            with(&req, "specversion", Some(json!("0.3"))),
            reason::UNSUPPORTED_SPECVERSION,
        ),
        (
            "unknown type",
            with(&req, "type", Some(json!("callback.exploded"))),
            reason::UNSUPPORTED_TYPE,
        ),
        (
            "time not rfc3339",
            with(&req, "time", Some(json!("yesterday"))),
            reason::INVALID_TIME,
        ),
        (
            "time a number",
            with(&req, "time", Some(json!(1700000000))),
            reason::INVALID_TIME,
        ),
        ("no data", with(&req, "data", None), reason::INVALID_DATA),
        (
            "data a string",
            with(&req, "data", Some(json!("x"))),
            reason::INVALID_DATA,
        ),
        (
            "no phone",
            with(&req, "data.phone", None),
            reason::MISSING_FIELD,
        ),
        (
            "phone not e164",
            with(&req, "data.phone", Some(json!("0612345678"))),
            reason::INVALID_PHONE,
        ),
        (
            "phone invalid",
            with(&req, "data.phone", Some(json!("+3161234"))),
            reason::INVALID_PHONE,
        ),
        (
            "phone a number",
            with(&req, "data.phone", Some(json!(31612345678u64))),
            reason::INVALID_PHONE,
        ),
        (
            "no queue",
            with(&req, "data.queue", None),
            reason::MISSING_FIELD,
        ),
        (
            "unknown queue",
            with(&req, "data.queue", Some(json!("billing"))),
            reason::UNKNOWN_QUEUE,
        ),
        (
            "queue bad name",
            with(&req, "data.queue", Some(json!("Support!"))),
            reason::UNKNOWN_QUEUE,
        ),
        (
            "queue a number",
            with(&req, "data.queue", Some(json!(3))),
            reason::UNKNOWN_QUEUE,
        ),
        (
            "bad priority",
            with(&req, "data.priority", Some(json!("asap"))),
            reason::INVALID_PRIORITY,
        ),
        (
            "priority a number",
            with(&req, "data.priority", Some(json!(1))),
            reason::INVALID_PRIORITY,
        ),
        (
            "window a string",
            with(&req, "data.window", Some(json!("later"))),
            reason::INVALID_WINDOW,
        ),
        (
            "window bad time",
            with(&req, "data.window.not_before", Some(json!("noon"))),
            reason::INVALID_WINDOW,
        ),
        (
            "window half",
            with(&req, "data.window.not_after", None),
            reason::INVALID_WINDOW,
        ),
        (
            "window reversed",
            with(
                &req,
                "data.window",
                Some(
                    json!({"not_before": "2025-03-01T14:00:00Z", "not_after": "2025-03-01T12:00:00Z"}),
                ),
            ),
            reason::INVALID_WINDOW,
        ),
        (
            "window empty",
            with(
                &req,
                "data.window",
                Some(
                    json!({"not_before": "2025-03-01T14:00:00Z", "not_after": "2025-03-01T14:00:00Z"}),
                ),
            ),
            reason::INVALID_WINDOW,
        ),
        (
            "bad timezone",
            with(&req, "data.customer.timezone", Some(json!("Mars/Olympus"))),
            reason::INVALID_TIMEZONE,
        ),
        (
            "timezone a number",
            with(&req, "data.customer.timezone", Some(json!(2))),
            reason::INVALID_TIMEZONE,
        ),
        (
            "customer a string",
            with(&req, "data.customer", Some(json!("Ada"))),
            reason::INVALID_DATA,
        ),
        (
            "customer name a number",
            with(&req, "data.customer.name", Some(json!(5))),
            reason::INVALID_DATA,
        ),
        (
            "agent_id a number",
            with(&req, "data.agent_id", Some(json!(5))),
            reason::INVALID_DATA,
        ),
        (
            "call a list",
            with(&req, "data.call", Some(json!([]))),
            reason::INVALID_DATA,
        ),
        (
            "waited negative",
            with(&req, "data.call.waited_seconds", Some(json!(-1))),
            reason::INVALID_DATA,
        ),
        (
            "context a string",
            with(&req, "data.context", Some(json!("billing"))),
            reason::INVALID_CONTEXT,
        ),
        (
            "context an array",
            with(&req, "data.context", Some(json!([1]))),
            reason::INVALID_CONTEXT,
        ),
        (
            "context too big",
            with(&req, "data.context", Some(json!({"notes": big_context}))),
            reason::INVALID_CONTEXT,
        ),
        (
            "cancel bad id",
            with(&cancel, "data.callback_id", Some(json!("nope"))),
            reason::INVALID_CALLBACK_ID,
        ),
        (
            "cancel id a number",
            with(&cancel, "data.callback_id", Some(json!(12))),
            reason::INVALID_CALLBACK_ID,
        ),
        (
            "cancel bad reason",
            with(&cancel, "data.reason", Some(json!("bored"))),
            reason::INVALID_REASON,
        ),
        (
            "cancel opted_out reason",
            with(&cancel, "data.reason", Some(json!("opted_out"))),
            reason::INVALID_REASON,
        ),
        (
            "cancel no target",
            with(&cancel, "data.callback_id", None),
            reason::MISSING_FIELD,
        ),
        (
            "cancel unknown queue",
            event(
                "callback.cancelled",
                json!({"phone": PHONE, "queue": "nope"}),
            ),
            reason::UNKNOWN_QUEUE,
        ),
        (
            "cancel bad phone",
            event("callback.cancelled", json!({"phone": "+3161234"})),
            reason::INVALID_PHONE,
        ),
        (
            "opt-out no phone",
            event("contact.opted_out", json!({})),
            reason::MISSING_FIELD,
        ),
        (
            "opt-out bad phone",
            event("contact.opted_out", json!({"phone": "123"})),
            reason::INVALID_PHONE,
        ),
        (
            "attempt no agent",
            with(&attempt, "data.agent_id", None),
            reason::MISSING_FIELD,
        ),
        (
            "attempt empty agent",
            with(&attempt, "data.agent_id", Some(json!(""))),
            reason::MISSING_FIELD,
        ),
        (
            "attempt no outcome",
            with(&attempt, "data.outcome", None),
            reason::MISSING_FIELD,
        ),
        (
            "attempt bad outcome",
            with(&attempt, "data.outcome", Some(json!("hung_up"))),
            reason::INVALID_OUTCOME,
        ),
        (
            "attempt no id",
            with(&attempt, "data.callback_id", None),
            reason::MISSING_FIELD,
        ),
        (
            "attempt bad id",
            with(&attempt, "data.callback_id", Some(json!("x"))),
            reason::INVALID_CALLBACK_ID,
        ),
        (
            "attempt note a number",
            with(&attempt, "data.note", Some(json!(1))),
            reason::INVALID_DATA,
        ),
    ];
    for (name, value, expected) in json_cases.drain(..) {
        cases.push((name, value.to_string().into_bytes(), None, expected));
    }

    for (name, body, content_type, expected) in cases {
        let rejection = decode::decode(&body, content_type, &rules)
            .expect_err(&format!("case '{name}' should be refused"));
        assert_eq!(rejection.reason, expected, "case '{name}': {rejection:?}");
        assert_clean(&rejection);
    }
}

#[test]
fn invalid_phone_detail_is_masked() {
    let value = with(&requested(), "data.phone", Some(json!("+31612345670000")));
    let rejection = run(&value).unwrap_err();
    assert_eq!(rejection.reason, reason::INVALID_PHONE);
    assert!(rejection.detail.contains("*"), "{}", rejection.detail);
    assert!(
        !rejection.detail.contains("612345670"),
        "{}",
        rejection.detail
    );
}

#[test]
fn deep_nesting_inside_data_is_refused_without_overflow() {
    // Runs on a small stack on purpose: the parser's recursion limit, not luck, must save us.
    let body = format!(
        r#"{{"specversion":"1.0","id":"1","source":"s","type":"callback.requested","data":{{"phone":"{PHONE}","queue":"support","context":{}}}}}"#,
        "[".repeat(10_000)
    );
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || decode::decode(body.as_bytes(), None, &support_rules()))
        .unwrap();
    let rejection = handle.join().expect("no stack overflow").unwrap_err();
    assert_eq!(rejection.reason, reason::INVALID_JSON);
}

#[test]
fn nesting_under_the_limit_still_decodes() {
    let mut context = json!("leaf");
    for _ in 0..100 {
        context = json!({ "k": context });
    }
    let value = with(&requested(), "data.context", Some(context));
    assert!(run(&value).is_ok());
}

// ---- fuzz-style properties ----

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just(json!(PHONE)),
            Just(json!("support")),
            Just(json!("1.0")),
            Just(json!("callback.requested")),
            Just(json!("callback.cancelled")),
            Just(json!("contact.opted_out")),
            Just(json!("callback.attempted")),
            Just(json!(CALLBACK_ID)),
            Just(json!("2025-03-01T10:00:00Z")),
        ],
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,10}",
                    Just("phone".to_string()),
                    Just("queue".to_string()),
                    Just("data".to_string()),
                    Just("window".to_string()),
                    Just("context".to_string()),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths into a valid event that mutations aim at.
const PATHS: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "data",
    "data.phone",
    "data.queue",
    "data.priority",
    "data.window",
    "data.window.not_before",
    "data.window.not_after",
    "data.customer",
    "data.customer.timezone",
    "data.customer.name",
    "data.agent_id",
    "data.context",
    "data.call",
    "data.call.waited_seconds",
    "data.callback_id",
    "data.outcome",
    "data.reason",
];

fn valid_events() -> Vec<Value> {
    vec![
        requested(),
        event(
            "callback.cancelled",
            json!({"callback_id": CALLBACK_ID, "phone": PHONE, "reason": "customer_request"}),
        ),
        event("contact.opted_out", json!({"phone": PHONE})),
        event(
            "callback.attempted",
            json!({"callback_id": CALLBACK_ID, "outcome": "connected", "agent_id": "a1"}),
        ),
    ]
}

/// Sets or removes a path, creating intermediate objects where the parent is not one.
fn mutate(base: &Value, path: &str, value: Option<Value>) -> Value {
    let mut out = base.clone();
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys.pop().unwrap();
    let mut target = &mut out;
    for key in keys {
        if !target.is_object() {
            *target = json!({});
        }
        target = target
            .as_object_mut()
            .unwrap()
            .entry(key)
            .or_insert_with(|| json!({}));
    }
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    match value {
        Some(v) => {
            object.insert(last.to_owned(), v);
        }
        None => {
            object.remove(last);
        }
    }
    out
}

fn check(result: Result<callkeeper::domain::inbound::Inbound, Rejection>) {
    if let Err(rejection) = result {
        assert_clean(&rejection);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512),
                                   ct in prop::option::of(".{0,40}")) {
        check(decode::decode(&body, ct.as_deref(), &support_rules()));
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        check(decode::decode(value.to_string().as_bytes(), None, &support_rules()));
    }

    #[test]
    fn arbitrary_data_under_a_valid_envelope_never_panics(
        kind in prop_oneof![
            Just("callback.requested"), Just("callback.cancelled"),
            Just("contact.opted_out"), Just("callback.attempted"),
        ],
        data in arb_json(),
    ) {
        check(decode::decode(event(kind, data).to_string().as_bytes(), None, &support_rules()));
    }

    #[test]
    fn mutated_valid_events_never_panic(
        which in 0..4usize,
        mutations in prop::collection::vec(
            (prop::sample::select(PATHS), prop::option::of(arb_json())), 1..4),
    ) {
        let mut value = valid_events()[which].clone();
        for (path, replacement) in mutations {
            value = mutate(&value, path, replacement);
        }
        check(decode::decode(value.to_string().as_bytes(), None, &support_rules()));
    }

    #[test]
    fn byte_flips_of_valid_events_never_panic(
        which in 0..4usize,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut body = valid_events()[which].to_string().into_bytes();
        for (index, byte) in flips {
            let i = index.index(body.len());
            body[i] = byte;
        }
        check(decode::decode(&body, Some("application/cloudevents+json"), &support_rules()));
    }
}
