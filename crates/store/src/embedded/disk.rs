//! The embedded store's on-disk format and crash recovery.
//!
//! A data directory holds:
//! - `LOCK`: an empty file, exclusively locked while a store has the directory open;
//! - `wal-<start revision>.log`: append-only write-ahead logs. Each record is
//!   `[u32 payload length][u32 crc32 of payload][payload]`, little-endian, and
//!   the payload is `[i64 revision][u32 op count][ops…]` where an op is
//!   `[u8 tag][u32 key length][key]` plus `[u32 value length][value]` for a put.
//!   A log named `wal-S` only holds revisions `>= S`; revisions are consecutive
//!   across all logs;
//!   A log may end in zeros: logs are prepared zero-filled ahead of use (see
//!   [`Wal`]), so an all-zero rest of a file is where its records end;
//! - `wal-next.tmp`: the next log being zero-filled; not yet part of the data;
//! - `snapshot`: every live key at one revision, written by compaction.
//!   Records in logs at or below the snapshot's revision are skipped on replay,
//!   which is what makes every step of compaction crash-safe (see
//!   [`write_snapshot`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;

use super::{apply_op, Kvs};
use crate::{KeyValue, Op, Revision, StoreError};

/// The lock file that keeps two stores off one directory.
pub(super) const LOCK_FILE: &str = "LOCK";
/// The current snapshot.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// Where a snapshot is written before it atomically replaces [`SNAPSHOT_FILE`].
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const SNAPSHOT_MAGIC: &[u8; 8] = b"WEFTSNP1";
/// Where the next log is zero-filled before it is renamed into place.
const PREPARED_TMP: &str = "wal-next.tmp";
/// A log is only prepared ahead once the current one holds this much: a
/// store that sees a handful of writes never pays for a spare segment.
const PREPARE_AFTER: u64 = 64 << 10;
/// How much of a prepared log is zero-filled and synced at a time, and the
/// pause after each step (see [`prepare_log`]).
const PREPARE_STEP: usize = 256 << 10;
const PREPARE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);
/// Snapshot trailer: `[u64 payload length][u32 crc32 of payload]`.
const SNAPSHOT_TRAILER: usize = 12;

/// Record header: payload length and checksum.
const HEADER_LEN: usize = 8;
/// Smallest valid payload: a revision and an op count. Rejecting shorter
/// lengths matters: a zero-filled region (what a power loss can leave) would
/// otherwise parse as records with an empty payload, whose crc32 is 0.
const MIN_PAYLOAD: usize = 12;
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
/// How far past the last good revision recovery looks for surviving records
/// behind a damaged one (see [`valid_record_after`]).
const RESCUE_WINDOW: Revision = 1 << 16;

/// The file name of the log whose first revision is `start`. Zero-padded so
/// that names sort like revisions.
pub(super) fn log_file_name(start: Revision) -> String {
    format!("wal-{start:020}.log")
}

fn parse_log_file_name(name: &str) -> Option<Revision> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Every log file in `dir`, sorted by starting revision.
pub(super) fn list_logs(dir: &Path) -> io::Result<Vec<(Revision, PathBuf)>> {
    let mut logs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(start) = entry.file_name().to_str().and_then(parse_log_file_name) {
            logs.push((start, entry.path()));
        }
    }
    logs.sort();
    Ok(logs)
}

/// Makes file creations, renames and deletions in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Encodes a transaction's ops: the part of a record that does not depend on
/// its revision, so it can be built before taking the store lock.
pub(super) fn encode_ops(ops: &[Op]) -> Result<Vec<u8>, StoreError> {
    let mut body = Vec::with_capacity(
        4 + ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => 9 + k.len() + v.len(),
                Op::Delete(k) => 5 + k.len(),
            })
            .sum::<usize>(),
    );
    put_u32(&mut body, ops.len())?;
    for op in ops {
        match op {
            Op::Put(key, value) => {
                body.push(TAG_PUT);
                put_bytes(&mut body, key.as_bytes())?;
                put_bytes(&mut body, value)?;
            }
            Op::Delete(key) => {
                body.push(TAG_DELETE);
                put_bytes(&mut body, key.as_bytes())?;
            }
        }
    }
    // The framed payload adds the 8-byte revision and must fit the u32 length.
    if body.len() > u32::MAX as usize - 8 {
        return Err(too_large("transaction"));
    }
    Ok(body)
}

