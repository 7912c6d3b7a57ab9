//! Pinned maps against the layouts this build expects, and the replacement
//! of the ones that differ, without a detach.
//!
//! A pin left by an older shield is reused when its kind, key, value and
//! size match [`map_specs`]. One that differs cannot be handed to the new
//! program (the kernel would refuse the load, or worse, misread it), and
//! detaching to start over would leave the host unfiltered. So it is moved
//! aside to `<pin>-retired` before the load: the load then creates and pins
//! a new map, which the start fills (when it holds policy) before the
//! program is swapped into the existing link. Until that swap the old
//! program keeps running on the old map, which it holds a reference to
//! whatever the pin says. Once every interface runs the new program the
//! retired pins are removed; a failed start puts them back.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapType};
use shield_common::{map_specs, MapContents, MapKind, MapScope, MapSpec};

use super::{DataplaneError, PinLayout};

/// Suffix of a pin moved aside while its replacement is put in place (no
/// dot: bpffs refuses names with one, reserving them for itself).
const RETIRED_SUFFIX: &str = "-retired";

/// The layout of a map found at a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FoundLayout {
    /// `None`: a map kind shield never made.
    pub kind: Option<MapKind>,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl FoundLayout {
    fn of(spec: &MapSpec) -> FoundLayout {
        FoundLayout {
            kind: Some(spec.kind),
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
        }
    }

    fn describe(&self) -> String {
        let kind = self.kind.map_or("other".to_owned(), |k| format!("{k:?}"));
        format!(
            "{kind}, key {}B, value {}B, {} entries",
            self.key_size, self.value_size, self.max_entries
        )
    }
}

/// What to do with one map's pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PinAction {
    /// No pin: the load creates and pins the map.
    Create,
    /// Same layout: the load re-opens it, contents and all.
    Reuse,
    /// Another layout: move it aside and let the load create a new one.
    Replace { found: String, expected: String },
}

/// The decision for one pin, apart from the kernel so it can be tested.
pub(crate) fn decide(spec: &MapSpec, found: Option<FoundLayout>) -> PinAction {
    match found {
        None => PinAction::Create,
        Some(found) if found == FoundLayout::of(spec) => PinAction::Reuse,
        Some(found) => PinAction::Replace {
            found: found.describe(),
            expected: FoundLayout::of(spec).describe(),
        },
    }
}

fn kind_of(map_type: MapType) -> Option<MapKind> {
    match map_type {
        MapType::Array => Some(MapKind::Array),
        MapType::PerCpuArray => Some(MapKind::PerCpuArray),
        MapType::LpmTrie => Some(MapKind::LpmTrie),
        MapType::RingBuf => Some(MapKind::RingBuf),
        MapType::LruHash => Some(MapKind::LruHash),
        _ => None,
    }
}

/// The layout of the map pinned at `path`; `None` when nothing is pinned.
fn inspect(path: &Path) -> Result<Option<FoundLayout>, DataplaneError> {
    if !path.exists() {
        return Ok(None);
    }
    let info = MapData::from_pin(path)
        .and_then(|map| map.info())
        .map_err(|source| DataplaneError::Map {
            context: format!("cannot inspect {}", path.display()),
            source,
        })?;
    Ok(Some(FoundLayout {
        kind: info.map_type().ok().and_then(kind_of),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }))
}

/// Where `spec`'s pin lives for `interface`.
pub(crate) fn pin_path(layout: &PinLayout, spec: &MapSpec, interface: &str) -> PathBuf {
    match spec.scope {
        MapScope::Shared => layout.shared_map(spec.name),
        MapScope::PerInterface => layout.interface_dir(interface).join(spec.name),
    }
}

/// The retired name of a pin.
pub(crate) fn retired_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(RETIRED_SUFFIX);
    PathBuf::from(name)
}

/// A pin moved aside by this start.
#[derive(Debug)]
struct Retired {
    pin: PathBuf,
    retired: PathBuf,
}

