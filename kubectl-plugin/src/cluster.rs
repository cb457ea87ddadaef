//! The user's cluster, as kubectl sees it: the kubeconfig (`--kubeconfig`, else `$KUBECONFIG`,
//! else `~/.kube/config`, else the in-cluster ServiceAccount) and its context (`--context`, else
//! the current one) give a [`kube::Client`], the namespace (`--namespace`, else the context's,
//! else `default`) and, for the tenant API, the user's bearer token.
//!
//! # Decisions
//! - kubectl does not pass its own global flags to a plugin, so `--context` and
//!   `--kubeconfig` are the plugin's own, as in other plugins.

use std::path::PathBuf;

use clap::Args;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use secrecy::ExposeSecret as _;

use crate::error::{Error, Result};

/// Flags that pick the cluster and namespace.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Namespace of the Webhooks (the tenant); default: the kubeconfig context's, else `default`.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Kubeconfig context to use; default: the current context.
    #[arg(long)]
    pub context: Option<String>,
    /// Kubeconfig file; default: `$KUBECONFIG`, else `~/.kube/config`, else in-cluster.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// A connection to the cluster and the namespace a command works in.
pub struct Cluster {
    /// The client, as the kubeconfig's user.
    pub client: Client,
    /// The namespace.
    pub namespace: String,
}

impl ClusterArgs {
    /// The kubeconfig's settings, without connecting.
    ///
    /// # Errors
    /// [`Error::Config`] when no kubeconfig (nor in-cluster configuration) can be read, or the
    /// context does not exist.
    pub async fn config(&self) -> Result<Config> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    Error::Config(format!("reading kubeconfig {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| Error::Config(format!("kubeconfig {}: {e}", path.display())))
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| Error::Config(format!("kubeconfig: {e}"))),
            (None, None) => Config::infer().await.map_err(|e| {
                Error::Config(format!(
                    "no kubeconfig: {e} (set KUBECONFIG or pass --kubeconfig)"
                ))
            }),
        }?;
        Ok(config)
    }

    /// Connects as the kubeconfig's user.
    ///
    /// # Errors
    /// As [`ClusterArgs::config`], and when the client cannot be built.
    pub async fn connect(&self) -> Result<Cluster> {
        let config = self.config().await?;
        let namespace = self.namespace_in(&config);
        let client = Client::try_from(config)
            .map_err(|e| Error::Config(format!("cannot connect with the kubeconfig: {e}")))?;
        Ok(Cluster { client, namespace })
    }

    /// `--namespace`, else the context's namespace (kube reads `default` when it has none).
    pub fn namespace_in(&self, config: &Config) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone())
    }
}

/// Where a bearer token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The user's `token` in the kubeconfig.
    Inline(String),
    /// The user's `tokenFile` (or the in-cluster ServiceAccount token): read it.
    File(PathBuf),
}

/// The bearer token of the kubeconfig's user, if it has one; otherwise why not, for a person.
///
/// # Errors
/// A sentence saying how the user authenticates instead (client certificate, exec plugin, …).
pub fn token_source(user: &AuthInfo) -> std::result::Result<TokenSource, String> {
    if let Some(t) = &user.token {
        return Ok(TokenSource::Inline(t.expose_secret().trim().to_owned()));
    }
    if let Some(f) = &user.token_file {
        return Ok(TokenSource::File(PathBuf::from(f)));
    }
    let how = if user.exec.is_some() {
        "an exec credential plugin"
    } else if user.auth_provider.is_some() {
        "an auth provider"
    } else if user.client_certificate.is_some() || user.client_certificate_data.is_some() {
        "a client certificate"
    } else if user.username.is_some() {
        "a username and password"
    } else {
        "no credentials"
    };
    Err(format!(
        "the kubeconfig user authenticates with {how}, not a bearer token"
    ))
}

/// The bearer token of the kubeconfig's user.
///
/// # Errors
/// [`Error::Config`] when the user has no token (saying how it authenticates instead), or its
/// token file cannot be read.
pub fn kubeconfig_token(config: &Config) -> Result<String> {
    match token_source(&config.auth_info).map_err(Error::Config)? {
        TokenSource::Inline(t) => Ok(t),
        TokenSource::File(path) => std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                Error::Config(format!(
                    "reading the kubeconfig user's token file {}: {e}",
                    path.display()
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_or_token_file_is_used_and_other_credentials_are_named() {
        let user = AuthInfo {
            token: Some("abc\n".to_owned().into()),
            token_file: Some("/ignored".into()),
            ..AuthInfo::default()
        };
        assert_eq!(token_source(&user), Ok(TokenSource::Inline("abc".into())));
        let user = AuthInfo {
            token_file: Some("/var/run/token".into()),
            ..AuthInfo::default()
        };
        assert_eq!(
            token_source(&user),
            Ok(TokenSource::File("/var/run/token".into()))
        );
        let user = AuthInfo {
            client_certificate_data: Some("cert".into()),
            ..AuthInfo::default()
        };
        assert!(
            token_source(&user)
                .unwrap_err()
                .contains("a client certificate")
        );
        assert!(
            token_source(&AuthInfo::default())
                .unwrap_err()
                .contains("no credentials")
        );
    }
}
