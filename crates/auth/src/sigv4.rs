//! AWS Signature Version 4, checked on the server's side.
//!
//! The `Authorization` header names the key, the credential scope
//! (`<key>/<yyyymmdd>/<region>/<service>/aws4_request`), the headers the client signed and the
//! signature (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-signing-elements.html>).
//! The server does not canonicalise the request itself: it hands the request as received — its
//! method, its request target as sent (already percent-encoded once), exactly the headers in
//! `SignedHeaders` and the body — to the `aws-sigv4` crate the AWS SDK for Rust signs with, at
//! the client's own `x-amz-date`, with the settings AWS services other than S3 use (the path
//! normalised and percent-encoded twice), and compares the signature it gets with the client's
//! in constant time.
//!
//! Messages are AWS's own, so that scripts matching on them keep working.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::HeaderMap;

use crate::keys::Secret;
use crate::AuthError;

/// The only algorithm accepted (SigV4a is not served).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's `x-amz-date` may be from the server's clock, either way: AWS's five
/// minutes (<https://docs.aws.amazon.com/IAM/latest/UserGuide/signing-elements.html>).
pub const MAX_SKEW: Duration = Duration::from_secs(300);
/// Characters of an `Authorization` header quoted back in an error, at most: a megabyte of
/// garbage is not echoed.
const QUOTE_MAX: usize = 200;

/// What an `Authorization` header claims.
#[derive(Clone, PartialEq, Eq)]
pub struct Claim {
    /// The access key id.
    pub key_id: String,
    /// The scope's date, `yyyymmdd`.
    pub scope_date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service (`appmesh`, `servicediscovery`, `weft`).
    pub service: String,
    /// The scope's terminator, `aws4_request` when well formed.
    pub terminator: String,
    /// The signed header names, lower case, as listed.
    pub signed_headers: Vec<String>,
    /// The signature, lower-case hex.
    pub signature: String,
    /// The request's `x-amz-date`, `yyyymmddThhmmssZ`.
    pub amz_date: String,
    /// For a presigned URL, how long it is valid from `amz_date` (`X-Amz-Expires`).
    pub expires: Option<Duration>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("key_id", &self.key_id)
            .field("scope_date", &self.scope_date)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("signed_headers", &self.signed_headers)
            .field("amz_date", &self.amz_date)
            .finish_non_exhaustive()
    }
}

fn quote(text: &str) -> String {
    let cut = text
        .char_indices()
        .nth(QUOTE_MAX)
        .map_or(text.len(), |(i, _)| i);
    match text.get(..cut) {
        Some(head) if cut < text.len() => format!("{head}…"),
        _ => text.to_string(),
    }
}

/// Reads the `Authorization` header and `x-amz-date` of a request: `Ok(None)` if there is no
/// `Authorization` header at all.
pub fn parse(headers: &HeaderMap) -> Result<Option<Claim>, AuthError> {
    parse_claim(headers, &["host", "x-amz-date"])
}

