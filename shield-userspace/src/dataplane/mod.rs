//! The XDP dataplane: load, attach (native, else generic), pin, re-adopt,
//! write maps, read counters, detach.
//!
//! Enforcement must never lapse across a restart or an upgrade. So a start
//! finds the pinned link of each interface and swaps the new program into it
//! with `bpf_link_update` (atomic in the kernel) instead of detaching, and
//! the shared maps are re-opened from their pins with their contents intact.
//! A first start fills every map before the program is attached. A pin
//! whose layout this build does not share is replaced in the same swap
//! (`layout`), never by a detach.

mod bpffs;
pub mod events;
mod layout;
mod link;
mod maps;
mod pins;
pub mod sysctl;
#[cfg(feature = "testrun")]
pub mod testrun;

use std::{
    collections::BTreeSet,
    ffi::CString,
    io,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    maps::{Array, MapData, MapError, PerCpuArray},
    pin::PinError,
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use shield_common::{
    map_specs, AttachMode, CookieOptions, CpuCounters, FragmentPolicy, InterfaceState, MapScope,
    Settings, PROGRAM_NAME, PROGRAM_WITHOUT_COOKIES,
};

pub use maps::{ApplyStats, Counters, SharedMaps, TaggedPrefix};
pub use pins::{PinLayout, DEFAULT_PIN_ROOT, PIN_ROOT_ENV};

use ipnetwork::IpNetwork;

use crate::config::{self, Config};

/// The compiled XDP program (built by `build.rs` from `shield-ebpf`).
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shield-xdp"));

/// Names an XDP object file to load instead of [`PROGRAM_OBJECT`]. A test
/// hook: it lets the fallback for kernels that refuse the cookie program
/// (`load_program`) run on a kernel that does not, by giving it an object
/// whose cookie program calls a helper no kernel has. A start that uses it
/// says so in its log.
pub const OBJECT_ENV: &str = "SHIELD_XDP_OBJECT";

/// The object the loader loads: [`PROGRAM_OBJECT`], or the file
/// [`OBJECT_ENV`] names.
fn program_object() -> Result<std::borrow::Cow<'static, [u8]>, DataplaneError> {
    let Some(path) = std::env::var_os(OBJECT_ENV) else {
        return Ok(std::borrow::Cow::Borrowed(PROGRAM_OBJECT));
    };
    let path = std::path::PathBuf::from(path);
    tracing::warn!(
        path = %path.display(),
        "loading the XDP program from {OBJECT_ENV}, not the one built into this binary"
    );
    std::fs::read(&path)
        .map(std::borrow::Cow::Owned)
        .map_err(io_error(format!(
            "cannot read the XDP object {OBJECT_ENV}={}",
            path.display()
        )))
}

