//! `skiff member list|add|remove|promote|update`: membership changes of a store cluster,
//! through the etcd Cluster API (so they work against etcd too).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use etcd_client::{Client, ConnectOptions, Member, MemberAddOptions};

#[derive(Subcommand)]
pub enum MemberCommand {
    /// List the members: id, started or not, name, peer and client URLs, learner flag.
    List(Common),
    /// Add a member. Start it afterwards with the printed flags and
    /// `--initial-cluster-state existing`.
    Add {
        /// The new member's name.
        name: String,
        /// The new member's peer URLs (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a non-voting learner; promote it once it caught up.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Remove a member (hex id from `member list`).
    Remove {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Make a learner a voting member; refused until its log is in sync with the leader's.
    Promote {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Change a member's peer URLs.
    Update {
        id: String,
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
pub struct Common {
    /// Comma-separated endpoints of the cluster.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short = 'w', value_enum, default_value_t = Format::Simple)]
    write_out: Format,
    #[command(flatten)]
    tls: crate::endpoint::TlsArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Simple,
    Json,
}

async fn connect(c: &Common) -> anyhow::Result<Client> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(15));
    c.tls.connect(&c.endpoints, opts).await.with_context(|| format!("connecting to {}", c.endpoints.join(",")))
}

fn parse_id(s: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).with_context(|| format!("bad member id {s:?}: expected hex"))
}

fn print_members(members: &[Member], format: Format) {
    match format {
        Format::Json => {
            let v: Vec<_> = members
                .iter()
                .map(|m| {
                    serde_json::json!({"ID": m.id(), "name": m.name(), "peerURLs": m.peer_urls(),
                                       "clientURLs": m.client_urls(), "isLearner": m.is_learner()})
                })
                .collect();
            println!("{}", serde_json::json!({ "members": v }));
        }
        Format::Simple => {
            for m in members {
                let started = if m.name().is_empty() { "unstarted" } else { "started" };
                println!(
                    "{:x}, {started}, {}, {}, {}, {}",
                    m.id(),
                    m.name(),
                    m.peer_urls().join(","),
                    m.client_urls().join(","),
                    m.is_learner()
                );
            }
        }
    }
}

pub async fn run(cmd: MemberCommand) -> anyhow::Result<()> {
    match cmd {
        MemberCommand::List(c) => {
            let resp = connect(&c).await?.member_list().await.context("member list")?;
            print_members(resp.members(), c.write_out);
        }
        MemberCommand::Add { name, peer_urls, learner, common } => {
            let opts = if learner { Some(MemberAddOptions::new().with_is_learner()) } else { None };
            let resp = connect(&common).await?.member_add(peer_urls.clone(), opts).await.context("member add")?;
            let id = resp.member().map_or(0, |m| m.id());
            let cluster = resp.header().map_or(0, |h| h.cluster_id());
            println!("Member {id:x} added to cluster {cluster:x}");
            let initial: Vec<String> = resp
                .0
                .members
                .iter()
                .flat_map(|m| {
                    let n = if m.id == id { name.clone() } else { m.name.clone() };
                    m.peer_ur_ls.iter().map(move |u| format!("{n}={u}")).collect::<Vec<_>>()
                })
                .collect();
            println!();
            println!("Start it with:");
            println!(
                "  skiff store --name {name} --initial-advertise-peer-urls {} --listen-peer-urls {} \\\n    --initial-cluster {} --initial-cluster-state existing ...",
                peer_urls.join(","),
                peer_urls.join(","),
                initial.join(",")
            );
        }
        MemberCommand::Remove { id, common } => {
            let id = parse_id(&id)?;
            let resp = connect(&common).await?.member_remove(id).await.context("member remove")?;
            let cluster = resp.header().map_or(0, |h| h.cluster_id());
            println!("Member {id:x} removed from cluster {cluster:x}");
        }
        MemberCommand::Promote { id, common } => {
            let id = parse_id(&id)?;
            let resp = connect(&common).await?.member_promote(id).await.context("member promote")?;
            let cluster = resp.header().map_or(0, |h| h.cluster_id());
            println!("Member {id:x} promoted in cluster {cluster:x}");
        }
        MemberCommand::Update { id, peer_urls, common } => {
            let id = parse_id(&id)?;
            let resp = connect(&common).await?.member_update(id, peer_urls).await.context("member update")?;
            let cluster = resp.header().map_or(0, |h| h.cluster_id());
            println!("Member {id:x} updated in cluster {cluster:x}");
        }
    }
    Ok(())
}