fn parse_claim(headers: &HeaderMap, required: &[&str]) -> Result<Option<Claim>, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let Ok(text) = value.to_str() else {
        return Err(AuthError::IncompleteSignature(
            "Authorization header is not valid ASCII".into(),
        ));
    };
    let text = text.trim();
    let (algorithm, rest) = text.split_once(' ').unwrap_or((text, ""));
    if algorithm != ALGORITHM {
        // AWS's answer to a header of another scheme (Basic, Bearer, a bare token).
        return Err(AuthError::IncompleteSignature(format!(
            "Authorization header requires 'Credential' parameter. Authorization header requires \
             'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. \
             Authorization={}",
            quote(text)
        )));
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, value)) = part.trim().split_once('=') else {
            continue;
        };
        match name.trim() {
            "Credential" => credential = Some(value.trim()),
            "SignedHeaders" => signed = Some(value.trim()),
            "Signature" => signature = Some(value.trim()),
            _ => {}
        }
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let mut missing = String::new();
    for (name, found) in [
        ("Credential", credential.is_some()),
        ("Signature", signature.is_some()),
        ("SignedHeaders", signed.is_some()),
    ] {
        if !found {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    if amz_date.is_none() {
        // SigV4 also allows a `Date` header; every AWS SDK and the CLI send `x-amz-date`,
        // the only one served here.
        missing.push_str(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ",
        );
    }
    let (Some(credential), Some(signed), Some(signature), Some(amz_date)) =
        (credential, signed, signature, amz_date)
    else {
        return Err(AuthError::IncompleteSignature(format!(
            "{missing}Authorization={}",
            quote(text)
        )));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminator] = scope[..] else {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential should have exactly 5 parts, not {}: '{}'",
            scope.len(),
            quote(credential)
        )));
    };
    if key_id.is_empty() {
        return Err(AuthError::IncompleteSignature(
            "Credential should contain an access key id".into(),
        ));
    }
    let signed_headers: Vec<String> = signed
        .split(';')
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    for required in required {
        if !signed_headers.iter().any(|h| h == required) {
            return Err(AuthError::InvalidSignature(format!(
                "'{required}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
    }
    Ok(Some(Claim {
        key_id: key_id.to_string(),
        scope_date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        terminator: terminator.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
        amz_date: amz_date.to_string(),
        expires: None,
    }))
}

/// The longest a presigned URL may be valid: a week, as SigV4 allows
/// (<https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html>).
pub const MAX_PRESIGNED: Duration = Duration::from_secs(604_800);

/// The query parameters that carry a presigned URL's signature; the signer adds them back.
const PRESIGNING_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(Ok(b)) = text.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a presigned URL's query (`X-Amz-Signature` and its companions): the claim and the
/// request target without those parameters, or `None` if the query carries no signature.
pub fn parse_presigned(target: &str) -> Result<Option<(Claim, String)>, AuthError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut found = std::collections::HashMap::new();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(k);
        if PRESIGNING_PARAMS.contains(&name.as_str()) {
            found.insert(name, percent_decode(v));
        } else {
            rest.push(pair);
        }
    }
    if !found.contains_key("X-Amz-Signature") {
        return Ok(None);
    }
    if found.contains_key("X-Amz-Security-Token") {
        return Err(AuthError::UnrecognizedClient(UNKNOWN_KEY.into()));
    }
    let get = |name: &str| found.get(name).map(String::as_str);
    let mut missing = String::new();
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
    ] {
        if get(name).is_none() {
            missing.push_str(&format!(
                "AWS query-string parameters must include '{name}'. "
            ));
        }
    }
    if !missing.is_empty() {
        return Err(AuthError::IncompleteSignature(format!(
            "{missing}Re-examine the query-string parameters."
        )));
    }
    if get("X-Amz-Algorithm") != Some(ALGORITHM) {
        return Err(AuthError::IncompleteSignature(format!(
            "X-Amz-Algorithm only supports '{ALGORITHM}'"
        )));
    }
    let expires = get("X-Amz-Expires")
        .and_then(|e| e.parse::<u64>().ok())
        .map(Duration::from_secs)
        .filter(|e| *e <= MAX_PRESIGNED)
        .ok_or_else(|| {
            AuthError::IncompleteSignature(
                "X-Amz-Expires must be a number of seconds, at most a week (604800)".into(),
            )
        })?;
    // The header form's checks, on the same values.
    let mut headers = HeaderMap::new();
    let authorization = format!(
        "{ALGORITHM} Credential={}, SignedHeaders={}, Signature={}",
        get("X-Amz-Credential").unwrap_or_default(),
        get("X-Amz-SignedHeaders").unwrap_or_default(),
        get("X-Amz-Signature").unwrap_or_default(),
    );
    let value = |text: &str| {
        http::HeaderValue::from_str(text)
            .map_err(|_| AuthError::IncompleteSignature("Malformed query-string parameters".into()))
    };
    headers.insert(http::header::AUTHORIZATION, value(&authorization)?);
    headers.insert("x-amz-date", value(get("X-Amz-Date").unwrap_or_default())?);
    let Some(mut claim) = parse_claim(&headers, &["host"])? else {
        return Ok(None);
    };
    claim.expires = Some(expires);
    let target = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    Ok(Some((claim, target)))
}

const AMZ_DATE: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

/// Parses `yyyymmddThhmmssZ`.
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let t = time::PrimitiveDateTime::parse(text, AMZ_DATE).ok()?;
    Some(t.assume_utc().into())
}

/// Formats a time as `yyyymmddThhmmssZ`.
pub fn format_amz_date(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(AMZ_DATE)
        .unwrap_or_default()
}

