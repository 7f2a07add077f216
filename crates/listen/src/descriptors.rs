//! The descriptor budget: how many connections the listeners may hold
//! while the store, its logs and the process's own files always find a
//! descriptor.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The limit assumed when the hard limit is unlimited.
const UNLIMITED: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a process may, without
/// privileges) and returns the limit now in force. The soft limit is often
/// far below the hard one (1,024 against 524,288 on many distributions),
/// and a server that keeps it turns a few hundred idle connections into
/// failed disk writes.
pub fn raise_descriptor_limit() -> u64 {
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(UNLIMITED);
    let hard = current.maximum.unwrap_or(UNLIMITED);
    if soft >= hard {
        return soft;
    }
    let raised = Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            soft
        }
    }
}

/// Descriptors kept back from connections under a limit of `limit`: 32 for
/// the store's log, snapshot, lock and directory, the process's own files
/// and outgoing connections, plus an eighth of the limit for what grows
/// with it (threads, accepted-but-refused sockets).
pub fn reserved(limit: u64) -> u64 {
    32 + limit / 8
}

/// Connection caps for the API and the xDS listeners under a descriptor
/// `limit`: each gets what it asks for if that fits; if not, the API gets
/// at most a quarter of what is left after [`reserved`] and xDS the rest.
/// Each cap is at least 1.
pub fn connection_caps(limit: u64, api_wanted: usize, xds_wanted: usize) -> (usize, usize) {
    let available = usize::try_from(limit.saturating_sub(reserved(limit))).unwrap_or(usize::MAX);
    let api = api_wanted.min((available / 4).max(1)).max(1);
    let xds = xds_wanted.min(available.saturating_sub(api).max(1)).max(1);
    (api, xds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generous_limit_gives_each_listener_what_it_asks_for() {
        assert_eq!(connection_caps(1 << 20, 1024, 20_000), (1024, 20_000));
    }

    #[test]
    fn a_tight_limit_keeps_descriptors_back_for_the_store() {
        let (api, xds) = connection_caps(256, 1024, 20_000);
        assert_eq!(api + xds, 256 - reserved(256) as usize);
        assert!(api <= xds, "xDS keeps the larger share: {api} / {xds}");
        let (api, xds) = connection_caps(64, 1024, 20_000);
        assert!(api >= 1 && xds >= 1);
        assert!((api + xds) as u64 + reserved(64) <= 64);
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let before = getrlimit(Resource::Nofile).current.unwrap_or(UNLIMITED);
        assert!(raise_descriptor_limit() >= before);
    }
}
