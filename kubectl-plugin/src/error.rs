//! What can go wrong in a `kubectl hookline` command, and the exit code each becomes: every
//! command returns [`Error`], `main` prints it on stderr and exits with [`Error::exit_code`].
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done: the test send got a 2xx, the replay succeeded, the signature verified, … |
//! | 1 | the operation ran and its answer is a failure: the test send failed, the replay ended `Failed`, the signature does not verify |
//! | 2 | the command line or the configuration is wrong (a bad flag, no API URL, no token) |
//! | 3 | timed out waiting for the cluster to answer (test result, key rotation) |
//! | 4 | the cluster or the tenant API refused or could not be reached (not found, forbidden, connection) |

use std::fmt;

/// An error of a command. Messages are for a person and say what to do where they can.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or input that cannot be used.
    #[error("{0}")]
    Usage(String),
    /// The kubeconfig, the API URL or a token is missing or unusable.
    #[error("{0}")]
    Config(String),
    /// The operation ran and failed (its result is the message).
    #[error("{0}")]
    Failed(String),
    /// What was awaited did not happen in time.
    #[error("{0}")]
    TimedOut(String),
    /// An object that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The Kubernetes API refused or failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The cluster or the tenant API refused (forbidden, a bad request, unreachable).
    #[error("{0}")]
    Refused(String),
    /// Reading stdin or a file, or writing the output.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result of a command.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Failed(_) => 1,
            Error::Usage(_) | Error::Config(_) | Error::Io { .. } => 2,
            Error::TimedOut(_) => 3,
            Error::NotFound(_) | Error::Kube { .. } | Error::Refused(_) => 4,
        }
    }

    /// A Kubernetes API error while doing `what` to the object `kind/name`: a 404 becomes a
    /// [`Error::NotFound`] naming the object and namespace, a 403 keeps the server's message
    /// (which names the missing permission).
    pub fn kube(what: impl fmt::Display, object: &Object<'_>, e: kube::Error) -> Error {
        match &e {
            kube::Error::Api(s) if s.code == 404 => Error::NotFound(format!(
                "{} {:?} not found in namespace {:?}",
                object.kind, object.name, object.namespace
            )),
            kube::Error::Api(s) if s.code == 403 => {
                Error::Refused(format!("{what}: forbidden: {}", s.message))
            }
            _ => Error::Kube {
                what: format!(
                    "{what} {} {}/{}",
                    object.kind, object.namespace, object.name
                ),
                source: Box::new(e),
            },
        }
    }

    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// The object a Kubernetes call was about, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    /// `Webhook`, `WebhookReplay`.
    pub kind: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
}

impl<'a> Object<'a> {
    /// The `Webhook` `name` of `namespace`.
    pub fn webhook(namespace: &'a str, name: &'a str) -> Object<'a> {
        Object {
            kind: "Webhook",
            namespace,
            name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.to_owned(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_missing_object_is_named_with_its_namespace_and_exits_4() {
        let object = Object::webhook("acme", "orders");
        let e = Error::kube("reading", &object, api_error(404, "not found"));
        assert_eq!(
            e.to_string(),
            r#"Webhook "orders" not found in namespace "acme""#
        );
        assert_eq!(e.exit_code(), 4);
        let e = Error::kube("patching", &object, api_error(403, "user cannot patch"));
        assert!(e.to_string().contains("user cannot patch"), "{e}");
    }

    #[test]
    fn failures_timeouts_and_usage_have_distinct_exit_codes() {
        let codes = [
            Error::Failed(String::new()).exit_code(),
            Error::Usage(String::new()).exit_code(),
            Error::TimedOut(String::new()).exit_code(),
            Error::Refused(String::new()).exit_code(),
        ];
        assert_eq!(codes, [1, 2, 3, 4]);
    }
}
