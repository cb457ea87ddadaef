//! Kafka records in, [`Event`]s out: a record's key, value and headers flow
//! through [`parse`], which recognises the three accepted encodings and
//! returns either an `Event` or an [`EnvelopeError`] whose
//! [`reason`](EnvelopeError::reason) labels the dead letter. An `Event` then
//! yields its Standard Webhooks body with [`Event::payload`], once, shared by
//! every webhook and every attempt.
//!
//! The encodings, tried in this order:
//! 1. **CloudEvents binary mode** (Kafka protocol binding), recognised by a
//!    `ce_specversion` header: `ce_id`, `ce_type`, `ce_time` headers; the
//!    value is the data, typed by the `content-type` header.
//! 2. **CloudEvents structured mode**, recognised by `content-type:
//!    application/cloudevents+json`: the value is the CloudEvent as JSON with
//!    `specversion`, `id`, `type`, `time` and `data` or `data_base64`.
//! 3. **Hookline's JSON envelope** otherwise: `{"id", "type", "timestamp",
//!    "data"}`, all four required; other fields are ignored.
//!
//! Decisions worth knowing:
//! - `data` is kept as raw JSON text, never re-encoded through `f64`, so an
//!   amount like `12345678901234567890` reaches the receiver unchanged.
//! - CloudEvents data that is not JSON: `text/*` becomes a JSON string (it
//!   must be UTF-8); any other media type is refused as
//!   `unsupported_content_type`, since the Standard Webhooks body is JSON.
//!   Absent CloudEvents data (or an empty binary-mode value) becomes `null`.
//! - CloudEvents `time` is optional in the spec; when absent the Kafka
//!   record's timestamp is used, and only if both are missing is the record
//!   refused. Timestamps are normalised to UTC on the wire.
//! - The record key (the ordering key) is read as UTF-8, replacing invalid
//!   bytes; two keys that differ only in invalid bytes are then ordered as
//!   one, which can only add ordering, never lose it.
//! - Header names are matched ignoring ASCII case; when a header repeats, the
//!   last one wins.
//! - Reasons are snake_case, like the retry module's, because both end up in
//!   the same dead-letter header and metric label.

use bytes::Bytes;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Default bound on a record's size (key + value + headers): 1 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Longest accepted event type, in bytes.
pub const MAX_TYPE_LEN: usize = 253;
/// Longest accepted event id, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// A Kafka record as the consumer hands it over, borrowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record<'a> {
    /// The record key: the ordering key. `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The record value. `None` for a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in record order; a null header value is passed as empty.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The record's own timestamp, used when a CloudEvent has no `time`.
    pub timestamp: Option<Timestamp>,
}

/// Bounds applied while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest record accepted, counting key, value and headers.
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// Which encoding a record used; useful as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hookline's `{"id","type","timestamp","data"}` envelope.
    Envelope,
    /// CloudEvents, Kafka binding, binary mode.
    CloudEventsBinary,
    /// CloudEvents, Kafka binding, structured mode.
    CloudEventsStructured,
}

impl Format {
    /// A stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Envelope => "envelope",
            Format::CloudEventsBinary => "cloudevents_binary",
            Format::CloudEventsStructured => "cloudevents_structured",
        }
    }
}

/// One event, ready to be matched and delivered.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event id: `webhook-id` on the wire, the receiver's idempotency key.
    pub id: String,
    /// The event type, matched against each `Webhook`'s `eventTypes`.
    pub event_type: String,
    /// When the event happened.
    pub timestamp: Timestamp,
    /// The data, as the producer wrote it (raw JSON).
    pub data: Box<RawValue>,
    /// The ordering key, from the record key.
    pub key: Option<String>,
    /// The encoding the record used.
    pub format: Format,
}

