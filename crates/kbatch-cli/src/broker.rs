//! `kbatch broker`: the embedded in-memory dev broker as a standalone process.

use clap::Args as ClapArgs;
use kbatch_client::DevBroker;

/// Options of `kbatch broker`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Number of mock brokers in the cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    brokers: i32,
    /// Topics to create up front, as NAME or NAME:PARTITIONS (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let dev = DevBroker::start(a.brokers)?;
    for t in &a.topics {
        let (name, parts) = match t.split_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<i32>()
                    .map_err(|_| anyhow::anyhow!("--topic {t:?}: partitions must be a number"))?,
            ),
            None => (t.as_str(), 1),
        };
        anyhow::ensure!(parts >= 1, "--topic {t:?}: partitions must be >= 1");
        dev.create_topic(name, parts)?;
    }
    eprintln!(
        "kbatch in-memory DEV broker (librdkafka mock cluster): not a real Kafka; data lives only in this process."
    );
    eprintln!("Ctrl-C to stop. Bootstrap address:");
    #[allow(clippy::print_stdout, reason = "the address is this command's output")]
    {
        println!("{}", dev.bootstrap_servers());
    }
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping dev broker");
    Ok(())
}