/// The pins this start moved aside: removed once every interface runs the
/// new program, put back if the start fails.
#[derive(Debug, Default)]
pub(crate) struct Retirements {
    retired: Vec<Retired>,
}

impl Retirements {
    /// Checks every pin the start will use against [`map_specs`] and moves
    /// aside the ones with another layout, each with a log line saying what
    /// happens to its contents.
    pub(crate) fn prepare(
        layout: &PinLayout,
        interfaces: &[&str],
    ) -> Result<Retirements, DataplaneError> {
        let mut pins = Vec::new();
        for spec in &map_specs::ALL {
            match spec.scope {
                MapScope::Shared => pins.push((spec, pin_path(layout, spec, ""))),
                MapScope::PerInterface => {
                    for interface in interfaces {
                        pins.push((spec, pin_path(layout, spec, interface)));
                    }
                }
            }
        }
        // Inspect everything before moving anything, so an unreadable pin
        // fails the start with nothing changed.
        let mut actions = Vec::new();
        for (spec, path) in pins {
            actions.push((spec, decide(spec, inspect(&path)?), path));
        }
        let mut retirements = Retirements::default();
        if let Err(error) = retirements.retire(actions) {
            retirements.restore();
            return Err(error);
        }
        Ok(retirements)
    }

    fn retire(
        &mut self,
        actions: Vec<(&MapSpec, PinAction, PathBuf)>,
    ) -> Result<(), DataplaneError> {
        for (spec, action, path) in actions {
            let retired = retired_path(&path);
            // A retired pin left by a start that died half-way: the map it
            // names is held only by programs about to be replaced, if any.
            remove_if_present(&retired)?;
            let PinAction::Replace { found, expected } = action else {
                continue;
            };
            std::fs::rename(&path, &retired).map_err(|source| DataplaneError::Io {
                context: format!("cannot move {} aside", path.display()),
                source,
            })?;
            let consequence = match spec.contents {
                MapContents::Policy => "a new map is filled before the program swap",
                MapContents::Counts => "its counts restart from zero",
                MapContents::Events => "events in flight are lost",
                MapContents::Flows => {
                    "connections in their first round trip may need a retransmission"
                }
            };
            tracing::warn!(
                map = spec.name,
                pin = %path.display(),
                %found,
                %expected,
                "pinned map has another layout; replacing it without a detach: {consequence}"
            );
            self.retired.push(Retired { pin: path, retired });
        }
        Ok(())
    }

    /// Every interface runs the new program: the old maps are no longer
    /// needed by anything shield starts.
    pub(crate) fn commit(&mut self) {
        for Retired { retired, .. } in self.retired.drain(..) {
            if let Err(error) = std::fs::remove_file(&retired) {
                tracing::warn!(pin = %retired.display(), %error, "cannot remove a retired pin");
            }
        }
    }

    /// The start failed: the old pins go back where they were, replacing
    /// whatever this start pinned in their place.
    pub(crate) fn restore(&mut self) {
        for Retired { pin, retired } in self.retired.drain(..).rev() {
            let _ = remove_if_present(&pin);
            if let Err(error) = std::fs::rename(&retired, &pin) {
                tracing::error!(pin = %pin.display(), %error, "rollback: cannot restore a retired pin");
            }
        }
    }

    #[cfg(test)]
    fn pins(&self) -> Vec<&Path> {
        self.retired.iter().map(|r| r.pin.as_path()).collect()
    }
}

