//! Test hosts in network namespaces, and shield running among them.
//!
//! Everything a test creates is named `shtest-<pid>-<n>-*` and removed when
//! its owner drops, panics included; `cargo xtask test` also sweeps leftovers
//! of killed runs. Public addresses exist only inside these namespaces,
//! which have no route out.

pub mod pki;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Prefix of every namespace and pin directory the tests create.
pub const TEST_PREFIX: &str = "shtest-";

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Privileged tests need root. Outside CI a non-root run says so and
/// returns false; with CI=true a missing privilege fails the test.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "end-to-end tests need root (netns, XDP); CI runs as root, so this runner is broken"
    );
    eprintln!("NOT RUN: needs root; run `cargo xtask test` as root");
    false
}

/// Fails (never skips) when a tool the test drives is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{tool} is missing: run `cargo xtask setup`");
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    Ok(output)
}

pub fn check(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = run(program, args)?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Loads a program that passes every frame and pins it at `pin`, for the
/// far ends of veths whose near end answers with XDP_TX: a frame sent
/// back on one end of a veth is delivered only when the other end runs an
/// XDP program too (its NAPI polls then); a NIC has no such condition.
/// The program is libxdp's dispatcher (libxdp1, which `cargo xtask setup`
/// installs with xdp-tools) with nothing behind it. Not xdp-filter: its
/// pins outlive the namespaces, and its unload inside a namespace judges
/// other namespaces' pins unused. Not iproute2's loader: it makes
/// directories of its own under /sys/fs/bpf. The caller removes the pin.
pub fn load_pass_all(pin: &str) -> anyhow::Result<()> {
    let object = format!(
        "/usr/lib/{}-linux-gnu/bpf/xdp-dispatcher.o",
        std::env::consts::ARCH
    );
    if !std::path::Path::new(&object).exists() {
        bail!("{object} is missing: run `cargo xtask setup` (it installs xdp-tools and libxdp1)");
    }
    check("bpftool", &["prog", "load", &object, pin, "type", "xdp"])
        .with_context(|| format!("cannot load {object} as a pass-all XDP program"))?;
    Ok(())
}

/// A network namespace, deleted on drop (which also destroys its veths and
/// any XDP attached to them).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> anyhow::Result<Netns> {
        check("ip", &["netns", "add", &name])?;
        let netns = Netns { name };
        netns.exec_check(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command inside the namespace. `nsenter --net` (not `ip netns
    /// exec`) keeps the host's /sys, so bpffs and the pins stay visible.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .args(args);
        command
    }

    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("cannot run {args:?} in {}", self.name))
    }

    pub fn exec_check(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.exec(args)?;
        if !output.status.success() {
            bail!(
                "{args:?} in {} failed: {}{}",
                self.name,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A long-running process in the namespace, killed on drop.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Background> {
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {args:?} in {}", self.name))?;
        Ok(Background { child })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub struct Background {
    pub child: Child,
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Addresses of the lab. Cloudflare's and the attacker's exist only in
/// their namespaces.
pub mod addr {
    pub const ORIGIN_V4: &str = "192.0.2.1";
    pub const ORIGIN_V6: &str = "2001:db8:1::1";
    pub const EDGE_V4: &str = "173.245.48.10";
    pub const EDGE_V6: &str = "2400:cb00::10";
    pub const ATTACKER_V4: &str = "203.0.113.7";
    pub const ATTACKER_V6: &str = "2001:db8:bad::7";
}

/// Three hosts: `edge` (a Cloudflare address) and `attacker` (outside),
/// each on its own veth to `origin` (`eth0` towards edge, `eth1` towards
/// the attacker). The link pairs are point-to-point with host routes only.
pub struct Lab {
    pub id: String,
    pub origin: Netns,
    pub edge: Netns,
    pub attacker: Netns,
    pub pin_root: PathBuf,
    pub work_dir: PathBuf,
    servers: Vec<Background>,
}

impl Lab {
    pub fn new() -> anyhow::Result<Lab> {
        let id = format!(
            "{TEST_PREFIX}{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::SeqCst)
        );
        let work_dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&work_dir)?;
        let lab = Lab {
            origin: Netns::create(format!("{id}-origin"))?,
            edge: Netns::create(format!("{id}-edge"))?,
            attacker: Netns::create(format!("{id}-attacker"))?,
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            work_dir,
            id,
            servers: Vec::new(),
        };
        lab.link(&lab.edge, "eth0", addr::EDGE_V4, addr::EDGE_V6)?;
        lab.link(&lab.attacker, "eth1", addr::ATTACKER_V4, addr::ATTACKER_V6)?;
        Ok(lab)
    }

    /// Where [`Lab::pass_all_on_peers`] pins its program: beside the pin
    /// root, not in it (shield owns that), removed at drop.
    fn pass_pin(&self) -> String {
        format!("/sys/fs/bpf/{}-pass", self.id)
    }

    /// A program that passes every frame on the edge's and the attacker's
    /// veths, so that shield's XDP_TX answers reach them ([`load_pass_all`]).
    pub fn pass_all_on_peers(&self) -> anyhow::Result<()> {
        let pin = self.pass_pin();
        load_pass_all(&pin)?;
        for peer in [&self.edge, &self.attacker] {
            peer.exec_check(&[
                "bpftool", "net", "attach", "xdpdrv", "pinned", &pin, "dev", "eth0",
            ])
            .with_context(|| format!("cannot attach the pass-all XDP program in {}", peer.name))?;
        }
        Ok(())
    }

    fn link(
        &self,
        peer: &Netns,
        origin_if: &str,
        peer_v4: &str,
        peer_v6: &str,
    ) -> anyhow::Result<()> {
        check(
            "ip",
            &[
                "link",
                "add",
                "name",
                origin_if,
                "netns",
                &self.origin.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &peer.name,
            ],
        )?;
        let o = &self.origin;
        o.exec_check(&[
            "ip",
            "addr",
            "add",
            &format!("{}/32", addr::ORIGIN_V4),
            "dev",
            origin_if,
        ])?;
        o.exec_check(&[
            "ip",
            "addr",
            "add",
            &format!("{}/128", addr::ORIGIN_V6),
            "dev",
            origin_if,
            "nodad",
        ])?;
        o.exec_check(&["ip", "link", "set", origin_if, "up"])?;
        o.exec_check(&[
            "ip",
            "route",
            "add",
            &format!("{peer_v4}/32"),
            "dev",
            origin_if,
        ])?;
        o.exec_check(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{peer_v6}/128"),
            "dev",
            origin_if,
        ])?;
        peer.exec_check(&["ip", "addr", "add", &format!("{peer_v4}/32"), "dev", "eth0"])?;
        peer.exec_check(&[
            "ip",
            "addr",
            "add",
            &format!("{peer_v6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        peer.exec_check(&["ip", "link", "set", "eth0", "up"])?;
        peer.exec_check(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", addr::ORIGIN_V4),
            "dev",
            "eth0",
        ])?;
        peer.exec_check(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{}/128", addr::ORIGIN_V6),
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    /// HTTP servers on 80 and 443 and a listener on 22 (plain HTTP on each:
    /// the XDP layer judges ports, not payloads), IPv4 and IPv6.
    pub fn start_servers(&mut self) -> anyhow::Result<()> {
        for port in ["80", "443", "22"] {
            let server = self.origin.spawn(&[
                "python3",
                "-m",
                "http.server",
                port,
                "--bind",
                "::",
                "--directory",
                "/",
            ])?;
            self.servers.push(server);
        }
        for port in [80, 443, 22] {
            wait_for(Duration::from_secs(10), || {
                self.origin
                    .exec(&[
                        "python3",
                        "-c",
                        &format!(
                            "import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
                        ),
                    ])
                    .is_ok_and(|o| o.status.success())
            })
            .with_context(|| format!("HTTP server on {port} did not come up"))?;
        }
        Ok(())
    }

    /// Writes a shield.toml for this lab and returns its path.
    pub fn write_config(&self, name: &str, xdp_extra: &str) -> anyhow::Result<PathBuf> {
        let path = self.work_dir.join(name);
        let text = format!(
            "[xdp]\ninterfaces = [\"eth0\", \"eth1\"]\n{xdp_extra}\n[ranges]\nrefresh = \"off\"\ncache = \"{}\"\n",
            self.work_dir.join("ranges.json").display()
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// `shield ARGS` in the origin namespace with this lab's pin root.
    pub fn shield(&self, args: &[&str]) -> anyhow::Result<Output> {
        let bin = shield_binary()?;
        let mut full = vec![bin.to_str().context("binary path is not UTF-8")?];
        full.extend_from_slice(args);
        let mut command = self.origin.command(&full);
        command.env("SHIELD_PIN_ROOT", &self.pin_root);
        command.output().context("cannot run shield")
    }

    /// Starts `shield run --config CONFIG` and waits until it is ready.
    pub fn start_shield(&self, config: &Path) -> anyhow::Result<ShieldDaemon> {
        self.start_shield_with(config, &[])
    }

    /// Like [`Lab::start_shield`], with `wrapper` (e.g. `setpriv ...`) in front.
    pub fn start_shield_with(
        &self,
        config: &Path,
        wrapper: &[&str],
    ) -> anyhow::Result<ShieldDaemon> {
        self.start_binary(&shield_binary()?, config, wrapper)
    }

    /// Like [`Lab::start_shield`] with another build of shield (an older
    /// release, for upgrade tests).
    pub fn start_binary(
        &self,
        bin: &Path,
        config: &Path,
        wrapper: &[&str],
    ) -> anyhow::Result<ShieldDaemon> {
        let log = self.work_dir.join(format!(
            "shield-{}.log",
            NEXT_ID.fetch_add(1, Ordering::SeqCst)
        ));
        let log_file = std::fs::File::create(&log)?;
        let mut command_line: Vec<&str> = wrapper.to_vec();
        command_line.push(bin.to_str().context("binary path is not UTF-8")?);
        command_line.extend(["run", "--config", config.to_str().context("config path")?]);
        let child = self
            .origin
            .command(&command_line)
            .env("SHIELD_PIN_ROOT", &self.pin_root)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("cannot start shield run")?;
        let mut daemon = ShieldDaemon {
            child: Some(child),
            log,
        };
        wait_for(Duration::from_secs(20), || {
            daemon.log_text().contains("shield ready") || daemon.exited()
        })
        .context("shield did not become ready")?;
        if daemon.exited() {
            bail!("shield run exited: {}", daemon.log_text());
        }
        Ok(daemon)
    }

    /// `shield status --json` parsed.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let output = self.shield(&["status", "--json"])?;
        if !output.status.success() {
            bail!(
                "shield status failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Packets counted on `interface` for (verdict, reason).
    pub fn counter(&self, interface: &str, verdict: &str, reason: &str) -> anyhow::Result<u64> {
        let status = self.status()?;
        let interfaces = status["interfaces"]
            .as_array()
            .context("status has no interfaces")?;
        let entry = interfaces
            .iter()
            .find(|i| i["interface"] == interface)
            .with_context(|| format!("{interface} not in status: {status}"))?;
        let counters = entry["counters"].as_array().context("no counters")?;
        Ok(counters
            .iter()
            .find(|c| c["verdict"] == verdict && c["reason"] == reason)
            .and_then(|c| c["packets"].as_u64())
            .unwrap_or(0))
    }

    /// The daemon's `/metrics` text, scraped inside the origin at the
    /// default metrics address.
    pub fn metrics(&self) -> anyhow::Result<String> {
        self.origin.exec_check(&[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "http://127.0.0.1:9469/metrics",
        ])
    }

    /// curl from a namespace; Ok(true) on an HTTP answer, Ok(false) on a
    /// timeout (exit 28), an error on anything else.
    pub fn curl(&self, from: &Netns, url: &str) -> anyhow::Result<bool> {
        let output = from.exec(&["curl", "-sS", "-o", "/dev/null", "--max-time", "2", url])?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(28) => Ok(false),
            other => bail!(
                "curl {url} from {} exited {other:?}: {}",
                from.name,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.clear();
        // The namespaces are deleted after this (fields drop last), which
        // detaches the programs; unpinning first only drops a reference.
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_file(self.pass_pin());
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

pub struct ShieldDaemon {
    child: Option<Child>,
    log: PathBuf,
}

impl ShieldDaemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().is_ok_and(|s| s.is_some()))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: no chance to clean anything up.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGTERM);
        if let Some(mut child) = self.child.take() {
            let status = child.wait()?;
            anyhow::ensure!(status.success(), "shield exited with {status}");
        }
        Ok(())
    }
}

impl Drop for ShieldDaemon {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

pub fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?}")
}

/// The `shield` binary built next to this test.
pub fn shield_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHIELD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/shield
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test binary location")?;
    let bin = profile_dir.join("shield");
    anyhow::ensure!(
        bin.exists(),
        "{} not built: run `cargo build` (the workspace, as `cargo xtask test` does) first",
        bin.display()
    );
    Ok(bin)
}

/// Where `cargo xtask test` puts the shield of the previous release.
pub const PREVIOUS_BIN_ENV: &str = "SHIELD_PREVIOUS_BIN";

/// The previous release's shield for upgrade tests, from
/// `$SHIELD_PREVIOUS_BIN` (`cargo xtask test` builds it). Missing: the test
/// is not run, and under CI=true it fails.
pub fn previous_shield_binary() -> Option<PathBuf> {
    let path = std::env::var_os(PREVIOUS_BIN_ENV).map(PathBuf::from);
    match path {
        Some(path) if path.exists() => Some(path),
        other => {
            let why = match other {
                Some(path) => format!("{PREVIOUS_BIN_ENV}={} does not exist", path.display()),
                None => format!("{PREVIOUS_BIN_ENV} is not set"),
            };
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "the upgrade test needs the previous shield: {why} (`cargo xtask test` builds it)"
            );
            eprintln!(
                "NOT RUN: {why}; `cargo xtask previous-shield` builds it and prints its path"
            );
            None
        }
    }
}