/// Appends one framed record (header, revision, pre-encoded ops) to `out`.
pub(super) fn frame_record(out: &mut Vec<u8>, revision: Revision, body: &[u8]) {
    let revision = revision.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&revision);
    crc.update(body);
    // encode_ops guarantees the payload length fits in a u32.
    let len = (revision.len() + body.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&revision);
    out.extend_from_slice(body);
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), StoreError> {
    let n = u32::try_from(n).map_err(|_| too_large("key, value or op list"))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    put_u32(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn too_large(what: &str) -> StoreError {
    StoreError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} too large for the log format (4 GiB limit)"),
    ))
}

/// A decoded log record.
pub(super) struct Record {
    pub revision: Revision,
    pub ops: Vec<Op>,
}

fn decode_record(payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader(payload);
    let revision = r.i64()?;
    let count = r.u32()? as usize;
    // Don't trust `count` for the allocation: each op takes at least 5 bytes.
    let mut ops = Vec::with_capacity(count.min(r.0.len() / 5));
    for _ in 0..count {
        let op = match r.u8()? {
            TAG_PUT => {
                let key = r.string()?;
                Op::Put(key, Bytes::copy_from_slice(r.bytes()?))
            }
            TAG_DELETE => Op::Delete(r.string()?),
            tag => return Err(format!("unknown op tag {tag}")),
        };
        ops.push(op);
    }
    if !r.0.is_empty() {
        return Err(format!("{} unexpected bytes after the ops", r.0.len()));
    }
    Ok(Record { revision, ops })
}

/// A bounds-checked little-endian reader; every short read is an error
/// rather than a panic, since it decodes untrusted disk contents.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated: need {n} bytes, {} left", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "key is not UTF-8".to_string())
    }
}

/// What sits at some offset of a log.
enum Frame<'a> {
    /// A complete record with a matching checksum, `len` bytes long in total.
    Valid { payload: &'a [u8], len: usize },
    /// End of file exactly at a record boundary.
    End,
    /// Something that is not a valid record, and why.
    Bad(&'static str),
}

fn read_frame(data: &[u8]) -> Frame<'_> {
    if data.is_empty() {
        return Frame::End;
    }
    let Some((header, rest)) = data.split_first_chunk::<HEADER_LEN>() else {
        return Frame::Bad("partial record header");
    };
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len < MIN_PAYLOAD {
        return Frame::Bad("impossible record length");
    }
    let Some(payload) = rest.get(..len) else {
        return Frame::Bad("record extends past the end of the file");
    };
    if crc32fast::hash(payload) != crc {
        return Frame::Bad("checksum mismatch");
    }
    Frame::Valid {
        payload,
        len: HEADER_LEN + len,
    }
}

/// Whether a valid record with a revision just above `head` starts anywhere
/// after offset `bad` — i.e. whether the damage at `bad` is followed by data
/// that was once acknowledged, rather than being the torn tail of the final
/// write. Records are found by their revision field, so this is one linear
/// pass with a checksum only at plausible candidates.
fn valid_record_after(data: &[u8], bad: usize, head: Revision) -> bool {
    let mut at = bad + 1;
    while at + HEADER_LEN + MIN_PAYLOAD <= data.len() {
        let rev_at = at + HEADER_LEN;
        let rev_bytes = data
            .get(rev_at..rev_at + 8)
            .and_then(|s| s.first_chunk::<8>());
        if let Some(rev) = rev_bytes.map(|b| i64::from_le_bytes(*b)) {
            if rev > head && rev <= head + RESCUE_WINDOW {
                if let Frame::Valid { .. } = read_frame(&data[at..]) {
                    return true;
                }
            }
        }
        at += 1;
    }
    false
}

