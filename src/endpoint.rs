//! `skiff endpoint status|health`: what etcdctl's commands of the same name report,
//! for any etcd v3 endpoint (Skiff or etcd).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use etcd_client::{Client, ConnectOptions};

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Version, database size, leader, raft term and indexes of each endpoint.
    Status(EndpointArgs),
    /// Whether each endpoint can serve a linearizable read (a quorum is reachable).
    Health(EndpointArgs),
}

#[derive(Args)]
pub struct EndpointArgs {
    /// Comma-separated endpoints (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Use every member's client URLs (from `member list` on the first endpoint).
    #[arg(long)]
    cluster: bool,
    /// Output format.
    #[arg(long, short = 'w', value_enum, default_value_t = Format::Table)]
    write_out: Format,
    /// Time allowed for each endpoint to answer, in seconds.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS to a store that serves https, and the user to act as once its auth is enabled,
/// with etcdctl's flag names.
#[derive(Args, Clone, Default)]
pub struct TlsArgs {
    /// NAME:PASSWORD of a store user (etcdctl's --user), for a store with auth enabled.
    #[arg(long)]
    user: Option<String>,
    /// CA (PEM) the store's certificate must be signed by; makes the connection TLS.
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a store that asks for one (--client-cert-auth).
    #[arg(long)]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long)]
    key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// A client of `endpoints` with `opts` and these flags. A `--user` given to a store
    /// whose auth is off is ignored, as etcdctl ignores it.
    pub async fn connect<E: AsRef<str>, S: AsRef<[E]>>(
        &self,
        endpoints: S,
        opts: ConnectOptions,
    ) -> anyhow::Result<Client> {
        let with_user = self.apply(opts.clone())?;
        match Client::connect(&endpoints, Some(with_user)).await {
            Err(e) if self.user.is_some() && e.to_string().contains("authentication is not enabled") => {
                let without = TlsArgs { user: None, ..self.clone() };
                Ok(Client::connect(&endpoints, Some(without.apply(opts)?)).await?)
            }
            r => Ok(r?),
        }
    }

    /// `opts` with TLS, if any TLS flag was given, and the --user.
    fn apply(&self, opts: ConnectOptions) -> anyhow::Result<ConnectOptions> {
        let files = skiff_apiserver::storage::StoreTls {
            ca_file: self.cacert.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
        };
        let opts = match files.options_named(["--cacert", "--cert", "--key"])? {
            Some(t) => opts.with_tls(t),
            None => opts,
        };
        Ok(match &self.user {
            None => opts,
            Some(u) => {
                let (name, password) =
                    u.split_once(':').ok_or_else(|| anyhow::anyhow!("--user {u:?}: expected NAME:PASSWORD"))?;
                opts.with_user(name, password)
            }
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Simple,
    Json,
}

async fn connect(endpoint: &str, timeout: Duration, tls: &TlsArgs) -> anyhow::Result<Client> {
    let opts = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
    tls.connect([endpoint], opts).await.with_context(|| format!("cannot connect to {endpoint}"))
}

async fn endpoints(args: &EndpointArgs) -> anyhow::Result<Vec<String>> {
    if !args.cluster {
        return Ok(args.endpoints.clone());
    }
    let first = args.endpoints.first().context("--endpoints is empty")?;
    let mut c = connect(first, Duration::from_secs(args.timeout), &args.tls).await?;
    let list = c.member_list().await.with_context(|| format!("member list from {first}"))?;
    Ok(list.members().iter().flat_map(|m| m.client_urls().to_vec()).collect())
}

fn human_size(bytes: i64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

pub async fn run(cmd: EndpointCommand) -> anyhow::Result<()> {
    match cmd {
        EndpointCommand::Status(args) => status(&args).await,
        EndpointCommand::Health(args) => health(&args).await,
    }
}

async fn status(args: &EndpointArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let mut rows = Vec::new();
    let mut json = Vec::new();
    let mut failed = false;
    for ep in endpoints(args).await? {
        let result = async { connect(&ep, timeout, &args.tls).await?.status().await.context("status") }.await;
        match result {
            Ok(s) => {
                let id = s.header().map_or(0, |h| h.member_id());
                rows.push(vec![
                    ep.clone(),
                    format!("{id:x}"),
                    s.version().to_string(),
                    human_size(s.db_size()),
                    (s.leader() == id).to_string(),
                    s.is_learner().to_string(),
                    s.raft_term().to_string(),
                    s.raft_index().to_string(),
                    s.raft_applied_index().to_string(),
                    s.errors().join(", "),
                ]);
                json.push(serde_json::json!({
                    "Endpoint": ep,
                    "Status": {
                        "header": {
                            "cluster_id": s.header().map_or(0, |h| h.cluster_id()),
                            "member_id": id,
                            "revision": s.header().map_or(0, |h| h.revision()),
                            "raft_term": s.header().map_or(0, |h| h.raft_term()),
                        },
                        "version": s.version(),
                        "dbSize": s.db_size(),
                        "leader": s.leader(),
                        "raftIndex": s.raft_index(),
                        "raftTerm": s.raft_term(),
                        "raftAppliedIndex": s.raft_applied_index(),
                        "isLearner": s.is_learner(),
                        "errors": s.errors(),
                    }
                }));
            }
            Err(e) => {
                failed = true;
                eprintln!("Failed to get the status of endpoint {ep}: {e:#}");
            }
        }
    }
    let header = [
        "ENDPOINT",
        "ID",
        "VERSION",
        "DB SIZE",
        "IS LEADER",
        "IS LEARNER",
        "RAFT TERM",
        "RAFT INDEX",
        "RAFT APPLIED INDEX",
        "ERRORS",
    ];
    match args.write_out {
        Format::Json => println!("{}", serde_json::Value::Array(json)),
        Format::Simple => {
            for r in &rows {
                println!("{}", r.join(", "));
            }
        }
        Format::Table => print_table(&header, &rows),
    }
    if failed {
        bail!("some endpoints did not answer");
    }
    Ok(())
}

async fn health(args: &EndpointArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let mut unhealthy = false;
    let mut json = Vec::new();
    for ep in endpoints(args).await? {
        let start = Instant::now();
        // Like etcdctl: a linearizable read needs a leader and a quorum.
        let result = async {
            connect(&ep, timeout, &args.tls).await?.get("health", None).await.context("failed to commit proposal")
        }
        .await;
        let took = start.elapsed();
        match result {
            Ok(_) => {
                println!("{ep} is healthy: successfully committed proposal: took = {took:?}");
                json.push(serde_json::json!({"endpoint": ep, "health": true, "took": format!("{took:?}")}));
            }
            Err(e) => {
                unhealthy = true;
                println!("{ep} is unhealthy: {e:#}");
                json.push(serde_json::json!({"endpoint": ep, "health": false, "took": format!("{took:?}"), "error": format!("{e:#}")}));
            }
        }
    }
    if let Format::Json = args.write_out {
        println!("{}", serde_json::Value::Array(json));
    }
    if unhealthy {
        bail!("unhealthy cluster");
    }
    Ok(())
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = || {
        let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
        println!("+{}+", parts.join("+"));
    };
    let row = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!(" {:^w$} ", c, w = widths[i])).collect();
        println!("|{}|", parts.join("|"));
    };
    line();
    row(header.iter().map(|s| s.to_string()).collect());
    line();
    for r in rows {
        row(r.clone());
    }
    line();
}
