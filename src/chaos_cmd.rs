//! `skiff chaos run|check`: chaos runs against a store cluster of real members, and the
//! checkers that judge their histories. The work is done by `skiff_chaos`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use skiff_chaos::faults::Kind;
use skiff_chaos::history::History;

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Start a cluster, run the workload under faults, check the history.
    /// Exit status: 0 PASS, 1 FAIL, 2 the run itself could not be carried out.
    Run(RunArgs),
    /// Run every checker on a saved (or hand-edited) history.json.
    /// Exit status: 0 PASS, 1 FAIL, 2 the file cannot be read.
    Check {
        /// The history file written by `skiff chaos run`.
        history: PathBuf,
        /// Where to write timeline.svg (default: next to the history).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// Store members to start (each a `skiff store` process on its own 127.0.0.x address).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// How long the workload and faults run, e.g. `60s`, `2m`, `90` (seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Comma-separated fault kinds: kill, pause, partition, membership, leader, snapshot,
    /// compact; or `all`, or `none` for a run without faults.
    #[arg(long, default_value = "all", value_parser = parse_faults)]
    faults: FaultList,
    /// Seed of the fault schedule and the workload; the same seed replays the same
    /// schedule. Default: derived from the clock, and printed.
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Operations per second over all clients.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Number of register keys the clients share (fewer keys, more contention).
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Directory for history.json and timeline.svg.
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
    /// Directory for the members' data and logs (must be new or empty).
    /// Default: a fresh directory under the system's temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the members' data and logs even when the run passes (a failed run always keeps them).
    #[arg(long)]
    keep: bool,
    /// The skiff binary to run members with. Default: this binary.
    #[arg(long)]
    binary: Option<PathBuf>,
}

#[derive(Clone)]
pub struct FaultList(Vec<Kind>);

fn parse_faults(s: &str) -> Result<FaultList, String> {
    match s {
        "all" => Ok(FaultList(Kind::ALL.to_vec())),
        "none" => Ok(FaultList(Vec::new())),
        _ => s.split(',').map(|p| Kind::parse(p.trim())).collect::<Result<Vec<_>, _>>().map(FaultList),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(s)?;
    if !(1.0..=86400.0).contains(&d.as_secs_f64()) {
        return Err(format!("{s:?}: the duration must be between 1s and 24h"));
    }
    Ok(d)
}

pub async fn run(command: ChaosCommand) -> anyhow::Result<ExitCode> {
    match command {
        ChaosCommand::Run(args) => run_chaos(args).await,
        ChaosCommand::Check { history, out } => {
            let h = match History::load(&history) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            let out = out.unwrap_or_else(|| history.parent().map(PathBuf::from).unwrap_or_default());
            let (report, timeline) = skiff_chaos::judge(&h, &out)?;
            Ok(print_report(&report, &history, &timeline))
        }
    }
}

async fn run_chaos(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.clients == 0 || args.rate <= 0.0 {
        anyhow::bail!("--clients and --rate must be positive");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
            % 1_000_000
    });
    let binary = match args.binary {
        Some(b) => b,
        None => std::env::current_exe()?,
    };
    let opts = skiff_chaos::RunOptions {
        binary,
        members: args.members,
        duration: args.duration,
        faults: args.faults.0,
        seed,
        clients: args.clients,
        rate: args.rate,
        keys: args.keys,
        out: args.out,
        work_dir: args.work_dir,
        keep: args.keep,
    };
    // Interrupting drops the run, whose cluster kills its members on the way out.
    let outcome = tokio::select! {
        r = skiff_chaos::run(opts) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted; members stopped");
            return Ok(ExitCode::from(130));
        }
    };
    match outcome {
        Ok(o) => {
            eprintln!();
            let code = print_report(&o.report, &o.history, &o.timeline);
            if let Some(dir) = o.work_dir {
                println!("members' data and logs: {}", dir.display());
            }
            println!("replay: skiff chaos run --seed {seed} (same fault schedule)");
            Ok(code)
        }
        Err(e) => {
            eprintln!("\nError: the chaos run could not be carried out: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

fn print_report(
    report: &skiff_chaos::check::Report,
    history: &std::path::Path,
    timeline: &std::path::Path,
) -> ExitCode {
    for line in &report.summary {
        println!("checked {line}");
    }
    for f in &report.findings {
        println!("{}: {}", f.checker, f.reason);
        for d in &f.details {
            println!("    {d}");
        }
    }
    println!("history: {}", history.display());
    println!("timeline: {}", timeline.display());
    println!("{}", report.verdict());
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