/// Why a record could not become an [`Event`]; the record is dead-lettered
/// with [`reason`](Self::reason) and the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The record exceeds [`Limits::max_record_bytes`].
    #[error("record is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Key + value + headers, in bytes.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The value (or JSON data) is not valid JSON, or not a JSON object
    /// where one is required.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A required field or header is absent.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field is present but of the wrong JSON type or encoding.
    #[error("field `{field}` must be {expected}")]
    InvalidField {
        /// The field or header name.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// The event type does not match `^[a-zA-Z0-9][a-zA-Z0-9._-]*$` or is
    /// longer than 253 bytes.
    #[error(
        "invalid event type {0:?}: must start with a letter or digit, contain only letters, digits, '.', '_' and '-', and be at most 253 bytes"
    )]
    InvalidType(String),
    /// The event id is empty, longer than 255 bytes, or not visible ASCII.
    #[error("invalid event id {0:?}: must be 1 to 255 visible ASCII characters without spaces")]
    InvalidId(String),
    /// The timestamp is not RFC 3339 with an offset.
    #[error("invalid timestamp {0:?}: expected RFC 3339, such as 2024-05-01T12:00:00Z")]
    InvalidTimestamp(String),
    /// `data_base64` is not base64, or text data is not UTF-8.
    #[error("invalid data: {0}")]
    InvalidData(&'static str),
    /// CloudEvents data of a media type that cannot travel in a JSON body.
    #[error("unsupported content type {0:?}: only JSON and text/* data can be delivered")]
    UnsupportedContentType(String),
    /// A CloudEvents spec version other than 1.0.
    #[error("unsupported CloudEvents specversion {0:?}: only 1.0 is accepted")]
    UnsupportedSpecVersion(String),
}

impl EnvelopeError {
    /// A stable snake_case reason for dead-letter headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::TooLarge { .. } => "too_large",
            EnvelopeError::InvalidJson(_) => "invalid_json",
            EnvelopeError::MissingField(_) => "missing_field",
            EnvelopeError::InvalidField { .. } => "invalid_field",
            EnvelopeError::InvalidType(_) => "invalid_type",
            EnvelopeError::InvalidId(_) => "invalid_id",
            EnvelopeError::InvalidTimestamp(_) => "invalid_timestamp",
            EnvelopeError::InvalidData(_) => "invalid_data",
            EnvelopeError::UnsupportedContentType(_) => "unsupported_content_type",
            EnvelopeError::UnsupportedSpecVersion(_) => "unsupported_spec_version",
        }
    }
}

