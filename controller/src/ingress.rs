//! What an Ingress's status says: `status.loadBalancer`, the addresses
//! clients reach the dataplane at, read from the dataplane's Service
//! (`--publish-service`) the way ingress-nginx reads it. Pure.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{IngressLoadBalancerIngress, IngressLoadBalancerStatus};

/// The addresses of a Service: a load balancer's, else its external IPs,
/// else its cluster IP (a headless Service has none).
pub(crate) fn load_balancer(service: &Service) -> IngressLoadBalancerStatus {
    let spec = service.spec.as_ref();
    let balanced: Vec<IngressLoadBalancerIngress> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .map(|i| IngressLoadBalancerIngress {
            ip: i.ip.clone(),
            hostname: i.hostname.clone(),
            ports: None,
        })
        .collect();
    let mut ingress = if spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") {
        balanced
    } else {
        Vec::new()
    };
    if ingress.is_empty() {
        let ip = |ip: &String| IngressLoadBalancerIngress {
            ip: Some(ip.clone()),
            hostname: None,
            ports: None,
        };
        ingress = spec
            .and_then(|s| s.external_ips.as_ref())
            .into_iter()
            .flatten()
            .map(ip)
            .collect();
        if ingress.is_empty() {
            ingress = spec
                .and_then(|s| s.cluster_ip.as_ref())
                .filter(|c| !c.is_empty() && *c != "None")
                .map(ip)
                .into_iter()
                .collect();
        }
    }
    ingress.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    IngressLoadBalancerStatus {
        ingress: Some(ingress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).expect("a Service")
    }

    fn ips(status: &IngressLoadBalancerStatus) -> Vec<String> {
        status
            .ingress
            .iter()
            .flatten()
            .map(|i| i.ip.clone().or(i.hostname.clone()).unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_load_balancer_wins_then_external_ips_then_the_cluster_ip() {
        let lb = service(serde_json::json!({
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["198.51.100.1"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb.example.com"}]}},
        }));
        assert_eq!(ips(&load_balancer(&lb)), ["lb.example.com", "203.0.113.9"]);
        let pending = service(serde_json::json!({
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["198.51.100.1"]},
        }));
        assert_eq!(ips(&load_balancer(&pending)), ["198.51.100.1"]);
        let cluster =
            service(serde_json::json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10"}}));
        assert_eq!(ips(&load_balancer(&cluster)), ["10.96.0.10"]);
        let headless = service(serde_json::json!({"spec": {"clusterIP": "None"}}));
        assert!(ips(&load_balancer(&headless)).is_empty());
    }
}
