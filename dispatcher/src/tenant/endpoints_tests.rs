//! Unit tests for [`super`]: settings from specs, the registry's bookkeeping,
//! disabling and re-enabling, test nonces.

use super::*;
use crate::tenant::settings::DEFAULT_TIMEOUT;
use hookline_core::retry::Backoff;
use hookline_core::status::MIN_PARK;
use hookline_crds::{DisabledStatus, TestStatus, WebhookStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

fn webhook(name: &str, spec: serde_json::Value) -> Webhook {
    let mut w: Webhook = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": name, "namespace": "acme", "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": "1"},
        "spec": spec,
    }))
    .unwrap();
    w.status = Some(WebhookStatus::default());
    w
}

fn basic(name: &str) -> Webhook {
    webhook(
        name,
        json!({"url": "https://h.example/x", "eventTypes": ["transaction.*"]}),
    )
}

fn keys() -> SigningKeys {
    let key = Secret::from_bytes(&[7; 32]).unwrap().expose_whsec();
    SigningKeys::from_layout(Some(key.as_bytes()), None, None).unwrap()
}

fn bump(w: &mut Webhook) {
    let rv: u64 = w
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    w.metadata.resource_version = Some((rv + 1).to_string());
}

#[test]
fn an_empty_delivery_section_gets_the_documented_defaults() {
    let s = Settings::from_webhook(&basic("fraud"), &RetryPolicy::default()).unwrap();
    assert_eq!(s.timeout, DEFAULT_TIMEOUT);
    assert!(s.per_key);
    assert_eq!(s.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    assert_eq!(s.rate_per_second, None);
    assert_eq!(s.policy, RetryPolicy::default());
    assert_eq!(s.secret_name, "fraud-signing");
    assert!(s.matcher.matches("transaction.approved"));
}

#[test]
fn the_delivery_section_is_read() {
    let w = webhook(
        "fraud",
        json!({
            "url": "http://127.0.0.1:8080/hook", "eventTypes": ["a"], "paused": true,
            "secretRef": {"name": "mine"}, "headers": {"x-team": "risk"},
            "delivery": {"timeout": "1500ms", "ordering": "Unordered", "maxInFlight": 4, "rateLimit": {"perSecond": 5},
                         "retry": {"maxAttempts": 3, "backoff": "constant", "initialDelay": "2s", "maxDelay": "1m"}}
        }),
    );
    let s = Settings::from_webhook(&w, &RetryPolicy::default()).unwrap();
    assert_eq!(s.timeout, Duration::from_millis(1500));
    assert!(!s.per_key && s.paused);
    assert_eq!((s.max_in_flight, s.rate_per_second), (4, Some(5.0)));
    assert_eq!(s.policy.max_attempts, 3);
    assert_eq!(s.policy.backoff, Backoff::Constant);
    assert_eq!(s.policy.initial_delay, Duration::from_secs(2));
    assert_eq!(s.secret_name, "mine");
    assert_eq!(s.headers[0].0.as_str(), "x-team");
}

#[test]
fn a_spec_the_schema_should_have_refused_is_explained() {
    let w = webhook(
        "x",
        json!({"url": "https://h.example/", "eventTypes": ["a"], "delivery": {"timeout": "soon"}}),
    );
    let err = Settings::from_webhook(&w, &RetryPolicy::default()).unwrap_err();
    assert_eq!(err.field, "delivery.timeout", "{err}");
    let w = webhook(
        "x",
        json!({"url": "https://h.example/", "eventTypes": ["a"], "headers": {"bad name": "v"}}),
    );
    let err = Settings::from_webhook(&w, &RetryPolicy::default()).unwrap_err();
    assert_eq!(err.field, "headers", "{err}");
}

#[test]
fn the_registry_adds_updates_and_removes_endpoints() {
    let reg = Registry::new(RetryPolicy::default());
    let mut a = basic("a");
    let report = reg.sync(&[Arc::new(a.clone()), Arc::new(basic("b"))]);
    assert_eq!(report.secrets_to_load, 2);
    assert_eq!(reg.snapshot().len(), 2);
    let first = reg.get("a").unwrap();

    a.spec.paused = true;
    bump(&mut a);
    let report = reg.sync(&[Arc::new(a.clone())]);
    assert_eq!(report.removed, vec![Arc::<str>::from("b")]);
    assert!(
        Arc::ptr_eq(&first, &reg.get("a").unwrap()),
        "same endpoint, state kept"
    );
    assert_eq!(first.availability(), Availability::Paused);

    a.metadata.uid = Some("other".into());
    reg.sync(&[Arc::new(a)]);
    assert!(
        !Arc::ptr_eq(&first, &reg.get("a").unwrap()),
        "re-created: new endpoint"
    );
}

#[test]
fn keys_are_wanted_without_any_and_once_after_a_rotation_not_on_other_changes() {
    let reg = Registry::new(RetryPolicy::default());
    let mut a = basic("a");
    reg.sync(&[Arc::new(a.clone())]);
    let e = reg.get("a").unwrap();
    assert!(e.take_keys_wanted(), "no keys yet");
    e.set_keys(Some(keys()));
    assert!(!e.take_keys_wanted());

    a.spec.paused = true;
    bump(&mut a);
    reg.sync(&[Arc::new(a.clone())]);
    assert!(!e.take_keys_wanted(), "a change that is not a rotation");

    a.status.as_mut().unwrap().secret = Some(hookline_crds::SecretStatus {
        name: "a-signing".into(),
        generation: 2,
        rotated_at: None,
        previous_valid_until: None,
    });
    bump(&mut a);
    assert_eq!(reg.sync(&[Arc::new(a)]).secrets_to_load, 1);
    assert!(e.take_keys_wanted(), "rotated");
    assert!(!e.take_keys_wanted(), "taken");
    e.keys_read_failed();
    assert!(e.take_keys_wanted(), "wanted again after a failed read");
}

#[test]
fn an_endpoint_without_keys_waits_for_them() {
    let reg = Registry::new(RetryPolicy::default());
    reg.sync(&[Arc::new(basic("a"))]);
    let e = reg.get("a").unwrap();
    assert_eq!(e.availability(), Availability::NoKeys);
    assert!(e.keys_at(Timestamp::now()).is_empty());
}

#[test]
fn gone_disables_until_the_generation_or_the_enable_annotation_changes() {
    let reg = Registry::new(RetryPolicy::default());
    let mut a = basic("a");
    reg.sync(&[Arc::new(a.clone())]);
    let e = reg.get("a").unwrap();
    assert!(e.disable(Timestamp::now()));
    assert!(!e.disable(Timestamp::now()), "only once");
    assert_eq!(e.availability(), Availability::Disabled);

    bump(&mut a); // a status write: same generation
    reg.sync(&[Arc::new(a.clone())]);
    assert!(e.is_disabled());

    a.metadata.annotations = Some([(annotations::ENABLE.to_owned(), "1".to_owned())].into());
    bump(&mut a);
    reg.sync(&[Arc::new(a.clone())]);
    assert!(!e.is_disabled(), "enable annotation changed");

    assert!(e.disable(Timestamp::now()));
    a.metadata.generation = Some(2);
    bump(&mut a);
    reg.sync(&[Arc::new(a)]);
    assert!(!e.is_disabled(), "spec changed");
}

#[test]
fn a_stored_disabled_status_holds_only_for_its_generation() {
    let mut a = basic("a");
    a.status = Some(WebhookStatus {
        disabled: Some(DisabledStatus {
            since: Time(Timestamp::now()),
            reason: "Gone".into(),
            generation: Some(1),
        }),
        ..WebhookStatus::default()
    });
    let reg = Registry::new(RetryPolicy::default());
    reg.sync(&[Arc::new(a.clone())]);
    assert!(reg.get("a").unwrap().is_disabled());

    a.metadata.generation = Some(2);
    a.metadata.uid = Some("uid-a2".into());
    reg.sync(&[Arc::new(a)]);
    let e = reg.get("a").unwrap();
    assert!(!e.is_disabled());
    assert!(e.stats(|s| s.dirty), "the stale disabled must be cleared");
}

#[test]
fn a_test_nonce_is_sent_once_until_answered() {
    let reg = Registry::new(RetryPolicy::default());
    let mut a = basic("a");
    a.metadata.annotations = Some([(annotations::TEST.to_owned(), "n1".to_owned())].into());
    let report = reg.sync(&[Arc::new(a.clone())]);
    assert_eq!(report.tests.len(), 1);
    assert_eq!(report.tests[0].1, "n1");
    bump(&mut a);
    assert!(
        reg.sync(&[Arc::new(a.clone())]).tests.is_empty(),
        "already started"
    );

    // A new dispatcher sees the answered nonce and does not send again.
    a.status = Some(WebhookStatus {
        last_test: Some(TestStatus {
            nonce: "n1".into(),
            time: Time(Timestamp::now()),
            success: true,
            status_code: Some(200),
            latency_ms: Some(1),
            error: None,
        }),
        ..WebhookStatus::default()
    });
    assert!(
        Registry::new(RetryPolicy::default())
            .sync(&[Arc::new(a)])
            .tests
            .is_empty()
    );
}

#[test]
fn deliveries_to_a_paused_webhook_are_parked_longer_the_longer_it_is_paused() {
    let reg = Registry::new(RetryPolicy::default());
    let mut a = basic("a");
    a.spec.paused = true;
    reg.sync(&[Arc::new(a.clone())]);
    let e = reg.get("a").unwrap();
    let hour = Duration::from_secs(3600);
    e.set_keys(Some(keys()));
    assert_eq!(e.hold(hour), Hold::Postpone(MIN_PARK), "just paused");
    e.pause_started(Some(Instant::now() - Duration::from_secs(600)));
    assert!(matches!(e.hold(hour), Hold::Postpone(d) if d >= Duration::from_secs(600)));
    e.pause_started(Some(Instant::now() - Duration::from_secs(7200)));
    assert_eq!(
        e.hold(hour),
        Hold::Postpone(hour),
        "at most the longest tier"
    );
    a.spec.paused = false;
    bump(&mut a);
    reg.sync(&[Arc::new(a)]);
    assert!(e.spec().paused_since.is_none());
    assert_eq!(
        e.hold(hour),
        Hold::Deliver,
        "resumed: queued jobs go at once"
    );
}

#[test]
fn a_rotation_reported_by_the_controller_asks_for_the_secret_again() {
    use hookline_crds::SecretStatus;
    let reg = Registry::new(RetryPolicy::default());
    let mut a = basic("a");
    reg.sync(&[Arc::new(a.clone())]);
    bump(&mut a);
    assert_eq!(
        reg.sync(&[Arc::new(a.clone())]).secrets_to_load,
        0,
        "nothing changed"
    );
    a.status = Some(WebhookStatus {
        secret: Some(SecretStatus {
            name: "a-signing".into(),
            generation: 2,
            rotated_at: None,
            previous_valid_until: None,
        }),
        ..WebhookStatus::default()
    });
    bump(&mut a);
    assert_eq!(reg.sync(&[Arc::new(a)]).secrets_to_load, 1);
}
