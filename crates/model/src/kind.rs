//! The seven App Mesh resource kinds and what differs between them: member
//! names, scope, ARN segment, store key and quota.

use crate::arn::ResourcePath;

/// An App Mesh resource kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Mesh,
    VirtualNode,
    VirtualService,
    VirtualRouter,
    Route,
    VirtualGateway,
    GatewayRoute,
}

/// What an operation does to its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Describe,
    Update,
    Delete,
    List,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Mesh,
        Kind::VirtualNode,
        Kind::VirtualService,
        Kind::VirtualRouter,
        Kind::Route,
        Kind::VirtualGateway,
        Kind::GatewayRoute,
    ];

    /// The singular name used in operation names (`CreateVirtualNode`).
    pub fn op_name(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::VirtualNode => "VirtualNode",
            Kind::VirtualService => "VirtualService",
            Kind::VirtualRouter => "VirtualRouter",
            Kind::Route => "Route",
            Kind::VirtualGateway => "VirtualGateway",
            Kind::GatewayRoute => "GatewayRoute",
        }
    }

    /// The plural used in `List` operation names and list members.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Mesh => "Meshes",
            Kind::VirtualNode => "VirtualNodes",
            Kind::VirtualService => "VirtualServices",
            Kind::VirtualRouter => "VirtualRouters",
            Kind::Route => "Routes",
            Kind::VirtualGateway => "VirtualGateways",
            Kind::GatewayRoute => "GatewayRoutes",
        }
    }

    /// The member holding the resource's own name (`virtualNodeName`).
    pub fn name_member(self) -> &'static str {
        match self {
            Kind::Mesh => "meshName",
            Kind::VirtualNode => "virtualNodeName",
            Kind::VirtualService => "virtualServiceName",
            Kind::VirtualRouter => "virtualRouterName",
            Kind::Route => "routeName",
            Kind::VirtualGateway => "virtualGatewayName",
            Kind::GatewayRoute => "gatewayRouteName",
        }
    }

    /// The kind a resource lives inside, below the mesh (routes in routers,
    /// gateway routes in gateways).
    pub fn parent(self) -> Option<Kind> {
        match self {
            Kind::Route => Some(Kind::VirtualRouter),
            Kind::GatewayRoute => Some(Kind::VirtualGateway),
            _ => None,
        }
    }

    /// The output member carrying the resource (`virtualNode`), also its
    /// payload.
    pub fn payload_member(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::VirtualNode => "virtualNode",
            Kind::VirtualService => "virtualService",
            Kind::VirtualRouter => "virtualRouter",
            Kind::Route => "route",
            Kind::VirtualGateway => "virtualGateway",
            Kind::GatewayRoute => "gatewayRoute",
        }
    }

    /// The member of the `List` output holding the references (`virtualNodes`).
    pub fn list_member(self) -> &'static str {
        match self {
            Kind::Mesh => "meshes",
            Kind::VirtualNode => "virtualNodes",
            Kind::VirtualService => "virtualServices",
            Kind::VirtualRouter => "virtualRouters",
            Kind::Route => "routes",
            Kind::VirtualGateway => "virtualGateways",
            Kind::GatewayRoute => "gatewayRoutes",
        }
    }

    /// Human-readable name for messages ("Virtual node").
    pub fn label(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::VirtualNode => "Virtual node",
            Kind::VirtualService => "Virtual service",
            Kind::VirtualRouter => "Virtual router",
            Kind::Route => "Route",
            Kind::VirtualGateway => "Virtual gateway",
            Kind::GatewayRoute => "Gateway route",
        }
    }

    /// Short code used in store keys.
    pub fn key_code(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::VirtualNode => "vn",
            Kind::VirtualService => "vs",
            Kind::VirtualRouter => "vr",
            Kind::Route => "rt",
            Kind::VirtualGateway => "vg",
            Kind::GatewayRoute => "gr",
        }
    }

    /// Parses an operation name such as `UpdateVirtualRouter` or `ListMeshes`.
    pub fn parse_operation(op: &str) -> Option<(Action, Kind)> {
        let (action, rest) = [
            ("Create", Action::Create),
            ("Describe", Action::Describe),
            ("Update", Action::Update),
            ("Delete", Action::Delete),
            ("List", Action::List),
        ]
        .into_iter()
        .find_map(|(p, a)| op.strip_prefix(p).map(|r| (a, r)))?;
        let kind = Kind::ALL.into_iter().find(|k| {
            if action == Action::List {
                k.plural() == rest
            } else {
                k.op_name() == rest
            }
        })?;
        Some((action, kind))
    }
}

