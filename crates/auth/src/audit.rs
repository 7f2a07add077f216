//! The audit log, the role CloudTrail played for App Mesh (logging-using-cloudtrail.md): every
//! write to the App Mesh, Cloud Map and admin APIs and every refused request, with its time, the
//! access key, the operation, the resource ARN and the outcome, one JSON object per line in
//! `<data-dir>/audit.jsonl`, and `GET /weft/v1/audit` to query it (`weft:ListAuditRecords`).
//!
//! A write's record is on disk before its answer leaves: records are appended by one thread and
//! made durable together (`fdatasync` per batch, as the store's own log), so an acknowledged
//! write has its record after a `kill -9`. Refused requests are recorded up to
//! [`REFUSALS_PER_SECOND`] a second, so that a flood of bad requests cannot fill the disk
//! (the rest are counted in the next record's `suppressedRefusals`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Instant, SystemTime};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::AuthError;

/// The endpoint.
pub const AUDIT: &str = "/weft/v1/audit";
/// The file's name in the data folder.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// Refused requests recorded at most per second.
pub const REFUSALS_PER_SECOND: u64 = 100;
/// Records a batch holds at most.
const BATCH: usize = 512;

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When it was answered (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The access key it was signed with (claimed, for a refused one), if any.
    pub key_id: Option<String>,
    /// The IAM action, e.g. `appmesh:CreateVirtualNode`.
    pub operation: String,
    /// The resource's ARN (`*` where the operation names none).
    pub resource: String,
    /// `Success`, or the error's name (`ForbiddenException`, `ConflictException`, …).
    pub outcome: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The client's address.
    pub source: String,
    /// Refused requests left out since the last record, when any were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed_refusals: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether an IAM action only reads.
pub fn is_read(operation: &str) -> bool {
    let verb = operation.rsplit(':').next().unwrap_or(operation);
    ["Describe", "List", "Get", "Discover"]
        .iter()
        .any(|p| verb.starts_with(p))
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).unwrap_or_default()
}

type Job = (Vec<u8>, oneshot::Sender<bool>);

/// The log: a writer thread appending batches and syncing them.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Refusals recorded in the current second, and the second.
    window: Mutex<(Instant, u64)>,
    suppressed: AtomicU64,
}

