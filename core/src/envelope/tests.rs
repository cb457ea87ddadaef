//! Unit tests for [`super`]: one record per case, parsed in memory.

use super::*;

fn envelope_record(value: &[u8]) -> Record<'_> {
    Record {
        key: Some(b"txn-42"),
        value: Some(value),
        ..Record::default()
    }
}

fn parse_default(record: &Record<'_>) -> Result<Event, EnvelopeError> {
    parse(record, &Limits::default())
}

const ENVELOPE: &[u8] = br#"{"id":"evt_1","type":"transaction.approved","timestamp":"2024-05-01T12:00:00+02:00","data":{"amount":12345678901234567890,"currency":"EUR"},"extra":true}"#;

#[test]
fn envelope_parses_with_key_and_data_kept_verbatim() {
    let event = parse_default(&envelope_record(ENVELOPE)).unwrap();
    assert_eq!(event.id, "evt_1");
    assert_eq!(event.event_type, "transaction.approved");
    assert_eq!(event.timestamp.to_string(), "2024-05-01T10:00:00Z");
    assert_eq!(
        event.data.get(),
        r#"{"amount":12345678901234567890,"currency":"EUR"}"#
    );
    assert_eq!(event.key.as_deref(), Some("txn-42"));
    assert_eq!(event.format, Format::Envelope);
}

#[test]
fn payload_is_type_timestamp_and_data_only() {
    let event = parse_default(&envelope_record(ENVELOPE)).unwrap();
    assert_eq!(
        &event.payload()[..],
        br#"{"type":"transaction.approved","timestamp":"2024-05-01T10:00:00Z","data":{"amount":12345678901234567890,"currency":"EUR"}}"#
    );
}

#[test]
fn a_large_events_body_holds_no_more_memory_than_its_bytes() {
    let data = "x".repeat(64 * 1024);
    let value = serde_json::to_vec(&serde_json::json!(
        {"id": "evt_big", "type": "a.b", "timestamp": "2024-05-01T12:00:00Z", "data": {"pad": data}}
    ))
    .unwrap();
    let event = parse_default(&envelope_record(&value)).unwrap();
    for body in [event.payload(), event.to_envelope()] {
        let len = body.len();
        let held = body.try_into_mut().expect("the only handle").capacity();
        // A Vec grown by doubling would hold 128 KiB for these 64 KiB.
        assert!(held <= len + 256, "{held} bytes held for a body of {len}");
    }
}

#[test]
fn envelope_written_for_retries_parses_back_to_the_same_event() {
    let event = parse_default(&envelope_record(ENVELOPE)).unwrap();
    let again = parse_default(&envelope_record(&event.to_envelope())).unwrap();
    assert_eq!(again.id, event.id);
    assert_eq!(again.event_type, event.event_type);
    assert_eq!(again.timestamp, event.timestamp);
    assert_eq!(again.data.get(), event.data.get());
    assert_eq!(again.payload(), event.payload());
}

#[test]
fn record_over_the_size_limit_is_too_large_before_anything_is_read() {
    let value = vec![b'x'; 100];
    let headers = [("h", &b"12345"[..])];
    let record = Record {
        key: Some(b"k"),
        value: Some(&value),
        headers: &headers,
        timestamp: None,
    };
    let err = parse(
        &record,
        &Limits {
            max_record_bytes: 106,
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::TooLarge {
            size: 107,
            limit: 106
        }
    );
    assert_eq!(err.reason(), "too_large");
    // At the limit exactly, the record is read (and here found not to be JSON).
    let err = parse(
        &record,
        &Limits {
            max_record_bytes: 107,
        },
    )
    .unwrap_err();
    assert_eq!(err.reason(), "invalid_json");
}

#[test]
fn values_that_are_not_a_json_object_are_invalid_json() {
    for value in [&b"not json"[..], b"[1,2]", b"\"text\"", b"{\"id\":", b""] {
        let err = parse_default(&envelope_record(value)).unwrap_err();
        assert_eq!(err.reason(), "invalid_json", "{value:?}");
    }
    let tombstone = Record {
        value: None,
        ..Record::default()
    };
    assert_eq!(
        parse_default(&tombstone).unwrap_err().reason(),
        "invalid_json"
    );
}

#[test]
fn each_missing_envelope_field_is_named() {
    let full = serde_json::json!({"id": "a", "type": "t", "timestamp": "2024-05-01T00:00:00Z", "data": null});
    for field in ["id", "type", "timestamp", "data"] {
        let mut partial = full.clone();
        partial.as_object_mut().unwrap().remove(field);
        let bytes = serde_json::to_vec(&partial).unwrap();
        let err = parse_default(&envelope_record(&bytes)).unwrap_err();
        assert_eq!(err, EnvelopeError::MissingField(field));
        assert_eq!(err.reason(), "missing_field");
    }
}

#[test]
fn explicit_null_data_is_kept_but_a_numeric_id_is_an_invalid_field() {
    let event = parse_default(&envelope_record(
        br#"{"id":"a","type":"t","timestamp":"2024-05-01T00:00:00Z","data":null}"#,
    ))
    .unwrap();
    assert_eq!(event.data.get(), "null");

    let err = parse_default(&envelope_record(
        br#"{"id":7,"type":"t","timestamp":"2024-05-01T00:00:00Z","data":1}"#,
    ))
    .unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::InvalidField {
            field: "id",
            expected: "a string"
        }
    );
}

