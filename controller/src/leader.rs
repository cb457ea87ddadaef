//! Leader election on a `coordination.k8s.io` Lease in the operator namespace, so that of two
//! controller replicas only one reconciles. The leader renews the Lease every few seconds; a
//! replica takes it over only when it has not been renewed for the lease duration. Updates carry
//! the Lease's resourceVersion, so two candidates can never both win. A leader that cannot
//! renew in time exits, and its Deployment restarts it as a candidate. `main` starts both
//! reconcilers (the `Webhook`'s and the tenant's) and their watches only once [`lead`] returns.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, api::PostParams};
use tracing::{info, warn};

/// Timing of the election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease is valid after its last renewal.
    pub lease: Duration,
    /// How often the leader renews.
    pub renew: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        }
    }
}

/// Whether `lease` may be taken by `me` at `now`.
pub fn can_take(lease: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    let holder = lease.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return true;
    }
    let duration = Duration::from_secs(
        u64::try_from(lease.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
    );
    let renewed = lease
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    now > renewed + jiff::SignedDuration::try_from(duration).unwrap_or_default()
}

fn spec(me: &str, timing: Timing, now: Timestamp, previous: Option<&LeaseSpec>) -> LeaseSpec {
    let same = previous.and_then(|p| p.holder_identity.as_deref()) == Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(i32::try_from(timing.lease.as_secs()).unwrap_or(15)),
        acquire_time: if same {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            previous.and_then(|p| p.lease_transitions).unwrap_or(0) + i32::from(!same),
        ),
        ..LeaseSpec::default()
    }
}

/// Tries once to take or renew the Lease; true when `me` holds it afterwards.
///
/// # Errors
/// API errors other than a lost race (409), which is a plain `false`.
pub async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    timing: Timing,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(me, timing, now, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            if !can_take(&current, me, now) {
                return Ok(false);
            }
            lease.spec = Some(spec(me, timing, now, Some(&current)));
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until `me` holds the Lease, then keeps renewing it in the background; the returned
/// future resolves if leadership is lost (the caller should then exit).
pub async fn lead(
    api: Api<Lease>,
    name: String,
    me: String,
    timing: Timing,
) -> impl std::future::Future<Output = ()> {
    loop {
        match try_acquire(&api, &name, &me, timing).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election: cannot read or write Lease {name}"),
        }
        tokio::time::sleep(timing.renew).await;
    }
    info!(lease = %name, identity = %me, "became leader");
    async move {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(timing.renew).await;
            match try_acquire(&api, &name, &me, timing).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!("leadership taken over by another replica");
                    return;
                }
                Err(e) => warn!(error = %e, "cannot renew Lease"),
            }
            if last_ok.elapsed() > timing.lease {
                warn!("could not renew the Lease within its duration; stepping down");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_holder_cannot_be_taken() {
        assert!(!can_take(
            &held("a", "2026-11-23T10:00:00Z"),
            "b",
            "2026-11-23T10:00:10Z".parse().unwrap()
        ));
    }

    #[test]
    fn an_expired_lease_or_an_own_lease_can_be_taken() {
        assert!(can_take(
            &held("a", "2026-11-23T10:00:00Z"),
            "b",
            "2026-11-23T10:00:16Z".parse().unwrap()
        ));
        assert!(can_take(
            &held("b", "2026-11-23T10:00:00Z"),
            "b",
            "2026-11-23T10:00:01Z".parse().unwrap()
        ));
        assert!(can_take(&LeaseSpec::default(), "b", Timestamp::UNIX_EPOCH));
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let now: Timestamp = "2026-11-23T10:00:20Z".parse().unwrap();
        let prev = LeaseSpec {
            lease_transitions: Some(3),
            ..held("a", "2026-11-23T10:00:00Z")
        };
        assert_eq!(
            spec("b", Timing::default(), now, Some(&prev)).lease_transitions,
            Some(4)
        );
        assert_eq!(
            spec("a", Timing::default(), now, Some(&prev)).lease_transitions,
            Some(3)
        );
    }
}