/// Why the dataplane could not be set up, read or changed. The cause, an
/// aya or OS error, is the `source()`, never part of the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    /// An `[xdp].interfaces` entry names no interface on this host.
    #[error("interface {name:?} does not exist (see `ip link`); fix [xdp].interfaces")]
    NoSuchInterface { name: String },
    /// The pin root is not on bpffs and bpffs could not be mounted.
    #[error("bpffs is not mounted at {path} and mounting it failed (shield needs CAP_SYS_ADMIN to mount it)")]
    Bpffs {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The pin root is outside bpffs, where pins cannot live.
    #[error("{path} is not on bpffs; pins must live under /sys/fs/bpf (check SHIELD_PIN_ROOT)")]
    NotOnBpffs { path: String },
    /// The embedded XDP object does not parse.
    #[error("cannot parse the XDP object")]
    Object(#[source] EbpfError),
    /// The verifier or the kernel refused the program.
    #[error("the kernel refused the XDP program for {interface}")]
    Load {
        interface: String,
        #[source]
        source: ProgramError,
    },
    /// `syn_cookies = "always"` on a kernel that refused the program that
    /// answers SYNs (it needs `bpf_loop`, Linux 5.17).
    #[error("[xdp].syn_cookies = \"always\" needs XDP SYN cookies, which this kernel refused for {interface} (Linux 5.17+ with bpf_loop); set syn_cookies = \"flood\" or \"off\"")]
    CookiesRefused {
        interface: String,
        #[source]
        source: ProgramError,
    },
    /// A reload to `syn_cookies = "always"` where the kernel refused the
    /// program that answers SYNs at start.
    #[error("[xdp].syn_cookies = \"always\" needs XDP SYN cookies, which this kernel refused when shield started (Linux 5.17+ with bpf_loop); set syn_cookies = \"flood\" or \"off\"")]
    CookiesUnavailable,
    /// The program could not be attached (or its link taken over).
    #[error("cannot attach XDP to {interface} in {mode} mode")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A link that is not an XDP bpf_link, pinned or just made.
    #[error("the link {path} is not an XDP bpf_link; the kernel needs bpf_link XDP support (Linux 5.9+)")]
    BadLink {
        path: String,
        #[source]
        source: LinkError,
    },
    /// The XDP object lacks a map this shield expects.
    #[error("the XDP object has no map {name}")]
    MissingMap { name: String },
    /// The XDP object lacks the program this shield expects.
    #[error("the XDP object has no XDP program {name}")]
    MissingProgram { name: String },
    /// A map entry that cannot be what this shield wrote.
    #[error("map {name} holds an invalid entry")]
    CorruptMap {
        name: &'static str,
        #[source]
        source: ipnetwork::IpNetworkError,
    },
    /// A map operation failed; `context` says which.
    #[error("{context}")]
    Map {
        context: String,
        #[source]
        source: MapError,
    },
    /// A program, link or map could not be pinned.
    #[error("cannot pin the {what} at {}", path.display())]
    Pin {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: PinError,
    },
    /// A file-system or OS operation failed; `context` says which.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Nothing to attach to.
    #[error("[xdp].interfaces is empty: there is nothing to attach to")]
    NoInterfaces,
    /// `shield detach` or `status` found no pins.
    #[error("no shield pins at {0}: nothing is attached")]
    NotPinned(String),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> DataplaneError {
    let context = context.into();
    move |source| DataplaneError::Io { context, source }
}

/// What the dataplane enforces besides the allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSettings {
    pub enforce: bool,
    pub fragments: FragmentPolicy,
    pub protected_tcp_ports: BTreeSet<u16>,
    pub protected_udp_ports: BTreeSet<u16>,
    /// SYN cookies and the stray-ACK check for TCP from inside the ranges.
    pub syn_cookies: bool,
    pub drop_udp_from_ranges: bool,
    /// How cookie SYN-ACKs are built, from the namespace's sysctls.
    pub cookie: CookieOptions,
    /// The local addresses whose protected ports are judged; empty: all.
    pub protected_destinations: Vec<IpNetwork>,
}

impl DataplaneSettings {
    /// The settings for `config`, with cookie SYN-ACKs built as `cookie`
    /// says (see [`sysctl::TcpSysctls::cookie_options`]).
    pub fn new(config: &Config, cookie: CookieOptions) -> Self {
        DataplaneSettings {
            enforce: config.xdp.enforce,
            fragments: config.xdp.fragments.into(),
            protected_tcp_ports: config.xdp.protected_tcp_ports.iter().copied().collect(),
            protected_udp_ports: config.xdp.protected_udp_ports.iter().copied().collect(),
            syn_cookies: config.xdp.syn_cookies != config::SynCookies::Off,
            drop_udp_from_ranges: config.xdp.udp_from_ranges == config::UdpFromRanges::Drop,
            cookie,
            protected_destinations: config.xdp.protected_destinations.clone(),
        }
    }

    /// Puts the namespace's TCP sysctls where `[xdp].syn_cookies` wants
    /// them, then reads them for the settings of `config`.
    pub fn prepare(
        config: &Config,
        layout: &PinLayout,
    ) -> Result<(DataplaneSettings, sysctl::Applied), DataplaneError> {
        let applied = sysctl::apply(layout, config.xdp.syn_cookies)?;
        let tcp = sysctl::TcpSysctls::read()?;
        let mode = config.xdp.syn_cookies;
        if mode != config::SynCookies::Off && tcp.syncookies.unwrap_or(0) == 0 {
            tracing::warn!(
                ?mode,
                tcp_syncookies = ?tcp.syncookies,
                "[xdp].syn_cookies: the kernel issues no SYN cookies here (net.ipv4.tcp_syncookies is 0 or missing), so XDP answers no SYN; in-range SYN floods reach the kernel"
            );
        }
        warn_non_local(&config.xdp.protected_destinations);
        let mtu = config
            .xdp
            .interfaces
            .iter()
            .filter_map(|name| interface_mtu(name))
            .min()
            .unwrap_or(0);
        Ok((
            DataplaneSettings::new(config, tcp.cookie_options(mtu)),
            applied,
        ))
    }

    fn kernel_settings(&self) -> Settings {
        let mut settings = Settings::new(self.enforce, self.fragments);
        settings.syn_cookies = u32::from(self.syn_cookies);
        settings.drop_udp_from_ranges = u32::from(self.drop_udp_from_ranges);
        settings.cookie = self.cookie;
        settings.scoped_destinations = u32::from(!self.protected_destinations.is_empty());
        settings
    }
}

/// Warns about `[xdp].protected_destinations` entries that hold no
/// address of this host: not an error, since an address may be added after
/// shield starts (packets to it are judged from then on).
fn warn_non_local(destinations: &[IpNetwork]) {
    if destinations.is_empty() {
        return;
    }
    let local: Vec<std::net::IpAddr> = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces.iter().map(if_addrs::Interface::ip).collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot list this host's addresses to check [xdp].protected_destinations");
            return;
        }
    };
    let strays: Vec<String> = destinations
        .iter()
        .filter(|d| !local.iter().any(|a| d.contains(*a)))
        .map(ToString::to_string)
        .collect();
    if !strays.is_empty() {
        tracing::warn!(
            entries = %strays.join(", "),
            "[xdp].protected_destinations: these hold no address of this host (yet); packets to them are judged once one is added, and other addresses stay unprotected"
        );
    }
}

