//! A consumer group as the broker describes it (ListGroups/DescribeGroups through librdkafka):
//! its state, its members and what each is assigned — how a test sees who consumes what, and
//! whether a restarted dispatcher came back as the same (static) member.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::Env;

/// A described group: its state (`Stable`, `PreparingRebalance`, …) and its members.
#[derive(Debug, Clone)]
pub struct Described {
    /// The group's state.
    pub state: String,
    /// Each member: its client host and its partitions of the topic asked about.
    pub members: Vec<(String, Vec<i32>)>,
}

/// Describes `group`, with each member's partitions of `topic`.
///
/// # Errors
/// When the group cannot be described.
pub fn describe(env: &Env, group: &str, topic: &str) -> anyhow::Result<Described> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set(
            "group.id",
            format!("hl-test-describe-{}", crate::random_suffix()),
        )
        .create()?;
    let list = consumer.fetch_group_list(Some(group), Duration::from_secs(10))?;
    let g = list
        .groups()
        .first()
        .ok_or_else(|| anyhow::anyhow!("group {group} not found"))?;
    Ok(Described {
        state: g.state().to_owned(),
        members: g
            .members()
            .iter()
            .map(|m| {
                (
                    m.client_host().trim_start_matches('/').to_owned(),
                    assigned_partitions(m.assignment().unwrap_or_default(), topic),
                )
            })
            .collect(),
    })
}

/// The `topic` partitions of each member of consumer group `group` (with the member's client
/// host), once the group is stable.
///
/// # Errors
/// When the group cannot be described or is not `Stable`.
pub fn stable_assignment(
    env: &Env,
    group: &str,
    topic: &str,
) -> anyhow::Result<Vec<(String, Vec<i32>)>> {
    let d = describe(env, group, topic)?;
    anyhow::ensure!(d.state == "Stable", "group {group} is {}", d.state);
    Ok(d.members)
}

/// Partitions of `topic` in a classic consumer-protocol assignment.
pub fn assigned_partitions(assignment: &[u8], topic: &str) -> Vec<i32> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn i16_(b: &mut &[u8]) -> Option<i16> {
        Some(i16::from_be_bytes(take(b, 2)?.try_into().ok()?))
    }
    fn i32_(b: &mut &[u8]) -> Option<i32> {
        Some(i32::from_be_bytes(take(b, 4)?.try_into().ok()?))
    }
    let parse = || -> Option<Vec<i32>> {
        let mut b = assignment;
        let _version = i16_(&mut b)?;
        let mut out = Vec::new();
        for _ in 0..i32_(&mut b)? {
            let len = usize::try_from(i16_(&mut b)?).ok()?;
            let name = std::str::from_utf8(take(&mut b, len)?).ok()?.to_owned();
            for _ in 0..i32_(&mut b)? {
                let p = i32_(&mut b)?;
                if name == topic {
                    out.push(p);
                }
            }
        }
        Some(out)
    };
    parse().unwrap_or_default()
}

/// Whether a broker of this environment logged that a member of `group` left it with an
/// explicit `LeaveGroup` request (rather than being dropped when its session timed out). The
/// brokers' logs are `$HOOKLINE_RUN_DIR/logs/kafka*.log`.
pub fn left_explicitly(group: &str) -> bool {
    let marker = format!("[Group {group}] Member ");
    let Ok(dir) = std::fs::read_dir(crate::run_dir().join("logs")) else {
        return false;
    };
    dir.flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("kafka") && name.ends_with(".log")
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .any(|log| {
            log.lines().any(|l| {
                l.contains(&marker) && l.contains("has left group through explicit `LeaveGroup`")
            })
        })
}
