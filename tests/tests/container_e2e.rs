//! The node-agent image and its Kubernetes manifests: the image built from
//! the .deb runs under podman on the lab's origin namespace with exactly
//! the systemd unit's capabilities and a read-only root, and enforces; the
//! manifests validate against the Kubernetes schema offline.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};
use shield_tests::{addr::*, check, require_root, require_tool, wait_for, Lab};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The .deb to build the image from; `cargo xtask test` sets it after
/// `cargo xtask dist` has built the package.
const DEB_ENV: &str = "SHIELD_DEB";

/// The base the Containerfile names. Container registries are out of reach
/// on CI's machines (Debian's mirrors are not), so when the pull fails it
/// is made here from Debian packages, as the official image is.
const BASE: &str = "docker.io/library/debian:12-slim";

/// podman's own store for the tests: the locally made base stays cached
/// between runs (debootstrap costs ~45 s, once) without shadowing the
/// host's images.
const STORE: &str = "/var/cache/shield-tests/podman";
const RUN_ROOT: &str = "/run/shield-tests-podman";

fn unit_capabilities() -> Vec<&'static str> {
    include_str!("../../deploy/systemd/shield.service")
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities")
        .split_whitespace()
        .collect()
}

/// The bit of a capability in /proc/PID/status masks.
fn capability_bit(name: &str) -> u32 {
    match name {
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("{other}: add its number (capability.h) to this test"),
    }
}

/// podman on this store. runc, not Debian 12's crun: crun 1.8 refuses a
/// host with cgroup v1 controllers and a cgroup2 mount side by side
/// ("cgroups in hybrid mode not supported"), which these machines have.
fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args([
        "--root",
        STORE,
        "--runroot",
        RUN_ROOT,
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
    ]);
    command
}

fn podman_check(args: &[&str]) -> anyhow::Result<String> {
    let output = podman().args(args).output().context("cannot run podman")?;
    if !output.status.success() {
        bail!(
            "podman {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn podman_succeeds(args: &[&str]) -> bool {
    podman()
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure_base() -> anyhow::Result<()> {
    if podman_succeeds(&["image", "exists", BASE]) {
        return Ok(());
    }
    let pulled = Command::new("timeout")
        .args(["20", "podman", "--root", STORE, "--runroot", RUN_ROOT])
        .args(["pull", "-q", BASE])
        .output()
        .is_ok_and(|o| o.status.success());
    if pulled {
        return Ok(());
    }
    eprintln!("{BASE} cannot be pulled: making it with debootstrap (once)");
    let rootfs = PathBuf::from(STORE).with_file_name("debian-12-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let rootfs_str = rootfs.to_str().context("path")?;
    check(
        "debootstrap",
        &[
            "--variant=minbase",
            "bookworm",
            rootfs_str,
            "http://deb.debian.org/debian",
        ],
    )?;
    // What the official slim image leaves out, so the test builds on as
    // little as it does.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let _ = std::fs::remove_dir_all(rootfs.join(dir));
        std::fs::create_dir_all(rootfs.join(dir).join("partial"))?;
    }
    let imported = Command::new("sh")
        .args([
            "-c",
            "tar -C \"$1\" -c . | podman --root \"$2\" --runroot \"$3\" import - \"$4\"",
            "import",
            rootfs_str,
            STORE,
            RUN_ROOT,
            BASE,
        ])
        .output()
        .context("cannot import the base")?;
    let _ = std::fs::remove_dir_all(&rootfs);
    if !imported.status.success() {
        bail!(
            "podman import failed: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    Ok(())
}

/// Removes the test's containers and image, panics included.
struct Cleanup {
    image: String,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = podman().args(["rm", "-f", "-t", "0", container]).output();
        }
        let _ = podman().args(["rmi", "-f", &self.image]).output();
    }
}

fn url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}/")
    } else {
        format!("http://{host}:{port}/")
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(resource, &mut limit) };
    limit.rlim_max
}