/// The MTU of `name` in this network namespace. Asked of a socket (made
/// in this namespace), not read from /sys, which may be mounted for
/// another namespace (`nsenter --net` keeps the host's).
fn interface_mtu(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    let bytes = name.as_bytes_with_nul();
    // SAFETY: a zeroed ifreq is a valid value of this plain C struct.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.len() > request.ifr_name.len() {
        return None;
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: a plain socket call; the descriptor is closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU reads the name and writes the MTU in `request`.
    let status = unsafe { libc::ioctl(socket, libc::SIOCGIFMTU, &mut request) };
    // SAFETY: the descriptor made above, closed once.
    unsafe { libc::close(socket) };
    if status < 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU filled the MTU member of the union.
    u32::try_from(unsafe { request.ifr_ifru.ifru_mtu }).ok()
}

/// Writes settings, ports, destinations and the allowlist, in the order
/// that never opens a gap: new destinations before the settings that may
/// scope the program to them, the settings and ports, the destinations
/// that left after them, then the allowlist add-before-remove.
pub fn write_policy(
    maps: &mut SharedMaps,
    settings: &DataplaneSettings,
    allowlist: &[TaggedPrefix],
) -> Result<ApplyStats, DataplaneError> {
    maps.add_destinations(&settings.protected_destinations)?;
    maps.write_settings_and_ports(
        settings.kernel_settings(),
        &settings.protected_tcp_ports,
        &settings.protected_udp_ports,
    )?;
    maps.remove_other_destinations(&settings.protected_destinations)?;
    maps.apply_allowlist(allowlist)
}

/// How an interface came to be attached in this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// The pinned link was kept; the new program was swapped in atomically.
    Adopted,
    /// Nothing was attached; a new link was created.
    Fresh,
}

pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    pub attachment: Attachment,
    counters: PerCpuArray<MapData, CpuCounters>,
}

impl AttachedInterface {
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        Counters::read(&self.counters)
    }
}

/// The running dataplane: shared maps plus one program per interface.
pub struct Dataplane {
    layout: PinLayout,
    maps: SharedMaps,
    interfaces: Vec<AttachedInterface>,
    /// Whether the program in force answers in-range SYNs (`PROGRAM_NAME`)
    /// or the kernel refused it (`PROGRAM_WITHOUT_COOKIES`).
    cookies: bool,
}

/// An interface to attach: its name, index and wanted mode.
struct Target {
    name: String,
    ifindex: u32,
}

