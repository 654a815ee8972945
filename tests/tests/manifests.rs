//! The Kubernetes manifests against the real binaries: every overlay renders with
//! kustomize, and every container's command line, with its environment expanded as
//! Kubernetes would, passes the binary's `--check-config` (so a manifest can never drift
//! from the flags). Plus the rules the deployment issue sets: shard index from the
//! ordinal, the shape consistent everywhere, gRPC probes, a locked-down pod, scraping,
//! disruption budgets, the network policy, and models equal to deploy/models/default.

use base64::Engine;
use serde_json::Value;
use shardrank_tests::{run, scratch_dir};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const OVERLAYS: [&str; 2] = ["dev", "prod"];

fn render(overlay: &str) -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/overlays");
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", &format!("{dir}/{overlay}")])
        .output()
        .expect("kubectl (with kustomize) is needed to render deploy/k8s; .ci/run expects it on the machine image");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn config(docs: &[Value], prefix: &str) -> &'static Value {
    let d = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no ConfigMap {prefix}"));
    Box::leak(Box::new(d.clone()))
}

/// `$(VAR)` expanded from the container's env (values, ConfigMap keys, the pod index).
fn expand(arg: &str, env: &HashMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    assert!(!out.contains("$("), "unexpanded variable in {arg:?}");
    out
}

fn container_env(docs: &[Value], c: &Value, pod_index: u32) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let name = from["configMapRef"]["name"].as_str().unwrap();
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("envFrom names ConfigMap {name}, which is not rendered"));
        for (k, v) in cm["data"].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().to_string());
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            let path = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap();
            assert_eq!(
                path, "metadata.labels['apps.kubernetes.io/pod-index']",
                "the only field a container reads is its pod index"
            );
            pod_index.to_string()
        };
        env.insert(name, value);
    }
    env
}

