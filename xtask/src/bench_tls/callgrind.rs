//! User-space instructions per request, counted by valgrind's callgrind:
//! one server at a time under callgrind, oha as the client.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

use super::{
    conf::{path_str, Pki, Processes},
    load::{oha, oha_200s, Keepalive},
    params::{Plan, CALLGRIND_START_WAIT},
    procfs::Cpus,
    servers::{free_port, log_file, pinned, Kind, Server},
};
use crate::shell;

/// `kind` alone under callgrind on the server's CPU, oha sending `load`
/// from the load CPUs, with the counters zeroed after the plan's warm-up
/// and dumped after its counted requests.
pub fn per_request(
    kind: Kind,
    load: Keepalive,
    work: &Path,
    pki: &Pki,
    upstream: &str,
    cpus: &Cpus,
    plan: &Plan,
) -> anyhow::Result<f64> {
    let tag = match load {
        Keepalive::H1 { .. } => "h1",
        Keepalive::H2 { .. } => "h2",
    };
    let name = format!("{}-{tag}-callgrind", kind.name());
    let out = work.join(format!("{name}.out"));
    let port = free_port()?;
    let (program, args) = kind.command_line(work, &name, pki, port, upstream, Processes::One)?;
    let mut valgrind: Vec<OsString> = vec![
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()).into(),
        // Per function is enough for a total; per instruction makes the
        // dumps large and slow to write.
        "--dump-instr=no".into(),
        program,
    ];
    valgrind.extend(args);
    let mut command = pinned(&cpus.server.to_string(), "valgrind", &valgrind);
    // valgrind's messages and shield's log to one file, off the terminal.
    command
        .env("SHIELD_LOG", "warn")
        .stderr(log_file(work, &name)?);
    let server = Server::start(&name, &mut command, port, CALLGRIND_START_WAIT)?;
    let load_cpus = cpus.load_list();
    requests(&server, pki, &load_cpus, load, plan.callgrind_warmup)?;
    control(&server, "-z")?;
    requests(&server, pki, &load_cpus, load, plan.callgrind_requests)?;
    control(&server, "-d")?;
    // Stopped before its dumps are read: the dump asked for is written by
    // then, and the host is free again.
    drop(server);
    let total = program_totals(&largest_dump(work, &format!("{name}.out."))?)?;
    Ok(total / plan.callgrind_requests as f64)
}

/// `count` requests of `load` to the server under callgrind, every one a
/// 200.
fn requests(
    server: &Server,
    pki: &Pki,
    cpus: &str,
    load: Keepalive,
    count: usize,
) -> anyhow::Result<()> {
    let mut args = vec!["-n".to_owned(), count.to_string()];
    args.extend(load.oha_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = oha(pki, server.port, cpus, &args).with_context(|| {
        format!(
            "{}: oha failed; see its log in target/bench-tls",
            server.name
        )
    })?;
    let ok = oha_200s(&out, server.port)?;
    if ok as usize != count {
        bail!(
            "{}: {ok} of {count} requests answered 200; see its log in target/bench-tls",
            server.name
        );
    }
    Ok(())
}

/// `callgrind_control FLAG PID` (`-z` zeroes the counters, `-d` dumps
/// them). It exits 0 even when it finds no such process, and then acts on
/// every callgrind run on the host, so its output is checked.
fn control(server: &Server, flag: &str) -> anyhow::Result<()> {
    let pid = server.child.id().to_string();
    let out = shell::output("callgrind_control", &[flag, &pid])?;
    if out.contains("Error") || !out.contains(&format!("PID {pid}:")) {
        bail!(
            "{}: `callgrind_control {flag} {pid}` did not reach it: {out}; see its log in \
             target/bench-tls (valgrind's vgdb needs ptrace)",
            server.name
        );
    }
    Ok(())
}

/// The largest numbered callgrind dump, `prefix`N, in `work`: the one
/// asked for with `-d` (the one written at exit has no number).
fn largest_dump(work: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let entries = fs::read_dir(work).with_context(|| format!("cannot list {}", work.display()))?;
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .max_by_key(|entry| entry.metadata().map_or(0, |m| m.len()))
        .map(|entry| entry.path())
        .with_context(|| {
            format!(
                "no callgrind dump {prefix}* in {}; see the callgrind log there",
                work.display()
            )
        })
}

/// Instructions in a callgrind dump, from callgrind_annotate.
fn program_totals(dump: &Path) -> anyhow::Result<f64> {
    let out = shell::output("callgrind_annotate", &[path_str(dump)])?;
    annotated_total(&out).with_context(|| {
        format!(
            "no PROGRAM TOTALS from `callgrind_annotate {}`; is valgrind's callgrind_annotate \
             installed with it?",
            dump.display()
        )
    })
}

/// The `PROGRAM TOTALS` line of callgrind_annotate's output, such as
/// `197,911,436 (100.0%)  PROGRAM TOTALS`.
fn annotated_total(out: &str) -> Option<f64> {
    out.lines()
        .find(|line| line.contains("PROGRAM TOTALS"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|total| total.replace(',', "").parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_totals_line() {
        let out = "--------------------------------------------------------------------------------\n\
                   Profile data file 'shield-aws-lc-rs-callgrind.out.1' (creator: callgrind-3.19.0)\n\
                   --------------------------------------------------------------------------------\n\
                   Ir                   \n\
                   --------------------------------------------------------------------------------\n\
                   104,808,212 (100.0%)  PROGRAM TOTALS\n\
                   \n\
                   Ir                   file:function\n\
                   12,000,000 (11.4%)  ???:memcpy\n";
        assert_eq!(annotated_total(out), Some(104_808_212.0));
        assert_eq!(annotated_total("Ir\n12 (1%) ???:f\n"), None);
        assert_eq!(annotated_total("n/a PROGRAM TOTALS\n"), None);
    }
}