/// Whether `s` is a valid event type: `^[a-zA-Z0-9][a-zA-Z0-9._-]*$`, at
/// most [`MAX_TYPE_LEN`] bytes.
pub fn is_valid_event_type(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= MAX_TYPE_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `s` is a valid event id: 1 to [`MAX_ID_LEN`] bytes of visible
/// ASCII (`!` to `~`), so it is a valid `webhook-id` header value as is.
pub fn is_valid_event_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses one Kafka record into an [`Event`].
///
/// # Guarantees
/// The size check comes first, so an oversized record is refused without
/// being read. Never panics on any input.
///
/// # Errors
/// [`EnvelopeError`]; the caller dead-letters the record with its reason.
pub fn parse(record: &Record<'_>, limits: &Limits) -> Result<Event, EnvelopeError> {
    let size = record.key.map_or(0, <[u8]>::len)
        + record.value.map_or(0, <[u8]>::len)
        + record
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>();
    if size > limits.max_record_bytes {
        return Err(EnvelopeError::TooLarge {
            size,
            limit: limits.max_record_bytes,
        });
    }

    let value = record.value.unwrap_or_default();
    let content_type = header_str(record, "content-type")?.map(media_type);
    let mut event = if header(record, "ce_specversion").is_some() {
        parse_binary(record, value, content_type.as_deref())?
    } else if let Some(ct) = content_type
        .as_deref()
        .filter(|ct| ct.starts_with("application/cloudevents"))
    {
        if ct != "application/cloudevents+json" && ct != "application/cloudevents" {
            return Err(EnvelopeError::UnsupportedContentType(ct.to_owned()));
        }
        parse_structured(record, value)?
    } else {
        parse_envelope(value)?
    };
    event.key = record
        .key
        .map(|key| String::from_utf8_lossy(key).into_owned());
    Ok(event)
}

impl Event {
    /// The Standard Webhooks body: `{"type","timestamp","data"}` as compact
    /// JSON, `timestamp` in RFC 3339 UTC and `data` byte for byte as produced.
    ///
    /// Compute it once per event and share the `Bytes` (cheap to clone)
    /// across webhooks and attempts: the signature covers these exact bytes.
    pub fn payload(&self) -> Bytes {
        self.serialize(None)
    }

    /// The event as Hookline's own envelope `{"id","type","timestamp","data"}`,
    /// for the retry and dead-letter topics; [`parse`] reads it back.
    pub fn to_envelope(&self) -> Bytes {
        self.serialize(Some(&self.id))
    }

    fn serialize(&self, id: Option<&str>) -> Bytes {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
            #[serde(rename = "type")]
            event_type: &'a str,
            timestamp: String,
            data: &'a RawValue,
        }
        let wire = Wire {
            id,
            event_type: &self.event_type,
            timestamp: self.timestamp.to_string(),
            data: &self.data,
        };
        // Sized up front: a growing Vec doubles, and Bytes keeps its whole capacity — an event
        // of 64 KiB held 128 KiB for its body.
        let fixed = r#"{"id":"","type":"","timestamp":"","data":}"#.len();
        let mut out = Vec::with_capacity(
            fixed
                + id.map_or(0, |i| i.len() * 2)
                + self.event_type.len() * 2
                + wire.timestamp.len()
                + self.data.get().len(),
        );
        serde_json::to_writer(&mut out, &wire).expect("strings and raw JSON always serialize");
        out.into()
    }
}

fn parse_envelope(value: &[u8]) -> Result<Event, EnvelopeError> {
    let fields = object_fields(value)?;
    let id = required_string(&fields, "id")?;
    let event_type = required_string(&fields, "type")?;
    let timestamp = required_string(&fields, "timestamp")?;
    let data = fields
        .get("data")
        .ok_or(EnvelopeError::MissingField("data"))?;
    build(
        id,
        event_type,
        parse_timestamp(&timestamp)?,
        (*data).to_owned(),
        Format::Envelope,
    )
}

fn parse_binary(
    record: &Record<'_>,
    value: &[u8],
    content_type: Option<&str>,
) -> Result<Event, EnvelopeError> {
    check_spec_version(header_str(record, "ce_specversion")?.unwrap_or_default())?;
    let id = header_str(record, "ce_id")?.ok_or(EnvelopeError::MissingField("ce_id"))?;
    let event_type =
        header_str(record, "ce_type")?.ok_or(EnvelopeError::MissingField("ce_type"))?;
    let timestamp = match header_str(record, "ce_time")? {
        Some(text) => parse_timestamp(text)?,
        None => record
            .timestamp
            .ok_or(EnvelopeError::MissingField("ce_time"))?,
    };
    let data = data_from_bytes(content_type, value)?;
    build(
        id.to_owned(),
        event_type.to_owned(),
        timestamp,
        data,
        Format::CloudEventsBinary,
    )
}

fn parse_structured(record: &Record<'_>, value: &[u8]) -> Result<Event, EnvelopeError> {
    let fields = object_fields(value)?;
    check_spec_version(&required_string(&fields, "specversion")?)?;
    let id = required_string(&fields, "id")?;
    let event_type = required_string(&fields, "type")?;
    let timestamp = match optional_string(&fields, "time")? {
        Some(text) => parse_timestamp(&text)?,
        None => record
            .timestamp
            .ok_or(EnvelopeError::MissingField("time"))?,
    };
    let content_type = optional_string(&fields, "datacontenttype")?.map(|ct| media_type(&ct));
    let data = match (fields.get("data"), fields.get("data_base64")) {
        (Some(_), Some(_)) => {
            return Err(EnvelopeError::InvalidField {
                field: "data_base64",
                expected: "absent when `data` is present",
            });
        }
        (Some(data), None) => (*data).to_owned(),
        (None, Some(_)) => {
            use base64::Engine as _;
            let encoded = optional_string(&fields, "data_base64")?.unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| EnvelopeError::InvalidData("`data_base64` is not valid base64"))?;
            data_from_bytes(content_type.as_deref(), &bytes)?
        }
        (None, None) => null(),
    };
    build(
        id,
        event_type,
        timestamp,
        data,
        Format::CloudEventsStructured,
    )
}