/// Starts the image in the origin namespace: `--network host` there is the
/// lab's origin, never the real host's.
fn run_container(
    lab: &Lab,
    cleanup: &mut Cleanup,
    etc: &Path,
    state: &Path,
) -> anyhow::Result<String> {
    let name = format!("{}-{}", lab.id, cleanup.containers.len());
    cleanup.containers.push(name.clone());
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop=all",
    ]
    .map(String::from)
    .to_vec();
    for cap in unit_capabilities() {
        args.push(format!("--cap-add={cap}"));
    }
    // NoNewPrivileges, as the unit.
    args.push("--security-opt=no-new-privileges".into());
    // podman 4.3's default seccomp profile allows bpf(2) only with
    // CAP_SYS_ADMIN: map creation fails with EPERM under it.
    args.push("--security-opt=seccomp=unconfined".into());
    // podman asks for 1048576 open files and 32768+ processes by default;
    // root here lacks CAP_SYS_RESOURCE, so raising beyond the current hard
    // limits fails in the runtime. Stay within them.
    let nofile = hard_limit(libc::RLIMIT_NOFILE);
    let nproc = hard_limit(libc::RLIMIT_NPROC).min(4096);
    args.push(format!("--ulimit=nofile={nofile}:{nofile}"));
    args.push(format!("--ulimit=nproc={nproc}:{nproc}"));
    args.push("--volume=/sys/fs/bpf:/sys/fs/bpf".into());
    args.push(format!("--env=SHIELD_PIN_ROOT={}", lab.pin_root.display()));
    args.push(format!("--volume={}:/etc/shield:ro", etc.display()));
    args.push(format!("--volume={}:/var/lib/shield", state.display()));
    args.push(cleanup.image.clone());
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", lab.origin.path()))
        .arg("--")
        .arg("podman");
    command.args(podman().get_args()).args(&args);
    let output = command.output().context("cannot start podman run")?;
    if !output.status.success() {
        bail!(
            "podman run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let ready = wait_for(Duration::from_secs(60), || {
        lab.origin
            .exec(&[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "http://127.0.0.1:9469/metrics",
            ])
            .is_ok_and(|o| o.status.success())
            || !podman_succeeds(&["container", "exists", &name])
            || podman_check(&["inspect", "-f", "{{.State.Running}}", &name])
                .is_ok_and(|s| s.trim() != "true")
    });
    let logs = container_logs(&name);
    if ready.is_err() || !logs.contains("shield ready") {
        bail!("the container did not become ready: {logs}");
    }
    Ok(logs)
}