/// What [`recover`] rebuilt from the directory.
pub(super) struct Recovered {
    pub kvs: Kvs,
    pub head: Revision,
    pub live_bytes: u64,
    pub wal: Wal,
}

/// The newest log as replayed: appends continue in it.
struct NewestLog {
    path: PathBuf,
    /// Its first revision.
    start: Revision,
    /// Where its valid records end.
    end: u64,
    /// Where its last non-zero byte ends (at least `end`): `end..torn_end`
    /// is a torn write.
    torn_end: u64,
    /// Its length on disk.
    len: u64,
}

impl NewestLog {
    /// Opens it for writing with the torn write cleared: truncated away when
    /// it runs to the end of the file, else zeroed, so that a prepared log
    /// keeps its zero-filled rest. Returns the file and its length.
    fn clear_torn_tail(&self) -> io::Result<(File, u64)> {
        let file = OpenOptions::new().write(true).open(&self.path)?;
        if self.torn_end == self.len && self.end < self.len {
            file.set_len(self.end)?;
            file.sync_all()?;
            return Ok((file, self.end));
        }
        if self.end < self.torn_end {
            file.write_all_at(&vec![0; (self.torn_end - self.end) as usize], self.end)?;
            file.sync_data()?;
        }
        Ok((file, self.len))
    }
}

