//! The server's SigV4 check against the AWS SigV4 test suite (`tests/sigv4-test-suite/`, see
//! its README): every signed request of the cases that apply is accepted with the case's
//! credentials at the case's time, and refused once any signed part of it — the body, a signed
//! header's value, the path, the query — is changed by one byte, or with another secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use weft_auth::sigv4;
use weft_auth::{AuthError, Secret};

struct Case {
    name: String,
    method: String,
    target: String,
    headers: HeaderMap,
    body: Vec<u8>,
    secret: Secret,
    time: SystemTime,
}

fn cases() -> Vec<Case> {
    cases_from("header-signed-request.txt")
}

/// The presigned form of each case.
fn presigned_cases() -> Vec<Case> {
    cases_from("query-signed-request.txt")
}

fn cases_from(file: &str) -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sigv4-test-suite");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 20, "the vectors are missing");
    dirs.iter().map(|d| read_case(d, file)).collect()
}

fn read_case(dir: &Path, file: &str) -> Case {
    let context: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("context.json")).unwrap()).unwrap();
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let request_line = lines.next().unwrap();
    let mut parts = request_line.splitn(3, ' ');
    let method = parts.next().unwrap().to_string();
    let target = parts.next().unwrap().to_string();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).unwrap(),
            // As an HTTP/1.1 server reads a field: optional whitespace around it removed.
            HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    let timestamp = context["timestamp"].as_str().unwrap();
    let time =
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .into();
    Case {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        method,
        target,
        headers,
        body: body.as_bytes().to_vec(),
        secret: Secret::new(
            context["credentials"]["secret_access_key"]
                .as_str()
                .unwrap(),
        ),
        time,
    }
}

fn verify(
    case: &Case,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    secret: &Secret,
) -> Result<(), AuthError> {
    let claim = sigv4::parse(headers)?.expect("an Authorization header");
    claim.check_scope("us-east-1", "service")?;
    claim.check_time(case.time)?;
    claim.verify_signature(&case.method, target, headers, body, secret)
}

#[test]
fn every_signed_request_of_the_suite_is_accepted_at_its_time() {
    for case in cases() {
        verify(&case, &case.target, &case.headers, &case.body, &case.secret)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
}

#[test]
fn another_secret_is_an_invalid_signature() {
    let wrong = Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ");
    for case in cases() {
        let e = verify(&case, &case.target, &case.headers, &case.body, &wrong).unwrap_err();
        assert!(
            matches!(e, AuthError::InvalidSignature(_)),
            "{}: {e}",
            case.name
        );
        assert_eq!(e.to_string(), sigv4::SIGNATURE_MISMATCH);
    }
}

#[test]
fn a_changed_byte_in_any_signed_part_is_an_invalid_signature() {
    for case in cases() {
        // The body.
        let mut body = case.body.clone();
        body.push(b'x');
        let e = verify(&case, &case.target, &case.headers, &body, &case.secret).unwrap_err();
        assert!(
            matches!(e, AuthError::InvalidSignature(_)),
            "{} body: {e}",
            case.name
        );
        // Each signed header but the date (whose change is caught as a scope or time error).
        let claim = sigv4::parse(&case.headers).unwrap().unwrap();
        for name in claim.signed_headers.iter().filter(|n| *n != "x-amz-date") {
            let mut headers = case.headers.clone();
            let value = headers
                .get(name.as_str())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&format!("{value}x")).unwrap(),
            );
            let e = verify(&case, &case.target, &headers, &case.body, &case.secret).unwrap_err();
            assert!(
                matches!(e, AuthError::InvalidSignature(_)),
                "{} {name}: {e}",
                case.name
            );
        }
        // The path, and the query.
        let target = if case.target.contains('?') {
            format!("{}x", case.target)
        } else {
            format!("{}?x=1", case.target)
        };
        let e = verify(&case, &target, &case.headers, &case.body, &case.secret).unwrap_err();
        assert!(
            matches!(e, AuthError::InvalidSignature(_)),
            "{} target: {e}",
            case.name
        );
        let e = verify(
            &case,
            &format!("/x{}", case.target),
            &case.headers,
            &case.body,
            &case.secret,
        )
        .expect_err(&case.name);
        assert!(
            matches!(e, AuthError::InvalidSignature(_)),
            "{} path: {e}",
            case.name
        );
    }
}

fn verify_presigned(
    case: &Case,
    target: &str,
    body: &[u8],
    secret: &Secret,
) -> Result<(), AuthError> {
    let (claim, unsigned) = sigv4::parse_presigned(target)?.expect("a presigned query");
    claim.check_scope("us-east-1", "service")?;
    claim.check_time(case.time)?;
    claim.verify_signature(&case.method, &unsigned, &case.headers, body, secret)
}

#[test]
fn every_presigned_request_of_the_suite_is_accepted_until_it_expires() {
    for case in presigned_cases() {
        verify_presigned(&case, &case.target, &case.body, &case.secret)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        // Valid for its X-Amz-Expires (3600 s), not after.
        let late = Case {
            time: case.time + std::time::Duration::from_secs(3601),
            ..read_case(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/sigv4-test-suite")
                    .join(&case.name),
                "query-signed-request.txt",
            )
        };
        let e = verify_presigned(&late, &late.target, &late.body, &late.secret).unwrap_err();
        assert!(
            e.to_string().starts_with("Signature expired: "),
            "{}: {e}",
            case.name
        );
        let wrong = Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ");
        let e = verify_presigned(&case, &case.target, &case.body, &wrong).unwrap_err();
        assert!(
            matches!(e, AuthError::InvalidSignature(_)),
            "{}: {e}",
            case.name
        );
        let e = verify_presigned(
            &case,
            &format!("{}&extra=1", case.target),
            &case.body,
            &case.secret,
        )
        .unwrap_err();
        assert!(
            matches!(e, AuthError::InvalidSignature(_)),
            "{} query: {e}",
            case.name
        );
    }
}
