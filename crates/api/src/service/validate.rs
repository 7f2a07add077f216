//! What a request must satisfy beyond the model's shapes, which `http.rs`
//! has already checked: the names that identify the resource, the account
//! that owns it, the route rules App Mesh and Envoy add, the per-spec
//! quotas, and that what a spec refers to exists.

use serde::Deserialize;
use serde_json::Value;
use weft_model::kind::{Kind, ResourceId};
use weft_model::shapes::{
    GatewayRouteSpec, RouteSpec, TagRef, VirtualServiceProvider, VirtualServiceSpec,
};
use weft_model::Arn;
use weft_store::ReadAhead;

use super::Service;
use crate::error::ApiError;

/// The string member `member` of the input, which must be there.
pub(super) fn str_member<'a>(input: &'a Value, member: &str) -> Result<&'a str, ApiError> {
    input
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest(format!("Value at '{member}' must not be null")))
}

/// A spec in its typed form.
pub(super) fn parse_spec<T: serde::de::DeserializeOwned>(spec: &Value) -> Result<T, ApiError> {
    T::deserialize(spec).map_err(|e| ApiError::BadRequest(format!("spec: {e}")))
}

/// Every virtual node a route sends traffic to.
pub(super) fn route_targets(spec: &RouteSpec) -> Vec<&str> {
    spec.weighted_targets()
        .map(|t| t.virtual_node.as_str())
        .collect()
}

/// The HTTP retry events App Mesh accepts (the model types them as free strings).
/// Sources: the App Mesh user guide's "Routes" page
/// (<https://docs.aws.amazon.com/app-mesh/latest/userguide/routes.html>) and
/// Envoy's `x-envoy-retry-on` values
/// (<https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-retry-on>).
pub const HTTP_RETRY_EVENTS: &[&str] = &[
    "server-error",
    "gateway-error",
    "client-error",
    "stream-error",
];

/// The first HTTP retry event of a route that App Mesh does not know, if any.
fn unknown_http_retry_events(spec: &RouteSpec) -> Option<String> {
    let mut events: Vec<&String> = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        if let Some(p) = &http.retry_policy {
            events.extend(p.http_retry_events.iter().flatten());
        }
    }
    if let Some(p) = spec
        .grpc_route
        .as_ref()
        .and_then(|g| g.retry_policy.as_ref())
    {
        events.extend(p.http_retry_events.iter().flatten());
    }
    events
        .into_iter()
        .find(|e| !HTTP_RETRY_EVENTS.contains(&e.as_str()))
        .map(|e| format!("\"{e}\""))
}

/// Whether some route type's weighted targets all have weight 0.
fn zero_total_weight(spec: &RouteSpec) -> bool {
    let mut sums = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        sums.push(
            http.action
                .weighted_targets
                .iter()
                .map(|t| i64::from(t.weight))
                .sum::<i64>(),
        );
    }
    if let Some(g) = &spec.grpc_route {
        sums.push(
            g.action
                .weighted_targets
                .iter()
                .map(|t| i64::from(t.weight))
                .sum(),
        );
    }
    if let Some(t) = &spec.tcp_route {
        sums.push(
            t.action
                .weighted_targets
                .iter()
                .map(|t| i64::from(t.weight))
                .sum(),
        );
    }
    sums.contains(&0)
}

/// Number of weighted targets of each route type set on a route.
fn route_types(spec: &RouteSpec) -> Vec<usize> {
    let mut out = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        out.push(http.action.weighted_targets.len());
    }
    if let Some(g) = &spec.grpc_route {
        out.push(g.action.weighted_targets.len());
    }
    if let Some(t) = &spec.tcp_route {
        out.push(t.action.weighted_targets.len());
    }
    out
}

/// The virtual services a gateway route sends traffic to, one per route type set.
pub(super) fn gateway_route_targets(spec: &GatewayRouteSpec) -> Vec<&str> {
    let mut out = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        out.push(
            http.action
                .target
                .virtual_service
                .virtual_service_name
                .as_str(),
        );
    }
    if let Some(g) = &spec.grpc_route {
        out.push(
            g.action
                .target
                .virtual_service
                .virtual_service_name
                .as_str(),
        );
    }
    out
}