/// Locks `dir`, loads the snapshot, replays the logs and clears a torn
/// tail, returning the state and the log to append to. `segment_size` is
/// how large logs are prepared ahead (0: not at all).
pub(super) fn recover(dir: &Path, segment_size: u64) -> Result<Recovered, StoreError> {
    let created = !dir.exists();
    fs::create_dir_all(dir)?;
    if created {
        // Make the new directory itself durable in its parent.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let lock = lock_dir(dir)?;

    // A leftover temp snapshot is an unfinished compaction; the logs it was
    // meant to replace are all still there.
    // Likewise a half-prepared log: it never held a record.
    for tmp in [SNAPSHOT_TMP, PREPARED_TMP] {
        match fs::remove_file(dir.join(tmp)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }

    let (mut kvs, snapshot_rev, mut live_bytes): Snapshot = read_snapshot(dir)?.unwrap_or_default();
    let mut head = snapshot_rev;
    let logs = list_logs(dir)?;
    let mut obsolete = Vec::new();
    let mut current = None;
    let mut since_snapshot = 0;

    for (i, (start, path)) in logs.iter().enumerate() {
        let is_last = i + 1 == logs.len();
        if *start > head + 1 {
            return Err(StoreError::Corrupt(format!(
                "{} starts at revision {start} but the data before it ends at {head}",
                path.display()
            )));
        }
        let data = fs::read(path)?;
        let mut pos = 0;
        let end = loop {
            match read_frame(&data[pos..]) {
                Frame::Valid { payload, len } => {
                    let record = decode_record(payload).map_err(|e| {
                        StoreError::Corrupt(format!(
                            "{} offset {pos}: undecodable record: {e}",
                            path.display()
                        ))
                    })?;
                    if record.revision < *start {
                        return Err(StoreError::Corrupt(format!(
                            "{} offset {pos}: revision {} is below the log's start",
                            path.display(),
                            record.revision
                        )));
                    }
                    // Already contained in the snapshot: compaction crashed
                    // (or was interrupted) before deleting this log.
                    if record.revision > snapshot_rev {
                        if record.revision != head + 1 {
                            return Err(StoreError::Corrupt(format!(
                                "{} offset {pos}: revision {} follows {head}",
                                path.display(),
                                record.revision
                            )));
                        }
                        for op in record.ops {
                            apply_op(&mut kvs, &mut live_bytes, record.revision, op, false, None);
                        }
                        head = record.revision;
                    }
                    pos += len;
                }
                Frame::End => break pos,
                // The unused, zero-filled rest of a prepared log.
                Frame::Bad(_) if is_zero(&data[pos..]) => break pos,
                Frame::Bad(why) => {
                    // Only the end of the newest log can legitimately be torn:
                    // older logs were fsynced completely before the switch.
                    if !is_last {
                        return Err(StoreError::Corrupt(format!(
                            "{} offset {pos}: {why}, in a log that is not the newest",
                            path.display()
                        )));
                    }
                    if valid_record_after(&data, pos, head) {
                        return Err(StoreError::Corrupt(format!(
                            "{} offset {pos}: {why}, and valid records follow",
                            path.display()
                        )));
                    }
                    tracing::warn!(
                        log = %path.display(),
                        offset = pos,
                        dropped_bytes = data.len() - pos,
                        reason = why,
                        "clearing torn write-ahead log tail"
                    );
                    break pos;
                }
            }
        };
        if is_last {
            // Where the torn bytes end: the zeros after them are the unused
            // rest of a prepared log and stay as they are.
            let torn_end = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            current = Some(NewestLog {
                path: path.clone(),
                start: *start,
                end: end as u64,
                torn_end: torn_end.max(end) as u64,
                len: data.len() as u64,
            });
            since_snapshot += end as u64;
        } else if logs
            .get(i + 1)
            .is_some_and(|(next, _)| *next <= snapshot_rev + 1)
        {
            // Every record here is at or below the snapshot.
            obsolete.push(path.clone());
        } else {
            since_snapshot += end as u64;
        }
    }

    let (file, start, size, len) = match current {
        Some(newest) => {
            let (file, len) = newest.clear_torn_tail()?;
            (file, newest.start, newest.end, len)
        }
        None => {
            let file = create_log(dir, head + 1)?;
            sync_dir(dir)?;
            (file, head + 1, 0, 0)
        }
    };
    let wal = Wal {
        dir: dir.to_path_buf(),
        file,
        start,
        size,
        len,
        last: head,
        since_snapshot,
        segment_size,
        next: Next::None,
        prepare_backoff: 0,
        dir_synced: true,
        _lock: lock,
    };
    for path in obsolete {
        fs::remove_file(path)?;
    }
    Ok(Recovered {
        kvs,
        head,
        live_bytes,
        wal,
    })
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    // `File::try_lock` is an flock(2)-style advisory lock: released by the
    // kernel when the process dies, so a kill -9 never leaves a stale lock.
    // (Stable since Rust 1.89.)
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Io(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "data directory {} is already in use by another store",
                dir.display()
            ),
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Whether every byte is zero.
fn is_zero(data: &[u8]) -> bool {
    data.iter().all(|b| *b == 0)
}

/// Creates an empty log for revisions from `start`. Its directory entry
/// must be made durable ([`sync_dir`]) before any record in it can be
/// acknowledged.
fn create_log(dir: &Path, start: Revision) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(log_file_name(start)))
}

/// Whether a failed log write or sync can succeed later without a restart:
/// the process ran out of descriptors or memory, the disk or quota is full,
/// or a call was interrupted. The log can then be cut back to its last
/// durable record and writing goes on. Anything else (an I/O error above
/// all) leaves the disk's contents unknown.
pub(super) fn is_transient(error: &io::Error) -> bool {
    use rustix::io::Errno;
    if error.kind() == io::ErrorKind::Interrupted {
        return true;
    }
    let transient = [
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOSPC,
        Errno::DQUOT,
        Errno::NOMEM,
        Errno::AGAIN,
        Errno::INTR,
    ];
    error
        .raw_os_error()
        .is_some_and(|code| transient.iter().any(|e| e.raw_os_error() == code))
}

/// Zero-fills `size` bytes of [`PREPARED_TMP`] and makes them durable.
/// Stops early, with an error, once `cancel` is set.
fn prepare_log(dir: &Path, size: u64, cancel: &AtomicBool) -> io::Result<()> {
    background_priority();
    let path = dir.join(PREPARED_TMP);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        // Written, not fallocate'd: an allocated-but-unwritten extent still
        // needs a metadata update (and so a journal commit) on its first
        // write, which is exactly the cost this avoids.
        //
        // In small synced steps with pauses between them: the log's own
        // fdatasync queues behind whatever else the disk is writing, and a
        // whole segment's zeros flushed at once stalled every commit in
        // flight for 5–15 ms (BENCHMARKS.md, issue 2).
        let zeros = vec![0; PREPARE_STEP];
        let mut left = size;
        while left > 0 {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::Error::other("store closed"));
            }
            let n = left.min(zeros.len() as u64);
            file.write_all(&zeros[..n as usize])?;
            file.sync_data()?;
            left -= n;
            std::thread::sleep(PREPARE_PAUSE);
        }
        // Every step was synced with fdatasync, which also persists the
        // file's growing size: the segment is durable, and only its
        // timestamps are not, which nothing reads.
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&path);
    }
    result
}

