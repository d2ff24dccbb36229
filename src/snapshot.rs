//! `skiff snapshot save|status|restore`: backups of a store cluster, and new clusters
//! from them. The file format and the restore logic live in `skiff_store::backup`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use etcd_client::ConnectOptions;
use skiff_store::backup;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Stream a consistent snapshot from one member into FILE (written as FILE.part,
    /// checked, fsynced, then renamed).
    Save(SaveArgs),
    /// Verify FILE and print its hash, revision, key count and size.
    Status(StatusArgs),
    /// Build the data dir of one member of a NEW cluster from FILE (run once per member,
    /// each with its own --name and --initial-advertise-peer-urls).
    Restore(RestoreArgs),
}

#[derive(Args)]
pub struct SaveArgs {
    /// Where to write the snapshot.
    file: PathBuf,
    /// The one member to take the snapshot from (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// Seconds allowed for connecting.
    #[arg(long, default_value_t = 5)]
    dial_timeout: u64,
    #[command(flatten)]
    tls: crate::endpoint::TlsArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    file: PathBuf,
    /// Output format.
    #[arg(long, short = 'w', value_enum, default_value_t = Format::Table)]
    write_out: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Simple,
    Json,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot to restore (its hash is checked first; nothing is written if it fails).
    file: PathBuf,
    /// The new member's data dir; must not exist or be empty. Default: `<name>.skiff`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The new member's name; must appear in --initial-cluster.
    #[arg(long, default_value = "default")]
    name: String,
    /// The new cluster's membership, `name=peer-url,...`.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Token of the new cluster; use the same on every member, and a new one per restore.
    #[arg(long, default_value = "skiff-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs, as in --initial-cluster.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Add this many revisions to the snapshot's revision, so clients that watched the
    /// old cluster never see revisions go backwards (etcd 3.6's --bump-revision).
    #[arg(long, default_value_t = 0)]
    bump_revision: i64,
    /// Mark the restored revision compacted, so old watchers re-list instead of resuming
    /// (etcd 3.6's --mark-compacted). Use it together with --bump-revision.
    #[arg(long)]
    mark_compacted: bool,
}

pub async fn run(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Save(a) => save(a).await,
        SnapshotCommand::Status(a) => status(a),
        SnapshotCommand::Restore(a) => restore(a),
    }
}

async fn save(a: SaveArgs) -> anyhow::Result<()> {
    if a.endpoints.contains(',') {
        bail!("snapshot save needs exactly one endpoint, got {}", a.endpoints);
    }
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(a.dial_timeout));
    let mut client =
        a.tls.connect([a.endpoints.as_str()], opts).await.with_context(|| format!("connecting to {}", a.endpoints))?;
    let part = PathBuf::from(format!("{}.part", a.file.display()));
    let mut out = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut stream = client.snapshot().await.context("starting the snapshot")?;
    let started = Instant::now();
    let mut received: u64 = 0;
    let result: anyhow::Result<()> = async {
        while let Some(msg) = stream.message().await.context("receiving the snapshot")? {
            out.write_all(msg.blob())?;
            received += msg.blob().len() as u64;
            eprint!("\rreceived {:.1} MiB, {} bytes to go   ", received as f64 / 1048576.0, msg.remaining_bytes());
        }
        eprintln!();
        out.sync_all()?;
        backup::verify(&part).map_err(anyhow::Error::msg)?;
        std::fs::rename(&part, &a.file)?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    println!("Snapshot saved at {} ({received} bytes in {:.1?})", a.file.display(), started.elapsed());
    Ok(())
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let s = backup::status(&a.file).map_err(anyhow::Error::msg)?;
    match a.write_out {
        Format::Json => println!("{}", serde_json::to_string(&s)?),
        Format::Simple => println!("{:x}, {}, {}, {}", s.hash, s.revision, s.total_key, s.total_size),
        Format::Table => {
            println!("+----------+----------+------------+------------+");
            println!("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |");
            println!("+----------+----------+------------+------------+");
            println!("| {:8x} | {:>8} | {:>10} | {:>10} |", s.hash, s.revision, s.total_key, s.total_size);
            println!("+----------+----------+------------+------------+");
        }
    }
    Ok(())
}

fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let data_dir = a.data_dir.unwrap_or_else(|| PathBuf::from(format!("{}.skiff", a.name)));
    let initial_cluster = a.initial_cluster.unwrap_or_else(|| {
        a.initial_advertise_peer_urls.iter().map(|u| format!("{}={u}", a.name)).collect::<Vec<_>>().join(",")
    });
    let opts = backup::RestoreOptions {
        data_dir: data_dir.clone(),
        name: a.name,
        initial_cluster,
        initial_cluster_token: a.initial_cluster_token,
        initial_advertise_peer_urls: a.initial_advertise_peer_urls,
        bump_revision: a.bump_revision,
        mark_compacted: a.mark_compacted,
    };
    let mut progress = |n: u64| eprint!("\rrestored {n} records");
    let id = backup::restore(&a.file, &opts, &mut progress).map_err(anyhow::Error::msg)?;
    eprintln!();
    println!(
        "Restored {} into {} as member {:x} of new cluster {:x}; start it with `skiff store --name {} --data-dir {} ...`",
        a.file.display(),
        data_dir.display(),
        id.member_id,
        id.cluster_id,
        id.name,
        data_dir.display()
    );
    Ok(())
}
