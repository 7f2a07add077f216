//! App Mesh's defaults that are visible only in Envoy (envoy-defaults.md, routes.md), and the
//! conversion of App Mesh durations.

use envoy_types::pb::envoy::config::route::v3::RetryPolicy as XdsRetryPolicy;
use envoy_types::pb::google::protobuf::{Duration as XdsDuration, UInt32Value};
use weft_model::shapes::{Duration, DurationUnit};

/// Per-request timeout when none is set: "The default is 15 seconds" (routes.md, virtual_nodes.md).
pub const PER_REQUEST_TIMEOUT_SECS: i64 = 15;
/// Idle timeout when none is set: "Idle duration – The default is 300 seconds" (routes.md).
pub const IDLE_TIMEOUT_SECS: i64 = 300;
/// Circuit-breaker thresholds App Mesh sets to effectively disable Envoy's circuit breakers
/// (envoy-defaults.md, "Default circuit breaker").
pub const CIRCUIT_BREAKER_MAX: u32 = 2_147_483_647;
/// Upstream connect timeout of mesh clusters. App Mesh does not document its value; one second
/// keeps a dead endpoint from holding a request for long and leaves room for retries.
pub const CONNECT_TIMEOUT_SECS: i64 = 1;
/// App Mesh's default retry policy: "Max retries – 2" (envoy-defaults.md).
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// Envoy runtime key bounding the RE2 program size of every regular expression. Envoy's default
/// of 100 rejects ordinary route regexes (e.g. `^/(alpha|beta|gamma)[0-9]{1,50}/[a-z]{3,40}$`
/// compiles to ~200), and the per-matcher override is deprecated; so the bootstrap of every
/// Weft Envoy must raise it in a static runtime layer to [`RE2_MAX_PROGRAM_SIZE`].
pub const RE2_MAX_PROGRAM_SIZE_RUNTIME_KEY: &str = "re2.max_program_size.error_level";
/// The value for [`RE2_MAX_PROGRAM_SIZE_RUNTIME_KEY`]: room for any regex the App Mesh API
/// accepts (at most 255 characters), while RE2's own memory budget still bounds compilation.
pub const RE2_MAX_PROGRAM_SIZE: u32 = 100_000;

/// Envoy `retry_on` of App Mesh's default retry policy (envoy-defaults.md): HTTP 503 (as a
/// retriable status code), TCP `connect-failure` and `refused-stream`, `reset` (no response at
/// all), and gRPC `unavailable`.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,reset,retriable-status-codes,unavailable";

/// App Mesh's default retry policy, applied to every route that has no retry policy of its own
/// and to the route App Mesh creates for a virtual-node provider (envoy-defaults.md).
pub fn default_retry_policy() -> XdsRetryPolicy {
    XdsRetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: Some(UInt32Value {
            value: DEFAULT_MAX_RETRIES,
        }),
        retriable_status_codes: vec![503],
        ..Default::default()
    }
}

/// `seconds` as a protobuf duration.
pub fn seconds(seconds: i64) -> XdsDuration {
    XdsDuration { seconds, nanos: 0 }
}

/// An App Mesh duration as a protobuf duration, or `None` when no value is given (the caller
/// then applies the default). A missing unit is read as seconds; negative values (which the
/// API rejects) are clamped to 0 rather than sent to Envoy, which would NACK them.
pub fn duration(value: &Duration) -> Option<XdsDuration> {
    let v = value.value?.max(0);
    Some(match value.unit {
        Some(DurationUnit::Ms) => XdsDuration {
            seconds: v / 1000,
            // < 1e9, fits in i32.
            nanos: ((v % 1000) * 1_000_000) as i32,
        },
        Some(DurationUnit::S) | None => seconds(v.min(315_576_000_000)),
    })
}

/// The timeout to configure: the given duration, or `default_secs` when unset. A value of 0 is
/// kept as 0, which Envoy reads as "disabled" — exactly App Mesh's "A value of 0 disables the
/// timeout" (routes.md).
pub fn timeout_or(value: Option<&Duration>, default_secs: i64) -> XdsDuration {
    value
        .and_then(duration)
        .unwrap_or_else(|| seconds(default_secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_seconds_convert_exactly() {
        let ms = Duration {
            unit: Some(DurationUnit::Ms),
            value: Some(1500),
        };
        assert_eq!(
            duration(&ms),
            Some(XdsDuration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        let s = Duration {
            unit: Some(DurationUnit::S),
            value: Some(20),
        };
        assert_eq!(duration(&s), Some(seconds(20)));
        assert_eq!(duration(&Duration::default()), None);
    }

    #[test]
    fn an_unset_timeout_takes_the_default_and_zero_stays_zero() {
        assert_eq!(timeout_or(None, 15), seconds(15));
        let zero = Duration {
            unit: Some(DurationUnit::S),
            value: Some(0),
        };
        assert_eq!(timeout_or(Some(&zero), 15), seconds(0));
    }
}
