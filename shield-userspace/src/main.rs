use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use shield::{
    cli::{AopCommand, Cli, Command, EnrollArgs},
    config::Config,
    daemon::Daemon,
    dataplane::{self, PinLayout},
    logging,
    policy::{Allowlist, Classifier},
};
use shield_common::Verdict;

// Each proxied request allocates and frees a few dozen small blocks
// (headers, body chunks, h2 frames and stream state) on one worker thread;
// jemalloc's per-thread caches serve them with less work than glibc's
// bins, about 5% less CPU per h2 request in docs/BENCHMARKS.md, for about
// half a KiB more per idle connection.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's options, read once at its start (the `_RJEM_MALLOC_CONF`
// environment variable still overrides them). Left to itself, jemalloc keeps
// freed pages for 10 s and returns them only while it is allocating, so the
// memory of a burst of connections stayed in RSS after they went idle (1.1
// to 1.5 KiB per idle connection, 2 s after 10,000 of them; docs/
// BENCHMARKS.md). One background thread returns them after a second instead,
// whether or not the workers allocate; h2 CPU per request did not move.
// Option<&c_char> has the layout of the `const char *` jemalloc reads.
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: Option<&'static std::ffi::c_char> =
    // SAFETY: a NUL-terminated literal, which lives as long as the program.
    Some(unsafe {
        &*c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000".as_ptr()
    });

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon's log is in [log].format, through the writer that never
    // blocks; a config that does not load gets text, and the start then
    // reports why. Kept to the end so what is buffered is written.
    let _logging = match &cli.command {
        Command::Run(args) => Some(logging::init_for_daemon(
            Config::load(&args.config)
                .map(|config| config.log.format)
                .unwrap_or_default(),
        )),
        _ => {
            logging::init_for_command();
            None
        }
    };
    if !matches!(cli.command, Command::Run(_)) {
        // A command's output piped into `head` ends quietly when the pipe
        // closes, as other Unix tools do, instead of panicking on EPIPE.
        // The daemon keeps Rust's default (ignored), so a peer that goes
        // away is an error on that socket, not the end of the process.
        // SAFETY: before any thread is spawned; SIG_DFL is always valid.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let daemon = Daemon::start(&args.config)?;
                daemon.run().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => match check_config(&args.config) {
            Ok(config) => {
                print!(
                    "{}",
                    toml::to_string(&config).context("cannot print the config")?
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("invalid: {error:#}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Classify {
            address,
            port,
            destination,
            proto,
            config,
        } => {
            let config = Config::load(&config.config).context("classify needs a valid config")?;
            // The ranges in force: the cache, else the embedded snapshot.
            let (ranges, _) = shield::ranges::cache::load_or_snapshot(
                &config.ranges.cache,
                &shield::ranges::validate::Limits::from_config(&config.ranges),
            );
            // JD Cloud's cached prefixes count only with china_network.
            let ranges = ranges.for_networks(shield::ranges::Networks::from_config(&config.ranges));
            let allowed = Allowlist::new(
                ranges
                    .prefixes()
                    .chain(config.ranges.extra_allow.iter().copied()),
            );
            let classifier = Classifier::new(&config.xdp, allowed);
            // Without --destination: one the scope holds, so the answer is
            // what a protected address sees.
            let destination = destination.or_else(|| {
                config
                    .xdp
                    .protected_destinations
                    .iter()
                    .find(|d| d.is_ipv4() == address.is_ipv4())
                    .map(|d| d.network())
            });
            let decision = match destination {
                Some(destination) => classifier
                    .classify_flow_to(address, destination, proto.into(), port)
                    .with_context(|| {
                        format!("--destination {destination} is not of the family of {address}; give one that is")
                    })?,
                None => classifier.classify_flow(address, proto.into(), port),
            };
            println!("{decision}");
            Ok(if decision.verdict == Verdict::Pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Ranges {
            refresh,
            accept_shrink,
            config,
        } => ranges_command(&config.config, refresh, accept_shrink),
        Command::Status { json } => {
            let layout = PinLayout::from_env();
            let interfaces = dataplane::status(&layout).context("cannot read the pinned state")?;
            if json {
                println!("{}", status_json(&interfaces));
            } else {
                print_status(&layout, &interfaces);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "shield", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Aop(AopCommand::Enroll(args)) => aop_enroll(args),
        Command::Detach { iface } => {
            let layout = PinLayout::from_env();
            let removed = dataplane::detach(&layout, iface.as_deref()).context("detach failed")?;
            for name in removed {
                println!("detached {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `shield run` would refuse without binding or attaching anything:
/// every key, and every site's certificate, key, CA and CRL files.
fn check_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    shield::tls::check(&config)?;
    Ok(config)
}

/// `shield aop enroll`.
fn aop_enroll(args: Box<EnrollArgs>) -> anyhow::Result<ExitCode> {
    let args = *args;
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    use shield::aop::{reload::Reload, EnrollOptions};
    let api_roots = match &args.api_ca {
        Some(path) => Some(
            CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read the CA file {}", path.display()))?,
        ),
        None => None,
    };
    // The config names the CA by an absolute path (`client_ca`).
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("cannot resolve --dir {}", args.dir.display()))?;
    let options = EnrollOptions {
        zone: args.zone,
        token_file: args.api_token_file,
        config: args.config.config,
        site: args.site,
        dir,
        overwrite: args.overwrite,
        reload: match args.pid {
            Some(pid) => Reload::Pid(pid),
            None => Reload::Systemd { unit: args.unit },
        },
        verify_address: args.verify_address,
        verify_timeout: args.verify_timeout,
        activation_timeout: args.activation_timeout,
        api_base: args.api_base,
        api_roots,
        api_timeout: args.api_timeout,
        dry_run: args.dry_run,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime
        .block_on(shield::aop::enroll(&options, &mut |line: &str| {
            println!("{line}")
        }))
        .context("aop enroll stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// `shield ranges [--refresh [--accept-shrink]]`.
fn ranges_command(
    config_path: &std::path::Path,
    refresh: bool,
    accept_shrink: bool,
) -> anyhow::Result<ExitCode> {
    use shield::ranges::{
        cache,
        metrics::RangeMetrics,
        refresh::{format_age, Refresher},
        source::{FetchOptions, Fetcher},
        validate::Limits,
        Networks,
    };
    let config = Config::load(config_path).context("ranges needs a valid config")?;
    let limits = Limits::from_config(&config.ranges);
    let networks = Networks::from_config(&config.ranges);
    let (ranges, fetched_at) = cache::load_or_snapshot(&config.ranges.cache, &limits);
    // As the daemon enforces it: JD Cloud's list only with china_network.
    let ranges = ranges.for_networks(networks);
    if refresh {
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let fetcher = Fetcher::new(FetchOptions::default())?;
        let mut refresher = Refresher::new(
            &config.ranges,
            fetcher,
            RangeMetrics::default(),
            ranges,
            fetched_at,
        );
        // This command only writes the cache; the daemon owns the maps and
        // adopts the new cache on its next poll or on SIGHUP.
        let report = runtime
            .block_on(refresher.refresh(accept_shrink, |_| Ok::<(), std::convert::Infallible>(())));
        println!("result: {}", report.result);
        if let Some(diff) = &report.diff {
            print!("{diff}");
        }
        if let Some(error) = &report.error {
            eprintln!("{error}");
        }
        if !report.result.is_success() {
            return Ok(ExitCode::from(1));
        }
        println!(
            "cache: {} (a running daemon applies it within 10 s, or at once on SIGHUP)",
            config.ranges.cache.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let age = fetched_at
        .and_then(|at| std::time::SystemTime::now().duration_since(at).ok())
        .map(|age| format!("{} ago", format_age(age)))
        .unwrap_or_else(|| "never fetched (embedded snapshot)".to_owned());
    println!("source: {}", ranges.source);
    println!("cache: {}", config.ranges.cache.display());
    println!("age: {age}");
    println!("etag: {}", ranges.etag.as_deref().unwrap_or("-"));
    match (networks.china(), &ranges.jdcloud) {
        (false, _) => println!("china_network: off"),
        (true, Some(_)) => println!("china_network: on"),
        (true, None) => println!(
            "china_network: on, but these ranges have no JD Cloud list yet (a running daemon fetches it; or run `shield ranges --refresh`)"
        ),
    }
    let jdcloud = match &ranges.jdcloud {
        Some(list) => format!(", jdcloud: {} prefixes", list.len()),
        None => String::new(),
    };
    println!(
        "ipv4: {} prefixes, ipv6: {} prefixes{jdcloud}, extra_allow: {}",
        ranges.ipv4.len(),
        ranges.ipv6.len(),
        config.ranges.extra_allow.len()
    );
    // One prefix a line, with the network(s) that publish it: a prefix in
    // both Cloudflare's and JD Cloud's lists names both.
    for (prefix, from) in ranges.by_network() {
        let from: Vec<&str> = from.iter().map(|network| network.as_str()).collect();
        println!("  {:<24} {}", prefix.to_string(), from.join(", "));
    }
    for prefix in &config.ranges.extra_allow {
        println!("  {:<24} extra_allow", prefix.to_string());
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(interfaces: &[dataplane::InterfaceStatus]) -> serde_json::Value {
    let list: Vec<_> = interfaces
        .iter()
        .map(|i| {
            let counters: Vec<_> = i
                .counters
                .iter()
                .map(|(verdict, reason, c)| {
                    serde_json::json!({"verdict": verdict.name(), "reason": reason.name(), "packets": c.packets, "bytes": c.bytes})
                })
                .collect();
            serde_json::json!({
                "interface": i.interface, "attached": i.attached, "mode": i.mode,
                "ifindex": i.ifindex, "attached_at": i.attached_at, "counters": counters,
            })
        })
        .collect();
    serde_json::json!({ "interfaces": list })
}

fn print_status(layout: &PinLayout, interfaces: &[dataplane::InterfaceStatus]) {
    if interfaces.is_empty() {
        println!("no interfaces attached (pins: {})", layout.root().display());
        return;
    }
    for i in interfaces {
        println!(
            "interface {} ifindex {}: {} mode {}",
            i.interface,
            i.ifindex,
            if i.attached {
                "attached"
            } else {
                "NOT attached"
            },
            i.mode.unwrap_or("unknown")
        );
        println!(
            "  {:<10} {:<24} {:>12} {:>14}",
            "verdict", "reason", "packets", "bytes"
        );
        for (verdict, reason, counter) in i.counters.iter() {
            println!(
                "  {:<10} {:<24} {:>12} {:>14}",
                verdict.name(),
                reason.name(),
                counter.packets,
                counter.bytes
            );
        }
    }
    if let Ok(maps) = dataplane::SharedMaps::open_pinned(layout) {
        if let (Ok(settings), Ok(allow)) = (maps.settings(), maps.allowlist()) {
            println!(
                "enforce: {}  fragments: {}  allowed prefixes: {}",
                settings.enforce != 0,
                if settings.fragments == 0 {
                    "judge-first"
                } else {
                    "drop-outside"
                },
                allow.len()
            );
            println!(
                "syn_cookies: {}  udp_from_ranges: {}",
                match (
                    settings.syn_cookies != 0,
                    dataplane::syn_cookies_active(layout)
                ) {
                    (false, _) => "off",
                    (true, Some(true)) => "answering in XDP",
                    (true, _) =>
                        "on, but not answering (monitor mode, or net.ipv4.tcp_syncookies = 0)",
                },
                if settings.drop_udp_from_ranges != 0 {
                    "drop"
                } else {
                    "pass"
                }
            );
            let destinations = match maps.destinations() {
                _ if settings.scoped_destinations == 0 => "all".to_owned(),
                Ok(mut list) => {
                    list.sort();
                    list.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                Err(error) => format!("unreadable ({error:#})"),
            };
            println!("protected destinations: {destinations}");
        }
    }
}