/// What the container wrote (shield logs to stderr, which podman keeps apart).
fn container_logs(name: &str) -> String {
    podman()
        .args(["logs", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
}

fn assert_enforces(lab: &Lab) {
    for port in [80, 443] {
        assert!(
            lab.curl(&lab.edge, &url(ORIGIN_V4, port)).unwrap(),
            "edge :{port}"
        );
        assert!(
            lab.curl(&lab.edge, &url(ORIGIN_V6, port)).unwrap(),
            "edge IPv6 :{port}"
        );
        assert!(
            !lab.curl(&lab.attacker, &url(ORIGIN_V4, port)).unwrap(),
            "attacker :{port} must time out"
        );
        assert!(
            !lab.curl(&lab.attacker, &url(ORIGIN_V6, port)).unwrap(),
            "attacker IPv6 :{port} must time out"
        );
    }
    assert!(
        lab.curl(&lab.attacker, &url(ORIGIN_V4, 22)).unwrap(),
        "attacker :22 must still answer"
    );
}

#[test]
#[ignore = "needs the .deb: `cargo xtask test` runs it after `cargo xtask dist`"]
fn the_image_from_the_deb_enforces_with_the_units_capabilities_and_survives_a_pod_swap() {
    if !require_root() {
        return;
    }
    for tool in [
        "podman",
        "runc",
        "debootstrap",
        "nsenter",
        "curl",
        "python3",
    ] {
        require_tool(tool);
    }
    let deb = PathBuf::from(
        std::env::var_os(DEB_ENV)
            .unwrap_or_else(|| panic!("{DEB_ENV} must name the .deb (`cargo xtask dist`)")),
    );
    assert!(deb.exists(), "{} does not exist", deb.display());
    std::fs::create_dir_all(STORE).unwrap();
    ensure_base().unwrap();

    let mut lab = Lab::new().expect("create the lab namespaces");
    lab.start_servers().expect("start the origin's servers");
    let mut cleanup = Cleanup {
        image: format!("localhost/{}:test", lab.id),
        containers: Vec::new(),
    };
    // A context holding only this .deb, as the Containerfile expects.
    let context = lab.work_dir.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(&deb, context.join(deb.file_name().unwrap())).unwrap();
    // The build's apt-get reaches Debian's mirror over the real host's
    // network; the lab is used only by `podman run`.
    podman_check(&[
        "build",
        "--pull=never",
        "--network=host",
        "-q",
        "-t",
        &cleanup.image,
        "-f",
        &format!("{REPO}/deploy/container/Containerfile"),
        context.to_str().unwrap(),
    ])
    .expect("build the image from the .deb");

    let etc = lab.work_dir.join("etc");
    let state = lab.work_dir.join("state");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        etc.join("shield.toml"),
        "[xdp]\ninterfaces = [\"eth0\", \"eth1\"]\n[ranges]\nrefresh = \"off\"\ncache = \"/var/lib/shield/ranges.json\"\n",
    )
    .unwrap();

    let first = run_container(&lab, &mut cleanup, &etc, &state).unwrap();
    assert!(first.contains("attachment=Fresh"), "{first}");
    assert_enforces(&lab);
    let status = lab.status().unwrap();
    for interface in status["interfaces"].as_array().unwrap() {
        assert_eq!(interface["attached"], true, "{status}");
        assert_eq!(interface["mode"], "native", "{status}");
    }
    // It really held only the unit's capabilities.
    let pid = podman_check(&["inspect", "-f", "{{.State.Pid}}", &cleanup.containers[0]]).unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let expected = unit_capabilities()
        .into_iter()
        .fold(0u64, |mask, cap| mask | 1 << capability_bit(cap));
    for field in ["CapBnd:", "CapEff:"] {
        let value = proc_status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap());
        assert_eq!(value, Some(expected), "{field} in {proc_status}");
    }

    // A rolling update: the old pod exits on SIGTERM, the pins keep
    // enforcing while no container runs, the next one re-adopts them.
    podman_check(&["stop", "-t", "20", &cleanup.containers[0]]).unwrap();
    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "the pinned program must keep dropping between pods"
    );
    assert!(lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap());
    let second = run_container(&lab, &mut cleanup, &etc, &state).unwrap();
    assert!(second.contains("attachment=Adopted"), "{second}");
    assert_enforces(&lab);
}

#[test]
fn the_kubernetes_manifests_validate_offline_and_match_the_unit() {
    require_tool("kubernetes-validate");
    let dir = PathBuf::from(REPO).join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut args = vec!["--strict", "--quiet"];
    args.extend(files.iter().map(String::as_str));
    check("kubernetes-validate", &args).expect("the manifests must validate");

    let daemonset = std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap();
    let added = unit_capabilities()
        .iter()
        .map(|c| format!("\"{}\"", c.trim_start_matches("CAP_")))
        .collect::<Vec<_>>()
        .join(", ");
    for wanted in [
        format!("add: [{added}]"),
        "drop: [\"ALL\"]".into(),
        "privileged: false".into(),
        "readOnlyRootFilesystem: true".into(),
        "hostNetwork: true".into(),
        "maxSurge: 0".into(),
        "path: /sys/fs/bpf".into(),
    ] {
        assert!(daemonset.contains(&wanted), "daemonset.yaml lacks {wanted}");
    }
    assert!(!daemonset.contains("privileged: true"));
}