fn build(
    id: String,
    event_type: String,
    timestamp: Timestamp,
    data: Box<RawValue>,
    format: Format,
) -> Result<Event, EnvelopeError> {
    if !is_valid_event_id(&id) {
        return Err(EnvelopeError::InvalidId(excerpt(&id)));
    }
    if !is_valid_event_type(&event_type) {
        return Err(EnvelopeError::InvalidType(excerpt(&event_type)));
    }
    Ok(Event {
        id,
        event_type,
        timestamp,
        data,
        key: None,
        format,
    })
}

/// Turns bytes typed by a media type into JSON data.
fn data_from_bytes(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<Box<RawValue>, EnvelopeError> {
    if bytes.is_empty() {
        return Ok(null());
    }
    match content_type {
        None => json_data(bytes),
        Some(ct) if ct == "application/json" || ct == "text/json" || ct.ends_with("+json") => {
            json_data(bytes)
        }
        Some(ct) if ct.starts_with("text/") => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| EnvelopeError::InvalidData("text data is not UTF-8"))?;
            Ok(serde_json::value::to_raw_value(text).expect("a string always serializes"))
        }
        Some(ct) => Err(EnvelopeError::UnsupportedContentType(ct.to_owned())),
    }
}

fn json_data(bytes: &[u8]) -> Result<Box<RawValue>, EnvelopeError> {
    serde_json::from_slice(bytes).map_err(|e| EnvelopeError::InvalidJson(e.to_string()))
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

type Fields<'a> = BTreeMap<String, &'a RawValue>;

fn object_fields(value: &[u8]) -> Result<Fields<'_>, EnvelopeError> {
    if value.is_empty() {
        return Err(EnvelopeError::InvalidJson(
            "the record has no value".to_owned(),
        ));
    }
    serde_json::from_slice(value).map_err(|e| EnvelopeError::InvalidJson(e.to_string()))
}

fn optional_string(
    fields: &Fields<'_>,
    name: &'static str,
) -> Result<Option<String>, EnvelopeError> {
    fields
        .get(name)
        .map(|raw| {
            serde_json::from_str(raw.get()).map_err(|_| EnvelopeError::InvalidField {
                field: name,
                expected: "a string",
            })
        })
        .transpose()
}

fn required_string(fields: &Fields<'_>, name: &'static str) -> Result<String, EnvelopeError> {
    optional_string(fields, name)?.ok_or(EnvelopeError::MissingField(name))
}

fn check_spec_version(version: &str) -> Result<(), EnvelopeError> {
    if version == "1.0" {
        Ok(())
    } else {
        Err(EnvelopeError::UnsupportedSpecVersion(excerpt(version)))
    }
}

fn parse_timestamp(text: &str) -> Result<Timestamp, EnvelopeError> {
    text.parse()
        .map_err(|_| EnvelopeError::InvalidTimestamp(excerpt(text)))
}

fn header<'a>(record: &Record<'a>, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

fn header_str<'a>(
    record: &Record<'a>,
    name: &'static str,
) -> Result<Option<&'a str>, EnvelopeError> {
    header(record, name)
        .map(|bytes| {
            std::str::from_utf8(bytes).map_err(|_| EnvelopeError::InvalidField {
                field: name,
                expected: "UTF-8 text",
            })
        })
        .transpose()
}

/// `Application/JSON; charset=utf-8` → `application/json`.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Bounds what an error message repeats of hostile input.
fn excerpt(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