#[test]
fn event_types_outside_the_grammar_are_invalid_type() {
    for good in ["a", "transaction.approved", "A9_b-c.d", &"x".repeat(253)] {
        assert!(is_valid_event_type(good), "{good:?}");
    }
    for bad in ["", ".a", "-a", "a b", "a/b", "a*", "é", &"x".repeat(254)] {
        assert!(!is_valid_event_type(bad), "{bad:?}");
        let value = serde_json::to_vec(&serde_json::json!(
            {"id": "a", "type": bad, "timestamp": "2024-05-01T00:00:00Z", "data": 1}
        ))
        .unwrap();
        let err = parse_default(&envelope_record(&value)).unwrap_err();
        assert_eq!(err.reason(), "invalid_type", "{bad:?}");
    }
}

#[test]
fn event_ids_must_be_short_visible_ascii() {
    assert!(is_valid_event_id("msg_2b7Q.~!"));
    assert!(is_valid_event_id(&"i".repeat(255)));
    for bad in ["", "a b", "a\nb", "ü", &"i".repeat(256)] {
        assert!(!is_valid_event_id(bad), "{bad:?}");
    }
    let err = parse_default(&envelope_record(
        br#"{"id":"","type":"t","timestamp":"2024-05-01T00:00:00Z","data":1}"#,
    ))
    .unwrap_err();
    assert_eq!(err.reason(), "invalid_id");
}

#[test]
fn timestamps_that_are_not_rfc3339_are_invalid_timestamp() {
    for bad in [
        "yesterday",
        "2024-05-01",
        "2024-05-01T12:00:00",
        "1714564800",
    ] {
        let value = serde_json::to_vec(&serde_json::json!(
            {"id": "a", "type": "t", "timestamp": bad, "data": 1}
        ))
        .unwrap();
        let err = parse_default(&envelope_record(&value)).unwrap_err();
        assert_eq!(err.reason(), "invalid_timestamp", "{bad:?}");
    }
}

#[test]
fn long_hostile_values_are_cut_short_in_error_messages() {
    let long_type = "x y".repeat(1000);
    let value = serde_json::to_vec(&serde_json::json!(
        {"id": "a", "type": long_type, "timestamp": "2024-05-01T00:00:00Z", "data": 1}
    ))
    .unwrap();
    let message = parse_default(&envelope_record(&value))
        .unwrap_err()
        .to_string();
    assert!(message.len() < 300, "{message}");
}

fn binary_headers<'a>(extra: &[(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a [u8])> {
    let mut headers = vec![
        ("ce_specversion", &b"1.0"[..]),
        ("ce_id", b"ce-1"),
        ("ce_type", b"transaction.rejected"),
        ("ce_source", b"/decisions"),
        ("ce_time", b"2024-05-01T12:00:00Z"),
    ];
    headers.extend_from_slice(extra);
    headers
}

