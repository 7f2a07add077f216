//! A Prometheus histogram read from a `/metrics` exposition, and its quantiles computed as
//! Prometheus' `histogram_quantile` computes them: the bucket holding the rank found in the
//! cumulative counts, and the value interpolated linearly within it
//! (<https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile>).

/// The cumulative buckets of histogram `name` in an exposition (text format or OpenMetrics):
/// `(upper bound, count)` in the order given, `+Inf` as infinity; the first series found if
/// the histogram has labels besides `le`.
pub fn buckets(exposition: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .filter_map(|l| l.trim().strip_prefix("le=\""))
            .find_map(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let bound = match le {
            "+Inf" => f64::INFINITY,
            other => match other.parse::<f64>() {
                Ok(b) => b,
                Err(_) => continue,
            },
        };
        // The value, then an optional timestamp or exemplar.
        let Some(count) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if out.iter().any(|(b, _)| *b == bound) {
            // Another series of the same histogram.
            break;
        }
        out.push((bound, count));
    }
    out
}

/// `after`'s counts minus `before`'s, bucket by bucket (what was observed between two scrapes);
/// buckets missing from `before` count from zero.
pub fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, c)| *c);
            (*bound, count - earlier)
        })
        .collect()
}

/// The `q`-quantile (0 ≤ q ≤ 1) of cumulative `buckets`, as `histogram_quantile(q, …)`:
/// `None` without observations or without a `+Inf` bucket. A rank in the `+Inf` bucket gives
/// the highest finite bound; the lowest bucket starts at 0.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut sorted = buckets.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let &(last_bound, total) = sorted.last()?;
    if last_bound != f64::INFINITY || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let at = sorted.iter().position(|(_, count)| *count >= rank)?;
    if at == sorted.len() - 1 {
        return sorted.get(at.checked_sub(1)?).map(|(b, _)| *b);
    }
    let (end, count) = sorted[at];
    let (start, below) = match at {
        0 => (0.0_f64.min(end), 0.0),
        _ => sorted[at - 1],
    };
    if at == 0 && end <= 0.0 {
        return Some(end);
    }
    let within = count - below;
    if within <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank - below) / within)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE weft_proxy_convergence_time_seconds histogram\n\
        weft_proxy_convergence_time_seconds_sum 1.5\n\
        weft_proxy_convergence_time_seconds_count 100\n\
        weft_proxy_convergence_time_seconds_bucket{le=\"0.001\"} 0\n\
        weft_proxy_convergence_time_seconds_bucket{le=\"0.002\"} 10\n\
        weft_proxy_convergence_time_seconds_bucket{le=\"0.004\"} 50\n\
        weft_proxy_convergence_time_seconds_bucket{le=\"0.008\"} 90\n\
        weft_proxy_convergence_time_seconds_bucket{le=\"0.016\"} 100\n\
        weft_proxy_convergence_time_seconds_bucket{le=\"+Inf\"} 100\n\
        weft_other_bucket{le=\"+Inf\"} 7\n";

    #[test]
    fn the_buckets_of_the_named_histogram_are_read_with_their_bounds() {
        let b = buckets(TEXT, "weft_proxy_convergence_time_seconds");
        assert_eq!(b.len(), 6);
        assert_eq!(b[1], (0.002, 10.0));
        assert_eq!(b[5], (f64::INFINITY, 100.0));
        assert!(buckets(TEXT, "weft_missing").is_empty());
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_as_prometheus_does() {
        let b = buckets(TEXT, "weft_proxy_convergence_time_seconds");
        // Rank 50 is the top of the (2 ms, 4 ms] bucket.
        assert_eq!(quantile(0.5, &b), Some(0.004));
        // Rank 99: 9 of the 10 observations in (8 ms, 16 ms].
        let p99 = quantile(0.99, &b).unwrap();
        assert!((p99 - (0.008 + 0.008 * 0.9)).abs() < 1e-12, "{p99}");
        // Rank 5: half of the 10 in (1 ms, 2 ms].
        assert!((quantile(0.05, &b).unwrap() - 0.0015).abs() < 1e-12);
        // In the lowest bucket, from 0.
        let low = [(0.001, 4.0), (f64::INFINITY, 4.0)];
        assert!((quantile(0.5, &low).unwrap() - 0.0005).abs() < 1e-12);
        // In +Inf: the highest finite bound.
        let high = [(0.001, 1.0), (f64::INFINITY, 4.0)];
        assert_eq!(quantile(0.99, &high), Some(0.001));
        assert_eq!(quantile(0.5, &[(0.001, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[(0.001, 3.0)]), None);
    }

    #[test]
    fn the_delta_of_two_scrapes_is_what_was_observed_between_them() {
        let before = [(0.001, 1.0), (0.002, 5.0), (f64::INFINITY, 6.0)];
        let after = [(0.001, 1.0), (0.002, 9.0), (f64::INFINITY, 12.0)];
        assert_eq!(
            delta(&before, &after),
            vec![(0.001, 0.0), (0.002, 4.0), (f64::INFINITY, 6.0)]
        );
        assert_eq!(delta(&[], &after), after.to_vec());
    }
}
