//! Pod status from what the runner knows about its processes. Each container task keeps a
//! [`ContainerRecord`]; [`pod_status`] turns the records, the pod's IP and start time and the
//! previously written conditions into the `PodStatus` the kubelet would report: phase,
//! container states, and the PodScheduled / Initialized / ContainersReady / Ready conditions,
//! whose transition time changes only when their status flips.

use std::net::Ipv4Addr;

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};

/// The present instant, to the second (what the API stores).
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// One state of a container, as in `ContainerState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running: being created, a config error, or backing off.
    Waiting {
        /// `ContainerCreating`, `CreateContainerConfigError`, `CrashLoopBackOff`, ...
        reason: String,
        /// Details for humans.
        message: Option<String>,
    },
    /// The process is running.
    Running {
        /// When it was started.
        started_at: Timestamp,
    },
    /// The process exited (or never started: `StartError`).
    Terminated {
        /// Exit code; 128 + signal when killed by a signal.
        exit_code: i32,
        /// The signal that killed it.
        signal: Option<i32>,
        /// `Completed`, `Error`, `OOMKilled`, `StartError`.
        reason: String,
        /// Details for humans.
        message: Option<String>,
        /// When it was started.
        started_at: Option<Timestamp>,
        /// When it ended.
        finished_at: Timestamp,
        /// Its pid (reported as the container id).
        pid: Option<u32>,
    },
}

impl State {
    /// A waiting state.
    pub fn waiting(reason: &str, message: impl Into<Option<String>>) -> Self {
        Self::Waiting {
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// What the runner knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// Container image.
    pub image: String,
    /// The current state.
    pub state: State,
    /// The previous termination, once restarted.
    pub last_state: Option<State>,
    /// How often the container was restarted.
    pub restart_count: i32,
    /// Readiness (probe result, or running when there is no probe).
    pub ready: bool,
    /// Started (startup probe passed, or running when there is none).
    pub started: bool,
    /// Pid of the running process.
    pub pid: Option<u32>,
    /// In a terminated or waiting state: whether the runner will start it again.
    pub will_restart: bool,
}

impl ContainerRecord {
    /// A container not started yet.
    pub fn creating(name: &str, image: &str, restart_count: i32) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            state: State::waiting("ContainerCreating", None),
            last_state: None,
            restart_count,
            ready: false,
            started: false,
            pid: None,
            will_restart: true,
        }
    }

    fn never_ran(&self) -> bool {
        matches!(self.state, State::Waiting { .. })
            && self.last_state.is_none()
            && self.restart_count == 0
    }
}

/// `Pending`, `Running`, `Succeeded` or `Failed` for a pod whose containers are `records`.
pub fn phase(records: &[ContainerRecord]) -> &'static str {
    if records.is_empty() || records.iter().any(ContainerRecord::never_ran) {
        return "Pending";
    }
    let finished =
        |r: &ContainerRecord| matches!(r.state, State::Terminated { .. }) && !r.will_restart;
    if records.iter().all(finished) {
        let all_ok = records
            .iter()
            .all(|r| matches!(r.state, State::Terminated { exit_code: 0, .. }));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    "Running"
}

fn api_state(state: &State) -> ContainerState {
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
            pid,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: pid.map(container_id),
                exit_code: *exit_code,
                signal: *signal,
                reason: Some(reason.clone()),
                message: message.clone(),
                started_at: started_at.map(Time),
                finished_at: Some(Time(*finished_at)),
            }),
            ..Default::default()
        },
    }
}

fn container_id(pid: u32) -> String {
    format!("podrunner://{pid}")
}

/// The `ContainerStatus` of one record.
pub fn container_status(r: &ContainerRecord) -> ContainerStatus {
    let running = matches!(r.state, State::Running { .. });
    ContainerStatus {
        name: r.name.clone(),
        image: r.image.clone(),
        image_id: String::new(),
        container_id: r.pid.map(container_id),
        state: Some(api_state(&r.state)),
        last_state: Some(r.last_state.as_ref().map(api_state).unwrap_or_default()),
        restart_count: r.restart_count,
        ready: r.ready && running,
        started: Some(r.started && running),
        ..Default::default()
    }
}

/// A condition, keeping the transition time of `previous` when the status did not flip.
fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: &[PodCondition],
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// Everything [`pod_status`] needs.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    /// The containers, in spec order.
    pub records: &'a [ContainerRecord],
    /// The pod's loopback IP.
    pub pod_ip: Ipv4Addr,
    /// The node's IP.
    pub host_ip: &'a str,
    /// When the runner took the pod on.
    pub start_time: Timestamp,
    /// The conditions written before (for transition times).
    pub previous: &'a [PodCondition],
    /// The present instant.
    pub now: Timestamp,
}

