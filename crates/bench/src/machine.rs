//! What the benchmark ran on: cores, memory, CPU model, date, CPU time used
//! by a process and the cost of an fdatasync on the data folder's disk.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`),
/// 100 on every mainstream Linux.
const CLK_TCK: f64 = 100.0;

/// A one-line description of the machine.
pub fn describe() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = mem_total_gib().map_or("unknown memory".to_string(), |g| format!("{g:.1} GiB RAM"));
    let cpu = cpu_model().unwrap_or_else(|| "unknown CPU".to_string());
    format!("{cores} cores (nproc), {mem}, {cpu}")
}

fn mem_total_gib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// A PM QoS request for a CPU wake-up latency of 0 µs, held while this value
/// lives (the kernel drops it when the file is closed): the idle governor
/// then polls instead of halting the CPU. On a virtual machine a halted vCPU
/// is woken through the hypervisor, tens of microseconds per wake-up, and a
/// request through two proxies wakes a sleeping process at every hop.
pub struct PollIdle(#[allow(dead_code)] std::fs::File);

impl PollIdle {
    /// Makes the request; fails without root or without the device.
    pub fn request() -> Result<PollIdle> {
        const DEVICE: &str = "/dev/cpu_dma_latency";
        let mut file = OpenOptions::new()
            .write(true)
            .open(DEVICE)
            .with_context(|| format!("opening {DEVICE} (--poll-idle needs root)"))?;
        file.write_all(&0i32.to_ne_bytes())
            .with_context(|| format!("writing to {DEVICE}"))?;
        Ok(PollIdle(file))
    }
}

/// Seconds since the epoch now, as the server stamps events (same clock).
pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// CPU time (user + system) a process has used so far; `None` if unreadable.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / CLK_TCK))
}

/// Median and 99th-percentile latency of writing 256 bytes to a file in
/// `dir` followed by `fdatasync`: the floor under a durable write's latency.
/// Appended to a growing file, or (`zero_filled`) written in place into a
/// file that was zero-filled and synced first, as the store's prepared log
/// segments are.
pub fn fdatasync_latency(
    dir: &Path,
    rounds: usize,
    zero_filled: bool,
) -> Result<(Duration, Duration)> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let rounds = rounds.max(1);
    const RECORD: usize = 256;
    if zero_filled {
        file.write_all(&vec![0; rounds * RECORD])?;
        file.sync_all()?;
    }
    let record = [0x5a_u8; RECORD];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let started = Instant::now();
        file.write_all_at(&record, (i * RECORD) as u64)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    samples.sort();
    let pick = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
        samples[i - 1]
    };
    Ok((pick(0.5), pick(0.99)))
}

/// The machine's CPU ticks so far, all cores together: the `cpu` line of
/// `/proc/stat` (user nice system idle iowait irq softirq steal …; guest
/// time is in user); `None` if unreadable.
fn machine_ticks() -> Option<Vec<f64>> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect(),
    )
}

/// CPU time used by the whole machine so far (every core's non-idle time
/// from `/proc/stat`); `None` if unreadable.
pub fn machine_busy() -> Option<Duration> {
    let ticks = machine_ticks()?;
    // Every column but idle (3) and iowait (4).
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(Duration::from_secs_f64(busy / CLK_TCK))
}

/// CPU time the hypervisor took from this (virtual) machine so far: the time
/// its vCPUs had work but the host ran something else (`steal` in
/// `/proc/stat`, part of [`machine_busy`]); `None` if unreadable.
pub fn machine_steal() -> Option<Duration> {
    let steal = *machine_ticks()?.get(7)?;
    Some(Duration::from_secs_f64(steal / CLK_TCK))
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open-file limit of this process (`ulimit -n`), soft.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The `q` quantile of sorted samples (nearest rank); zero when empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// CPU time of one process and of the whole machine, to compare two moments.
#[derive(Clone, Copy)]
pub struct CpuMark {
    /// The process's CPU time.
    pub process: Option<Duration>,
    /// This benchmark's own CPU time.
    pub client: Option<Duration>,
    /// The machine's busy time.
    pub machine: Option<Duration>,
    /// Of that, what the hypervisor took (see [`machine_steal`]).
    pub steal: Option<Duration>,
    /// When.
    pub at: Instant,
}

impl CpuMark {
    /// Now, for process `pid`.
    pub fn now(pid: u32) -> CpuMark {
        CpuMark {
            process: cpu_time(pid),
            client: cpu_time(std::process::id()),
            machine: machine_busy(),
            steal: machine_steal(),
            at: Instant::now(),
        }
    }

    /// (process CPU, client CPU, other CPU) from `self` to `later`.
    pub fn delta(&self, later: &CpuMark) -> (Duration, Duration, Duration) {
        let d = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        let p = d(self.process, later.process);
        let c = d(self.client, later.client);
        let m = d(self.machine, later.machine);
        (p, c, m.saturating_sub(p + c))
    }

    /// CPU time the hypervisor took from this machine from `self` to
    /// `later` (part of [`CpuMark::other_percent`]), in % of one core.
    pub fn steal_percent(&self, later: &CpuMark) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        match (self.steal, later.steal) {
            (Some(a), Some(b)) if wall > 0.0 => 100.0 * b.saturating_sub(a).as_secs_f64() / wall,
            _ => 0.0,
        }
    }

    /// "other CPU" (everything but the process and this benchmark) from
    /// `self` to `later`, in % of one core.
    pub fn other_percent(&self, later: &CpuMark) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        100.0 * self.delta(later).2.as_secs_f64() / wall
    }
}
