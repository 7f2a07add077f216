//! The crate's one error type.

use std::io;

/// What can go wrong building zones or serving them.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A name is not a valid DNS name (RFC 1035 §2.3.4: labels of at most
    /// 63 octets, names of at most 255).
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A record set's owner name is not at or under its zone's origin.
    #[error("{name} is not in zone {zone}")]
    OutOfZone {
        /// The owner name.
        name: String,
        /// The zone's origin.
        zone: String,
    },
    /// Two zones were given the same origin.
    #[error("zone {0} is given twice")]
    DuplicateZone(String),
    /// A CNAME shares its owner name with other data, or a name has two
    /// CNAMEs (RFC 1034 §3.6.2, RFC 2181 §10.1).
    #[error("{0} has a CNAME and other records")]
    CnameConflict(String),
    /// A CNAME at a zone's origin, where the SOA and NS records live
    /// (RFC 1912 §2.4).
    #[error("{0} is a zone apex and cannot hold a CNAME")]
    CnameAtApex(String),
    /// The records of one set disagree on TTL or routing policy: a record
    /// set has one TTL (RFC 2181 §5.2) and one routing policy (Route 53).
    #[error("records of {name} {record_type} disagree on {what}")]
    InconsistentRecordSet {
        /// The owner name.
        name: String,
        /// The record type.
        record_type: String,
        /// "TTL" or "routing policy".
        what: &'static str,
    },
    /// A socket failed while serving.
    #[error("DNS socket: {0}")]
    Io(#[from] io::Error),
}