/// The pod status the runner writes.
pub fn pod_status(input: StatusInput<'_>) -> PodStatus {
    let phase = phase(input.records);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let unready: Vec<&str> = input
        .records
        .iter()
        .filter(|r| !(r.ready && matches!(r.state, State::Running { .. })))
        .map(|r| r.name.as_str())
        .collect();
    let all_ready = !terminal && unready.is_empty();
    let (reason, message) = if all_ready {
        (None, None)
    } else if terminal {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let (prev, now) = (input.previous, input.now);
    let conditions = vec![
        condition("PodScheduled", true, None, None, prev, now),
        condition("Initialized", true, None, None, prev, now),
        condition(
            "ContainersReady",
            all_ready,
            reason,
            message.clone(),
            prev,
            now,
        ),
        condition("Ready", all_ready, reason, message, prev, now),
    ];
    let pod_ip = input.pod_ip.to_string();
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(input.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: input.host_ip.to_string(),
        }]),
        pod_ip: Some(pod_ip.clone()),
        pod_ips: Some(vec![PodIP { ip: pod_ip }]),
        start_time: Some(Time(input.start_time)),
        container_statuses: Some(input.records.iter().map(container_status).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn running(name: &str, ready: bool) -> ContainerRecord {
        ContainerRecord {
            state: State::Running { started_at: t(10) },
            ready,
            started: true,
            pid: Some(42),
            ..ContainerRecord::creating(name, "img", 0)
        }
    }

    fn exited(name: &str, code: i32, will_restart: bool) -> ContainerRecord {
        ContainerRecord {
            state: State::Terminated {
                exit_code: code,
                signal: None,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started_at: Some(t(10)),
                finished_at: t(20),
                pid: Some(42),
            },
            will_restart,
            ..ContainerRecord::creating(name, "img", 0)
        }
    }

    fn input<'a>(records: &'a [ContainerRecord], previous: &'a [PodCondition]) -> StatusInput<'a> {
        StatusInput {
            records,
            pod_ip: Ipv4Addr::new(127, 1, 0, 1),
            host_ip: "127.0.0.1",
            start_time: t(1),
            previous,
            now: t(100),
        }
    }

    fn cond<'a>(s: &'a PodStatus, type_: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    #[test]
    fn pod_with_a_container_not_yet_started_is_pending() {
        let records = [running("a", true), ContainerRecord::creating("b", "img", 0)];
        assert_eq!(phase(&records), "Pending");
    }

    #[test]
    fn pod_with_all_containers_running_is_running_and_ready_when_all_are_ready() {
        let records = [running("a", true), running("b", true)];
        let s = pod_status(input(&records, &[]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(s.pod_ip.as_deref(), Some("127.1.0.1"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "127.1.0.1");
    }

    #[test]
    fn unready_container_is_named_in_the_ready_condition() {
        let records = [running("a", true), running("b", false)];
        let s = pod_status(input(&records, &[]));
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [b]")
        );
    }

    #[test]
    fn crashed_container_waiting_to_restart_keeps_the_pod_running() {
        let mut r = exited("a", 1, true);
        r.last_state = Some(r.state.clone());
        r.state = State::waiting("CrashLoopBackOff", None);
        assert_eq!(phase(&[r]), "Running");
    }

    #[test]
    fn all_containers_exited_zero_without_restart_is_succeeded() {
        assert_eq!(
            phase(&[exited("a", 0, false), exited("b", 0, false)]),
            "Succeeded"
        );
    }

    #[test]
    fn a_nonzero_exit_without_restart_is_failed() {
        let records = [exited("a", 0, false), exited("b", 2, false)];
        let s = pod_status(input(&records, &[]));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn one_container_still_running_keeps_the_pod_running() {
        assert_eq!(
            phase(&[exited("a", 0, false), running("b", true)]),
            "Running"
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_condition_holds() {
        let records = [running("a", true)];
        let first = pod_status(StatusInput {
            now: t(50),
            ..input(&records, &[])
        });
        let prev = first.conditions.clone().unwrap();
        let second = pod_status(StatusInput {
            now: t(90),
            ..input(&records, &prev)
        });
        assert_eq!(
            cond(&second, "Ready").last_transition_time,
            Some(Time(t(50)))
        );
        assert_eq!(first, second);
    }

    #[test]
    fn transition_time_moves_when_the_condition_flips() {
        let ready = [running("a", true)];
        let prev = pod_status(StatusInput {
            now: t(50),
            ..input(&ready, &[])
        })
        .conditions
        .unwrap();
        let unready = [running("a", false)];
        let s = pod_status(StatusInput {
            now: t(90),
            ..input(&unready, &prev)
        });
        assert_eq!(cond(&s, "Ready").last_transition_time, Some(Time(t(90))));
        assert_eq!(
            cond(&s, "PodScheduled").last_transition_time,
            Some(Time(t(50)))
        );
    }

    #[test]
    fn container_status_reports_restarts_and_last_termination() {
        let mut r = running("a", true);
        r.restart_count = 1;
        r.last_state = Some(exited("a", 137, true).state);
        let cs = container_status(&r);
        assert_eq!(cs.restart_count, 1);
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("podrunner://42"));
        let last = cs.last_state.unwrap().terminated.unwrap();
        assert_eq!(last.exit_code, 137);
        assert!(cs.state.unwrap().running.is_some());
    }

    #[test]
    fn terminated_container_is_never_ready() {
        let mut r = exited("a", 0, false);
        r.ready = true;
        assert!(!container_status(&r).ready);
    }
}