/// Lowers the calling thread's scheduling priority (nice 10): work that no
/// request waits for (preparing a log, writing a snapshot) yields the CPU to
/// work that one does. Best effort: a failure leaves the priority as it was.
pub(super) fn background_priority() {
    // On Linux a thread id names just that thread here.
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
}

/// Whether the file system holding `dir` has room for a prepared log with
/// a wide margin: a spare segment must never be what fills the disk.
fn room_for_segment(dir: &Path, size: u64) -> bool {
    rustix::fs::statvfs(dir)
        .is_ok_and(|st| st.f_bavail.saturating_mul(st.f_frsize) >= size.saturating_mul(8))
}

/// The state of the next log.
enum Next {
    None,
    /// Being zero-filled by a background thread.
    Preparing {
        thread: JoinHandle<io::Result<()>>,
        cancel: Arc<AtomicBool>,
    },
    /// [`PREPARED_TMP`] is complete and durable.
    Ready,
}

/// The log being appended to. Owned by the committer thread; also holds the
/// directory lock, so the lock lives exactly as long as writes can happen.
///
/// Logs are prepared ahead: a background thread zero-fills the next one
/// while the current one fills up, and a batch that no longer fits switches
/// to it. Writing into blocks that already exist and hold data lets
/// `fdatasync` flush just the data; growing a file also makes it commit the
/// file system's journal (new blocks, new size), which on ext4 roughly
/// doubles the cost of a small sync. etcd preallocates its WAL for the
/// same reason.
pub(super) struct Wal {
    dir: PathBuf,
    file: File,
    /// The first revision the current log may hold (its name).
    start: Revision,
    /// Bytes of records in the current log: where the next batch goes.
    size: u64,
    /// The current log's length; past `size` it is zeros.
    len: u64,
    /// The last revision in the log.
    last: Revision,
    /// Bytes of records in every log not yet covered by a snapshot.
    since_snapshot: u64,
    segment_size: u64,
    next: Next,
    /// After a failed preparation, none is tried again until
    /// `since_snapshot` passes this.
    prepare_backoff: u64,
    /// Whether the current log's directory entry is known durable; until
    /// it is, no record in it may be acknowledged.
    dir_synced: bool,
    _lock: File,
}

impl Wal {
    /// Bytes of records written since the last snapshot, over all logs.
    pub fn since_snapshot(&self) -> u64 {
        self.since_snapshot
    }

    /// Writes a batch of framed records, the last of them at revision
    /// `last`, and makes it durable.
    pub fn append(&mut self, batch: &[u8], last: Revision) -> io::Result<()> {
        let batch_len = batch.len() as u64;
        if self.size + batch_len > self.len && self.next_ready() {
            self.switch(self.last + 1)?;
        }
        if !self.dir_synced {
            sync_dir(&self.dir)?;
            self.dir_synced = true;
        }
        self.file.write_all_at(batch, self.size)?;
        // fdatasync also persists a grown file size, which is all the
        // metadata an append needs.
        self.file.sync_data()?;
        self.size += batch_len;
        self.len = self.len.max(self.size);
        self.since_snapshot += batch_len;
        self.last = last;
        self.prepare_if_due();
        Ok(())
    }