/// The rules of a route spec that need no lookup: exactly one route type,
/// at most `max_targets` weighted targets, known HTTP retry events, and
/// weights that do not all add up to 0.
fn check_route(spec: &RouteSpec, max_targets: usize) -> Result<(), ApiError> {
    let types = route_types(spec);
    if types.len() != 1 {
        return Err(ApiError::BadRequest(format!(
            "Value at 'spec' failed to satisfy constraint: exactly one of \
             [grpcRoute, http2Route, httpRoute, tcpRoute] must be set, found {}",
            types.len()
        )));
    }
    if types.iter().any(|n| *n > max_targets) {
        return Err(ApiError::LimitExceeded(format!(
            "A route may have at most {max_targets} weighted targets"
        )));
    }
    if let Some(events) = unknown_http_retry_events(spec) {
        return Err(ApiError::BadRequest(format!(
            "Value at 'spec' failed to satisfy constraint: httpRetryEvents must be \
             among [{}], got {events}",
            HTTP_RETRY_EVENTS.join(", ")
        )));
    }
    if zero_total_weight(spec) {
        // Envoy rejects weighted clusters whose weights add up to 0.
        return Err(ApiError::BadRequest(
            "Value at 'spec' failed to satisfy constraint: the weights of a \
             route's weightedTargets must not all be 0"
                .into(),
        ));
    }
    Ok(())
}

/// A gateway route spec sets exactly one route type.
fn check_gateway_route(spec: &GatewayRouteSpec) -> Result<(), ApiError> {
    let targets = gateway_route_targets(spec);
    if targets.len() != 1 {
        return Err(ApiError::BadRequest(format!(
            "Value at 'spec' failed to satisfy constraint: exactly one of \
             [grpcRoute, http2Route, httpRoute] must be set, found {}",
            targets.len()
        )));
    }
    Ok(())
}

/// A virtual node spec has at most `limit` backends.
fn check_backends(spec: &Value, limit: usize) -> Result<(), ApiError> {
    // Only the count matters here (the model's validation has checked every
    // backend), so the spec is not decoded into its typed form: decoding it
    // costs ~2% of the server's CPU per UpdateVirtualNode.
    let n = spec
        .get("backends")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if n > limit {
        return Err(ApiError::LimitExceeded(format!(
            "A virtual node may have at most {limit} backends, got {n}"
        )));
    }
    Ok(())
}

/// The input's `tags`, none if absent or null; a key given twice is refused.
pub(super) fn tags_from_input(input: &Value) -> Result<Vec<TagRef>, ApiError> {
    let tags: Vec<TagRef> = match input.get("tags") {
        Some(t) if !t.is_null() => {
            Vec::<TagRef>::deserialize(t).map_err(|e| ApiError::BadRequest(format!("tags: {e}")))?
        }
        _ => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for t in &tags {
        if !seen.insert(t.key.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "Duplicate tag key \"{}\"",
                t.key
            )));
        }
    }
    Ok(tags)
}

/// Refuses Weft's own tags with a value Weft does not know: on a mesh, `weft:mtls` must be
/// `STRICT`, `PERMISSIVE` or `DISABLED` (mesh-wide mutual TLS) and `weft:authorization`
/// `ENFORCE`, `REPORT` or `DISABLED`; on a virtual node, `weft:callers` must name nodes or
/// gateways (Weft extensions carried in tags so that App Mesh's clients can set them). Tags of
/// other resources mean nothing to Weft.
pub(super) fn check_weft_tags(kind: Kind, tags: &[TagRef]) -> Result<(), ApiError> {
    match kind {
        Kind::Mesh => {
            weft_model::MeshMtls::from_tags(tags).map_err(ApiError::BadRequest)?;
            weft_model::MeshAuthorization::from_tags(tags).map_err(ApiError::BadRequest)?;
        }
        // Service-to-service authorization's extra callers (`weft:callers`).
        Kind::VirtualNode => {
            weft_model::authorization::callers_from_tags(tags).map_err(ApiError::BadRequest)?;
        }
        _ => {}
    }
    Ok(())
}

impl Service {
    /// Refuses a `meshOwner` other than the account Weft serves.
    pub(super) fn check_owner(&self, input: &Value) -> Result<(), ApiError> {
        // Weft serves one account; a mesh "shared from" another account does
        // not exist here.
        match input.get("meshOwner").and_then(Value::as_str) {
            Some(owner) if owner != self.config.account => Err(ApiError::NotFound(format!(
                "No mesh owned by account {owner} is shared with this account"
            ))),
            _ => Ok(()),
        }
    }