/// Identifies one resource: its kind, mesh, optional parent and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceId {
    pub kind: Kind,
    pub mesh: String,
    /// The router of a route or the gateway of a gateway route.
    pub parent: Option<String>,
    pub name: String,
}

impl ResourceId {
    /// The mesh itself.
    pub fn mesh(mesh: &str) -> Self {
        ResourceId {
            kind: Kind::Mesh,
            mesh: mesh.into(),
            parent: None,
            name: mesh.into(),
        }
    }

    /// A resource directly in a mesh.
    pub fn in_mesh(kind: Kind, mesh: &str, name: &str) -> Self {
        ResourceId {
            kind,
            mesh: mesh.into(),
            parent: None,
            name: name.into(),
        }
    }

    /// The resource path used in ARNs.
    pub fn path(&self) -> ResourcePath {
        let mesh = self.mesh.clone();
        let name = self.name.clone();
        let parent = self.parent.clone().unwrap_or_default();
        match self.kind {
            Kind::Mesh => ResourcePath::Mesh { mesh },
            Kind::VirtualNode => ResourcePath::VirtualNode { mesh, name },
            Kind::VirtualService => ResourcePath::VirtualService { mesh, name },
            Kind::VirtualRouter => ResourcePath::VirtualRouter { mesh, name },
            Kind::Route => ResourcePath::Route {
                mesh,
                router: parent,
                name,
            },
            Kind::VirtualGateway => ResourcePath::VirtualGateway { mesh, name },
            Kind::GatewayRoute => ResourcePath::GatewayRoute {
                mesh,
                gateway: parent,
                name,
            },
        }
    }

    /// The resource an ARN's path names.
    pub fn from_path(path: &ResourcePath) -> Self {
        let id = |kind, mesh: &String, parent: Option<&String>, name: &String| ResourceId {
            kind,
            mesh: mesh.clone(),
            parent: parent.cloned(),
            name: name.clone(),
        };
        match path {
            ResourcePath::Mesh { mesh } => ResourceId::mesh(mesh),
            ResourcePath::VirtualNode { mesh, name } => id(Kind::VirtualNode, mesh, None, name),
            ResourcePath::VirtualService { mesh, name } => {
                id(Kind::VirtualService, mesh, None, name)
            }
            ResourcePath::VirtualRouter { mesh, name } => id(Kind::VirtualRouter, mesh, None, name),
            ResourcePath::Route { mesh, router, name } => id(Kind::Route, mesh, Some(router), name),
            ResourcePath::VirtualGateway { mesh, name } => {
                id(Kind::VirtualGateway, mesh, None, name)
            }
            ResourcePath::GatewayRoute {
                mesh,
                gateway,
                name,
            } => id(Kind::GatewayRoute, mesh, Some(gateway), name),
        }
    }

    /// The parent resource (router of a route, gateway of a gateway route).
    pub fn parent_id(&self) -> Option<ResourceId> {
        let kind = self.kind.parent()?;
        Some(ResourceId::in_mesh(
            kind,
            &self.mesh,
            self.parent.as_deref()?,
        ))
    }

    /// Describes the resource for messages: `Virtual node "red" in mesh "apps"`.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.parent) {
            (Kind::Mesh, _) => format!("Mesh \"{}\"", self.mesh),
            (k, Some(p)) => format!(
                "{} \"{}\" of {} \"{p}\" in mesh \"{}\"",
                k.label(),
                self.name,
                k.parent()
                    .map(|k| k.label().to_lowercase())
                    .unwrap_or_default(),
                self.mesh
            ),
            (k, None) => format!("{} \"{}\" in mesh \"{}\"", k.label(), self.name, self.mesh),
        }
    }
}