    /// Switches to a fresh log for revisions from `start` because a snapshot
    /// at `start - 1` is being written. Every record below `start` must
    /// already be durable.
    pub fn rotate_for_snapshot(&mut self, start: Revision) -> io::Result<()> {
        if self.next_ready() {
            self.switch(start)?;
        } else if !(self.size == 0 && self.start == start) {
            self.file = create_log(&self.dir, start)?;
            self.start = start;
            self.size = 0;
            self.len = 0;
            self.dir_synced = false;
            sync_dir(&self.dir)?;
            self.dir_synced = true;
        }
        self.since_snapshot = 0;
        Ok(())
    }

    /// After a failed [`Wal::append`]: cuts the current log back to its last
    /// durable record, so that whatever part of the batch reached the file
    /// can never be replayed, and makes that durable. Needs no new
    /// descriptor and no new block, so it works on a full disk and with no
    /// descriptor left. The prepared rest of the log goes with it; appends
    /// grow the file until the next prepared log.
    pub fn repair(&mut self) -> io::Result<()> {
        self.file.set_len(self.size)?;
        self.file.sync_all()?;
        self.len = self.size;
        if !self.dir_synced {
            sync_dir(&self.dir)?;
            self.dir_synced = true;
        }
        Ok(())
    }

    /// Whether a prepared log is ready; reaps a finished preparation.
    fn next_ready(&mut self) -> bool {
        if let Next::Preparing { thread, .. } = &self.next {
            if !thread.is_finished() {
                return false;
            }
            let Next::Preparing { thread, .. } = std::mem::replace(&mut self.next, Next::None)
            else {
                return false;
            };
            match thread.join() {
                Ok(Ok(())) => self.next = Next::Ready,
                Ok(Err(e)) => {
                    tracing::warn!("could not prepare the next store log, appending instead: {e}");
                    self.prepare_backoff = self.since_snapshot + self.segment_size;
                }
                Err(_) => tracing::error!("store log preparation thread panicked"),
            }
        }
        matches!(self.next, Next::Ready)
    }

    /// Renames the prepared log into place as the log for revisions from
    /// `start` (replacing the current log if that is empty and has the same
    /// name) and makes the switch durable.
    ///
    /// Opened before it is renamed: with no descriptor left this fails with
    /// nothing changed. Once renamed it is the log, even if making the
    /// rename durable fails: appends retry that first (see `dir_synced`).
    fn switch(&mut self, start: Revision) -> io::Result<()> {
        let path = self.dir.join(log_file_name(start));
        let tmp = self.dir.join(PREPARED_TMP);
        let file = OpenOptions::new().write(true).open(&tmp)?;
        let len = file.metadata()?.len();
        fs::rename(&tmp, &path)?;
        self.next = Next::None;
        self.file = file;
        self.start = start;
        self.size = 0;
        self.len = len;
        self.dir_synced = false;
        sync_dir(&self.dir)?;
        self.dir_synced = true;
        Ok(())
    }

