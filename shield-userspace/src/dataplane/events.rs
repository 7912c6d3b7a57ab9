//! Drop events: the XDP program's sampled, rate-limited reports of who is
//! being dropped, read from the pinned ring buffer and logged with tracing
//! (target `shield::drops`).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{Map, MapData, RingBuf};
use shield_common::{map_names, DropEvent, Reason};
use tokio::io::unix::AsyncFd;

use super::{DataplaneError, PinLayout};

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub interface: String,
    pub source: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub reason: &'static str,
    pub enforced: bool,
}

fn decode(bytes: &[u8], interfaces: &HashMap<u32, String>) -> Option<Dropped> {
    if bytes.len() < std::mem::size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: the length was checked; DropEvent is plain old data and the
    // ring buffer gives no alignment promise, hence read_unaligned.
    let event: DropEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let source = match event.family {
        4 => IpAddr::V4(Ipv4Addr::new(
            event.source[0],
            event.source[1],
            event.source[2],
            event.source[3],
        )),
        6 => IpAddr::V6(Ipv6Addr::from(event.source)),
        _ => return None,
    };
    Some(Dropped {
        interface: interfaces
            .get(&event.ifindex)
            .cloned()
            .unwrap_or_else(|| format!("ifindex {}", event.ifindex)),
        source,
        port: event.port,
        protocol: match event.protocol {
            6 => "tcp",
            17 => "udp",
            _ => "-",
        },
        reason: Reason::from_u32(event.reason).map_or("unknown", Reason::name),
        enforced: event.enforced != 0,
    })
}

/// Logs drop events until the task is aborted. `interfaces` maps ifindex to
/// name for the log line.
pub fn spawn_logger(
    layout: &PinLayout,
    interfaces: HashMap<u32, String>,
) -> Result<tokio::task::JoinHandle<()>, DataplaneError> {
    let path = layout.shared_map(map_names::DROP_EVENTS);
    let map = MapData::from_pin(&path).map_err(|source| DataplaneError::Map {
        context: format!("cannot open {}", path.display()),
        source,
    })?;
    let ring = RingBuf::try_from(Map::RingBuf(map)).map_err(|source| DataplaneError::Map {
        context: "DROP_EVENTS".into(),
        source,
    })?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns
    // the RingBuf, and as_raw_fd always returns that same fd.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = registered.map_err(|error| DataplaneError::Io {
        context: "cannot poll the drop-event ring buffer".into(),
        source: error.into(),
    })?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match ring.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => {
                    tracing::error!(error = %crate::error::Chain(&error), "drop events: polling failed; no more drop logs");
                    return;
                }
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if let Some(d) = decode(&item, &interfaces) {
                    let verdict = if d.enforced { "dropped" } else { "would drop" };
                    tracing::info!(
                        target: "shield::drops",
                        interface = %d.interface,
                        source = %d.source,
                        port = d.port,
                        protocol = d.protocol,
                        reason = d.reason,
                        "{verdict}"
                    );
                }
            }
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_ipv4_event() {
        let mut event = DropEvent {
            ifindex: 7,
            port: 443,
            family: 4,
            protocol: 6,
            reason: Reason::OutsideRanges as u32,
            enforced: 1,
            ..DropEvent::default()
        };
        event.source[..4].copy_from_slice(&[203, 0, 113, 7]);
        // SAFETY: viewing a repr(C) POD value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&event as *const DropEvent).cast::<u8>(),
                std::mem::size_of::<DropEvent>(),
            )
        };
        let names = HashMap::from([(7, "eth1".to_owned())]);
        let dropped = decode(bytes, &names).unwrap();
        assert_eq!(dropped.interface, "eth1");
        assert_eq!(dropped.source, IpAddr::from([203, 0, 113, 7]));
        assert_eq!(
            (
                dropped.port,
                dropped.protocol,
                dropped.reason,
                dropped.enforced
            ),
            (443, "tcp", "outside_ranges", true)
        );
        assert!(decode(&bytes[..10], &names).is_none());
    }
}
