//! A Kafka broker of a test's own (KRaft, one node, loopback, its own ports and log directory),
//! for tests that must stop and start Kafka without disturbing the shared one: the same jars
//! the local environment runs (`HOOKLINE_LOCALENV_KAFKA_LIBS`). It can be frozen (SIGSTOP: connections
//! hang, as with a broker that stopped answering), thawed, killed and started again on the same
//! data. Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::{Env, LogDump, random_suffix, wait};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A private broker.
pub struct Broker {
    /// `127.0.0.1:<port>`.
    pub bootstrap: String,
    dir: PathBuf,
    libs: String,
    child: Option<Child>,
}

impl Broker {
    /// Formats a new broker's storage and starts it; waits until it accepts connections.
    ///
    /// # Errors
    /// When the Kafka jars are missing, formatting fails, or it does not start within 90 s.
    pub async fn start(env: &Env, dump: &mut LogDump) -> anyhow::Result<Broker> {
        let libs = env
            .vars
            .get("HOOKLINE_LOCALENV_KAFKA_LIBS")
            .cloned()
            .context("HOOKLINE_LOCALENV_KAFKA_LIBS is not in the environment's env.sh")?;
        let dir = std::env::temp_dir().join(format!("hookline-broker-{}", random_suffix()));
        std::fs::create_dir_all(dir.join("data"))?;
        let (port, controller) = (free_port()?, free_port()?);
        std::fs::write(
            dir.join("server.properties"),
            format!(
                "process.roles=broker,controller\nnode.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
                 log.dirs={}\nauto.create.topics.enable=false\n\
                 offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\nshare.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\noffsets.topic.num.partitions=1\n\
                 group.initial.rebalance.delay.ms=0\n",
                dir.join("data").display()
            ),
        )?;
        std::fs::write(
            dir.join("log4j2.properties"),
            format!(
                "status = warn\nappender.file.type = File\nappender.file.name = FILE\n\
                 appender.file.fileName = {}\nappender.file.layout.type = PatternLayout\n\
                 appender.file.layout.pattern = [%d] %p %m (%c)%n\nrootLogger.level = WARN\n\
                 rootLogger.appenderRef.file.ref = FILE\n",
                dir.join("broker.log").display()
            ),
        )?;
        dump.extra.push(dir.join("broker.log"));
        // A cluster id as `kafka-storage random-uuid` prints it, never starting with '-'.
        let cluster = loop {
            let id = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                uuid::Uuid::new_v4().as_bytes(),
            );
            if !id.starts_with('-') {
                break id;
            }
        };
        let out = Command::new("java")
            .args(Self::jvm(&libs, &dir))
            .args(["kafka.tools.StorageTool", "format", "-t", &cluster, "-c"])
            .arg(dir.join("server.properties"))
            .output()
            .context("running the Kafka storage tool")?;
        anyhow::ensure!(
            out.status.success(),
            "formatting the broker's storage: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut b = Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
            libs,
            child: None,
        };
        b.restart().await?;
        Ok(b)
    }

    fn jvm(libs: &str, dir: &std::path::Path) -> Vec<String> {
        vec![
            "-Xmx256m".into(),
            "-Xms64m".into(),
            "-XX:+ExitOnOutOfMemoryError".into(),
            format!(
                "-Dlog4j2.configurationFile={}",
                dir.join("log4j2.properties").display()
            ),
            "-cp".into(),
            format!("{libs}/*"),
        ]
    }

    /// Starts the broker (again) on its data; waits until its port accepts connections.
    ///
    /// # Errors
    /// When it does not start within 90 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let child = Command::new("java")
            .args(Self::jvm(&self.libs, &self.dir))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the broker")?;
        self.child = Some(child);
        let addr = self.bootstrap.clone();
        wait::until(Duration::from_secs(90), "the private broker up", || {
            let addr = addr.clone();
            async move { Ok(std::net::TcpStream::connect(&addr).ok().map(|_| ())) }
        })
        .await
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child
            && let Ok(pid) = i32::try_from(c.id())
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// SIGSTOP: the broker stops answering, its connections stay open. Returns once every
    /// thread of the broker is stopped: a signal takes effect when a thread next runs, which
    /// on a loaded machine is not at once.
    ///
    /// # Errors
    /// When the broker is not running, or not all its threads stop within 10 s.
    pub async fn freeze(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child
            && let Some(status) = c.try_wait()?
        {
            anyhow::bail!("the private broker is not running to be frozen: it exited ({status})");
        }
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let pid = self.child.as_ref().map(Child::id).context("no broker")?;
        let mut states = String::new();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            states = thread_states(pid);
            if !states.is_empty() && states.chars().all(|s| s == 'T') {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!(
            "the private broker (pid {pid}) did not stop: its threads are in states {states:?}"
        )
    }

    /// The scheduler state of each of the broker's threads (`R`, `S`, `D`, `T`, …), or `""`
    /// when it is not running.
    pub fn states(&self) -> String {
        self.child
            .as_ref()
            .map(|c| thread_states(c.id()))
            .unwrap_or_default()
    }

    /// SIGCONT after [`Broker::freeze`].
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// SIGKILL; [`Broker::restart`] starts it again on the same data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.thaw_pid(&c);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn thaw_pid(&self, c: &Child) {
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
}

/// The state letter of every thread of `pid` (`/proc/<pid>/task/*/stat`, the field after the
/// command name), in no particular order; `""` when there is no such process.
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        .collect()
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