impl Dataplane {
    /// Loads, fills the maps, attaches or re-adopts every configured
    /// interface. On error nothing this call attached stays attached, and
    /// links that were already pinned before it stay as they were.
    pub fn start(
        config: &Config,
        layout: PinLayout,
        allowlist: &[TaggedPrefix],
    ) -> Result<Dataplane, DataplaneError> {
        if config.xdp.interfaces.is_empty() {
            return Err(DataplaneError::NoInterfaces);
        }
        let targets = config
            .xdp
            .interfaces
            .iter()
            .map(|name| {
                Ok(Target {
                    name: name.clone(),
                    ifindex: interface_index(name)?,
                })
            })
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        bpffs::ensure_mounted(layout.root())?;
        let root_existed = layout.root().exists();
        let mut started = Starting {
            layout: &layout,
            root_existed,
            fresh: Vec::new(),
            created_dirs: Vec::new(),
            retirements: layout::Retirements::default(),
            sysctls: sysctl::Applied::Unchanged,
        };
        match started.run(config, &targets, allowlist) {
            Ok((maps, interfaces, cookies)) => {
                started.fresh.clear();
                started.created_dirs.clear();
                started.retirements.commit();
                let dataplane = Dataplane {
                    layout: layout.clone(),
                    maps,
                    interfaces,
                    cookies,
                };
                dataplane.release_unconfigured(config)?;
                Ok(dataplane)
            }
            Err(error) => {
                started.roll_back();
                Err(error)
            }
        }
    }

    pub fn maps(&mut self) -> &mut SharedMaps {
        &mut self.maps
    }

    pub fn interfaces(&self) -> &[AttachedInterface] {
        &self.interfaces
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The settings for a reload to `config`: prepared as a start prepares
    /// them, with in-range SYN handling off when the kernel refused the
    /// program for it, and refused when `config` demands it ("always").
    pub fn reload_settings(&self, config: &Config) -> Result<DataplaneSettings, DataplaneError> {
        if !self.cookies && config.xdp.syn_cookies == config::SynCookies::Always {
            return Err(DataplaneError::CookiesUnavailable);
        }
        let (mut settings, _) = DataplaneSettings::prepare(config, &self.layout)?;
        settings.syn_cookies &= self.cookies;
        Ok(settings)
    }

    /// Detaches interfaces pinned by an earlier run that the config no
    /// longer lists.
    fn release_unconfigured(&self, config: &Config) -> Result<(), DataplaneError> {
        let pinned = self
            .layout
            .pinned_interfaces()
            .map_err(io_error("cannot list pinned interfaces"))?;
        for name in pinned {
            if !config.xdp.interfaces.contains(&name) {
                tracing::warn!(interface = %name, "detaching: no longer in [xdp].interfaces");
                remove_interface_pins(&self.layout, &name)?;
            }
        }
        Ok(())
    }
}

/// State of a start in progress, so a failure can undo exactly its own work.
struct Starting<'a> {
    layout: &'a PinLayout,
    root_existed: bool,
    /// Interfaces attached fresh by this start (undone on failure).
    fresh: Vec<String>,
    created_dirs: Vec<std::path::PathBuf>,
    /// Pins of another layout moved aside for this start's new maps.
    retirements: layout::Retirements,
    /// What this start did to the namespace's sysctls.
    sysctls: sysctl::Applied,
}

