//! Service backends: a Service's ports and the ready endpoints of its
//! EndpointSlices, indexed once per compile.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use pier_snapshot::fnv::FnvMap;

/// Services and their EndpointSlices by namespace and name.
pub(crate) struct Backends<'a> {
    services: FnvMap<(&'a str, &'a str), &'a Service>,
    slices: FnvMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> Backends<'a> {
    pub(crate) fn index(
        services: &'a [std::sync::Arc<Service>],
        slices: &'a [std::sync::Arc<EndpointSlice>],
    ) -> Self {
        let ns = |m: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.namespace.as_deref().unwrap_or("default")
        };
        let mut index = Self {
            services: FnvMap::default(),
            slices: FnvMap::default(),
        };
        for service in services {
            if let Some(name) = service.metadata.name.as_deref() {
                index
                    .services
                    .insert((ns(&service.metadata), name), service);
            }
        }
        for slice in slices {
            let owner = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"));
            if let Some(owner) = owner {
                index
                    .slices
                    .entry((ns(&slice.metadata), owner.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        index
    }

    /// The number of the port named `port` of Service `namespace/name`
    /// (an Ingress may name a Service port instead of giving its number).
    pub(crate) fn port_named(&self, namespace: &str, name: &str, port: &str) -> Option<u16> {
        self.services
            .get(&(namespace, name))?
            .spec
            .as_ref()?
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(port))
            .and_then(|p| u16::try_from(p.port).ok())
    }

    /// The ready endpoints of `port` of Service `namespace/name`, each with
    /// its pod name (or address) as identity.
    pub(crate) fn resolve(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<Vec<(SocketAddr, String)>, Unresolvable> {
        let service = self
            .services
            .get(&(namespace, name))
            .ok_or(Unresolvable::NotFound("no such Service"))?;
        let port_name = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| i32::from(port) == p.port))
            .map(|p| p.name.clone().unwrap_or_default())
            .ok_or(Unresolvable::NotFound("the Service has no such port"))?;
        let mut endpoints = Vec::new();
        for slice in self.slices.get(&(namespace, name)).into_iter().flatten() {
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                // An unknown readiness counts as ready (the API's rule).
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready {
                    continue;
                }
                let pod = endpoint.target_ref.as_ref().and_then(|r| r.name.clone());
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue;
                    };
                    let addr = SocketAddr::new(ip, target);
                    endpoints.push((addr, pod.clone().unwrap_or_else(|| addr.to_string())));
                }
            }
        }
        if endpoints.is_empty() {
            return Err(Unresolvable::NoReady);
        }
        endpoints.sort();
        endpoints.dedup();
        Ok(endpoints)
    }
}

/// Why a Service backend has no endpoints.
pub(crate) enum Unresolvable {
    NotFound(&'static str),
    NoReady,
}