impl AuditLog {
    /// Opens (creating, `0600`) the log at `path` and starts its writer.
    pub fn open(path: &Path) -> Result<AuditLog, AuthError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| AuthError::Config(format!("opening {}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("weft-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let mut bytes = Vec::new();
                    for (line, _) in &batch {
                        bytes.extend_from_slice(line);
                    }
                    let ok = file.write_all(&bytes).and_then(|()| file.sync_data());
                    if let Err(e) = &ok {
                        tracing::error!(path = %shown, error = %e, "writing the audit log failed");
                    }
                    for (_, done) in batch {
                        let _ = done.send(ok.is_ok());
                    }
                }
            })
            .map_err(|e| AuthError::Config(format!("starting the audit log's writer: {e}")))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            jobs: Mutex::new(tx),
            window: Mutex::new((Instant::now(), 0)),
            suppressed: AtomicU64::new(0),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` and waits until it is durable; a failure is logged (the request it
    /// records has been answered by then either way).
    pub async fn record(&self, mut record: AuditRecord) {
        record.suppressed_refusals = self.suppressed.swap(0, Ordering::Relaxed);
        let Ok(mut line) = serde_json::to_vec(&record) else {
            return;
        };
        line.push(b'\n');
        let (done, durable) = oneshot::channel();
        let sent = self
            .jobs
            .lock()
            .map(|jobs| jobs.send((line, done)).is_ok())
            .unwrap_or(false);
        if !sent || !durable.await.unwrap_or(false) {
            tracing::error!(operation = %record.operation, "an audit record was not written");
        }
    }

    /// Whether a refused request may be recorded now (at most [`REFUSALS_PER_SECOND`]); one
    /// that may not is counted.
    pub fn admit_refusal(&self) -> bool {
        let Ok(mut window) = self.window.lock() else {
            return false;
        };
        if window.0.elapsed().as_secs() >= 1 {
            *window = (Instant::now(), 0);
        }
        if window.1 < REFUSALS_PER_SECOND {
            window.1 += 1;
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// `GET /weft/v1/audit`'s query: the last `limit` records (default 100, at most 1,000) matching
/// every filter given.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    /// Records at most.
    pub limit: Option<usize>,
    /// Only this key's.
    pub key_id: Option<String>,
    /// Only this operation's (`appmesh:CreateVirtualNode`).
    pub operation: Option<String>,
    /// Only those at or after this time (RFC 3339, UTC).
    pub since: Option<String>,
}

/// The records of the log at `path` that `query` asks for, oldest first.
pub fn read(path: &Path, query: &AuditQuery) -> Result<Vec<AuditRecord>, AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(AuthError::Config(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let mut records: Vec<AuditRecord> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
        .filter(|r| {
            query
                .key_id
                .as_ref()
                .is_none_or(|k| r.key_id.as_ref() == Some(k))
        })
        .filter(|r| query.operation.as_ref().is_none_or(|o| &r.operation == o))
        .filter(|r| {
            query
                .since
                .as_ref()
                .is_none_or(|s| r.time.as_str() >= s.as_str())
        })
        .collect();
    let skip = records.len().saturating_sub(limit);
    records.drain(..skip);
    Ok(records)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordsJson {
    audit_records: Vec<AuditRecord>,
}

async fn list(
    State(log): State<std::sync::Arc<AuditLog>>,
    Query(query): Query<AuditQuery>,
) -> Response {
    let path = log.path().to_path_buf();
    match tokio::task::spawn_blocking(move || read(&path, &query)).await {
        Ok(Ok(records)) => Json(RecordsJson {
            audit_records: records,
        })
        .into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"code": "InternalFailure", "message": "reading the audit log failed"})),
        )
            .into_response(),
    }
}

/// `GET /weft/v1/audit`, behind the [`crate::layer`] like every admin endpoint.
pub fn router(log: std::sync::Arc<AuditLog>) -> Router {
    Router::new().route(AUDIT, get(list)).with_state(log)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(key: &str, operation: &str, time: &str) -> AuditRecord {
        AuditRecord {
            time: time.into(),
            key_id: Some(key.into()),
            operation: operation.into(),
            resource: "*".into(),
            outcome: "Success".into(),
            status: 200,
            source: "127.0.0.1".into(),
            suppressed_refusals: 0,
        }
    }

    #[tokio::test]
    async fn records_are_appended_durably_and_read_back_filtered_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        let log = AuditLog::open(&path).unwrap();
        log.record(record(
            "A",
            "appmesh:CreateMesh",
            "2026-12-07T10:00:00.000Z",
        ))
        .await;
        log.record(record(
            "B",
            "appmesh:DeleteMesh",
            "2026-12-07T11:00:00.000Z",
        ))
        .await;
        log.record(record(
            "A",
            "appmesh:CreateVirtualNode",
            "2026-12-07T12:00:00.000Z",
        ))
        .await;
        let all = read(&path, &AuditQuery::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].operation, "appmesh:CreateVirtualNode");
        let a = AuditQuery {
            key_id: Some("A".into()),
            ..Default::default()
        };
        assert_eq!(read(&path, &a).unwrap().len(), 2);
        let since = AuditQuery {
            since: Some("2026-12-07T11:00:00.000Z".into()),
            limit: Some(1),
            ..Default::default()
        };
        let last = read(&path, &since).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].key_id.as_deref(), Some("A"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn reads_are_told_from_writes_and_refusals_are_capped_per_second() {
        assert!(is_read("appmesh:DescribeVirtualNode"));
        assert!(is_read("servicediscovery:DiscoverInstances"));
        assert!(!is_read("appmesh:UpdateRoute"));
        assert!(!is_read("weft:RevokeAccessKey"));
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join(AUDIT_FILE)).unwrap();
        let admitted = (0..REFUSALS_PER_SECOND + 50)
            .filter(|_| log.admit_refusal())
            .count() as u64;
        assert_eq!(admitted, REFUSALS_PER_SECOND);
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 50);
    }
}