impl Starting<'_> {
    fn run(
        &mut self,
        config: &Config,
        targets: &[Target],
        allowlist: &[TaggedPrefix],
    ) -> Result<(SharedMaps, Vec<AttachedInterface>, bool), DataplaneError> {
        self.create_dir(self.layout.root().to_owned())?;
        self.create_dir(self.layout.interfaces_dir())?;
        let (mut settings, applied) = DataplaneSettings::prepare(config, self.layout)?;
        self.sysctls = applied;
        for target in targets {
            self.create_dir(self.layout.interface_dir(&target.name))?;
        }
        // Checked before any program is loaded against the pins: the
        // verifier's complaint about a value size would not say what to do.
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        self.retirements = layout::Retirements::prepare(self.layout, &names)?;
        let mut shared: Option<SharedMaps> = None;
        let mut interfaces = Vec::new();
        let mut cookies = true;
        for target in targets {
            let (mut ebpf, program) =
                load_program(self.layout, &target.name, config.xdp.syn_cookies)?;
            cookies &= program == PROGRAM_NAME;
            settings.syn_cookies &= cookies;
            if shared.is_none() {
                // The first load created or re-opened the shared pins; fill
                // them before any program can run against them. A replaced
                // map is new and empty here, while the attached (old)
                // program still reads the old one, so the policy in force
                // is complete at every instant of the swap.
                let mut maps = SharedMaps::take_from(&mut ebpf)?;
                let stats = write_policy(&mut maps, &settings, allowlist)?;
                tracing::info!(
                    added = stats.added,
                    removed = stats.removed,
                    unchanged = stats.unchanged,
                    "allowlist written"
                );
                shared = Some(maps);
            }
            let attached = self.attach(&mut ebpf, program, target, config.xdp.mode)?;
            interfaces.push(attached);
        }
        // `start` refuses an empty interface list, so the loop ran.
        let maps = shared.ok_or(DataplaneError::NoInterfaces)?;
        Ok((maps, interfaces, cookies))
    }

    fn create_dir(&mut self, path: std::path::PathBuf) -> Result<(), DataplaneError> {
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir(&path)
            .map_err(io_error(format!("cannot create {}", path.display())))?;
        self.created_dirs.push(path);
        Ok(())
    }

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        program: &str,
        target: &Target,
        wanted: config::AttachPreference,
    ) -> Result<AttachedInterface, DataplaneError> {
        let link_path = self.layout.link(&target.name);
        let state_path = self.layout.state(&target.name);
        let previous = read_state(&state_path).ok();
        let program = xdp_program(ebpf, program, &target.name)?;

        let mut adopted = None;
        if link_path.exists() {
            adopted = adopt(program, target, &link_path, previous, wanted)?;
        }
        let (mode, attachment) = match adopted {
            Some(mode) => (mode, Attachment::Adopted),
            None => {
                let mode = attach_fresh(program, target, wanted, &link_path)?;
                self.fresh.push(target.name.clone());
                (mode, Attachment::Fresh)
            }
        };
        // Re-pin the program so `bpftool prog show pinned` finds the one in force.
        let program_path = self.layout.program(&target.name);
        let _ = std::fs::remove_file(&program_path);
        program
            .pin(&program_path)
            .map_err(|source| DataplaneError::Pin {
                what: "program",
                path: program_path.clone(),
                source,
            })?;
        write_state(
            &state_path,
            InterfaceState {
                ifindex: target.ifindex,
                mode: mode as u32,
                attached_at: unix_now(),
            },
        )?;
        let counters = open_counters(self.layout, &target.name)?;
        tracing::info!(interface = %target.name, mode = mode.name(), ?attachment, "XDP attached");
        Ok(AttachedInterface {
            name: target.name.clone(),
            ifindex: target.ifindex,
            mode,
            attachment,
            counters,
        })
    }

    fn roll_back(&mut self) {
        // Before the pins of fresh interfaces go: a restored pin must land
        // in a directory that still exists.
        self.retirements.restore();
        // What "always" set here goes back; a restore by this start is
        // left (the old program's mode had no cookies to keep).
        if self.sysctls == sysctl::Applied::SetAlways {
            if let Err(error) = sysctl::restore(self.layout) {
                tracing::error!(error = %crate::error::Chain(&error), "rollback: could not restore the TCP sysctls");
            }
        }
        for name in self.fresh.drain(..) {
            if let Err(error) = remove_interface_pins(self.layout, &name) {
                tracing::error!(interface = %name, error = %crate::error::Chain(&error), "rollback: could not detach");
            }
        }
        // Remove only what this start created (maps pinned inside the root
        // included, when the root itself is new), deepest first.
        for dir in self.created_dirs.drain(..).rev() {
            if dir == self.layout.root() && !self.root_existed {
                let _ = remove_shared_pins(self.layout);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Swaps the new program into the pinned link. `None` when there is no
/// usable link (defunct, or another mode wanted) and a fresh attach is due.
fn adopt(
    program: &mut Xdp,
    target: &Target,
    link_path: &std::path::Path,
    previous: Option<InterfaceState>,
    wanted: config::AttachPreference,
) -> Result<Option<AttachMode>, DataplaneError> {
    let previous_mode = previous
        .filter(|state| state.ifindex == target.ifindex)
        .and_then(|state| AttachMode::from_u32(state.mode));
    let Some(previous_mode) = previous_mode else {
        // The interface was re-created (new ifindex) or the state is gone:
        // the old link is defunct, the kernel already detached it.
        tracing::warn!(interface = %target.name, "pinned link belongs to a vanished interface; attaching anew");
        let _ = std::fs::remove_file(link_path);
        return Ok(None);
    };
    let mode_ok = match wanted {
        config::AttachPreference::Auto => true,
        config::AttachPreference::Native => previous_mode == AttachMode::Native,
        config::AttachPreference::Generic => previous_mode == AttachMode::Generic,
    };
    if !mode_ok {
        // The kernel refuses native and generic programs on one device at
        // the same time, so a mode change cannot be gapless.
        tracing::warn!(interface = %target.name, from = previous_mode.name(), "XDP mode change: detaching and re-attaching (a brief unfiltered window)");
        let _ = std::fs::remove_file(link_path);
        return Ok(None);
    }
    let bad_link = |source| DataplaneError::BadLink {
        path: link_path.display().to_string(),
        source,
    };
    let pinned = PinnedLink::from_pin(link_path).map_err(bad_link)?;
    let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned)).map_err(bad_link)?;
    match program.attach_to_link(link) {
        Ok(link_id) => {
            // The link stays pinned; dropping our handle only closes an fd.
            let _ = program.take_link(link_id);
            Ok(Some(previous_mode))
        }
        Err(ProgramError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOLINK) =>
        {
            tracing::warn!(interface = %target.name, "pinned link is defunct; attaching anew");
            let _ = std::fs::remove_file(link_path);
            Ok(None)
        }
        Err(source) => Err(DataplaneError::Attach {
            interface: target.name.clone(),
            mode: previous_mode.name(),
            source,
        }),
    }
}

fn attach_fresh(
    program: &mut Xdp,
    target: &Target,
    wanted: config::AttachPreference,
    link_path: &std::path::Path,
) -> Result<AttachMode, DataplaneError> {
    let attempt = |program: &mut Xdp, mode: AttachMode| {
        let flags = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        program
            .attach_to_if_index(target.ifindex, flags)
            .map_err(|source| DataplaneError::Attach {
                interface: target.name.clone(),
                mode: mode.name(),
                source,
            })
    };
    let (link_id, mode) = match wanted {
        config::AttachPreference::Native => {
            (attempt(program, AttachMode::Native)?, AttachMode::Native)
        }
        config::AttachPreference::Generic => {
            (attempt(program, AttachMode::Generic)?, AttachMode::Generic)
        }
        config::AttachPreference::Auto => match attempt(program, AttachMode::Native) {
            Ok(id) => (id, AttachMode::Native),
            Err(error) => {
                tracing::warn!(interface = %target.name, reason = %crate::error::Chain(&error), "native XDP refused; falling back to generic mode");
                (attempt(program, AttachMode::Generic)?, AttachMode::Generic)
            }
        },
    };
    let link = program
        .take_link(link_id)
        .map_err(|source| DataplaneError::Attach {
            interface: target.name.clone(),
            mode: mode.name(),
            source,
        })?;
    // Fails when the kernel attached through netlink instead of bpf_link.
    let link = FdLink::try_from(link).map_err(|source| DataplaneError::BadLink {
        path: link_path.display().to_string(),
        source,
    })?;
    link.pin(link_path).map_err(|source| DataplaneError::Pin {
        what: "link",
        path: link_path.to_owned(),
        source,
    })?;
    Ok(mode)
}

fn interface_index(name: &str) -> Result<u32, DataplaneError> {
    let no_such = || DataplaneError::NoSuchInterface {
        name: name.to_owned(),
    };
    let c_name = CString::new(name).map_err(|_| no_such())?;
    // SAFETY: if_nametoindex reads a NUL-terminated string and nothing else.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(no_such())
    } else {
        Ok(index)
    }
}