impl Claim {
    /// Checks the credential scope: the terminator, the service the endpoint serves, the
    /// server's region and the date of `x-amz-date`.
    pub fn check_scope(&self, region: &str, service: &str) -> Result<(), AuthError> {
        if self.terminator != "aws4_request" {
            return Err(AuthError::InvalidSignature(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
                quote(&self.terminator)
            )));
        }
        if self.service != service {
            return Err(AuthError::InvalidSignature(format!(
                "Credential should be scoped to correct service: '{service}'. "
            )));
        }
        if self.region != region {
            return Err(AuthError::InvalidSignature(format!(
                "Credential should be scoped to a valid region, not '{}'. ",
                quote(&self.region)
            )));
        }
        if self.amz_date.get(..8) != Some(self.scope_date.as_str()) {
            return Err(AuthError::InvalidSignature(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
                 from HTTP: '{}' != '{}', from '{}'.",
                quote(&self.scope_date),
                quote(self.amz_date.get(..8).unwrap_or(&self.amz_date)),
                quote(&self.amz_date)
            )));
        }
        Ok(())
    }

    /// The request's time, checked against `now` within [`MAX_SKEW`].
    pub fn check_time(&self, now: SystemTime) -> Result<SystemTime, AuthError> {
        let Some(at) = parse_amz_date(&self.amz_date) else {
            return Err(AuthError::IncompleteSignature(format!(
                "Date must be in ISO-8601 'basic format'. Got '{}'. See \
                 http://en.wikipedia.org/wiki/ISO_8601",
                quote(&self.amz_date)
            )));
        };
        // The server's time is formatted for a refusal's message only: every served request
        // passes here.
        if let Some(expires) = self.expires {
            if at + expires < now {
                return Err(AuthError::InvalidSignature(format!(
                    "Signature expired: {} is now earlier than {} ({} - {} sec.)",
                    self.amz_date,
                    format_amz_date(now - expires),
                    format_amz_date(now),
                    expires.as_secs()
                )));
            }
        } else if at + MAX_SKEW < now {
            return Err(AuthError::InvalidSignature(format!(
                "Signature expired: {} is now earlier than {} ({} - 5 min.)",
                self.amz_date,
                format_amz_date(now - MAX_SKEW),
                format_amz_date(now)
            )));
        }
        if at > now + MAX_SKEW {
            return Err(AuthError::InvalidSignature(format!(
                "Signature not yet current: {} is still later than {} ({} + 5 min.)",
                self.amz_date,
                format_amz_date(now + MAX_SKEW),
                format_amz_date(now)
            )));
        }
        Ok(at)
    }

    /// Signs the request as received with `secret` and compares the result with the claimed
    /// signature in constant time.
    ///
    /// `target` is the request target as sent (path and query, percent-encoded as on the wire).
    pub fn verify_signature(
        &self,
        method: &str,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
        secret: &Secret,
    ) -> Result<(), AuthError> {
        let expected = self.signature_for(method, target, headers, body, secret)?;
        let matches = aws_lc_rs::constant_time::verify_slices_are_equal(
            expected.as_bytes(),
            self.signature.as_bytes(),
        )
        .is_ok();
        if matches {
            Ok(())
        } else {
            Err(AuthError::InvalidSignature(SIGNATURE_MISMATCH.into()))
        }
    }

    /// The signature `aws-sigv4` computes for this request with `secret`.
    pub fn signature_for(
        &self,
        method: &str,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
        secret: &Secret,
    ) -> Result<String, AuthError> {
        let time = parse_amz_date(&self.amz_date).ok_or_else(|| {
            AuthError::IncompleteSignature(format!(
                "Date must be in ISO-8601 'basic format'. Got '{}'.",
                quote(&self.amz_date)
            ))
        })?;
        // The signer adds x-amz-date (from `time`) and x-amz-content-sha256 (from the body it
        // hashes) itself: they are left out here so that the body's own hash is what counts,
        // not the one the client claims.
        let mut signs_content_sha = false;
        // Borrowed from the request: the signer copies what it needs.
        let mut values: Vec<(&str, &str)> = Vec::with_capacity(self.signed_headers.len());
        for name in &self.signed_headers {
            match name.as_str() {
                "x-amz-date" => continue,
                "x-amz-content-sha256" => {
                    // The signer puts the body's real hash in its place: a claimed hash that is
                    // not the body's must fail even though the signature over it would match.
                    let claimed = headers.get(name.as_str()).map(|v| v.as_bytes());
                    let actual =
                        hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body).as_ref());
                    if claimed != Some(actual.as_bytes()) {
                        return Err(AuthError::InvalidSignature(
                            "The provided 'x-amz-content-sha256' header does not match what was computed."
                                .into(),
                        ));
                    }
                    signs_content_sha = true;
                    continue;
                }
                _ => {}
            }
            let mut found = false;
            for value in headers.get_all(name.as_str()) {
                let Ok(text) = value.to_str() else {
                    return Err(AuthError::InvalidSignature(SIGNATURE_MISMATCH.into()));
                };
                values.push((name.as_str(), text));
                found = true;
            }
            if !found {
                // A signed header that did not arrive: the signature cannot match.
                return Err(AuthError::InvalidSignature(SIGNATURE_MISMATCH.into()));
            }
        }
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Double;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
        // Every header the client listed is signed, whatever its name (some clients sign
        // user-agent), and no other.
        settings.excluded_headers = Some(Vec::<Cow<'static, str>>::new());
        if let Some(expires) = self.expires {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(expires);
        }
        settings.payload_checksum_kind = if signs_content_sha {
            PayloadChecksumKind::XAmzSha256
        } else {
            PayloadChecksumKind::NoHeader
        };
        let identity: Identity =
            Credentials::new(&self.key_id, secret.expose(), None, None, "weft").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| AuthError::Crypto(format!("signing parameters: {e}")))?
            .into();
        let request = SignableRequest::new(
            method,
            target,
            values.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| AuthError::InvalidSignature(SIGNATURE_MISMATCH.into()))?;
        let output = sign(request, &params)
            .map_err(|_| AuthError::InvalidSignature(SIGNATURE_MISMATCH.into()))?;
        Ok(output.signature().to_string())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// AWS's message for a signature that does not match.
