//! Signals to processes by id, through rustix (the workspace forbids
//! `unsafe`, so not `libc::kill`) rather than by running `kill(1)`.

use std::io;

use rustix::process::{kill_process, test_kill_process, Pid};

pub use rustix::process::Signal;

fn pid(raw: u32) -> io::Result<Pid> {
    i32::try_from(raw)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{raw} is not a process id"),
            )
        })
}

/// Sends `signal` to the process `raw_pid`.
pub fn send(raw_pid: u32, signal: Signal) -> io::Result<()> {
    kill_process(pid(raw_pid)?, signal).map_err(io::Error::from)
}

/// Whether a process `raw_pid` exists (and may be signalled).
pub fn process_exists(raw_pid: u32) -> bool {
    pid(raw_pid).is_ok_and(|p| test_kill_process(p).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_exists_and_pid_zero_is_refused() {
        assert!(process_exists(std::process::id()));
        assert!(send(0, Signal::TERM).is_err());
    }
}