/// The object with every map pinned where [`map_specs`] puts it: the
/// shared ones in the root, the per-interface ones under `interface`.
/// Loads the program for `interface`: the one that answers in-range SYNs,
/// or, where the kernel refuses it and `mode` is not "always", the one
/// without (with a warning under "flood"). Returns which was loaded.
fn load_program(
    layout: &PinLayout,
    interface: &str,
    mode: config::SynCookies,
) -> Result<(Ebpf, &'static str), DataplaneError> {
    let mut loader = EbpfLoader::new();
    for spec in &map_specs::ALL {
        loader.map_pin_path(spec.name, layout::pin_path(layout, spec, interface));
    }
    let mut ebpf = loader
        .load(&program_object()?)
        .map_err(DataplaneError::Object)?;
    let refusal = match xdp_program(&mut ebpf, PROGRAM_NAME, interface)?.load() {
        Ok(()) => return Ok((ebpf, PROGRAM_NAME)),
        Err(source) if refused_by_verifier(&source) => source,
        Err(source) => {
            return Err(DataplaneError::Load {
                interface: interface.to_owned(),
                source,
            })
        }
    };
    match mode {
        config::SynCookies::Always => {
            return Err(DataplaneError::CookiesRefused {
                interface: interface.to_owned(),
                source: refusal,
            })
        }
        config::SynCookies::Flood => tracing::warn!(
            interface,
            error = %crate::error::Chain(&refusal),
            "[xdp].syn_cookies: this kernel refused XDP SYN cookies (Linux 5.17+ with bpf_loop), so in-range SYNs and ACKs go to the kernel; shield_xdp_syn_cookies_active is 0"
        ),
        config::SynCookies::Off => {}
    }
    xdp_program(&mut ebpf, PROGRAM_WITHOUT_COOKIES, interface)?
        .load()
        .map_err(|source| DataplaneError::Load {
            interface: interface.to_owned(),
            source,
        })?;
    Ok((ebpf, PROGRAM_WITHOUT_COOKIES))
}