/// Writes the pipelines ConfigMap's files to a directory, as the volume mount would,
/// checking they are the ones in deploy/pipelines.
fn materialize_pipelines(docs: &[Value], dir: &Path) {
    let cm = config(docs, "shardrank-pipelines");
    for (file, text) in cm["data"].as_object().unwrap() {
        let shipped = std::fs::read_to_string(format!(
            "{}/../deploy/pipelines/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert!(
            text.as_str() == Some(shipped.as_str()),
            "the {file} in the ConfigMap differs from deploy/pipelines/{file}"
        );
        std::fs::write(dir.join(file), shipped).unwrap();
    }
}

/// Writes the models ConfigMap's files to a directory, as the volume mount would.
fn materialize_models(docs: &[Value], dir: &Path) {
    let cm = config(docs, "shardrank-models");
    for (file, b64) in cm["binaryData"].as_object().unwrap() {
        let clean: String = b64.as_str().unwrap().split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(clean)
            .unwrap();
        let shipped = std::fs::read(format!(
            "{}/../deploy/models/default/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert!(
            bytes == shipped,
            "the {file} in the ConfigMap differs from deploy/models/default/{file}"
        );
        std::fs::write(dir.join(file), bytes).unwrap();
    }
}

#[test]
fn every_container_command_line_passes_the_binarys_check() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let models = scratch_dir("k8s-models");
        materialize_models(&docs, &models);
        let pipelines = scratch_dir("k8s-pipelines");
        materialize_pipelines(&docs, &pipelines);
        let shape = &config(&docs, "shardrank-config")["data"];
        let num_shards: u32 = shape["NUM_SHARDS"].as_str().unwrap().parse().unwrap();
        let workloads: Vec<&Value> = of_kind(&docs, "Deployment")
            .into_iter()
            .chain(of_kind(&docs, "StatefulSet"))
            .collect();
        assert!(workloads.len() >= 2, "{overlay}: no workloads rendered");
        let mut checked = 0;
        for w in workloads {
            let stateful = w["kind"] == "StatefulSet";
            // Check the first and the last ordinal of a StatefulSet.
            let indexes = if stateful {
                vec![0, num_shards - 1]
            } else {
                vec![0]
            };
            for c in w["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
            {
                for &i in &indexes {
                    let env = container_env(&docs, c, i);
                    let cmd: Vec<String> = c["command"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .chain(c["args"].as_array().into_iter().flatten())
                        .map(|a| expand(a.as_str().unwrap(), &env))
                        .map(|a| a.replace("/etc/shardrank/models", models.to_str().unwrap()))
                        .map(|a| a.replace("/etc/shardrank/pipelines", pipelines.to_str().unwrap()))
                        .collect();
                    let binary = Path::new(&cmd[0]).file_name().unwrap().to_str().unwrap();
                    let mut args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
                    args.push("--check-config");
                    let (code, out, err) = run(binary, &args, Duration::from_secs(60));
                    assert_eq!(
                        code,
                        Some(0),
                        "{overlay} {}: {cmd:?} fails its check:\n{err}",
                        w["metadata"]["name"]
                    );
                    assert!(out.contains("configuration ok"), "{out}");
                    if stateful {
                        assert!(
                            out.contains(&format!("shard {i} of {num_shards}")),
                            "{overlay}: ordinal {i} must be shard {i}: {out}"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 3, "{overlay}: {checked} command lines checked");
    }
}

#[test]
fn the_shape_is_consistent_and_replicas_are_spread() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let shape = &config(&docs, "shardrank-config")["data"];
        let n: u64 = shape["NUM_SHARDS"].as_str().unwrap().parse().unwrap();
        let r: u64 = shape["REPLICAS"].as_str().unwrap().parse().unwrap();
        let groups = of_kind(&docs, "StatefulSet");
        assert_eq!(
            groups.len() as u64,
            r,
            "{overlay}: one StatefulSet per replica"
        );
        for (k, g) in groups.iter().enumerate() {
            assert_eq!(g["metadata"]["name"], format!("shardrank-shard-r{k}"));
            assert_eq!(
                g["spec"]["replicas"], n,
                "{overlay}: ordinals 0..NUM_SHARDS"
            );
            assert_eq!(g["spec"]["serviceName"], "shardrank-shard");
            let spread = &g["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
            assert_eq!(spread["matchLabelKeys"][0], "apps.kubernetes.io/pod-index");
            if overlay == "prod" {
                assert_eq!(spread["whenUnsatisfiable"], "DoNotSchedule");
            }
        }
        let headless = of_kind(&docs, "Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == "shardrank-shard")
            .unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
        assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    }
}

#[test]
fn pods_are_probed_over_grpc_locked_down_and_scraped() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        for w in of_kind(&docs, "Deployment")
            .into_iter()
            .chain(of_kind(&docs, "StatefulSet"))
        {
            let pod = &w["spec"]["template"];
            let spec = &pod["spec"];
            let name = &w["metadata"]["name"];
            assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
            let c = &spec["containers"][0];
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
            let port = |n: &str| {
                c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == n)
                    .unwrap()["containerPort"]
                    .as_u64()
                    .unwrap()
            };
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                assert_eq!(c[probe]["grpc"]["port"], port("grpc"), "{name} {probe}");
            }
            let ann = &pod["metadata"]["annotations"];
            assert_eq!(ann["prometheus.io/scrape"], "true", "{name}");
            assert_eq!(
                ann["prometheus.io/port"],
                port("admin").to_string(),
                "{name}"
            );
            assert!(c["resources"]["requests"]["cpu"].is_string(), "{name}");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
        }
        let pdbs = of_kind(&docs, "PodDisruptionBudget");
        let shard_pdb = pdbs
            .iter()
            .find(|p| {
                p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "shardrank-shard"
            })
            .expect("a PDB over the shards");
        assert_eq!(shard_pdb["spec"]["maxUnavailable"], 1);
        assert!(pdbs.len() >= 2);
        let hpa = &of_kind(&docs, "HorizontalPodAutoscaler")[0];
        assert_eq!(
            hpa["spec"]["scaleTargetRef"]["name"],
            "shardrank-coordinator"
        );
        // Only the coordinator reaches the shards' gRPC port.
        let np = of_kind(&docs, "NetworkPolicy")
            .into_iter()
            .find(|p| p["metadata"]["name"] == "shardrank-shard")
            .expect("a NetworkPolicy for the shards");
        for rule in np["spec"]["ingress"].as_array().unwrap() {
            if rule["ports"][0]["port"] == 7001 {
                assert_eq!(
                    rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
                    "shardrank-coordinator"
                );
                assert_eq!(rule["from"].as_array().unwrap().len(), 1);
            }
        }
    }
}
