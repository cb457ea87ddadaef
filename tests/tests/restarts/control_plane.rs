//! The control plane goes away for 30 s mid-stream: kube-apiserver and then etcd are stopped
//! while 5,000 events over 500 keys flow to a receiver that fails a fifth of the requests (half
//! of them produced during the outage). Delivery needs no API server: the dispatcher carries on
//! from what it has cached and writes the status counters it owes when the API server is back.
//! The controller cannot renew its Lease: it exits (so that it never reconciles as a leader it
//! may no longer be), the pod runner starts it again as a kubelet would, and the new process
//! takes the Lease again once the API server answers and reconciles new `Webhook`s.

use std::time::Duration;

use hookline_core::conditions::types;
use hookline_tests::{
    LogDump, outage,
    pods::{self, alive},
    receiver::{Behavior, Receiver},
    run_dir,
    tenant::Tenant,
    wait,
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::Api;
use serde_json::json;

use crate::{
    OP, all_delivered, check_delivered_in_key_order, distinct_2xx, everything_recovers,
    operator_restarts, records, status_converges,
};

const EVENTS: usize = 5_000;
const KEYS: usize = 500;
const DOWN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn api_server_and_etcd_stopped_for_30s_deliveries_go_on_and_the_controller_restarts_and_leads()
 {
    let _exclusive = outage::exclusive().await;
    let mut dump = LogDump::new();
    let t = Tenant::create("rst-cp").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/fraud", Behavior::fail_ratio(0.2, 0x6170));
    t.webhook("fraud", &rx.url("/fraud"), &["transaction.*"], json!({}))
        .await;
    let before = operator_restarts(&t.client, &t.ns.name).await.unwrap();
    let (controller, old_pid) = the_controller(&t, &mut dump).await;

    t.produce_in_order(&records(0..EVENTS / 2, KEYS)).await;
    wait::until(
        Duration::from_secs(120),
        "a fifth of the events delivered before the outage",
        || async { Ok((distinct_2xx(&rx.requests("/fraud")) >= EVENTS / 5).then_some(())) },
    )
    .await
    .unwrap();

    let down = outage::Outage::stop(&["kube-apiserver", "etcd"])
        .await
        .unwrap();
    let at_stop = distinct_2xx(&rx.requests("/fraud"));
    eprintln!("kube-apiserver and etcd stopped with {at_stop} of {EVENTS} events delivered");
    // Mid-stream by construction: the second half is produced only now, during the outage
    // (the first half may all be delivered by the time both are stopped).
    t.produce_in_order(&records(EVENTS / 2..EVENTS, KEYS)).await;
    // Unable to renew its 15 s Lease, the controller exits before the outage is over.
    wait::until(
        DOWN.saturating_sub(down.elapsed()),
        "the controller to exit, unable to renew its Lease",
        || async { Ok((!alive(old_pid)).then_some(())) },
    )
    .await
    .unwrap();
    eprintln!("the controller exited {:?} into the outage", down.elapsed());
    tokio::time::sleep(DOWN.saturating_sub(down.elapsed())).await;
    let at_end = distinct_2xx(&rx.requests("/fraud"));
    let was_down = down.end().await.unwrap();
    let back = jiff::Timestamp::now();
    eprintln!(
        "down for {was_down:?}; {} events delivered meanwhile",
        at_end - at_stop
    );
    assert!(
        at_end > at_stop,
        "deliveries went on while the API server was down"
    );

    all_delivered(&rx, "/fraud", EVENTS, Duration::from_secs(600)).await;
    let (requests, repeats) = check_delivered_in_key_order(&rx.requests("/fraud"), EVENTS, KEYS);
    status_converges(&t, "fraud", &rx, "/fraud", Duration::from_secs(120)).await;
    eprintln!("{requests} requests, {repeats} repeats of delivered events");
    // The controller's exit was followed by a clean restart: one restart of the same Pod, which
    // holds the Lease again, renewed since the API server came back, and reconciles. Nothing
    // else restarted.
    let once = [(format!("{controller}/controller"), 1)].into();
    everything_recovers(
        &t.client,
        &t.ns.name,
        &before,
        &once,
        Duration::from_secs(180),
    )
    .await;
    leads_again(&t, &controller, old_pid, back).await;
}

/// The one controller Pod and the pid of its process; its log goes into `dump`.
async fn the_controller(t: &Tenant, dump: &mut LogDump) -> (String, i32) {
    let controllers = pods::ready_pods(&t.client, OP, "app.kubernetes.io/name=hookline-controller")
        .await
        .unwrap();
    assert_eq!(controllers.len(), 1, "one controller replica");
    let controller = controllers[0].0.clone();
    dump.extra.push(controller_log(&controller));
    let pid = pods::pid(OP, &controller, "controller").expect("the controller's pid file");
    assert!(alive(pid));
    (controller, pid)
}

fn controller_log(pod: &str) -> std::path::PathBuf {
    run_dir()
        .join("pods")
        .join(format!("{OP}_{pod}"))
        .join("controller.log")
}

/// The controller of Pod `controller` exited on purpose (exit code 1, saying why), runs again
/// as a new process of the same Pod, holds the Lease, renewed after `back`, and reconciles a new
/// `Webhook` to Ready.
async fn leads_again(t: &Tenant, controller: &str, old_pid: i32, back: jiff::Timestamp) {
    let new_pid = pods::pid(OP, controller, "controller").expect("the controller's pid file");
    assert!(
        new_pid != old_pid && alive(new_pid),
        "a new controller process"
    );
    let pod = Api::<Pod>::namespaced(t.client.clone(), OP)
        .get(controller)
        .await
        .unwrap();
    let last = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().find(|c| c.name == "controller"))
        .and_then(|c| c.last_state)
        .and_then(|s| s.terminated)
        .expect("the controller's last termination in the Pod status");
    assert_eq!(last.exit_code, 1, "it exited on purpose: {last:?}");
    let log = std::fs::read_to_string(controller_log(controller)).unwrap();
    assert!(
        log.contains("lost leadership; exiting"),
        "the controller said why it exited"
    );
    let leases = Api::<Lease>::namespaced(t.client.clone(), OP);
    wait::until(
        Duration::from_secs(60),
        "the Lease renewed by the restarted controller",
        || async {
            let spec = leases
                .get("hookline-controller")
                .await?
                .spec
                .unwrap_or_default();
            let renewed = spec.renew_time.map(|t| t.0);
            Ok((spec.holder_identity.as_deref() == Some(controller)
                && renewed.is_some_and(|r| r > back))
            .then_some(()))
        },
    )
    .await
    .unwrap();
    let name = format!("after-{}", hookline_tests::random_suffix());
    let wh = t
        .webhook(
            &name,
            "http://127.0.0.1:9/after",
            &["transaction.*"],
            json!({}),
        )
        .await;
    assert!(wait::condition_is_true(&wh, types::READY));
}

