//! netpathctl: the command line over netpathd's API. See `netpathctl --help`.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use netpath_userspace::{
    client::Client,
    config::default_socket,
    model::{
        Container, ContainerRequest, ContainerStatus, DefaultRequest, Flow, FlushResult, Mapping, MappingRequest,
        PolicyView, RuleRequest, RulesRequest, Settings, StatsView, Status,
    },
    monitor::MonitorEvent,
    output,
    policy::{Action, Direction, Rule},
};

#[derive(Parser, Debug)]
#[command(name = "netpathctl", version, about = "Drive netpathd: containers, published ports, policy, state")]
struct Args {
    /// API socket [default: /run/netpath/<instance>/api.sock].
    #[arg(long, global = true, env = "NETPATH_SOCKET")]
    socket: Option<PathBuf>,
    /// Instance whose default socket to use.
    #[arg(long, global = true, env = "NETPATH_INSTANCE", default_value = "default")]
    instance: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Instance, attach points, programs, maps and containers.
    Status,
    /// Attach, detach and list containers.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Publish a container port: [HOSTIP:]HOSTPORT[-END]:CONTAINER:PORT[-END][/tcp|/udp]
    ///
    /// No HOSTIP: every host address, IPv4 and (if the container has one)
    /// IPv6; 0.0.0.0: IPv4 only; [::]: IPv6 only; an IPv6 HOSTIP goes in
    /// brackets: [2001:db8::1]:8080:ctr1:80.
    Map {
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        spec: Option<String>,
        /// Publish every spec in FILE (one per line, `#` comments), all or
        /// nothing; `-` reads standard input.
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Remove a published port: a full map spec, or [HOSTIP:]HOSTPORT[-END][/tcp|/udp] ([::]:8080/tcp)
    Unmap {
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        spec: Option<String>,
        /// Remove what every spec in FILE names, all or nothing.
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// List published ports.
    Maps,
    /// List tracked flows, or flush them.
    Conntrack {
        #[command(subcommand)]
        action: Option<ConntrackCmd>,
    },
    /// Per-container allow/deny rules.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Direct container-to-container traffic on or off (Docker's --icc);
    /// without an argument, show it.
    Icc {
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
    },
    /// Re-read the agent's config file (as SIGHUP does) and apply what a
    /// running agent can change; settings that need a restart are named.
    Reload,
    /// Traffic and drop counters, per container and reason.
    Stats { container: Option<String> },
    /// Stream drop events (and with --flows, new flows) as they happen.
    Monitor {
        container: Option<String>,
        /// Also show every new flow a policy allowed.
        #[arg(long)]
        flows: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum CliAction {
    Allow,
    Deny,
}

impl From<CliAction> for Action {
    fn from(a: CliAction) -> Action {
        if a == CliAction::Allow {
            Action::Allow
        } else {
            Action::Deny
        }
    }
}
/// `in` or `out`, parsed by the one `Direction` the API and the datapath use.
fn parse_direction(s: &str) -> Result<Direction, String> {
    s.parse().map_err(|e| format!("{e}"))
}

#[derive(clap::Args, Debug)]
struct RuleArgs {
    container: String,
    #[arg(value_enum)]
    action: CliAction,
    /// in (traffic reaching the container) or out (traffic it sends).
    #[arg(value_parser = parse_direction)]
    direction: Direction,
    /// Remote address or ADDRESS/PREFIX.
    cidr: String,
    /// tcp, udp, icmp or icmpv6, optionally /PORT or /PORT-END (icmp: message
    /// types; icmp with an IPv6 CIDR is ICMPv6).
    filter: Option<String>,
}

impl RuleArgs {
    fn request(self) -> RuleRequest {
        RuleRequest {
            container: self.container,
            action: self.action.into(),
            direction: self.direction,
            cidr: self.cidr,
            filter: self.filter,
        }
    }
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// policy add CONTAINER allow|deny in|out CIDR [tcp|udp|icmp|icmpv6[/PORT[-END]]];
    /// or -f FILE: one such rule per line (`#` comments), added all or nothing
    Add {
        #[arg(
            required_unless_present = "file",
            conflicts_with = "file",
            num_args = 4..=5,
            value_names = ["CONTAINER", "ACTION", "DIRECTION", "CIDR", "FILTER"]
        )]
        rule: Vec<String>,
        /// Add every rule in FILE (`-`: standard input).
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Remove a rule, given as it was added.
    #[command(alias = "del")]
    Rm(RuleArgs),
    /// A container's defaults and rules.
    #[command(alias = "list")]
    Ls { container: String },
    /// What new flows no rule matches get: policy default CONTAINER in|out allow|deny
    Default {
        container: String,
        /// in or out.
        #[arg(value_parser = parse_direction)]
        direction: Direction,
        #[arg(value_enum)]
        action: CliAction,
    },
}

#[derive(Subcommand, Debug)]
enum ConntrackCmd {
    /// List tracked flows (the default).
    #[command(alias = "ls")]
    List,
    /// Remove every tracked flow (established connections through published
    /// ports are cut).
    Flush,
}

#[derive(Subcommand, Debug)]
enum ContainerCmd {
    /// Attach the network namespace NETNS to the bridge as container NAME.
    Add {
        name: String,
        /// A name under /run/netns, or a path such as /proc/PID/ns/net.
        #[arg(long)]
        netns: String,
        /// Address from the subnet [default: the next free one].
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Address from the IPv6 subnet (`subnet6`) [default: the next free
        /// one, on an instance with IPv6].
        #[arg(long)]
        ip6: Option<Ipv6Addr>,
    },
    /// Detach a container and remove every trace of it.
    #[command(alias = "rm")]
    Del { name: String },
    /// List containers.
    #[command(alias = "list")]
    Ls,
    /// One container with its counters.
    Show { name: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netpathctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netpathctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print<T: serde::Serialize>(format: Format, value: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Table => print!("{}", table(value)),
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let socket = args.socket.clone().unwrap_or_else(|| default_socket(&args.instance));
    let client = Client::new(&socket);
    let fmt = args.output;
    match args.command {
        Command::Status => {
            let s: Status = client.get("/status").await?;
            print(fmt, &s, output::status_text)
        }
        Command::Container(ContainerCmd::Add { name, netns, ip, ip6 }) => {
            let c: Container =
                client.post("/containers", &ContainerRequest { name, netns, ip, ip6, ..Default::default() }).await?;
            print(fmt, &c, |c| {
                let ip = c.ip.map(|a| format!(" ip {a}")).unwrap_or_default();
                let ip6 = c.ip6.map(|a| format!(" ip6 {a}")).unwrap_or_default();
                format!("added {}{ip}{ip6} mac {} veth {}\n", c.name, c.mac, c.veth)
            })
        }
        Command::Container(ContainerCmd::Del { name }) => {
            let c: Container = client.delete(&format!("/containers/{}", encode(&name))).await?;
            print(fmt, &c, |c| format!("removed {}\n", c.name))
        }
        Command::Container(ContainerCmd::Ls) => {
            let cs: Vec<Container> = client.get("/containers").await?;
            print(fmt, &cs, |cs| output::containers_table(cs))
        }
        Command::Map { spec, file } => {
            let ms: Vec<Mapping> = client.post("/mappings", &mapping_request(spec, file)?).await?;
            print(fmt, &ms, |ms| ms.iter().map(|m| format!("published {}\n", m.spec())).collect())
        }
        Command::Unmap { spec, file } => {
            let ms: Vec<Mapping> = client.post("/mappings/unmap", &mapping_request(spec, file)?).await?;
            print(fmt, &ms, |ms| ms.iter().map(|m| format!("removed {}\n", m.spec())).collect())
        }
        Command::Maps => {
            let ms: Vec<Mapping> = client.get("/mappings").await?;
            print(fmt, &ms, |ms| output::mappings_table(ms))
        }
        Command::Conntrack { action: None | Some(ConntrackCmd::List) } => {
            let flows: Vec<Flow> = client.get("/conntrack").await?;
            print(fmt, &flows, |f| output::flows_table(f))
        }
        Command::Conntrack { action: Some(ConntrackCmd::Flush) } => {
            let r: FlushResult = client.delete("/conntrack").await?;
            print(fmt, &r, |r| format!("flushed {} flows\n", r.flows))
        }
        Command::Policy(PolicyCmd::Add { rule, file: None }) => {
            let r: Rule = client.post("/policies", &rule_request(&rule)?).await?;
            print(fmt, &r, |r| format!("added {r}\n"))
        }
        Command::Policy(PolicyCmd::Add { file: Some(file), .. }) => {
            let rules = spec_lines(&file)?
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    rule_request(&line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                        .with_context(|| format!("{}, rule {}: {line:?}", file.display(), i + 1))
                })
                .collect::<Result<Vec<_>>>()?;
            if rules.is_empty() {
                bail!("{} holds no rules", file.display());
            }
            let added: Vec<Rule> = client.post("/policies", &RulesRequest { rules }).await?;
            print(fmt, &added, |rs| format!("added {} rules\n", rs.len()))
        }
        Command::Policy(PolicyCmd::Rm(args)) => {
            let r: Rule = client.post("/policies/remove", &args.request()).await?;
            print(fmt, &r, |r| format!("removed {r}\n"))
        }
        Command::Policy(PolicyCmd::Ls { container }) => {
            let p: PolicyView = client.get(&format!("/policies/{}", encode(&container))).await?;
            print(fmt, &p, output::policy_table)
        }
        Command::Policy(PolicyCmd::Default { container, direction, action }) => {
            let req = DefaultRequest { direction, action: action.into() };
            let p: PolicyView = client.put(&format!("/policies/{}/default", encode(&container)), &req).await?;
            print(fmt, &p, output::policy_table)
        }
        Command::Icc { state } => {
            let s: Settings = match state {
                Some(v) => client.put("/settings", &Settings { icc: v == "on" }).await?,
                None => client.get("/settings").await?,
            };
            print(fmt, &s, |s| format!("icc {}\n", if s.icc { "on" } else { "off" }))
        }
        Command::Reload => {
            let r: netpath_userspace::agent::ReloadReport = client.post("/reload", &serde_json::json!({})).await?;
            print(fmt, &r, |r| {
                if r.changed.is_empty() {
                    "configuration unchanged\n".to_string()
                } else {
                    r.changed.iter().map(|c| format!("{c}\n")).collect()
                }
            })
        }
        Command::Stats { container } => {
            let path = match &container {
                Some(c) => format!("/stats?container={}", encode(c)),
                None => "/stats".into(),
            };
            let st: StatsView = client.get(&path).await?;
            print(fmt, &st, output::stats_table)
        }
        Command::Monitor { container, flows } => {
            let mut path = format!("/monitor?flows={flows}");
            if let Some(c) = &container {
                path.push_str(&format!("&container={}", encode(c)));
            }
            if fmt == Format::Table {
                println!(
                    "{:>10} {:<26} {:<12} {:<4} {:<14} PROTO SRC -> DST",
                    "TIME", "EVENT", "CONTAINER", "DIR", "HOOK"
                );
            }
            client
                .stream_lines(&path, |line| {
                    match fmt {
                        Format::Json => println!("{line}"),
                        Format::Table => {
                            let e: MonitorEvent = serde_json::from_str(line)?;
                            println!("{}", e.line());
                        }
                    }
                    use std::io::Write as _;
                    std::io::stdout().flush()?;
                    Ok(())
                })
                .await
        }
        Command::Container(ContainerCmd::Show { name }) => {
            let c: ContainerStatus = client.get(&format!("/containers/{}", encode(&name))).await?;
            print(fmt, &c, |c| {
                let mut s = output::containers_table(std::slice::from_ref(&c.container));
                if let Some(bridge) = &c.bridge {
                    s.push_str(&format!("bridge {bridge}\n"));
                }
                s.push_str(&format!(
                    "tx {} packets {} bytes, rx {} packets {} bytes, drops {}\n",
                    c.stats.tx_packets,
                    c.stats.tx_bytes,
                    c.stats.rx_packets,
                    c.stats.rx_bytes,
                    output::drops_summary(&c.stats)
                ));
                s
            })
        }
    }
}

/// Percent-encodes a path segment (container names are restricted, but a
/// mistyped one must still reach the agent to be rejected there).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A rule written as on the command line: CONTAINER allow|deny in|out
/// CIDR [FILTER].
fn rule_request(words: &[String]) -> Result<RuleRequest> {
    let [container, action, direction, cidr, rest @ ..] = words else {
        bail!("expected CONTAINER allow|deny in|out CIDR [FILTER], got {:?}", words.join(" "));
    };
    let filter = match rest {
        [] => None,
        [f] => Some(f.clone()),
        _ => bail!("expected at most one FILTER after the CIDR, got {:?}", rest.join(" ")),
    };
    let action = CliAction::from_str(action, true).map_err(|_| anyhow::anyhow!("{action:?} is not allow or deny"))?;
    Ok(RuleRequest {
        container: container.clone(),
        action: action.into(),
        direction: parse_direction(direction).map_err(anyhow::Error::msg)?,
        cidr: cidr.clone(),
        filter,
    })
}

/// One spec from the command line, or every spec of a file.
fn mapping_request(spec: Option<String>, file: Option<PathBuf>) -> Result<MappingRequest> {
    let Some(file) = file else {
        return Ok(MappingRequest { spec, specs: vec![] });
    };
    let specs = spec_lines(&file)?;
    if specs.is_empty() {
        bail!("{} holds no specs", file.display());
    }
    Ok(MappingRequest { spec: None, specs })
}

/// The non-empty, non-comment lines of FILE (`-`: standard input).
fn spec_lines(file: &Path) -> Result<Vec<String>> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}