    /// Starts preparing the next log once the current one is half full (or
    /// was never prepared) and the store has seen some writes.
    fn prepare_if_due(&mut self) {
        let due = self.segment_size > 0
            && matches!(self.next, Next::None)
            && self.size >= PREPARE_AFTER
            && self.len - self.size < self.segment_size / 2
            && self.since_snapshot >= self.prepare_backoff;
        if !due {
            return;
        }
        if !room_for_segment(&self.dir, self.segment_size) {
            // Asked again a segment's worth of writes later, not per batch.
            self.prepare_backoff = self.since_snapshot + self.segment_size;
            return;
        }
        let (dir, size) = (self.dir.clone(), self.segment_size);
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        match std::thread::Builder::new()
            .name("weft-store-prepare".into())
            .spawn(move || prepare_log(&dir, size, &flag))
        {
            Ok(thread) => self.next = Next::Preparing { thread, cancel },
            Err(e) => tracing::warn!("could not start preparing the next store log: {e}"),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Not left running past the store: it writes into the directory
        // whose lock this log holds.
        if let Next::Preparing { thread, cancel } = std::mem::replace(&mut self.next, Next::None) {
            cancel.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// Writes the state at `revision` as the new snapshot, then deletes the logs
/// it makes redundant. Crash-safety, step by step:
/// 1. the committer already rotated to a log starting at `revision + 1`, so
///    the old logs hold exactly the revisions up to `revision`;
/// 2. the snapshot goes to a temp file, fsynced, so a crash leaves either no
///    snapshot change or a complete file;
/// 3. rename over `snapshot` and fsync the directory: the atomic switch. A
///    crash before it replays old snapshot + all logs; after it, the new
///    snapshot + logs whose records at or below `revision` are skipped;
/// 4. only then delete the old logs (a lost deletion is harmless, see 3).
pub(super) fn write_snapshot(dir: &Path, kvs: &Kvs, revision: Revision) -> io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let mut out = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    out.inner.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&revision.to_le_bytes())?;
    out.write_all(&(kvs.len() as u64).to_le_bytes())?;
    for kv in kvs.values() {
        for field in [kv.key.as_bytes(), &kv.value[..]] {
            let len = u32::try_from(field.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "entry too large"))?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(field)?;
        }
        for n in [kv.create_revision, kv.mod_revision, kv.version] {
            out.write_all(&n.to_le_bytes())?;
        }
    }
    let CrcWriter {
        mut inner,
        crc,
        len,
    } = out;
    inner.write_all(&len.to_le_bytes())?;
    inner.write_all(&crc.finalize().to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    sync_dir(dir)?;

    for (start, path) in list_logs(dir)? {
        if start <= revision {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// A writer that checksums and counts what passes through it.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A loaded snapshot: its entries, revision and live data size.
type Snapshot = (Kvs, Revision, u64);

/// Reads the snapshot, if there is one.
fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The snapshot was fsynced before it was renamed into place, so unlike
    // the log it can never be legitimately torn: any damage is corruption.
    let corrupt = |why: String| StoreError::Corrupt(format!("{}: {why}", path.display()));
    let body = data
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or_else(|| corrupt("bad magic".into()))?;
    let split = body
        .len()
        .checked_sub(SNAPSHOT_TRAILER)
        .ok_or_else(|| corrupt("too short".into()))?;
    let (payload, trailer) = body.split_at(split);
    let mut t = Reader(trailer);
    let (len, crc) = (t.u64().map_err(corrupt)?, t.u32().map_err(corrupt)?);
    if len != payload.len() as u64 || crc32fast::hash(payload) != crc {
        return Err(corrupt("length or checksum mismatch".into()));
    }

    let mut r = Reader(payload);
    let decode = |r: &mut Reader<'_>| -> Result<Snapshot, String> {
        let revision = r.i64()?;
        let count = r.u64()?;
        let mut kvs = Kvs::new();
        let mut live = 0;
        for _ in 0..count {
            let key = r.string()?;
            let value = Bytes::copy_from_slice(r.bytes()?);
            let kv = KeyValue {
                key: key.clone(),
                value,
                create_revision: r.i64()?,
                mod_revision: r.i64()?,
                version: r.i64()?,
            };
            live += super::entry_size(&kv.key, &kv.value);
            kvs.insert(key, kv);
        }
        if !r.0.is_empty() {
            return Err("unexpected bytes after the entries".into());
        }
        Ok((kvs, revision, live))
    };
    decode(&mut r).map(Some).map_err(corrupt)
}