/// An API server that hangs instead of refusing (frozen with SIGSTOP: connections stay open,
/// requests get no answer) must not keep a leader leading: it steps down and exits before its
/// 15 s Lease may be taken over by another replica, and is back as leader once the API server
/// answers again. (Before the renewal attempts were bounded in time, the renewal waited on the
/// hung request for ever, and the controller never stepped down.)
#[tokio::test]
async fn a_leader_whose_api_server_hangs_steps_down_within_its_lease_and_leads_again_after() {
    const LEASE: Duration = Duration::from_secs(15);
    let _exclusive = outage::exclusive().await;
    let mut dump = LogDump::new();
    let t = Tenant::create("rst-hang").await;
    let before = operator_restarts(&t.client, &t.ns.name).await.unwrap();
    let (controller, old_pid) = the_controller(&t, &mut dump).await;

    let frozen = outage::Outage::freeze(&["kube-apiserver"]).await.unwrap();
    let stepped_down = wait::until(
        LEASE.saturating_sub(frozen.elapsed()),
        "the controller to step down and exit within its Lease",
        || async { Ok((!alive(old_pid)).then(|| frozen.elapsed())) },
    )
    .await;
    let thawed_after = frozen.end().await.unwrap();
    let back = jiff::Timestamp::now();
    let stepped_down = stepped_down.unwrap();
    eprintln!(
        "the controller exited {stepped_down:?} after the API server froze; thawed after {thawed_after:?}"
    );

    let once = [(format!("{controller}/controller"), 1)].into();
    everything_recovers(
        &t.client,
        &t.ns.name,
        &before,
        &once,
        Duration::from_secs(180),
    )
    .await;
    leads_again(&t, &controller, old_pid, back).await;
}
