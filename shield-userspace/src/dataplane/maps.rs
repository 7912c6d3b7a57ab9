//! Reading and writing the XDP program's maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData, MapError, PerCpuArray};
use ipnetwork::IpNetwork;
use shield_common::{
    counter_index, map_names, prefilter_index, Counter, CoveredWords, CpuCounters, MapKind, Policy,
    PortProtocol, Reason, Settings, Verdict, COVERED_ENTRIES, COVERED_WORDS_PER_ENTRY,
};

use super::DataplaneError;

/// The maps every interface's program shares.
pub struct SharedMaps {
    policy: Array<MapData, Policy>,
    allow: PrefixTries,
    destinations: PrefixTries,
    prefilter_v4: Array<MapData, u64>,
    prefilter_v6: Array<MapData, u64>,
    /// `None` with an object or pins from before the map existed, whose
    /// program walks the trie for every allowed source.
    covered_v4: Option<Array<MapData, CoveredWords>>,
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

/// The aya wrapper a map of this name is read through, by its kind in
/// the table of map layouts.
pub(super) fn typed(name: &str, data: MapData) -> Map {
    let kind = shield_common::map_specs::ALL
        .iter()
        .find(|spec| spec.name == name)
        .map(|spec| spec.kind);
    match kind {
        Some(MapKind::LpmTrie) => Map::LpmTrie(data),
        Some(MapKind::PerCpuArray) => Map::PerCpuArray(data),
        Some(MapKind::RingBuf) => Map::RingBuf(data),
        Some(MapKind::LruHash) => Map::LruHashMap(data),
        Some(MapKind::Array) | None => Map::Array(data),
    }
}

impl SharedMaps {
    /// Takes the shared maps out of a freshly loaded object.
    pub fn take_from(ebpf: &mut aya::Ebpf) -> Result<SharedMaps, DataplaneError> {
        SharedMaps::from_maps(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| DataplaneError::MissingMap {
                    name: name.to_owned(),
                })
        })
    }

    /// Opens the pinned shared maps (for status and classify while the
    /// daemon is down).
    pub fn open_pinned(layout: &super::PinLayout) -> Result<SharedMaps, DataplaneError> {
        SharedMaps::from_maps(|name| {
            let path = layout.shared_map(name);
            MapData::from_pin(&path)
                .map(|data| typed(name, data))
                .map_err(map_error(format!(
                    "cannot open pinned map {}",
                    path.display()
                )))
        })
    }

    /// The shared maps, each asked of `take` by name.
    pub(super) fn from_maps(
        mut take: impl FnMut(&'static str) -> Result<Map, DataplaneError>,
    ) -> Result<SharedMaps, DataplaneError> {
        Ok(SharedMaps {
            policy: Array::try_from(take(map_names::POLICY)?).map_err(map_error("POLICY"))?,
            allow: PrefixTries::new(
                [map_names::ALLOW_V4, map_names::ALLOW_V6],
                "the allowlist",
                &mut take,
            )?,
            destinations: PrefixTries::new(
                [map_names::DESTINATIONS_V4, map_names::DESTINATIONS_V6],
                "the protected destinations",
                &mut take,
            )?,
            prefilter_v4: Array::try_from(take(map_names::PREFILTER_V4)?)
                .map_err(map_error("PREFILTER_V4"))?,
            prefilter_v6: Array::try_from(take(map_names::PREFILTER_V6)?)
                .map_err(map_error("PREFILTER_V6"))?,
            // Only a shortcut for the program: without it every allowed
            // source is judged by the trie, as before the map existed.
            covered_v4: take(map_names::COVERED_V4)
                .ok()
                .map(Array::try_from)
                .transpose()
                .map_err(map_error("COVERED_V4"))?,
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
        self.allow.entries()
    }

    /// The protected destinations in the kernel now (empty: every
    /// destination is protected, when the settings say so).
    pub fn destinations(&self) -> Result<Vec<IpNetwork>, DataplaneError> {
        Ok(self
            .destinations
            .entries()?
            .into_iter()
            .map(|(prefix, _)| prefix)
            .collect())
    }

    /// Adds the destinations of `desired` the trie lacks: before the
    /// settings that scope the program to them, so a destination that is
    /// protected before and after a change never passes unjudged.
    pub(super) fn add_destinations(&mut self, desired: &[IpNetwork]) -> Result<(), DataplaneError> {
        let current: BTreeSet<IpNetwork> = self.destinations()?.into_iter().collect();
        for prefix in desired.iter().map(|p| canonical(*p)) {
            if !current.contains(&prefix) {
                self.destinations.insert(prefix, DESTINATION_TAG)?;
            }
        }
        Ok(())
    }

    /// Removes the destinations not in `desired`: after the settings, so
    /// one leaving the scope stops being judged last.
    pub(super) fn remove_other_destinations(
        &mut self,
        desired: &[IpNetwork],
    ) -> Result<(), DataplaneError> {
        let desired: BTreeSet<IpNetwork> = desired.iter().map(|p| canonical(*p)).collect();
        for prefix in self.destinations()? {
            if !desired.contains(&prefix) {
                self.destinations.remove(prefix)?;
            }
        }
        Ok(())
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
    /// `COVERED_V4` lets the program allow a source without the trie, so
    /// its bits must never claim more than the trie holds, even if the
    /// daemon is killed between two writes: they are made the new set's
    /// while the trie holds both sets, after the additions and before the
    /// removals. All of it is compared and rewritten each time, so a bit
    /// left stale by a daemon that did not know the map (a downgrade, then
    /// an upgrade) is cleared before this build's program is attached. A
    /// bit that is missing only costs a trie walk.
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
            self.allow.insert(prefix, tag)?;
            stats.added += 1;
        }
        // The trie holds both sets now: the new set's covered bits are
        // true of it, and clearing any other bit is always safe.
        self.write_covered(desired.keys())?;
        for &prefix in current.keys() {
            if !desired.contains_key(&prefix) {
                self.allow.remove(prefix)?;
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

    /// Makes `COVERED_V4` the bits of the /24s that `desired` covers and no
    /// other, writing the entries that differ.
    fn write_covered<'a>(
        &mut self,
        desired: impl Iterator<Item = &'a IpNetwork>,
    ) -> Result<(), DataplaneError> {
        let Some(map) = &mut self.covered_v4 else {
            return Ok(());
        };
        let words = covered_words(desired);
        let per_entry = COVERED_WORDS_PER_ENTRY;
        for entry in 0..COVERED_ENTRIES {
            let mut want: CoveredWords = [0; COVERED_WORDS_PER_ENTRY as usize];
            for (&index, &word) in words.range(entry * per_entry..(entry + 1) * per_entry) {
                want[(index % per_entry) as usize] = word;
            }
            let have = map
                .get(&entry, 0)
                .map_err(map_error("cannot read COVERED_V4"))?;
            if have != want {
                map.set(entry, want, 0)
                    .map_err(map_error("cannot write COVERED_V4"))?;
            }
        }
        Ok(())
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

    /// Whether `COVERED_V4` lets the program allow `address` without the
    /// trie; `None` without that map.
    pub fn covered(&self, address: std::net::Ipv4Addr) -> Result<Option<bool>, DataplaneError> {
        let Some(map) = &self.covered_v4 else {
            return Ok(None);
        };
        let word = prefilter_index(address.octets()) / 64;
        let words = map
            .get(&(word / COVERED_WORDS_PER_ENTRY), 0)
            .map_err(map_error("cannot read COVERED_V4"))?;
        let bit = prefilter_index(address.octets()) % 64;
        Ok(Some(
            words[(word % COVERED_WORDS_PER_ENTRY) as usize] & (1u64 << bit) != 0,
        ))
    }

    /// Whether the kernel's trie allows `address` (one LPM lookup).
    pub fn allows(&self, address: IpAddr) -> Result<bool, DataplaneError> {
        self.allow.holds(address)
    }
}

/// The value of a protected-destination entry (the key is what matters).
const DESTINATION_TAG: u8 = 1;

/// A pair of LPM tries, one per family, holding prefixes with a tag.
struct PrefixTries {
    v4: LpmTrie<MapData, [u8; 4], u8>,
    v6: LpmTrie<MapData, [u8; 16], u8>,
    names: [&'static str; 2],
    /// What the pair holds, for errors: "the allowlist".
    what: &'static str,
    /// Entries each trie holds at most.
    capacity: u32,
}

impl PrefixTries {
    fn new(
        names: [&'static str; 2],
        what: &'static str,
        take: &mut impl FnMut(&'static str) -> Result<Map, DataplaneError>,
    ) -> Result<PrefixTries, DataplaneError> {
        let [v4, v6] = names;
        Ok(PrefixTries {
            v4: LpmTrie::try_from(take(v4)?).map_err(map_error(v4))?,
            v6: LpmTrie::try_from(take(v6)?).map_err(map_error(v6))?,
            names,
            what,
            capacity: shield_common::map_specs::ALL
                .iter()
                .find(|spec| spec.name == v4)
                .map_or(0, |spec| spec.max_entries),
        })
    }

    fn entries(&self) -> Result<Vec<TaggedPrefix>, DataplaneError> {
        let [name_v4, name_v6] = self.names;
        let corrupt = |name| move |source| DataplaneError::CorruptMap { name, source };
        let mut prefixes = Vec::new();
        for entry in self.v4.iter() {
            let (key, tag) = entry.map_err(map_error(format!("cannot read {name_v4}")))?;
            let network = ipnetwork::Ipv4Network::new(key.data().into(), key.prefix_len() as u8)
                .map_err(corrupt(name_v4))?;
            prefixes.push((IpNetwork::V4(network), tag));
        }
        for entry in self.v6.iter() {
            let (key, tag) = entry.map_err(map_error(format!("cannot read {name_v6}")))?;
            let network = ipnetwork::Ipv6Network::new(key.data().into(), key.prefix_len() as u8)
                .map_err(corrupt(name_v6))?;
            prefixes.push((IpNetwork::V6(network), tag));
        }
        Ok(prefixes)
    }

    fn insert(&mut self, prefix: IpNetwork, tag: u8) -> Result<(), DataplaneError> {
        let context = || {
            format!(
                "cannot add {prefix} to {} (its trie holds {} prefixes per family)",
                self.what, self.capacity
            )
        };
        let result = match prefix {
            IpNetwork::V4(p) => self.v4.insert(
                &Key::new(u32::from(p.prefix()), p.network().octets()),
                tag,
                0,
            ),
            IpNetwork::V6(p) => self.v6.insert(
                &Key::new(u32::from(p.prefix()), p.network().octets()),
                tag,
                0,
            ),
        };
        result.map_err(|source| map_error(context())(source))
    }

    fn remove(&mut self, prefix: IpNetwork) -> Result<(), DataplaneError> {
        let context = format!("cannot remove {prefix} from {}", self.what);
        match prefix {
            IpNetwork::V4(p) => self
                .v4
                .remove(&Key::new(u32::from(p.prefix()), p.network().octets())),
            IpNetwork::V6(p) => self
                .v6
                .remove(&Key::new(u32::from(p.prefix()), p.network().octets())),
        }
        .map_err(map_error(context))
    }

    /// Whether a prefix in the pair holds `address` (one LPM lookup).
    fn holds(&self, address: IpAddr) -> Result<bool, DataplaneError> {
        let result = match address {
            IpAddr::V4(a) => self.v4.get(&Key::new(32, a.octets()), 0).map(|_| ()),
            IpAddr::V6(a) => self.v6.get(&Key::new(128, a.octets()), 0).map(|_| ()),
        };
        match result {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(DataplaneError::Map {
                context: format!("{} lookup", self.what),
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

/// The `COVERED_V4` words (by index) of the /24s the IPv4 prefixes of
/// /24 or shorter cover entirely.
fn covered_words<'a>(prefixes: impl Iterator<Item = &'a IpNetwork>) -> BTreeMap<u32, u64> {
    prefilter_words(prefixes.filter(|p| matches!(p, IpNetwork::V4(v4) if v4.prefix() <= 24)))
        .into_iter()
        .map(|((_, index), word)| (index, word))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(texts: &[&str]) -> Vec<IpNetwork> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn covered_words_hold_the_whole_24s_of_short_ipv4_prefixes_only() {
        let set = prefixes(&[
            "104.16.0.0/13",
            "173.245.50.0/24",
            "198.51.100.7/32",
            "203.0.113.0/25",
            "2400:cb00::/32",
        ]);
        let words = covered_words(set.iter());
        let first = prefilter_index([104, 16, 0, 0]);
        // A /13 is 2^11 /24s: 32 whole words from an aligned start.
        for index in (first >> 6)..(first >> 6) + 32 {
            assert_eq!(words.get(&index), Some(&u64::MAX), "word {index}");
        }
        let one = prefilter_index([173, 245, 50, 0]);
        assert_eq!(words.get(&(one >> 6)), Some(&(1u64 << (one & 63))));
        // The /32, the /25 and the IPv6 prefix cover no whole /24.
        assert_eq!(words.len(), 33, "{words:?}");
    }

    #[test]
    fn covered_bits_are_a_subset_of_the_prefilter_bits() {
        let set = prefixes(&["162.158.0.0/15", "131.0.72.0/22", "192.0.2.1/32"]);
        let prefilter = prefilter_words(set.iter());
        for (index, word) in covered_words(set.iter()) {
            let may = prefilter.get(&(Family::V4, index)).copied().unwrap_or(0);
            assert_eq!(word & !may, 0, "word {index}");
        }
    }
}
