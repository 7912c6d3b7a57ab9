//! Reading and writing the XDP program's maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData, MapError, PerCpuArray};
use ipnetwork::IpNetwork;
use shield_common::{
    counter_index, map_names, prefilter_index, Counter, CpuCounters, Policy, PortProtocol, Reason,
    Settings, Verdict,
};

use super::DataplaneError;

/// The maps every interface's program shares.
pub struct SharedMaps {
    policy: Array<MapData, Policy>,
    allow_v4: LpmTrie<MapData, [u8; 4], u8>,
    allow_v6: LpmTrie<MapData, [u8; 16], u8>,
    prefilter_v4: Array<MapData, u64>,
    prefilter_v6: Array<MapData, u64>,
}

/// An allowed prefix and where it came from (`PREFIX_FROM_*`).
pub type TaggedPrefix = (IpNetwork, u8);

/// What an allowlist update wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub added: usize,
    pub removed: usize,
    pub unchanged: usize,
}

fn map_error(context: impl Into<String>) -> impl FnOnce(MapError) -> DataplaneError {
    let context = context.into();
    move |source| DataplaneError::Map { context, source }
}

impl SharedMaps {
    /// Takes the shared maps out of a freshly loaded object.
    pub fn take_from(ebpf: &mut aya::Ebpf) -> Result<SharedMaps, DataplaneError> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| DataplaneError::MissingMap {
                    name: name.to_owned(),
                })
        };
        let policy = take(map_names::POLICY)?;
        let allow_v4 = take(map_names::ALLOW_V4)?;
        let allow_v6 = take(map_names::ALLOW_V6)?;
        let prefilter = [
            take(map_names::PREFILTER_V4)?,
            take(map_names::PREFILTER_V6)?,
        ];
        SharedMaps::from_maps(policy, allow_v4, allow_v6, prefilter)
    }

    /// Opens the pinned shared maps (for status and classify while the
    /// daemon is down).
    pub fn open_pinned(layout: &super::PinLayout) -> Result<SharedMaps, DataplaneError> {
        let open = |name: &str| {
            let path = layout.shared_map(name);
            MapData::from_pin(&path).map_err(map_error(format!(
                "cannot open pinned map {}",
                path.display()
            )))
        };
        SharedMaps::from_maps(
            Map::Array(open(map_names::POLICY)?),
            Map::LpmTrie(open(map_names::ALLOW_V4)?),
            Map::LpmTrie(open(map_names::ALLOW_V6)?),
            [
                Map::Array(open(map_names::PREFILTER_V4)?),
                Map::Array(open(map_names::PREFILTER_V6)?),
            ],
        )
    }

    pub(super) fn from_maps(
        policy: Map,
        allow_v4: Map,
        allow_v6: Map,
        prefilter: [Map; 2],
    ) -> Result<SharedMaps, DataplaneError> {
        let [prefilter_v4, prefilter_v6] = prefilter;
        Ok(SharedMaps {
            prefilter_v4: Array::try_from(prefilter_v4).map_err(map_error("PREFILTER_V4"))?,
            prefilter_v6: Array::try_from(prefilter_v6).map_err(map_error("PREFILTER_V6"))?,
            policy: Array::try_from(policy).map_err(map_error("POLICY"))?,
            allow_v4: LpmTrie::try_from(allow_v4).map_err(map_error("ALLOW_V4"))?,
            allow_v6: LpmTrie::try_from(allow_v6).map_err(map_error("ALLOW_V6"))?,
        })
    }

    fn policy(&self) -> Result<Policy, DataplaneError> {
        self.policy
            .get(&0, 0)
            .map_err(map_error("cannot read POLICY"))
    }

    pub fn settings(&self) -> Result<Settings, DataplaneError> {
        Ok(self.policy()?.settings)
    }

    /// Makes the settings and the protected-port bitmaps these, in one map
    /// update (none when they already are).
    pub fn write_settings_and_ports(
        &mut self,
        settings: Settings,
        tcp: &BTreeSet<u16>,
        udp: &BTreeSet<u16>,
    ) -> Result<(), DataplaneError> {
        let mut desired = Policy::new(settings);
        for (protocol, ports) in [(PortProtocol::Tcp, tcp), (PortProtocol::Udp, udp)] {
            for &port in ports {
                desired.protect(protocol, port);
            }
        }
        if self.policy().ok() == Some(desired) {
            return Ok(());
        }
        self.policy
            .set(0, desired, 0)
            .map_err(map_error("cannot write POLICY"))
    }

    /// Protected ports as (tcp, udp) sets.
    pub fn ports(&self) -> Result<(BTreeSet<u16>, BTreeSet<u16>), DataplaneError> {
        let policy = self.policy()?;
        let protected = |protocol| {
            (0..=u16::MAX)
                .filter(|&port| policy.protects(protocol, port))
                .collect::<BTreeSet<u16>>()
        };
        Ok((protected(PortProtocol::Tcp), protected(PortProtocol::Udp)))
    }

    /// The allowed prefixes in the kernel now, with their origin tags.
    pub fn allowlist(&self) -> Result<Vec<TaggedPrefix>, DataplaneError> {
        let mut prefixes = Vec::new();
        for entry in self.allow_v4.iter() {
            let (key, tag) = entry.map_err(map_error("cannot read ALLOW_V4"))?;
            let network = ipnetwork::Ipv4Network::new(key.data().into(), key.prefix_len() as u8)
                .map_err(|source| DataplaneError::CorruptMap {
                    name: "ALLOW_V4",
                    source,
                })?;
            prefixes.push((IpNetwork::V4(network), tag));
        }
        for entry in self.allow_v6.iter() {
            let (key, tag) = entry.map_err(map_error("cannot read ALLOW_V6"))?;
            let network = ipnetwork::Ipv6Network::new(key.data().into(), key.prefix_len() as u8)
                .map_err(|source| DataplaneError::CorruptMap {
                    name: "ALLOW_V6",
                    source,
                })?;
            prefixes.push((IpNetwork::V6(network), tag));
        }
        Ok(prefixes)
    }

    /// Makes the allowlist equal to `desired`.
    ///
    /// Add before remove: every new prefix is in the trie before any old one
    /// leaves it. An address allowed both before and after is covered by
    /// some prefix at every instant, so a packet from it is never dropped
    /// mid-update; an address only in the old set stops passing when the
    /// last removal lands. One trie per family (rather than two flipped by a
    /// settings write) keeps the program's hot path to a single lookup.
    /// The prefilter follows the same order: its bits for the union of old
    /// and new prefixes are set first, and cleared down to the new set last.
    pub fn apply_allowlist(
        &mut self,
        desired: &[TaggedPrefix],
    ) -> Result<ApplyStats, DataplaneError> {
        let current: BTreeMap<IpNetwork, u8> = self.allowlist()?.into_iter().collect();
        let desired: BTreeMap<IpNetwork, u8> =
            desired.iter().map(|(p, t)| (canonical(*p), *t)).collect();
        let union = prefilter_words(current.keys().chain(desired.keys()));
        let wanted = prefilter_words(desired.keys());
        self.write_prefilter(&union)?;
        let mut stats = ApplyStats::default();
        for (&prefix, &tag) in &desired {
            if current.get(&prefix) == Some(&tag) {
                stats.unchanged += 1;
                continue;
            }
            self.insert(prefix, tag)?;
            stats.added += 1;
        }
        for &prefix in current.keys() {
            if !desired.contains_key(&prefix) {
                self.remove(prefix)?;
                stats.removed += 1;
            }
        }
        let mut cleared = wanted.clone();
        for (family_and_word, _) in union.iter() {
            cleared.entry(*family_and_word).or_insert(0);
        }
        self.write_prefilter(&cleared)?;
        Ok(stats)
    }

    /// Writes the given prefilter words where the kernel's differ.
    fn write_prefilter(
        &mut self,
        words: &BTreeMap<(Family, u32), u64>,
    ) -> Result<(), DataplaneError> {
        for (&(family, index), &want) in words {
            let map = match family {
                Family::V4 => &mut self.prefilter_v4,
                Family::V6 => &mut self.prefilter_v6,
            };
            let have = map
                .get(&index, 0)
                .map_err(map_error("cannot read the prefilter"))?;
            if have != want {
                map.set(index, want, 0)
                    .map_err(map_error("cannot write the prefilter"))?;
            }
        }
        Ok(())
    }

    fn insert(&mut self, prefix: IpNetwork, tag: u8) -> Result<(), DataplaneError> {
        let context = || {
            format!(
                "cannot add {prefix} to the allowlist (the trie holds {} prefixes per family)",
                shield_common::MAX_PREFIXES
            )
        };
        match prefix {
            IpNetwork::V4(p) => self
                .allow_v4
                .insert(
                    &Key::new(u32::from(p.prefix()), p.network().octets()),
                    tag,
                    0,
                )
                .map_err(map_error(context())),
            IpNetwork::V6(p) => self
                .allow_v6
                .insert(
                    &Key::new(u32::from(p.prefix()), p.network().octets()),
                    tag,
                    0,
                )
                .map_err(map_error(context())),
        }
    }

    fn remove(&mut self, prefix: IpNetwork) -> Result<(), DataplaneError> {
        let context = format!("cannot remove {prefix} from the allowlist");
        match prefix {
            IpNetwork::V4(p) => self
                .allow_v4
                .remove(&Key::new(u32::from(p.prefix()), p.network().octets()))
                .map_err(map_error(context)),
            IpNetwork::V6(p) => self
                .allow_v6
                .remove(&Key::new(u32::from(p.prefix()), p.network().octets()))
                .map_err(map_error(context)),
        }
    }

    /// Whether the kernel's trie allows `address` (one LPM lookup).
    pub fn allows(&self, address: IpAddr) -> Result<bool, DataplaneError> {
        let result = match address {
            IpAddr::V4(a) => self.allow_v4.get(&Key::new(32, a.octets()), 0).map(|_| ()),
            IpAddr::V6(a) => self.allow_v6.get(&Key::new(128, a.octets()), 0).map(|_| ()),
        };
        match result {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(DataplaneError::Map {
                context: "allowlist lookup".into(),
                source,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

/// Prefilter words with a bit for every /24 the prefixes overlap.
fn prefilter_words<'a>(
    prefixes: impl Iterator<Item = &'a IpNetwork>,
) -> BTreeMap<(Family, u32), u64> {
    let mut words = BTreeMap::new();
    for prefix in prefixes {
        let (family, octets, len) = match prefix {
            IpNetwork::V4(p) => (Family::V4, p.network().octets().to_vec(), p.prefix()),
            IpNetwork::V6(p) => (Family::V6, p.network().octets().to_vec(), p.prefix()),
        };
        let first = prefilter_index([octets[0], octets[1], octets[2], octets[3]]);
        // A prefix shorter than /24 spans 2^(24 - len) consecutive bits.
        let span = 1u32 << 24u8.saturating_sub(len);
        for index in first..first + span {
            *words.entry((family, index >> 6)).or_insert(0u64) |= 1u64 << (index & 63);
        }
    }
    words
}

fn canonical(prefix: IpNetwork) -> IpNetwork {
    IpNetwork::new(prefix.network(), prefix.prefix()).unwrap_or(prefix)
}

/// Summed per-CPU counters of one program instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    slots: BTreeMap<(Verdict, Reason), Counter>,
}

impl Counters {
    pub fn read(map: &PerCpuArray<MapData, CpuCounters>) -> Result<Counters, DataplaneError> {
        let per_cpu = map.get(&0, 0).map_err(map_error("cannot read COUNTERS"))?;
        let mut slots = BTreeMap::new();
        for verdict in Verdict::ALL {
            for reason in Reason::ALL {
                let index = counter_index(verdict, reason) as usize;
                let mut total = Counter::default();
                for cpu in per_cpu.iter() {
                    total.packets += cpu.slots[index].packets;
                    total.bytes += cpu.slots[index].bytes;
                }
                slots.insert((verdict, reason), total);
            }
        }
        Ok(Counters { slots })
    }

    pub fn get(&self, verdict: Verdict, reason: Reason) -> Counter {
        self.slots
            .get(&(verdict, reason))
            .copied()
            .unwrap_or_default()
    }

    /// The (verdict, reason) pairs that a packet can land in, with counts:
    /// a reason's verdicts when enforcing and in monitor mode, no others.
    pub fn iter(&self) -> impl Iterator<Item = (Verdict, Reason, Counter)> + '_ {
        self.slots
            .iter()
            .filter(|((verdict, reason), _)| {
                *verdict == reason.verdict(true) || *verdict == reason.verdict(false)
            })
            .map(|(&(verdict, reason), &counter)| (verdict, reason, counter))
    }
}

#[cfg(test)]
mod error_tests {
    use std::{io, path::PathBuf};

    use aya::{pin::PinError, sys::SyscallError};

    use super::*;
    use crate::error::tests::count_in_chain;

    fn enoent() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOENT)
    }

    /// Each error keeps aya's or the OS's error as its `source()`, typed,
    /// and `{:#}` prints that cause once.
    #[test]
    fn each_cause_is_printed_once() {
        let cause = enoent().to_string();
        let cases: Vec<DataplaneError> = vec![
            DataplaneError::Map {
                context: "cannot open /sys/fs/bpf/shield/POLICY".into(),
                source: MapError::SyscallError(SyscallError {
                    call: "bpf_obj_get",
                    io_error: enoent(),
                }),
            },
            DataplaneError::Pin {
                what: "link",
                path: PathBuf::from("/sys/fs/bpf/shield/ifaces/eth0/link"),
                source: PinError::SyscallError(SyscallError {
                    call: "BPF_OBJ_PIN",
                    io_error: enoent(),
                }),
            },
            DataplaneError::Io {
                context: "cannot list pinned interfaces".into(),
                source: enoent(),
            },
            DataplaneError::Bpffs {
                path: "/sys/fs/bpf".into(),
                source: enoent(),
            },
        ];
        for error in cases {
            let (count, text) = count_in_chain(error, &cause);
            assert_eq!(count, 1, "{text}");
        }
        let error = DataplaneError::Pin {
            what: "program",
            path: PathBuf::from("/p"),
            source: PinError::NoFd {
                name: "shield".into(),
            },
        };
        assert!(matches!(
            std::error::Error::source(&error).and_then(|s| s.downcast_ref::<PinError>()),
            Some(PinError::NoFd { .. })
        ));
        let (count, text) = count_in_chain(error, "FD is not known");
        assert_eq!(count, 1, "{text}");
        assert!(text.starts_with("cannot pin the program at /p: "), "{text}");
    }
}
