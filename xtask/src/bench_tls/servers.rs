//! The servers under test and the processes around them: started pinned
//! to their CPUs, waited for until they listen, stopped when dropped.

use std::{
    ffi::{OsStr, OsString},
    fs,
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    conf::{self, Pki, Processes},
    params::START_WAIT,
    procfs::{self, Cpus, Memory},
};
use crate::shell;

/// Descriptors wanted for the servers and clients (10,000 sockets and
/// more); less when the hard limit is lower (it cannot be raised in every
/// container).
const NOFILE: u64 = 65_536;

/// A server under test: the peers shield is measured against, then
/// shield's builds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Nginx,
    Haproxy,
    /// shield built with this rustls provider.
    Shield(&'static str),
    /// shield's default build with `[log] access = true` (JSON), its
    /// stderr to a file as the journal would take it: what the log costs.
    ShieldAccessLog,
}

impl Kind {
    /// The name of its files in the work directory (and of shield's binary).
    pub fn name(self) -> String {
        match self {
            Kind::Nginx => "nginx".to_owned(),
            Kind::Haproxy => "haproxy".to_owned(),
            Kind::Shield(provider) => format!("shield-{provider}"),
            Kind::ShieldAccessLog => "shield-access-log".to_owned(),
        }
    }

    /// Its column heading in the results table.
    pub fn heading(self) -> String {
        match self {
            Kind::Shield(provider) => format!("shield ({provider})"),
            Kind::ShieldAccessLog => "shield (access log)".to_owned(),
            peer => peer.name(),
        }
    }

    /// nginx and haproxy: what shield's ratios are taken against.
    pub fn is_peer(self) -> bool {
        !matches!(self, Kind::Shield(_) | Kind::ShieldAccessLog)
    }

    /// Started alone on the server's CPU.
    pub fn start(
        self,
        work: &Path,
        pki: &Pki,
        upstream: &str,
        cpus: &Cpus,
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let name = self.name();
        let (program, args) =
            self.command_line(work, &name, pki, port, upstream, Processes::Workers)?;
        let mut command = pinned(&cpus.server.to_string(), program, &args);
        match self {
            Kind::Shield(_) | Kind::ShieldAccessLog => {
                command
                    .env("SHIELD_LOG", "warn")
                    .stderr(log_file(work, &name)?);
            }
            Kind::Haproxy => {
                command.stderr(log_file(work, &name)?);
            }
            Kind::Nginx => {}
        }
        Server::start(&name, &mut command, port, START_WAIT)
    }

    /// The program and arguments that serve on `port`, with the config
    /// written to the work directory as `name`.
    pub fn command_line(
        self,
        work: &Path,
        name: &str,
        pki: &Pki,
        port: u16,
        upstream: &str,
        processes: Processes,
    ) -> anyhow::Result<(OsString, Vec<OsString>)> {
        match self {
            Kind::Nginx => {
                let conf = conf::nginx_conf(work, pki, port, upstream, processes, nofile_limit());
                let args = conf::nginx_args(work, name, &conf)?;
                Ok((
                    "nginx".into(),
                    args.into_iter().map(OsString::from).collect(),
                ))
            }
            // One thread is one process whichever `processes` asks for.
            Kind::Haproxy => {
                let conf = work.join(format!("{name}.cfg"));
                fs::write(
                    &conf,
                    conf::haproxy_conf(work, pki, port, upstream, nofile_limit()),
                )
                .with_context(|| format!("cannot write {}", conf.display()))?;
                // -db: in the foreground, no master process.
                let args = vec!["-db".into(), "-f".into(), conf.into_os_string()];
                Ok(("haproxy".into(), args))
            }
            Kind::Shield(_) | Kind::ShieldAccessLog => {
                let conf = work.join(format!("{name}.toml"));
                let mut text = conf::shield_conf(work, pki, port, upstream, free_port()?);
                let binary = if self == Kind::ShieldAccessLog {
                    text.push_str(conf::ACCESS_LOG);
                    Kind::Shield("aws-lc-rs").name()
                } else {
                    self.name()
                };
                fs::write(&conf, text)
                    .with_context(|| format!("cannot write {}", conf.display()))?;
                let args = vec!["run".into(), "--config".into(), conf.into_os_string()];
                Ok((work.join(binary).into_os_string(), args))
            }
        }
    }
}

/// `name.log` in the work directory, for a server's stderr.
pub fn log_file(work: &Path, name: &str) -> anyhow::Result<fs::File> {
    let path = work.join(format!("{name}.log"));
    fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A server process, stopped (SIGTERM, then waited for) when dropped.
pub struct Server {
    pub name: String,
    pub child: Child,
    pub port: u16,
}

impl Server {
    /// Waits up to `wait` for it to listen on `port`.
    pub fn start(
        name: &str,
        command: &mut Command,
        port: u16,
        wait: Duration,
    ) -> anyhow::Result<Server> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let mut server = Server {
            name: name.to_owned(),
            child,
            port,
        };
        let deadline = Instant::now() + wait;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited at start ({status}); see its log in target/bench-tls");
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} does not listen on 127.0.0.1:{port} after {} s; see its log in \
                     target/bench-tls",
                    wait.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process and its children (nginx's workers).
    pub fn pids(&self) -> Vec<u32> {
        procfs::with_children(self.child.id())
    }

    /// Of the process and its children, summed.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        procfs::memory(&self.name, &self.pids())
    }

    /// User plus system CPU time, in clock ticks, of the process and its
    /// children, summed.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        procfs::cpu_ticks(&self.name, &self.pids())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program args` on the CPUs in `cpus` (a taskset list, inherited by its
/// children: nginx's workers) with the soft descriptor limit raised to
/// [`nofile_limit`]. taskset and the shell in front both exec, so the pid
/// stays the program's, which [`Server::memory`] and
/// [`Server::cpu_ticks`] read with its children.
pub fn pinned<S: AsRef<OsStr>>(cpus: &str, program: impl AsRef<OsStr>, args: &[S]) -> Command {
    let mut command = Command::new("taskset");
    command
        .args(["-c", cpus, "sh", "-c"])
        .arg(format!(
            "ulimit -n {} && exec \"$0\" \"$@\"",
            nofile_limit()
        ))
        .arg(program)
        .args(args);
    command
}

/// `program args` on the load CPUs (`cpus`, a taskset list); its stdout.
pub fn pinned_output(cpus: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut pinned = vec!["-c", cpus, program];
    pinned.extend(args);
    shell::output("taskset", &pinned)
}

/// [`NOFILE`], or the hard limit if that is lower.
pub fn nofile_limit() -> u64 {
    let hard = shell::output("sh", &["-c", "ulimit -Hn"]).unwrap_or_default();
    nofile_within(hard.trim())
}

/// [`NOFILE`] within the hard limit `hard`, as `ulimit -Hn` prints it.
fn nofile_within(hard: &str) -> u64 {
    match hard {
        "unlimited" => NOFILE,
        n => n.parse().map_or(NOFILE, |n: u64| n.min(NOFILE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_within_the_hard_limit() {
        assert_eq!(nofile_within("unlimited"), NOFILE);
        assert_eq!(nofile_within("1048576"), NOFILE);
        assert_eq!(nofile_within("4096"), 4096);
        assert_eq!(nofile_within(""), NOFILE);
    }
}
