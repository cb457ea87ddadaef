//! Installing Hookline's CRDs into the test API server: server-side apply of the CRDs generated
//! from the Rust types (so a test always runs against the current types, whatever the cluster
//! had), then waiting until the API server reports them `Established`.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::wait;

/// Applies every CRD of `hookline_crds::crds()` and waits until each is `Established`.
///
/// # Errors
/// When the API server refuses a CRD or does not establish it within 30 s.
pub async fn install(client: &Client) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in hookline_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("hookline.dev/tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        wait::until(
            Duration::from_secs(30),
            &format!("CRD {name} Established"),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(())
}
