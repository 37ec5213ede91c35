//! Which container and pod a traced process belongs to.
//!
//! The container id and pod UID come from the process's cgroup path (cgroup v1 or v2, the
//! cgroupfs and systemd drivers, containerd, CRI-O, Docker). When running in Kubernetes
//! the pod's name and namespace come from the kubelet's pod directory
//! (`/var/lib/kubelet/pods/<uid>/`, mounted read-only into the agent): the namespace from
//! the service-account volume, the name from the pod's managed hosts file.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Where a process runs. Empty fields are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Workload {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `[kubernetes]`: pod attribution.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// "auto" (when `KUBERNETES_SERVICE_HOST` is set), "on" or "off".
    pub pod_names: String,
    /// The kubelet's pod directory as seen by the agent.
    pub pods_dir: PathBuf,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            pod_names: "auto".into(),
            pods_dir: "/var/lib/kubelet/pods".into(),
        }
    }
}

impl KubernetesConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self.pod_names.as_str() {
            "auto" | "on" | "off" => Ok(()),
            other => Err((
                "kubernetes.pod_names",
                format!("{other:?} is not auto, on or off"),
            )),
        }
    }

    fn enabled(&self) -> bool {
        match self.pod_names.as_str() {
            "on" => true,
            "off" => false,
            _ => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID: 32 hex digits in 8-4-4-4-12 groups (the systemd driver writes `_`).
fn pod_uid(s: &str) -> Option<String> {
    let uid = s.replace('_', "-");
    let groups: Vec<&str> = uid.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then_some(uid)
}

/// Container id and pod UID from the text of `/proc/<pid>/cgroup`.
pub fn from_cgroup(text: &str) -> Workload {
    let mut w = Workload::default();
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or_default();
        for segment in path.split('/') {
            let seg = segment
                .trim_end_matches(".scope")
                .trim_end_matches(".slice");
            // containerd / CRI-O / Docker / podman prefixes, or a bare id (cgroupfs driver)
            let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
            if is_hex64(id) {
                w.container_id = Some(id.to_string());
            }
            if let Some(pos) = seg.rfind("pod") {
                if let Some(uid) = pod_uid(&seg[pos + 3..]) {
                    w.pod_uid = Some(uid);
                }
            }
        }
        if w.container_id.is_some() {
            break;
        }
    }
    w
}

/// Pod name and namespace from the kubelet's directory of pod `uid`.
pub fn pod_identity(pods_dir: &Path, uid: &str) -> (Option<String>, Option<String>) {
    let dir = pods_dir.join(uid);
    let name = std::fs::read_to_string(dir.join("etc-hosts"))
        .ok()
        .and_then(|hosts| {
            hosts
                .lines()
                .rfind(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        });
    let namespace = std::fs::read_dir(dir.join("volumes/kubernetes.io~projected"))
        .ok()
        .and_then(|volumes| {
            volumes.flatten().find_map(|v| {
                std::fs::read_to_string(v.path().join("namespace"))
                    .ok()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
            })
        });
    (name, namespace)
}

/// Looks workloads up per process, caching them for a while.
pub struct WorkloadResolver {
    config: KubernetesConfig,
    pod_names: bool,
    cache: HashMap<u32, (Arc<Workload>, Instant)>,
}

const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 16_384;

impl WorkloadResolver {
    pub fn new(config: KubernetesConfig) -> Self {
        let pod_names = config.enabled();
        Self {
            config,
            pod_names,
            cache: HashMap::new(),
        }
    }

    /// The workload of `pid` (empty for processes outside containers).
    pub fn resolve(&mut self, pid: u32) -> Arc<Workload> {
        let now = Instant::now();
        if let Some((w, at)) = self.cache.get(&pid) {
            if now.duration_since(*at) < CACHE_TTL {
                return Arc::clone(w);
            }
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache
                .retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
        }
        let mut w = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| from_cgroup(&t))
            .unwrap_or_default();
        if self.pod_names {
            if let Some(uid) = &w.pod_uid {
                (w.pod, w.namespace) = pod_identity(&self.config.pods_dir, uid);
            }
        }
        let w = Arc::new(w);
        self.cache.insert(pid, (Arc::clone(&w), now));
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c0a7b9d2e4f6a8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

    #[test]
    fn cgroup_v2_systemd_driver_containerd() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234abcd_5678_90ef_1234_567890abcdef.slice/cri-containerd-{ID}.scope\n"
        );
        let w = from_cgroup(&text);
        assert_eq!(w.container_id.as_deref(), Some(ID));
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("1234abcd-5678-90ef-1234-567890abcdef")
        );
    }

    #[test]
    fn cgroup_v1_cgroupfs_driver() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod1234abcd-5678-90ef-1234-567890abcdef/{ID}\n11:memory:/kubepods/besteffort/pod1234abcd-5678-90ef-1234-567890abcdef/{ID}\n"
        );
        let w = from_cgroup(&text);
        assert_eq!(w.container_id.as_deref(), Some(ID));
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("1234abcd-5678-90ef-1234-567890abcdef")
        );
    }

    #[test]
    fn docker_and_crio_and_plain_hosts() {
        let docker = from_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(docker.container_id.as_deref(), Some(ID));
        assert_eq!(docker.pod_uid, None);
        let crio = from_cgroup(&format!(
            "0::/kubepods.slice/kubepods-pod1234abcd_5678_90ef_1234_567890abcdef.slice/crio-{ID}.scope\n"
        ));
        assert_eq!(crio.container_id.as_deref(), Some(ID));
        assert!(crio.pod_uid.is_some());
        assert!(from_cgroup("0::/user.slice/session-3.scope\n").is_empty());
        assert!(from_cgroup("garbage\n\n::\n").is_empty());
        assert!(
            from_cgroup("4:memory:/process_api/186b425eb726bbac5e6d7ef0627a015e\n0::/\n")
                .is_empty()
        );
    }

    #[test]
    fn pod_name_and_namespace_from_kubelet_dir() {
        let dir = std::env::temp_dir().join(format!("observer-pods-{}", std::process::id()));
        let uid = "1234abcd-5678-90ef-1234-567890abcdef";
        let pod = dir.join(uid);
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~projected/kube-api-access-x7k2p"))
            .unwrap();
        std::fs::write(
            pod.join("etc-hosts"),
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost\n10.244.1.7\tcheckout-7d9f5\n",
        )
        .unwrap();
        std::fs::write(
            pod.join("volumes/kubernetes.io~projected/kube-api-access-x7k2p/namespace"),
            "shop",
        )
        .unwrap();
        assert_eq!(
            pod_identity(&dir, uid),
            (Some("checkout-7d9f5".into()), Some("shop".into()))
        );
        assert_eq!(pod_identity(&dir, "nope"), (None, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_process_resolves_without_error() {
        let mut r = WorkloadResolver::new(KubernetesConfig {
            pod_names: "off".into(),
            ..Default::default()
        });
        let a = r.resolve(std::process::id());
        let b = r.resolve(std::process::id());
        assert!(Arc::ptr_eq(&a, &b), "cached");
        assert!(r.resolve(u32::MAX).is_empty());
    }
}
