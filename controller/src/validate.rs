//! Checks of a `Webhook` spec that the API server's schema and CEL rules cannot make, because
//! they depend on platform settings: the URL's scheme (http only where the platform allows it)
//! and a host that is an IP literal in a non-public range (refused unless allow-listed). Pure:
//! spec and settings in, a verdict out. Host names are not resolved here; the dispatcher checks
//! every address it actually connects to.

use std::time::Duration;

use hookline_core::args::AddressRules;
use hookline_core::ssrf::UrlRefusal;
use hookline_core::{conditions::reasons, duration};
use hookline_crds::WebhookSpec;
use url::Url;

/// Why a spec cannot be used, for a person: a condition reason and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Condition reason (CamelCase).
    pub reason: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Invalid {
    fn spec(message: String) -> Invalid {
        Invalid {
            reason: reasons::INVALID_SPEC,
            message,
        }
    }
}

/// Validates what the schema cannot.
///
/// # Errors
/// The first problem found, with a reason and an actionable message.
pub fn validate(spec: &WebhookSpec, rules: &AddressRules) -> Result<(), Invalid> {
    let url = Url::parse(&spec.url)
        .map_err(|e| Invalid::spec(format!("spec.url {:?} is not a valid URL: {e}", spec.url)))?;
    match rules.check(&url) {
        Ok(()) => {}
        Err(UrlRefusal::HttpNotAllowed) => {
            return Err(Invalid {
                reason: reasons::HTTP_NOT_ALLOWED,
                message: "spec.url uses http://, but this platform accepts https:// only; use an https URL \
                          (or ask the platform team to enable allowHttp)"
                    .into(),
            });
        }
        Err(UrlRefusal::Address(refused)) => {
            let why = refused.reason.replace('_', " ");
            return Err(Invalid {
                reason: reasons::ADDRESS_NOT_ALLOWED,
                message: format!(
                    "spec.url points at {}, a {why} address, which Hookline does not deliver to; use a public \
                     address (or ask the platform team to allow-list its CIDR)",
                    refused.ip
                ),
            });
        }
        Err(other) => return Err(Invalid::spec(format!("spec.url: {other}"))),
    }
    for pattern in &spec.event_types {
        if pattern.is_empty() || pattern.contains("**") {
            return Err(Invalid::spec(format!(
                "spec.eventTypes entry {pattern:?} is not a valid pattern; use names like transaction.approved or transaction.*"
            )));
        }
    }
    if let Some(d) = &spec.delivery {
        check_duration(
            "spec.delivery.timeout",
            d.timeout.as_deref(),
            Duration::from_millis(100),
            Duration::from_secs(120),
        )?;
        if let Some(r) = &d.retry {
            let min = Duration::from_millis(100);
            check_duration(
                "spec.delivery.retry.initialDelay",
                r.initial_delay.as_deref(),
                min,
                Duration::from_secs(3600),
            )?;
            check_duration(
                "spec.delivery.retry.maxDelay",
                r.max_delay.as_deref(),
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            )?;
        }
    }
    Ok(())
}

fn check_duration(
    field: &str,
    value: Option<&str>,
    min: Duration,
    max: Duration,
) -> Result<(), Invalid> {
    let Some(value) = value else { return Ok(()) };
    let d = duration::parse(value).map_err(|e| Invalid::spec(format!("{field}: {e}")))?;
    if d < min || d > max {
        return Err(Invalid::spec(format!(
            "{field} is {value}; it must be between {} and {}",
            duration::format(min),
            duration::format(max)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> WebhookSpec {
        serde_json::from_value(serde_json::json!({"url": url, "eventTypes": ["a.b"]})).unwrap()
    }

    #[test]
    fn https_with_a_public_host_name_is_valid() {
        assert_eq!(
            validate(
                &spec("https://hooks.example.com/x"),
                &AddressRules::default()
            ),
            Ok(())
        );
    }

    #[test]
    fn http_is_refused_unless_the_platform_allows_it() {
        let err = validate(
            &spec("http://hooks.example.com/x"),
            &AddressRules::default(),
        )
        .unwrap_err();
        assert_eq!(err.reason, reasons::HTTP_NOT_ALLOWED);
        assert!(err.message.contains("allowHttp"), "{}", err.message);
        let rules = AddressRules {
            allow_http: true,
            ..AddressRules::default()
        };
        assert_eq!(
            validate(&spec("http://hooks.example.com/x"), &rules),
            Ok(())
        );
    }

    #[test]
    fn ip_literal_in_a_blocked_range_is_refused_with_the_range_named() {
        for url in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
        ] {
            let err = validate(&spec(url), &AddressRules::default()).unwrap_err();
            assert_eq!(err.reason, reasons::ADDRESS_NOT_ALLOWED, "{url}");
            assert!(err.message.contains("allow-list"), "{}", err.message);
        }
    }

    #[test]
    fn allow_listed_cidr_admits_an_otherwise_blocked_ip_literal() {
        let rules = AddressRules {
            allow_http: true,
            allow_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert_eq!(validate(&spec("http://127.0.0.1:8080/x"), &rules), Ok(()));
        assert!(validate(&spec("http://10.0.0.1/x"), &rules).is_err());
    }

    #[test]
    fn durations_out_of_range_are_refused_naming_the_field() {
        let mut s = spec("https://h.example.com/");
        s.delivery = Some(serde_json::from_value(serde_json::json!({"timeout": "10m"})).unwrap());
        let err = validate(&s, &AddressRules::default()).unwrap_err();
        assert!(
            err.message.contains("spec.delivery.timeout") && err.message.contains("2m"),
            "{}",
            err.message
        );
    }
}