    /// The resource of `kind` an input names.
    pub(super) fn resource_id(&self, kind: Kind, input: &Value) -> Result<ResourceId, ApiError> {
        let mesh = str_member(input, "meshName")?;
        let parent = match kind.parent() {
            Some(p) => Some(str_member(input, p.name_member())?.to_string()),
            None => None,
        };
        Ok(ResourceId {
            kind,
            mesh: mesh.to_string(),
            parent,
            name: str_member(input, kind.name_member())?.to_string(),
        })
    }

    /// The resource an input's `resourceArn` names; an ARN of another
    /// partition, region or account names nothing here.
    pub(super) fn resource_from_arn(&self, input: &Value) -> Result<ResourceId, ApiError> {
        let text = str_member(input, "resourceArn")?;
        let arn: Arn = text.parse().map_err(|e: weft_model::arn::ArnError| {
            ApiError::BadRequest(format!("Value at 'resourceArn' is invalid: {e}"))
        })?;
        if arn.partition != self.config.partition
            || arn.region != self.config.region
            || arn.account != self.config.account
        {
            return Err(ApiError::NotFound(format!("Resource {text} not found")));
        }
        Ok(ResourceId::from_path(&arn.resource))
    }

    /// The quota on resources of `kind` in their scope.
    pub(super) fn quota(&self, kind: Kind) -> usize {
        let q = &self.config.quotas;
        match kind {
            Kind::Mesh => q.meshes,
            Kind::VirtualNode => q.virtual_nodes_per_mesh,
            Kind::VirtualService => q.virtual_services_per_mesh,
            Kind::VirtualRouter => q.virtual_routers_per_mesh,
            Kind::Route => q.routes_per_virtual_router,
            Kind::VirtualGateway => q.virtual_gateways_per_mesh,
            Kind::GatewayRoute => q.gateway_routes_per_virtual_gateway,
        }
    }

    /// Checks the per-spec quotas and that what the spec refers to exists
    /// (read from `ahead` where it was read ahead).
    pub(super) async fn check_spec(
        &self,
        id: &ResourceId,
        spec: &Value,
        ahead: &ReadAhead,
    ) -> Result<(), ApiError> {
        match id.kind {
            Kind::VirtualService => {
                let _: VirtualServiceSpec = parse_spec(spec)?;
            }
            Kind::Route => {
                let spec: RouteSpec = parse_spec(spec)?;
                check_route(&spec, self.config.quotas.weighted_targets_per_route)?;
            }
            Kind::GatewayRoute => {
                let spec: GatewayRouteSpec = parse_spec(spec)?;
                check_gateway_route(&spec)?;
            }
            Kind::VirtualNode => {
                check_backends(spec, self.config.quotas.backends_per_virtual_node)?;
            }
            Kind::Mesh | Kind::VirtualRouter | Kind::VirtualGateway => {}
        }
        for target in spec_references(id, spec) {
            self.require_ahead(&target, ahead).await?;
        }
        Ok(())
    }
}