fn remove_if_present(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Io {
            context: format!("cannot remove {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::maps::{Array, PerCpuArray};
    use shield_common::{Counter, EventBudget};

    #[test]
    fn a_missing_pin_is_created_and_a_matching_one_reused() {
        for spec in &map_specs::ALL {
            assert_eq!(decide(spec, None), PinAction::Create);
            assert_eq!(decide(spec, Some(FoundLayout::of(spec))), PinAction::Reuse);
        }
    }

    #[test]
    fn any_difference_replaces_the_pin() {
        let spec = &map_specs::COUNTERS;
        let same = FoundLayout::of(spec);
        // The counter value of the layout before spare slots: 21 slots.
        let old_counters = FoundLayout {
            value_size: (21 * size_of::<Counter>() + size_of::<EventBudget>()) as u32,
            ..same
        };
        for found in [
            old_counters,
            FoundLayout { kind: None, ..same },
            FoundLayout {
                kind: Some(MapKind::Array),
                ..same
            },
            FoundLayout {
                key_size: 8,
                ..same
            },
            FoundLayout {
                max_entries: 2,
                ..same
            },
        ] {
            match decide(spec, Some(found)) {
                PinAction::Replace { found, expected } => assert_ne!(found, expected),
                other => panic!("{found:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn pins_are_where_the_loader_and_status_look() {
        let layout = PinLayout::new("/sys/fs/bpf/x");
        assert_eq!(
            pin_path(&layout, &map_specs::POLICY, "eth0"),
            layout.shared_map("POLICY")
        );
        assert_eq!(
            pin_path(&layout, &map_specs::COUNTERS, "eth0"),
            layout.counters("eth0")
        );
        assert_eq!(
            retired_path(&layout.counters("eth0")),
            PathBuf::from("/sys/fs/bpf/x/ifaces/eth0/COUNTERS-retired")
        );
    }

    /// Privileged (real maps on bpffs): fails under CI=true without root.
    fn bpffs_root(name: &str) -> Option<PinLayout> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "needs root for bpffs; CI runs as root"
            );
            eprintln!("NOT RUN: needs root");
            return None;
        }
        let root = PathBuf::from(format!("/sys/fs/bpf/shtest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        super::super::bpffs::ensure_mounted(&root).expect("bpffs");
        std::fs::create_dir_all(root.join("ifaces/eth0")).expect("pin dirs");
        Some(PinLayout::new(root))
    }

    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_old_counter_pin_is_moved_aside_and_put_back_on_failure() {
        let Some(layout) = bpffs_root("retire") else {
            return;
        };
        let _cleanup = Cleanup(layout.root().to_owned());
        // A counter map with the old 21-slot value, and a POLICY that matches.
        let old = PerCpuArray::<MapData, [u8; 21 * 16 + 16]>::create(1, 0).expect("old map");
        old.pin(layout.counters("eth0")).expect("pin old counters");
        let policy = Array::<MapData, shield_common::Policy>::create(1, 0).expect("policy");
        policy.pin(layout.shared_map("POLICY")).expect("pin policy");

        let mut retirements = Retirements::prepare(&layout, &["eth0"]).expect("prepare");
        assert_eq!(retirements.pins(), vec![layout.counters("eth0").as_path()]);
        assert!(!layout.counters("eth0").exists());
        assert!(retired_path(&layout.counters("eth0")).exists());
        assert!(layout.shared_map("POLICY").exists(), "a matching pin stays");

        // Something pinned in its place, then the start fails.
        let new = PerCpuArray::<MapData, shield_common::CpuCounters>::create(1, 0).expect("new");
        new.pin(layout.counters("eth0")).expect("pin new counters");
        retirements.restore();
        let info = MapData::from_pin(layout.counters("eth0"))
            .and_then(|m| m.info())
            .expect("restored pin");
        assert_eq!(info.value_size(), 21 * 16 + 16);
        assert!(!retired_path(&layout.counters("eth0")).exists());

        // And on success the retired pin goes.
        let mut retirements = Retirements::prepare(&layout, &["eth0"]).expect("prepare");
        retirements.commit();
        assert!(!retired_path(&layout.counters("eth0")).exists());
        assert!(
            !layout.counters("eth0").exists(),
            "the load pins the new one"
        );

        // A retired pin left by a start that died goes with the next start.
        let stale = PerCpuArray::<MapData, [u8; 8]>::create(1, 0).expect("stale map");
        stale
            .pin(retired_path(&layout.counters("eth0")))
            .expect("pin stale");
        let retirements = Retirements::prepare(&layout, &["eth0"]).expect("prepare");
        assert!(retirements.pins().is_empty());
        assert!(!retired_path(&layout.counters("eth0")).exists());
    }
}
