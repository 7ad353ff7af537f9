//! `kbatch bench recovery`: how long a crashed parallel consumer's restart takes to process
//! records again, per group membership mode.
//!
//! Each round runs `kbatch consume --parallel --exec …` (this binary) on a busy topic, kills it
//! with SIGKILL (its whole process group) and starts it again at once, the way a supervisor
//! restarts a crashed service: the time from that restart to the first record its handler
//! processes is the figure. A restart that the broker refuses (a KIP-848 static member whose
//! id the dead member still holds) is retried every second, as `Restart=always` would.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args as ClapArgs;
use kbatch_client::{Admin, ClientConfig, NewTopic};
use serde::Serialize;

/// Options of `kbatch bench recovery`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Bootstrap servers of the (real) Kafka cluster.
    #[arg(long, env = "KBATCH_BROKERS")]
    brokers: String,
    /// Kill-and-restart rounds per mode.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// Modes to run (classic, classic-static, consumer, consumer-static).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Mode {
    mode: String,
    flags: String,
    /// Seconds from each restart to its first processed record.
    rounds: Vec<f64>,
    min: f64,
    median: f64,
    max: f64,
    /// Restarts the broker refused before one was let in (all rounds).
    refused_restarts: usize,
}

const MODES: [(&str, &str, bool); 4] = [
    ("classic", "classic", false),
    ("classic-static", "classic", true),
    ("consumer", "consumer", false),
    ("consumer-static", "consumer", true),
];

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("the kbatch binary")?;
    let admin = Admin::new(&ClientConfig::new(a.brokers.as_str()).with_client_id("kbatch-bench"))?;
    let dir = std::env::temp_dir().join(format!(
        "kbatch-bench-recovery-{:08x}",
        crate::cluster::random_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    let mut modes = Vec::new();
    for (name, protocol, fixed_id) in MODES {
        if !(a.only.is_empty() || a.only.iter().any(|o| o == name)) {
            continue;
        }
        let topic = format!(
            "kbatch-bench-recovery-{name}-{:08x}",
            crate::cluster::random_suffix()
        );
        admin.create_topics(&[NewTopic::new(&topic, 8)]).await?;
        fill(&exe, &a.brokers, &topic)?;
        let run = Run {
            exe: exe.clone(),
            brokers: a.brokers.clone(),
            topic: topic.clone(),
            group: format!("{topic}-g"),
            ledger: dir.join(format!("{name}.ledger")),
            protocol,
            instance_id: fixed_id.then(|| format!("{topic}-worker")),
        };
        let m = tokio::task::spawn_blocking(move || run.measure(name, a.rounds)).await??;
        eprintln!("bench: {m:?}");
        modes.push(m);
        let _ = admin.delete_topics(&[&topic]).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "\nrestart-to-first-record after SIGKILL, {} rounds each (seconds)",
        a.rounds
    );
    eprintln!(
        "  {:<16} {:>8} {:>8} {:>8} {:>9}  flags",
        "mode", "min", "median", "max", "refused"
    );
    for m in &modes {
        eprintln!(
            "  {:<16} {:>8.2} {:>8.2} {:>8.2} {:>9}  {}",
            m.mode, m.min, m.median, m.max, m.refused_restarts, m.flags
        );
    }
    if a.json {
        #[allow(clippy::print_stdout, reason = "the report is this command's output")]
        {
            println!("{}", serde_json::to_string(&modes)?);
        }
    }
    Ok(())
}

/// Enough records that no round runs out: the handler takes ~1 ms a record.
fn fill(exe: &Path, brokers: &str, topic: &str) -> anyhow::Result<()> {
    let out = Command::new(exe)
        .args(["produce", "--brokers", brokers, "--topic", topic])
        .args(["--generate", "400000", "--keys", "1024", "--size", "20"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "filling {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

struct Run {
    exe: PathBuf,
    brokers: String,
    topic: String,
    group: String,
    ledger: PathBuf,
    protocol: &'static str,
    instance_id: Option<String>,
}

impl Run {
    fn flags(&self) -> Vec<String> {
        let mut f = vec!["--group-protocol".to_owned(), self.protocol.to_owned()];
        if let Some(id) = &self.instance_id {
            f.extend(["--instance-id".to_owned(), id.clone()]);
        }
        f
    }

    fn start(&self) -> anyhow::Result<Group> {
        let cmd = format!("echo \"$KBATCH_OFFSET\" >> {}", self.ledger.display());
        Ok(Command::new(&self.exe)
            .env("RUST_LOG", "error")
            .args([
                "consume",
                "--brokers",
                &self.brokers,
                "--topic",
                &self.topic,
            ])
            .args(["--group", &self.group, "--parallel", "--concurrency", "64"])
            .args(["--exec", &cmd])
            .args(self.flags())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Group)?)
    }

    fn lines(&self) -> usize {
        std::fs::read(&self.ledger).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count())
    }

    /// Starts (again, when refused) until a record is processed; returns the seconds from the
    /// first start, the child, and how many starts the broker refused.
    fn until_first_record(&self, from: usize) -> anyhow::Result<(f64, Group, usize)> {
        let t = Instant::now();
        let mut refused = 0;
        let mut child = self.start()?;
        while self.lines() <= from {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(300),
                "no record 300 s after the restart"
            );
            if child.0.try_wait()?.is_some() {
                // Refused (e.g. the instance id is still held): a supervisor starts it again.
                refused += 1;
                std::thread::sleep(Duration::from_secs(1));
                child = self.start()?;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((t.elapsed().as_secs_f64(), child, refused))
    }

    fn measure(self, name: &str, rounds: u16) -> anyhow::Result<Mode> {
        let (_, mut child, _) = self.until_first_record(0)?;
        let mut times = Vec::new();
        let mut refused_total = 0;
        for _ in 0..rounds {
            std::thread::sleep(Duration::from_secs(3)); // busy
            kill_group(&mut child)?;
            let (secs, c, refused) = self.until_first_record(self.lines())?;
            child = c;
            refused_total += refused;
            times.push(secs);
        }
        kill_group(&mut child)?;
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        Ok(Mode {
            mode: name.to_owned(),
            flags: if self.instance_id.is_some() {
                format!("--group-protocol {} --instance-id ID", self.protocol)
            } else {
                format!("--group-protocol {}", self.protocol)
            },
            min: sorted[0],
            median: super::median(&sorted).unwrap_or(f64::NAN),
            max: sorted[sorted.len() - 1],
            rounds: times,
            refused_restarts: refused_total,
        })
    }
}

/// A consumer process in a group of its own, killed with it if the benchmark fails midway.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = kill_group(self);
        }
    }
}

/// SIGKILL to the whole process group; returns once none of it is left.
fn kill_group(Group(child): &mut Group) -> anyhow::Result<()> {
    let group = format!("-{}", child.id());
    Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()?;
    child.wait()?;
    let t = Instant::now();
    while Command::new("kill")
        .args(["-0", "--", &group])
        .stderr(Stdio::null())
        .status()?
        .success()
    {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "process group {group} survived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