/// Whether the kernel's verifier refused a program (an unknown helper,
/// or past its budget), as opposed to a missing privilege or resource.
fn refused_by_verifier(error: &ProgramError) -> bool {
    match error {
        ProgramError::LoadError { io_error, .. } => is_verifier_refusal(io_error.raw_os_error()),
        _ => false,
    }
}

/// The errors a program load fails with when the verifier refused it
/// (EPERM, a missing privilege, is not one).
fn is_verifier_refusal(code: Option<i32>) -> bool {
    matches!(code, Some(libc::EINVAL | libc::EACCES | libc::E2BIG))
}

/// The XDP program `name` in a loaded object; `interface` names where it
/// was headed, for the error.
pub(crate) fn xdp_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
    interface: &str,
) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or_else(|| DataplaneError::MissingProgram {
            name: name.to_owned(),
        })?
        .try_into()
        .map_err(|source| DataplaneError::Load {
            interface: interface.to_owned(),
            source,
        })
}

fn open_counters(
    layout: &PinLayout,
    interface: &str,
) -> Result<PerCpuArray<MapData, CpuCounters>, DataplaneError> {
    let path = layout.counters(interface);
    let map = MapData::from_pin(&path).map_err(|source| DataplaneError::Map {
        context: format!("cannot open {}", path.display()),
        source,
    })?;
    PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map)).map_err(|source| DataplaneError::Map {
        context: format!("{} is not a counter map", path.display()),
        source,
    })
}

fn read_state(path: &std::path::Path) -> Result<InterfaceState, DataplaneError> {
    let map = MapData::from_pin(path).map_err(|source| DataplaneError::Map {
        context: format!("cannot open {}", path.display()),
        source,
    })?;
    let array: Array<MapData, InterfaceState> = Array::try_from(aya::maps::Map::Array(map))
        .map_err(|source| DataplaneError::Map {
            context: path.display().to_string(),
            source,
        })?;
    array.get(&0, 0).map_err(|source| DataplaneError::Map {
        context: path.display().to_string(),
        source,
    })
}

fn write_state(path: &std::path::Path, state: InterfaceState) -> Result<(), DataplaneError> {
    let map_error = |source| DataplaneError::Map {
        context: format!("cannot write {}", path.display()),
        source,
    };
    let mut array: Array<MapData, InterfaceState> = match MapData::from_pin(path) {
        Ok(map) => Array::try_from(aya::maps::Map::Array(map)).map_err(map_error)?,
        Err(_) => {
            let array = Array::<MapData, InterfaceState>::create(1, 0).map_err(map_error)?;
            array.pin(path).map_err(|source| DataplaneError::Pin {
                what: "interface state map",
                path: path.to_owned(),
                source,
            })?;
            Array::try_from(aya::maps::Map::Array(
                MapData::from_pin(path).map_err(map_error)?,
            ))
            .map_err(map_error)?
        }
    };
    array.set(0, state, 0).map_err(map_error)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes an interface's pins; unpinning the link detaches the program.
fn remove_interface_pins(layout: &PinLayout, interface: &str) -> Result<(), DataplaneError> {
    let dir = layout.interface_dir(interface);
    // The link first: from here on nothing is filtered on that interface.
    let link_path = layout.link(interface);
    link::detach_now(&link_path).map_err(io_error(format!(
        "cannot detach the link {}",
        link_path.display()
    )))?;
    let counters = layout.counters(interface);
    for path in [
        layout.link(interface),
        layout.program(interface),
        layout::retired_path(&counters),
        counters,
        layout.state(interface),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("cannot remove {}", path.display()))(e)),
        }
    }
    match std::fs::remove_dir(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("cannot remove {}", dir.display()))(e)),
    }
}