pub const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the \
     signature you provided. Check your AWS Secret Access Key and signing method. Consult the \
     service documentation for details.";

/// AWS's message for an access key it does not hold.
pub const UNKNOWN_KEY: &str = "The security token included in the request is invalid.";

/// AWS's message for a request with no `Authorization` header.
pub const MISSING_TOKEN: &str = "Missing Authentication Token";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_header_of_another_scheme_or_with_parts_missing_is_an_incomplete_signature() {
        for auth in [
            "Basic dXNlcjpwYXNz",
            "garbage",
            "AWS4-HMAC-SHA256 Credential=AKIA/20150830/us-east-1/appmesh/aws4_request",
        ] {
            let h = headers(&[("authorization", auth), ("x-amz-date", "20150830T123600Z")]);
            assert!(
                matches!(parse(&h), Err(AuthError::IncompleteSignature(_))),
                "{auth}"
            );
        }
        assert!(matches!(parse(&HeaderMap::new()), Ok(None)));
    }

    #[test]
    fn a_megabyte_header_is_not_echoed_back() {
        let big = format!("Basic {}", "a".repeat(1 << 20));
        let h = headers(&[("authorization", &big)]);
        let Err(e) = parse(&h) else { panic!() };
        assert!(e.to_string().len() < 1000);
    }

    #[test]
    fn times_beyond_five_minutes_are_refused_with_aws_messages() {
        let h = headers(&[
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIA/20150830/us-east-1/appmesh/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=00",
            ),
            ("x-amz-date", "20150830T123600Z"),
        ]);
        let claim = parse(&h).unwrap().unwrap();
        let at = parse_amz_date("20150830T123600Z").unwrap();
        assert!(claim.check_time(at + Duration::from_secs(299)).is_ok());
        let late = claim
            .check_time(at + Duration::from_secs(1200))
            .unwrap_err();
        assert_eq!(
            late.to_string(),
            "Signature expired: 20150830T123600Z is now earlier than 20150830T125100Z \
             (20150830T125600Z - 5 min.)"
        );
        let early = claim
            .check_time(at - Duration::from_secs(1200))
            .unwrap_err();
        assert_eq!(
            early.to_string(),
            "Signature not yet current: 20150830T123600Z is still later than 20150830T122100Z \
             (20150830T121600Z + 5 min.)"
        );
        assert!(claim.check_scope("us-east-1", "appmesh").is_ok());
        assert!(claim.check_scope("eu-west-1", "appmesh").is_err());
        assert!(claim.check_scope("us-east-1", "servicediscovery").is_err());
    }
}
