//! IAM-style policies: statements with an `Effect`, `Action`s and `Resource`s, evaluated as IAM
//! evaluates an identity policy
//! (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html>):
//! a statement that denies the request wins over every allow, and a request no statement allows
//! is denied. Actions (`appmesh:CreateRoute`, `servicediscovery:*`, `appmesh:Describe*`) match
//! without regard to case, resources (`arn:aws:appmesh:*:*:mesh/prod/*`) with it; `*` matches
//! any run of characters and `?` one, as in IAM.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::AuthError;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// The statement allows what it matches.
    Allow,
    /// The statement denies what it matches, whatever else allows it.
    Deny,
}

/// One or several strings: IAM accepts `"Action": "x"` and `"Action": ["x", "y"]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Either::deserialize(d)? {
            Either::One(s) => OneOrMany(vec![s]),
            Either::Many(v) => OneOrMany(v),
        })
    }
}

impl Serialize for OneOrMany {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Statement {
    /// An optional statement id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Allow or deny.
    pub effect: Effect,
    /// The actions it covers, `service:Operation` with wildcards.
    pub action: OneOrMany,
    /// The resources it covers, ARN patterns with wildcards.
    pub resource: OneOrMany,
}

/// A policy document: `{"Version": "2012-10-17", "Statement": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Policy {
    /// The policy language version; `2012-10-17`.
    #[serde(default = "version")]
    pub version: String,
    /// The managed policy this document is, when it was given by name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "WeftManagedPolicy"
    )]
    pub managed: Option<String>,
    /// The statements.
    pub statement: Vec<Statement>,
}

fn version() -> String {
    "2012-10-17".into()
}

/// What a policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A statement allows it and none denies it.
    Allow,
    /// A statement denies it.
    ExplicitDeny,
    /// No statement allows it.
    ImplicitDeny,
}

/// The managed policies available by name: Weft's `AdministratorAccess` (everything,
/// including the admin endpoints), and the shapes of App Mesh's and Cloud Map's
/// (<https://docs.aws.amazon.com/app-mesh/latest/userguide/security-iam-awsmanpol.html>),
/// limited to the actions Weft serves.
pub const MANAGED: &[&str] = &[
    "AdministratorAccess",
    "AWSAppMeshFullAccess",
    "AWSAppMeshReadOnly",
    "AWSAppMeshEnvoyAccess",
    "AWSCloudMapFullAccess",
    "AWSCloudMapReadOnlyAccess",
];

fn allow(actions: &[&str]) -> Statement {
    Statement {
        sid: None,
        effect: Effect::Allow,
        action: OneOrMany(actions.iter().map(|a| a.to_string()).collect()),
        resource: OneOrMany(vec!["*".into()]),
    }
}

impl Policy {
    /// A managed policy by name (see [`MANAGED`]).
    pub fn managed(name: &str) -> Result<Policy, AuthError> {
        let statement = match name {
            "AdministratorAccess" => allow(&["*"]),
            "AWSAppMeshFullAccess" => allow(&["appmesh:*"]),
            "AWSAppMeshReadOnly" => allow(&["appmesh:Describe*", "appmesh:List*"]),
            "AWSAppMeshEnvoyAccess" => allow(&["appmesh:StreamAggregatedResources"]),
            "AWSCloudMapFullAccess" => allow(&["servicediscovery:*"]),
            "AWSCloudMapReadOnlyAccess" => allow(&[
                "servicediscovery:Get*",
                "servicediscovery:List*",
                "servicediscovery:DiscoverInstances",
                "servicediscovery:DiscoverInstancesRevision",
            ]),
            other => {
                return Err(AuthError::InvalidInput(format!(
                    "No managed policy named {other:?}; known: {}",
                    MANAGED.join(", ")
                )))
            }
        };
        Ok(Policy {
            version: version(),
            managed: Some(name.to_string()),
            statement: vec![statement],
        })
    }

    /// A managed policy's name, or a JSON policy document.
    pub fn parse(text: &str) -> Result<Policy, AuthError> {
        let text = text.trim();
        if !text.starts_with('{') {
            return Policy::managed(text);
        }
        let mut policy: Policy = serde_json::from_str(text).map_err(|e| {
            AuthError::InvalidInput(format!("The policy document does not parse: {e}"))
        })?;
        policy.managed = None;
        policy.check()?;
        Ok(policy)
    }

    fn check(&self) -> Result<(), AuthError> {
        if self.version != "2012-10-17" && self.version != "2008-10-17" {
            return Err(AuthError::InvalidInput(format!(
                "The policy document's Version must be 2012-10-17, got {:?}",
                self.version
            )));
        }
        if self.statement.is_empty() {
            return Err(AuthError::InvalidInput(
                "The policy document has no Statement".into(),
            ));
        }
        for s in &self.statement {
            if s.action.0.is_empty() || s.resource.0.is_empty() {
                return Err(AuthError::InvalidInput(
                    "Every statement needs at least one Action and one Resource".into(),
                ));
            }
            for a in &s.action.0 {
                if a != "*" && !a.contains(':') {
                    return Err(AuthError::InvalidInput(format!(
                        "Action {a:?} must be service:Operation (e.g. appmesh:DescribeMesh) or *"
                    )));
                }
            }
        }
        Ok(())
    }