fn remove_shared_pins(layout: &PinLayout) -> Result<(), DataplaneError> {
    for spec in map_specs::ALL
        .iter()
        .filter(|spec| spec.scope == MapScope::Shared)
    {
        let path = layout::pin_path(layout, spec, "");
        for path in [layout::retired_path(&path), path] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(format!("cannot remove {}", path.display()))(e)),
            }
        }
    }
    Ok(())
}

/// `shield detach`: removes one interface's program, or everything.
pub fn detach(layout: &PinLayout, interface: Option<&str>) -> Result<Vec<String>, DataplaneError> {
    if !layout.root().exists() {
        return Err(DataplaneError::NotPinned(
            layout.root().display().to_string(),
        ));
    }
    let pinned = layout
        .pinned_interfaces()
        .map_err(io_error("cannot list pinned interfaces"))?;
    let chosen: Vec<String> = match interface {
        Some(name) if pinned.iter().any(|p| p == name) => vec![name.to_owned()],
        Some(name) => {
            return Err(DataplaneError::NotPinned(
                layout.interface_dir(name).display().to_string(),
            ))
        }
        None => pinned.clone(),
    };
    for name in &chosen {
        remove_interface_pins(layout, name)?;
    }
    if chosen.len() == pinned.len() {
        sysctl::restore(layout)?;
        remove_shared_pins(layout)?;
        let _ = std::fs::remove_dir(layout.interfaces_dir());
        std::fs::remove_dir(layout.root()).map_err(io_error(format!(
            "cannot remove {}",
            layout.root().display()
        )))?;
    }
    Ok(chosen)
}

/// Whether XDP answers in-range SYNs now, read from the pinned settings and
/// the namespace: `[xdp].syn_cookies` is not "off", the program enforces,
/// and the kernel issues cookies (`net.ipv4.tcp_syncookies` is not 0).
/// `None` when nothing is pinned.
pub fn syn_cookies_active(layout: &PinLayout) -> Option<bool> {
    let settings = SharedMaps::open_pinned(layout).ok()?.settings().ok()?;
    let issued = sysctl::TcpSysctls::read()
        .ok()
        .and_then(|tcp| tcp.syncookies)
        .unwrap_or(0)
        != 0;
    Some(settings.syn_cookies != 0 && settings.enforce != 0 && issued)
}

/// One interface as `shield status` reports it, read from the pins alone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InterfaceStatus {
    pub interface: String,
    pub attached: bool,
    pub mode: Option<&'static str>,
    pub ifindex: u32,
    pub attached_at: u64,
    #[serde(skip)]
    pub counters: Counters,
}

/// Reads the status of every pinned interface (works with no daemon).
pub fn status(layout: &PinLayout) -> Result<Vec<InterfaceStatus>, DataplaneError> {
    let mut result = Vec::new();
    for name in layout
        .pinned_interfaces()
        .map_err(io_error("cannot list pinned interfaces"))?
    {
        let state = read_state(&layout.state(&name)).ok();
        let current_index = interface_index(&name).ok();
        let attached =
            layout.link(&name).exists() && state.is_some_and(|s| Some(s.ifindex) == current_index);
        let counters = open_counters(layout, &name)
            .and_then(|map| Counters::read(&map))
            .unwrap_or_default();
        result.push(InterfaceStatus {
            attached,
            mode: state
                .and_then(|s| AttachMode::from_u32(s.mode))
                .map(AttachMode::name),
            ifindex: state.map(|s| s.ifindex).unwrap_or(0),
            attached_at: state.map(|s| s.attached_at).unwrap_or(0),
            counters,
            interface: name,
        });
    }
    Ok(result)
}

#[cfg(test)]
mod load_tests {
    use super::*;

    /// Only the verifier's refusals fall back to the program without
    /// cookies; a missing privilege fails the start as it is.
    #[test]
    fn only_verifier_refusals_fall_back() {
        for code in [libc::EINVAL, libc::EACCES, libc::E2BIG] {
            assert!(is_verifier_refusal(Some(code)), "{code}");
        }
        assert!(!is_verifier_refusal(Some(libc::EPERM)));
        assert!(!is_verifier_refusal(None));
        assert!(!refused_by_verifier(&ProgramError::NotLoaded));
    }
}