/// The resources a spec of `id`'s kind refers to and that must exist: a
/// virtual service's provider, a route's target nodes, a gateway route's
/// target services. Nothing for a spec that does not parse (which
/// [`Service::check_spec`] refuses).
pub(super) fn spec_references(id: &ResourceId, spec: &Value) -> Vec<ResourceId> {
    let mesh = &id.mesh;
    match id.kind {
        Kind::VirtualService => match parse_spec::<VirtualServiceSpec>(spec).map(|s| s.provider) {
            Ok(Some(VirtualServiceProvider::VirtualNode(p))) => {
                vec![ResourceId::in_mesh(
                    Kind::VirtualNode,
                    mesh,
                    &p.virtual_node_name,
                )]
            }
            Ok(Some(VirtualServiceProvider::VirtualRouter(p))) => vec![ResourceId::in_mesh(
                Kind::VirtualRouter,
                mesh,
                &p.virtual_router_name,
            )],
            _ => Vec::new(),
        },
        Kind::Route => match parse_spec::<RouteSpec>(spec) {
            Ok(spec) => route_targets(&spec)
                .into_iter()
                .map(|node| ResourceId::in_mesh(Kind::VirtualNode, mesh, node))
                .collect(),
            Err(_) => Vec::new(),
        },
        Kind::GatewayRoute => match parse_spec::<GatewayRouteSpec>(spec) {
            Ok(spec) => gateway_route_targets(&spec)
                .into_iter()
                .map(|service| ResourceId::in_mesh(Kind::VirtualService, mesh, service))
                .collect(),
            Err(_) => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(spec: Value) -> RouteSpec {
        parse_spec(&spec).unwrap()
    }

    fn targets(pairs: &[(&str, i32)]) -> Value {
        let targets: Vec<Value> = pairs
            .iter()
            .map(|(node, weight)| json!({"virtualNode": node, "weight": weight}))
            .collect();
        json!({ "weightedTargets": targets })
    }

    fn http(pairs: &[(&str, i32)]) -> Value {
        json!({"match": {"prefix": "/"}, "action": targets(pairs)})
    }

    fn message(result: Result<(), ApiError>) -> (&'static str, String) {
        match result {
            Ok(()) => ("ok", String::new()),
            Err(e) => (e.error_type(), e.to_string()),
        }
    }

    #[test]
    fn a_missing_or_non_string_member_must_not_be_null() {
        let input = json!({"meshName": "m", "limit": 3});
        assert_eq!(str_member(&input, "meshName").unwrap(), "m");
        for member in ["virtualNodeName", "limit"] {
            match str_member(&input, member) {
                Err(ApiError::BadRequest(why)) => {
                    assert_eq!(why, format!("Value at '{member}' must not be null"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_route_s_targets_are_those_of_every_route_type_it_sets() {
        let spec = route(json!({
            "httpRoute": http(&[("a", 1), ("b", 1)]),
            "http2Route": http(&[("c", 1)]),
            "grpcRoute": {"match": {}, "action": targets(&[("d", 1)])},
            "tcpRoute": {"action": targets(&[("e", 1)])},
        }));
        assert_eq!(route_targets(&spec), ["a", "b", "c", "d", "e"]);
        assert_eq!(route_types(&spec), [2, 1, 1, 1]);
    }

    #[test]
    fn a_route_sets_exactly_one_route_type() {
        let two = route(
            json!({"httpRoute": http(&[("a", 1)]), "tcpRoute": {"action": targets(&[("a", 1)])}}),
        );
        let (code, why) = message(check_route(&two, 10));
        assert_eq!(code, "BadRequestException");
        assert!(why.contains("found 2"), "{why}");
        let none = route(json!({}));
        let (code, why) = message(check_route(&none, 10));
        assert_eq!(code, "BadRequestException");
        assert!(why.contains("found 0"), "{why}");
        let one = route(json!({"httpRoute": http(&[("a", 1)])}));
        assert_eq!(message(check_route(&one, 10)).0, "ok");
    }

    #[test]
    fn a_route_past_its_weighted_target_quota_exceeds_the_limit() {
        let spec = route(json!({"tcpRoute": {"action": targets(&[("a", 1), ("b", 1), ("c", 1)])}}));
        assert_eq!(message(check_route(&spec, 3)).0, "ok");
        let (code, why) = message(check_route(&spec, 2));
        assert_eq!(code, "LimitExceededException");
        assert!(why.contains("at most 2"), "{why}");
    }

    #[test]
    fn a_retry_event_app_mesh_does_not_know_is_refused_by_name() {
        let mut h = http(&[("a", 1)]);
        h["retryPolicy"] = json!({
            "maxRetries": 1,
            "perRetryTimeout": {"unit": "s", "value": 1},
            "httpRetryEvents": ["server-error", "5xx"],
        });
        let spec = route(json!({"httpRoute": h}));
        assert_eq!(unknown_http_retry_events(&spec).as_deref(), Some("\"5xx\""));
        let (code, why) = message(check_route(&spec, 10));
        assert_eq!(code, "BadRequestException");
        assert!(why.ends_with("got \"5xx\""), "{why}");
        let mut g = json!({"match": {}, "action": targets(&[("a", 1)])});
        g["retryPolicy"] = json!({
            "maxRetries": 1,
            "perRetryTimeout": {"unit": "s", "value": 1},
            "httpRetryEvents": HTTP_RETRY_EVENTS,
        });
        let spec = route(json!({"grpcRoute": g}));
        assert_eq!(unknown_http_retry_events(&spec), None);
    }

    #[test]
    fn a_route_whose_weights_are_all_zero_is_refused() {
        let zero = route(json!({"httpRoute": http(&[("a", 0), ("b", 0)])}));
        assert!(zero_total_weight(&zero));
        assert_eq!(message(check_route(&zero, 10)).0, "BadRequestException");
        let some = route(json!({"httpRoute": http(&[("a", 0), ("b", 1)])}));
        assert!(!zero_total_weight(&some));
    }

    #[test]
    fn a_gateway_route_targets_one_virtual_service() {
        let target = |name: &str| json!({"match": {"prefix": "/"}, "action": {"target": {"virtualService": {"virtualServiceName": name}}}});
        let one: GatewayRouteSpec = parse_spec(&json!({"http2Route": target("svc")})).unwrap();
        assert_eq!(gateway_route_targets(&one), ["svc"]);
        assert_eq!(message(check_gateway_route(&one)).0, "ok");
        let two: GatewayRouteSpec =
            parse_spec(&json!({"httpRoute": target("a"), "grpcRoute": target("b")})).unwrap();
        assert_eq!(gateway_route_targets(&two), ["a", "b"]);
        let (code, why) = message(check_gateway_route(&two));
        assert_eq!(code, "BadRequestException");
        assert!(why.contains("found 2"), "{why}");
    }

    #[test]
    fn a_virtual_node_past_its_backend_quota_exceeds_the_limit() {
        let spec = json!({"backends": [{}, {}, {}]});
        assert_eq!(message(check_backends(&spec, 3)).0, "ok");
        let (code, why) = message(check_backends(&spec, 2));
        assert_eq!(code, "LimitExceededException");
        assert!(why.ends_with("at most 2 backends, got 3"), "{why}");
        assert_eq!(message(check_backends(&json!({}), 0)).0, "ok");
    }

    #[test]
    fn a_spec_of_the_wrong_shape_is_a_bad_request() {
        match parse_spec::<RouteSpec>(&json!({"httpRoute": 3})) {
            Err(ApiError::BadRequest(why)) => assert!(why.starts_with("spec: "), "{why}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn tags_are_optional_and_a_key_may_be_given_once() {
        assert!(tags_from_input(&json!({})).unwrap().is_empty());
        assert!(tags_from_input(&json!({"tags": null})).unwrap().is_empty());
        let tags = tags_from_input(
            &json!({"tags": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]}),
        )
        .unwrap();
        assert_eq!(tags.len(), 2);
        let (code, why) = message(
            tags_from_input(
                &json!({"tags": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]}),
            )
            .map(|_| ()),
        );
        assert_eq!(code, "BadRequestException");
        assert_eq!(why, "Duplicate tag key \"a\"");
        assert_eq!(
            message(tags_from_input(&json!({"tags": "a"})).map(|_| ())).0,
            "BadRequestException"
        );
    }

    #[tokio::test]
    async fn a_mesh_owner_other_than_the_account_is_not_found() {
        let (_dir, service) = super::super::tests::service().await;
        let own = service.config().account.clone();
        assert!(service.check_owner(&json!({"meshOwner": own})).is_ok());
        assert!(service.check_owner(&json!({})).is_ok());
        match service.check_owner(&json!({"meshOwner": "123456789012"})) {
            Err(ApiError::NotFound(why)) => assert!(why.contains("123456789012"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_route_is_named_by_its_mesh_router_and_name() {
        let (_dir, service) = super::super::tests::service().await;
        let input = json!({"meshName": "m", "virtualRouterName": "r", "routeName": "web"});
        let id = service.resource_id(Kind::Route, &input).unwrap();
        assert_eq!(
            id,
            ResourceId {
                kind: Kind::Route,
                mesh: "m".into(),
                parent: Some("r".into()),
                name: "web".into(),
            }
        );
        let no_router = json!({"meshName": "m", "routeName": "web"});
        assert!(service.resource_id(Kind::Route, &no_router).is_err());
    }

    #[tokio::test]
    async fn an_arn_names_a_resource_only_in_this_partition_region_and_account() {
        let (_dir, service) = super::super::tests::service().await;
        let arn = |region: &str, account: &str| json!({"resourceArn": format!("arn:aws:appmesh:{region}:{account}:mesh/m/virtualNode/n")});
        let id = service
            .resource_from_arn(&arn("us-east-1", "000000000000"))
            .unwrap();
        assert_eq!(id, ResourceId::in_mesh(Kind::VirtualNode, "m", "n"));
        for other in [
            arn("eu-west-1", "000000000000"),
            arn("us-east-1", "111111111111"),
        ] {
            let code = service.resource_from_arn(&other).unwrap_err().error_type();
            assert_eq!(code, "NotFoundException");
        }
        let bad = json!({"resourceArn": "not-an-arn"});
        let code = service.resource_from_arn(&bad).unwrap_err().error_type();
        assert_eq!(code, "BadRequestException");
    }
}