    /// What the policy says about `action` on `resource`.
    pub fn evaluate(&self, action: &str, resource: &str) -> Decision {
        let mut allowed = false;
        for s in &self.statement {
            // IAM compares actions without regard to case.
            let action_matches = s.action.0.iter().any(|p| wildcard_ignore_case(p, action));
            let resource_matches = s.resource.0.iter().any(|p| wildcard(p, resource));
            if action_matches && resource_matches {
                match s.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }

    /// A short label: the managed policy's name, or `custom`.
    pub fn label(&self) -> &str {
        self.managed.as_deref().unwrap_or("custom")
    }
}

/// IAM's wildcard match: `*` any run of characters (none included), `?` exactly one.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    // Every request is matched against its key's statements: ASCII (every action and ARN
    // Weft names) is matched byte by byte without copying; `?` is one character, so anything
    // else is matched by characters.
    if pattern.is_ascii() && text.is_ascii() {
        return matches(pattern.as_bytes(), text.as_bytes(), b'*', b'?', |a, b| {
            a == b
        });
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    matches(&p, &t, '*', '?', |a, b| a == b)
}

/// [`wildcard`] ignoring case, as IAM matches actions.
pub fn wildcard_ignore_case(pattern: &str, text: &str) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        return matches(pattern.as_bytes(), text.as_bytes(), b'*', b'?', |a, b| {
            a.eq_ignore_ascii_case(&b)
        });
    }
    wildcard(&pattern.to_lowercase(), &text.to_lowercase())
}

/// The wildcard match over any symbols: `star` any run, `one` exactly one, others by `eq`.
fn matches<T: Copy + PartialEq>(
    p: &[T],
    t: &[T],
    star_symbol: T,
    one: T,
    eq: impl Fn(T, T) -> bool,
) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(&c) if c == star_symbol => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == one || eq(c, t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == star_symbol)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard("appmesh:describe*", "appmesh:describemesh"));
        assert!(wildcard("*", ""));
        assert!(wildcard(
            "arn:aws:appmesh:*:*:mesh/dev/*",
            "arn:aws:appmesh:us-east-1:000000000000:mesh/dev/virtualNode/a"
        ));
        assert!(!wildcard(
            "arn:aws:appmesh:*:*:mesh/dev/*",
            "arn:aws:appmesh:us-east-1:000000000000:mesh/prod/virtualNode/a"
        ));
        assert!(!wildcard(
            "arn:aws:appmesh:*:*:mesh/dev/*",
            "arn:aws:appmesh:us-east-1:000000000000:mesh/dev"
        ));
        assert!(wildcard("a?c", "abc") && !wildcard("a?c", "ac"));
        // `?` is one character, not one byte.
        assert!(wildcard("mesh/?", "mesh/é") && !wildcard("mesh/??", "mesh/é"));
        assert!(wildcard_ignore_case(
            "AppMesh:Describe*",
            "appmesh:DESCRIBEMesh"
        ));
        assert!(!wildcard("AppMesh:Describe*", "appmesh:DescribeMesh"));
    }

    #[test]
    fn an_explicit_deny_wins_and_nothing_is_allowed_by_default() {
        let p = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Action":"appmesh:*","Resource":"*"},
                {"Effect":"Deny","Action":["appmesh:Delete*"],"Resource":"arn:aws:appmesh:*:*:mesh/prod*"}]}"#,
        )
        .unwrap();
        assert_eq!(
            p.evaluate("appmesh:DeleteMesh", "arn:aws:appmesh:us-east-1:1:mesh/dev"),
            Decision::Allow
        );
        assert_eq!(
            p.evaluate(
                "appmesh:DeleteMesh",
                "arn:aws:appmesh:us-east-1:1:mesh/prod"
            ),
            Decision::ExplicitDeny
        );
        assert_eq!(
            p.evaluate("servicediscovery:ListServices", "*"),
            Decision::ImplicitDeny
        );
        let ro = Policy::managed("AWSAppMeshReadOnly").unwrap();
        assert_eq!(
            ro.evaluate("appmesh:DescribeMesh", "arn:aws:appmesh:r:a:mesh/x"),
            Decision::Allow
        );
        assert_eq!(
            ro.evaluate("appmesh:CreateMesh", "arn:aws:appmesh:r:a:mesh/x"),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn a_policy_that_does_not_parse_is_a_clear_error() {
        for bad in [
            "{",
            r#"{"Statement":[]}"#,
            r#"{"Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]}"#,
            "NoSuchPolicy",
            r#"{"Statement":[{"Effect":"Allow","Action":"DescribeMesh","Resource":"*"}]}"#,
        ] {
            assert!(
                matches!(Policy::parse(bad), Err(AuthError::InvalidInput(_))),
                "{bad}"
            );
        }
    }
}
