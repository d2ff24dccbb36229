//! `skiff bench WORKLOAD`: load any etcd v3 endpoint (Skiff or etcd) and report
//! throughput and latency. The work is done by `skiff_bench`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use skiff_bench::{Config, Workload};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: WorkloadArg,
    /// Comma-separated endpoints; connections are spread over them round-robin.
    #[arg(long, global = true, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent clients (requests in flight).
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Total requests (events for watch, puts driving it); default 10000 unless --duration.
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Run for this many seconds instead of a request count.
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Offered load in requests per second (0 = as fast as possible). Latency is measured
    /// from each request's scheduled time, so queueing is not hidden.
    #[arg(long, global = true, default_value_t = 0.0)]
    rate: f64,
    /// Key size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 256)]
    val_size: usize,
    /// Number of distinct keys.
    #[arg(long, global = true, default_value_t = 100_000)]
    key_space: u64,
    /// Output format.
    #[arg(long, short = 'w', global = true, value_enum, default_value_t = Format::Table)]
    write_out: Format,
    /// Also append the JSON report to this file (one object per line).
    #[arg(long, global = true)]
    json_out: Option<PathBuf>,
    /// A label stored with the JSON report (e.g. the system and scenario).
    #[arg(long, global = true, default_value = "")]
    label: String,
}

#[derive(Subcommand, Clone)]
enum WorkloadArg {
    /// Put random keys.
    Put,
    /// Get random keys (write them first with `put`).
    Range {
        /// Serializable reads (served locally by the member) instead of linearizable.
        #[arg(long)]
        serializable: bool,
    },
    /// Txn(if mod_revision(key) == last seen then put else get): Kubernetes' update pattern.
    TxnPut,
    /// Many watchers on one prefix; puts at --rate carry their send time and the delay to
    /// each watcher is measured.
    Watch {
        /// Number of watchers (spread over --conns streams).
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
    },
    /// Write every key of --key-space once, --batch puts per txn (loads data fast).
    Fill {
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// Lease keep-alives.
    LeaseKeepalive {
        /// Number of leases kept alive.
        #[arg(long, default_value_t = 100)]
        leases: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let workload = match a.workload {
        WorkloadArg::Put => Workload::Put,
        WorkloadArg::Range { serializable } => Workload::Range { serializable },
        WorkloadArg::TxnPut => Workload::TxnPut,
        WorkloadArg::Watch { watchers } => Workload::Watch { watchers },
        WorkloadArg::LeaseKeepalive { leases } => Workload::LeaseKeepAlive { leases },
        WorkloadArg::Fill { batch } => Workload::Fill { batch: batch.max(1) },
    };
    let duration = a.duration.map(Duration::from_secs_f64);
    let fill_total = match &workload {
        Workload::Fill { batch } => Some(a.key_space.max(1).div_ceil(*batch as u64)),
        _ => None,
    };
    let cfg = Config {
        endpoints: a.endpoints,
        conns: a.conns.max(1),
        clients: a.clients.max(1),
        total: fill_total.or(a.total).or(if duration.is_none() { Some(10_000) } else { None }),
        duration,
        rate: (a.rate > 0.0).then_some(a.rate),
        key_size: a.key_size.max(1),
        val_size: a.val_size,
        key_space: a.key_space.max(1),
        workload,
    };
    let name = cfg.workload.name();
    let report = skiff_bench::run(cfg, move |done, errors| {
        eprint!("\r{name}: {done} done, {errors} errors   ");
        let _ = std::io::stderr().flush();
    })
    .await?;
    eprintln!();
    match a.write_out {
        Format::Table => println!("{}", report.table()),
        Format::Json => println!("{}", serde_json::to_string(&report)?),
    }
    if let Some(path) = a.json_out {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        writeln!(f, "{}", serde_json::json!({ "label": a.label, "report": report }))?;
    }
    Ok(())
}
