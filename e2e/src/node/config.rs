//! The node's configuration files, as pure functions of its addresses and
//! paths: containerd, CNI, kubelet, kube-proxy and CoreDNS.

use std::net::Ipv4Addr;
use std::path::Path;

/// The node's addresses: a bridge the harness makes, whose address is the
/// node's IP, the API server's, CoreDNS's and every pod's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    /// The bridge's name.
    pub bridge: &'static str,
    /// The bridge's address: the node IP.
    pub gateway: Ipv4Addr,
    /// The pod range's prefix length; pods get the other addresses of the
    /// gateway's subnet.
    pub prefix: u8,
    /// The Service range (the API server's `--service-cluster-ip-range`),
    /// routed onto the bridge so that nothing bound for it leaves the machine.
    pub services: &'static str,
}

/// The one network of the harness's node.
pub const NETWORK: Network = Network {
    bridge: "pier-e2e0",
    gateway: Ipv4Addr::new(10, 213, 0, 1),
    prefix: 24,
    services: crate::control_plane::SERVICE_CLUSTER_IP_RANGE,
};

impl Network {
    /// The pod range in CIDR notation, e.g. `10.213.0.0/24`.
    pub fn pod_cidr(&self) -> String {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        let net = Ipv4Addr::from(u32::from(self.gateway) & mask);
        format!("{net}/{}", self.prefix)
    }
}

/// The CNI network name (also the host-local IPAM state directory).
pub const CNI_NETWORK: &str = "pier-e2e";
/// The pause image containerd's CRI plugin runs pod sandboxes from; the
/// image script builds it.
pub const PAUSE_IMAGE: &str = "pier.local/pause:3.10";

/// containerd's configuration (version 2, containerd 1.6): everything under
/// `dir`, the CRI plugin with runc and cgroupfs, CNI from Debian's plugins.
pub fn containerd(dir: &Path, cni_conf_dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: never lower a process's OOM score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        cni = cni_conf_dir.display(),
    )
}

/// The CNI network: Debian's bridge plugin on the harness's bridge (which
/// exists already, with the gateway address), host-local addresses, and
/// hairpin mode so that a pod reaches itself through a Service.
pub fn cni(network: &Network) -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "{CNI_NETWORK}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{bridge}",
      "isGateway": true,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{subnet}", "gateway": "{gateway}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
        bridge = network.bridge,
        subnet = network.pod_cidr(),
        gateway = network.gateway,
    )
}

/// Where the kubelet's files go.
#[derive(Clone, Copy, Debug)]
pub struct KubeletFiles<'a> {
    pub containerd_sock: &'a Path,
    pub client_ca: &'a Path,
    pub resolv_conf: &'a Path,
    pub pod_logs: &'a Path,
}

/// The kubelet's configuration: cgroupfs without systemd, the node IP as
/// address (serving a self-signed certificate), certificate authentication
/// from the control plane's CA, the
/// harness's CoreDNS as cluster DNS, and eviction thresholds low enough that
/// a full test disk does not evict the test's pods.
pub fn kubelet(network: &Network, port: u16, healthz_port: u16, files: KubeletFiles<'_>) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {address}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
failSwapOn: false
# Kubelet wants vm.overcommit_memory=1 and kernel.panic=10; with this off it
# sets them itself (the harness restores them).
protectKernelDefaults: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
clusterDNS:
  - {address}
resolvConf: {resolv}
podLogsDir: {logs}
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
shutdownGracePeriod: 0s
"#,
        address = network.gateway,
        sock = files.containerd_sock.display(),
        ca = files.client_ca.display(),
        resolv = files.resolv_conf.display(),
        logs = files.pod_logs.display(),
    )
}

/// kube-proxy's configuration: iptables mode, the pod range as cluster
/// range (traffic from elsewhere to a Service is masqueraded), metrics and
/// health on loopback, no conntrack sysctls touched.
pub fn kube_proxy(
    network: &Network,
    kubeconfig: &Path,
    hostname: &str,
    healthz_port: u16,
    metrics_port: u16,
) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {hostname}
bindAddress: {address}
clusterCIDR: {cidr}
healthzBindAddress: 127.0.0.1:{healthz_port}
metricsBindAddress: 127.0.0.1:{metrics_port}
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  syncPeriod: 5s
  minSyncPeriod: 0s
"#,
        kubeconfig = kubeconfig.display(),
        address = network.gateway,
        cidr = network.pod_cidr(),
    )
}

/// CoreDNS's Corefile: the cluster domain from the API server, on the node
/// IP only; names outside the cluster get no answer (nothing is forwarded
/// off the machine).
pub fn corefile(network: &Network, kubeconfig: &Path) -> String {
    format!(
        r#".:53 {{
    bind {address}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} pier-e2e
        pods insecure
        ttl 5
    }}
    cache 5
}}
"#,
        address = network.gateway,
        kubeconfig = kubeconfig.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_range_is_the_gateway_subnet() {
        assert_eq!(NETWORK.pod_cidr(), "10.213.0.0/24");
    }

    #[test]
    fn cni_config_is_json_on_the_harness_bridge() {
        let text = cni(&NETWORK);
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let bridge = &value["plugins"][0];
        assert_eq!(bridge["bridge"], NETWORK.bridge);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.213.0.0/24");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "10.213.0.1");
    }

    #[test]
    fn kubelet_and_kube_proxy_configs_are_yaml_with_the_node_address() {
        let p = Path::new("/x");
        let files = KubeletFiles {
            containerd_sock: p,
            client_ca: p,
            resolv_conf: p,
            pod_logs: p,
        };
        let kubelet: serde_json::Value =
            serde_saphyr::from_str(&kubelet(&NETWORK, 1, 2, files)).expect("YAML");
        assert_eq!(kubelet["address"].as_str(), Some("10.213.0.1"));
        assert_eq!(kubelet["clusterDNS"][0].as_str(), Some("10.213.0.1"));
        let proxy: serde_json::Value =
            serde_saphyr::from_str(&kube_proxy(&NETWORK, p, "node", 3, 4)).expect("YAML");
        assert_eq!(proxy["clusterCIDR"].as_str(), Some("10.213.0.0/24"));
        assert_eq!(proxy["mode"].as_str(), Some("iptables"));
    }
}