#[test]
fn cloudevents_binary_mode_reads_headers_and_takes_the_value_as_data() {
    let headers = binary_headers(&[("Content-Type", b"application/json; charset=utf-8")]);
    let record = Record {
        key: Some(b"txn-7"),
        value: Some(br#"{"decision":"REJECT"}"#),
        headers: &headers,
        timestamp: None,
    };
    let event = parse_default(&record).unwrap();
    assert_eq!(event.id, "ce-1");
    assert_eq!(event.event_type, "transaction.rejected");
    assert_eq!(event.timestamp.to_string(), "2024-05-01T12:00:00Z");
    assert_eq!(event.data.get(), r#"{"decision":"REJECT"}"#);
    assert_eq!(event.key.as_deref(), Some("txn-7"));
    assert_eq!(event.format, Format::CloudEventsBinary);
}

#[test]
fn cloudevents_binary_text_becomes_a_json_string_and_other_media_types_are_refused() {
    let headers = binary_headers(&[("content-type", b"text/plain")]);
    let record = Record {
        value: Some(b"he said \"no\""),
        headers: &headers,
        ..Record::default()
    };
    assert_eq!(
        parse_default(&record).unwrap().data.get(),
        r#""he said \"no\"""#
    );

    let headers = binary_headers(&[("content-type", b"application/octet-stream")]);
    let record = Record {
        value: Some(&[0xff, 0x00]),
        headers: &headers,
        ..Record::default()
    };
    assert_eq!(
        parse_default(&record).unwrap_err().reason(),
        "unsupported_content_type"
    );

    let headers = binary_headers(&[]);
    let record = Record {
        value: Some(b"{broken"),
        headers: &headers,
        ..Record::default()
    };
    assert_eq!(parse_default(&record).unwrap_err().reason(), "invalid_json");
}

#[test]
fn cloudevents_binary_without_time_falls_back_to_the_record_timestamp() {
    let headers: Vec<_> = binary_headers(&[])
        .into_iter()
        .filter(|(name, _)| *name != "ce_time")
        .collect();
    let record_time: Timestamp = "2024-06-01T08:00:00Z".parse().unwrap();
    let record = Record {
        value: None,
        headers: &headers,
        timestamp: Some(record_time),
        ..Record::default()
    };
    let event = parse_default(&record).unwrap();
    assert_eq!(event.timestamp, record_time);
    assert_eq!(event.data.get(), "null");

    let without_either = Record {
        timestamp: None,
        ..record
    };
    assert_eq!(
        parse_default(&without_either).unwrap_err(),
        EnvelopeError::MissingField("ce_time")
    );
}

#[test]
fn cloudevents_binary_with_another_spec_version_or_no_id_is_refused() {
    let headers = binary_headers(&[("ce_specversion", b"0.3")]);
    let record = Record {
        headers: &headers,
        ..Record::default()
    };
    assert_eq!(
        parse_default(&record).unwrap_err().reason(),
        "unsupported_spec_version"
    );

    let headers: Vec<_> = binary_headers(&[])
        .into_iter()
        .filter(|(name, _)| *name != "ce_id")
        .collect();
    let record = Record {
        headers: &headers,
        ..Record::default()
    };
    assert_eq!(
        parse_default(&record).unwrap_err(),
        EnvelopeError::MissingField("ce_id")
    );
}

fn structured(value: &[u8]) -> Result<Event, EnvelopeError> {
    let headers = [(
        "content-type",
        &b"application/cloudevents+json; charset=UTF-8"[..],
    )];
    parse_default(&Record {
        key: Some(b"k"),
        value: Some(value),
        headers: &headers,
        timestamp: None,
    })
}

#[test]
fn cloudevents_structured_mode_reads_data_or_data_base64() {
    let event = structured(
        br#"{"specversion":"1.0","id":"s-1","type":"transaction.review","source":"/x","time":"2024-05-01T12:00:00Z","data":{"n":1}}"#,
    )
    .unwrap();
    assert_eq!(event.id, "s-1");
    assert_eq!(event.data.get(), r#"{"n":1}"#);
    assert_eq!(event.format, Format::CloudEventsStructured);

    // {"n":2} in base64, with a JSON datacontenttype: delivered as JSON.
    let event = structured(
        br#"{"specversion":"1.0","id":"s-2","type":"t","time":"2024-05-01T12:00:00Z","datacontenttype":"application/json","data_base64":"eyJuIjoyfQ=="}"#,
    )
    .unwrap();
    assert_eq!(event.data.get(), r#"{"n":2}"#);

    let event =
        structured(br#"{"specversion":"1.0","id":"s-3","type":"t","time":"2024-05-01T12:00:00Z"}"#)
            .unwrap();
    assert_eq!(event.data.get(), "null");
}

#[test]
fn cloudevents_structured_mode_refuses_both_data_forms_and_bad_base64() {
    let both = structured(
        br#"{"specversion":"1.0","id":"s","type":"t","time":"2024-05-01T12:00:00Z","data":1,"data_base64":"MQ=="}"#,
    )
    .unwrap_err();
    assert_eq!(both.reason(), "invalid_field");

    let bad = structured(
        br#"{"specversion":"1.0","id":"s","type":"t","time":"2024-05-01T12:00:00Z","data_base64":"!!"}"#,
    )
    .unwrap_err();
    assert_eq!(bad.reason(), "invalid_data");

    let no_spec =
        structured(br#"{"id":"s","type":"t","time":"2024-05-01T12:00:00Z"}"#).unwrap_err();
    assert_eq!(no_spec, EnvelopeError::MissingField("specversion"));
}

#[test]
fn cloudevents_batches_are_refused_as_unsupported() {
    let headers = [("content-type", &b"application/cloudevents-batch+json"[..])];
    let record = Record {
        value: Some(b"[]"),
        headers: &headers,
        ..Record::default()
    };
    assert_eq!(
        parse_default(&record).unwrap_err().reason(),
        "unsupported_content_type"
    );
}

#[test]
fn a_key_with_invalid_utf8_is_kept_with_replacement_characters() {
    let record = Record {
        key: Some(&[b'k', 0xff]),
        ..envelope_record(ENVELOPE)
    };
    assert_eq!(
        parse_default(&record).unwrap().key.as_deref(),
        Some("k\u{fffd}")
    );
    let keyless = Record {
        key: None,
        ..record
    };
    assert_eq!(parse_default(&keyless).unwrap().key, None);
}
