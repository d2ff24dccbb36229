//! `as=Table` responses: the columns `kubectl get` prints, computed on the server
//! as kube-apiserver's printers do.

use serde_json::{json, Value};

use crate::object::parse_rfc3339;
use crate::registry::Resource;

/// Kubernetes' HumanDuration: `45s`, `5m2s`, `3h`, `2d5h`, `400d`, `2y3d`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        let d = h / 24;
        if d % 365 == 0 {
            format!("{}y", d / 365)
        } else {
            format!("{}y{}d", d / 365, d % 365)
        }
    } else {
        format!("{}y", h / 24 / 365)
    }
}

fn age(obj: &Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    match obj["metadata"]["creationTimestamp"].as_str().and_then(parse_rfc3339) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

/// `a,b,c + 2 more...` as kubectl prints endpoint lists; `<none>` when empty.
fn first_three(list: &[String]) -> String {
    match list.len() {
        0 => "<none>".into(),
        n if n <= 3 => list.join(","),
        n => format!("{} + {} more...", list[..3].join(","), n - 3),
    }
}

/// Access modes as kubectl abbreviates them (RWO, ROX, RWX, RWOP).
fn access_modes(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str())
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A column kubectl shows only with `-o wide`.
fn wide(mut c: Value) -> Value {
    c["priority"] = json!(1);
    c
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn col(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": description, "priority": 0})
}

fn cells(r: &Resource, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"].as_str().unwrap_or_default());
    match r.plural {
        "pods" => {
            let statuses = o["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == json!(true)).count();
            let restarts: i64 = statuses.iter().map(|c| int(&c["restartCount"])).sum();
            let mut status = o["status"]["phase"].as_str().unwrap_or("Pending").to_string();
            if let Some(reason) = o["status"]["reason"].as_str() {
                status = reason.to_string();
            }
            for c in &statuses {
                if let Some(w) = c["state"]["waiting"]["reason"].as_str() {
                    status = w.to_string();
                } else if let Some(t) = c["state"]["terminated"]["reason"].as_str() {
                    status = t.to_string();
                }
            }
            if o["metadata"]["deletionTimestamp"].is_string() {
                status = "Terminating".into();
            }
            let none = || json!("<none>");
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts),
                json!(age(o)),
                o["status"]["podIP"].as_str().map(|s| json!(s)).unwrap_or_else(none),
                o["spec"]["nodeName"].as_str().map(|s| json!(s)).unwrap_or_else(none),
                o["status"]["nominatedNodeName"].as_str().map(|s| json!(s)).unwrap_or_else(none),
                none(),
            ]
        }
        "events" => {
            let seen =
                o["lastTimestamp"].as_str().or(o["eventTime"].as_str()).or(o["metadata"]["creationTimestamp"].as_str());
            let first = o["firstTimestamp"].as_str().or(o["eventTime"].as_str());
            let since = |t: Option<&str>| match t.and_then(parse_rfc3339) {
                Some(t) => human_duration(now() - t),
                None => "<unknown>".into(),
            };
            let obj = &o["involvedObject"];
            vec![
                json!(since(seen)),
                json!(o["type"].as_str().unwrap_or("")),
                json!(o["reason"].as_str().unwrap_or("")),
                json!(format!(
                    "{}/{}",
                    obj["kind"].as_str().unwrap_or("").to_lowercase(),
                    obj["name"].as_str().unwrap_or("")
                )),
                json!(obj["fieldPath"].as_str().unwrap_or("")),
                json!(o["source"]["component"].as_str().or(o["reportingComponent"].as_str()).unwrap_or("")),
                json!(o["message"].as_str().unwrap_or("")),
                json!(since(first)),
                json!(int(&o["count"]).max(1)),
                name,
            ]
        }
        "endpoints" => {
            let mut list = Vec::new();
            for s in o["subsets"].as_array().into_iter().flatten() {
                for a in s["addresses"].as_array().into_iter().flatten() {
                    for p in s["ports"].as_array().into_iter().flatten() {
                        list.push(format!("{}:{}", a["ip"].as_str().unwrap_or(""), int(&p["port"])));
                    }
                }
            }
            vec![name, json!(first_three(&list)), json!(age(o))]
        }
        "endpointslices" => {
            let ports: Vec<String> =
                o["ports"].as_array().into_iter().flatten().map(|p| int(&p["port"]).to_string()).collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            let ports = if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") };
            vec![
                name,
                json!(o["addressType"].as_str().unwrap_or("")),
                json!(ports),
                json!(first_three(&addrs)),
                json!(age(o)),
            ]
        }
        "leases" => vec![name, json!(o["spec"]["holderIdentity"].as_str().unwrap_or("")), json!(age(o))],
        "daemonsets" => {
            let sel = o["spec"]["template"]["spec"]["nodeSelector"].as_object().map(|m| {
                m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
            });
            vec![
                name,
                json!(int(&o["status"]["desiredNumberScheduled"])),
                json!(int(&o["status"]["currentNumberScheduled"])),
                json!(int(&o["status"]["numberReady"])),
                json!(int(&o["status"]["updatedNumberScheduled"])),
                json!(int(&o["status"]["numberAvailable"])),
                json!(sel.filter(|s| !s.is_empty()).unwrap_or_else(|| "<none>".into())),
                json!(age(o)),
            ]
        }
        "jobs" => {
            let cond = |t: &str| {
                o["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let status = if cond("Complete") {
                "Complete"
            } else if cond("Failed") {
                "Failed"
            } else if o["spec"]["suspend"] == json!(true) {
                "Suspended"
            } else {
                "Running"
            };
            let start = o["status"]["startTime"].as_str().and_then(parse_rfc3339);
            let end = o["status"]["completionTime"].as_str().and_then(parse_rfc3339).unwrap_or_else(now);
            let duration = start.map(|s| human_duration(end - s)).unwrap_or_default();
            let completions = format!("{}/{}", int(&o["status"]["succeeded"]), int(&o["spec"]["completions"]).max(1));
            vec![name, json!(status), json!(completions), json!(duration), json!(age(o))]
        }
        "cronjobs" => {
            let last = match o["status"]["lastScheduleTime"].as_str().and_then(parse_rfc3339) {
                Some(t) => human_duration(now() - t),
                None => "<none>".into(),
            };
            vec![
                name,
                o["spec"]["schedule"].clone(),
                json!(o["spec"]["timeZone"].as_str().unwrap_or("<none>")),
                json!(if o["spec"]["suspend"] == json!(true) { "True" } else { "False" }),
                json!(o["status"]["active"].as_array().map_or(0, |a| a.len())),
                json!(last),
                json!(age(o)),
            ]
        }
        "deployments" => vec![
            name,
            json!(format!("{}/{}", int(&o["status"]["readyReplicas"]), int(&o["spec"]["replicas"]))),
            json!(int(&o["status"]["updatedReplicas"])),
            json!(int(&o["status"]["availableReplicas"])),
            json!(age(o)),
        ],
        "replicasets" => vec![
            name,
            json!(int(&o["spec"]["replicas"])),
            json!(int(&o["status"]["replicas"])),
            json!(int(&o["status"]["readyReplicas"])),
            json!(age(o)),
        ],
        "statefulsets" => vec![
            name,
            json!(format!("{}/{}", int(&o["status"]["readyReplicas"]), int(&o["spec"]["replicas"]))),
            json!(age(o)),
        ],
        "services" => {
            let ports = o["spec"]["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{}:{np}/{proto}", int(&p["port"])),
                                None => format!("{}/{proto}", int(&p["port"])),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
                json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
                json!("<none>"),
                json!(ports),
                json!(age(o)),
            ]
        }
        "namespaces" => vec![name, json!(o["status"]["phase"].as_str().unwrap_or("Active")), json!(age(o))],
        "horizontalpodautoscalers" => {
            let target = &o["spec"]["scaleTargetRef"];
            let reference =
                format!("{}/{}", target["kind"].as_str().unwrap_or(""), target["name"].as_str().unwrap_or(""));
            let current = |v: &Value| v.as_i64().map_or("<unknown>".to_string(), |p| format!("{p}%"));
            let targets = match o["spec"]["targetCPUUtilizationPercentage"].as_i64() {
                Some(p) => format!("cpu: {}/{p}%", current(&o["status"]["currentCPUUtilizationPercentage"])),
                None => o["spec"]["metrics"]
                    .as_array()
                    .map(|ms| {
                        ms.iter()
                            .filter(|m| m["type"] == "Resource")
                            .map(|m| {
                                let name = m["resource"]["name"].as_str().unwrap_or("");
                                let want = m["resource"]["target"]["averageUtilization"].as_i64().unwrap_or(0);
                                let now = o["status"]["currentMetrics"]
                                    .as_array()
                                    .and_then(|cs| cs.iter().find(|c| c["resource"]["name"] == name))
                                    .map(|c| c["resource"]["current"]["averageUtilization"].clone())
                                    .unwrap_or(Value::Null);
                                format!("{name}: {}/{want}%", current(&now))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<none>".into()),
            };
            vec![
                name,
                json!(reference),
                json!(targets),
                o["spec"]["minReplicas"].as_i64().map_or(json!("<unset>"), |v| json!(v)),
                json!(int(&o["spec"]["maxReplicas"])),
                json!(int(&o["status"]["currentReplicas"])),
                json!(age(o)),
            ]
        }
        "certificatesigningrequests" => {
            let conds: Vec<String> = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["status"] != "False")
                .filter_map(|c| c["type"].as_str().map(String::from))
                .collect();
            let mut condition = if conds.is_empty() { "Pending".to_string() } else { conds.join(",") };
            if o["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()) {
                condition.push_str(",Issued");
            }
            let duration = o["spec"]["expirationSeconds"].as_i64().map_or("<none>".to_string(), |s| {
                if s % 3600 == 0 {
                    format!("{}h", s / 3600)
                } else if s % 60 == 0 {
                    format!("{}m", s / 60)
                } else {
                    format!("{s}s")
                }
            });
            vec![
                name,
                json!(age(o)),
                json!(o["spec"]["signerName"].as_str().unwrap_or_default()),
                json!(o["spec"]["username"].as_str().unwrap_or_default()),
                json!(duration),
                json!(condition),
            ]
        }
        "resourcequotas" => {
            // "name: used/hard", requests (and counts) in one column, limits in the other.
            let hard = o["status"]["hard"].as_object().cloned().unwrap_or_default();
            let shown = |limits: bool| {
                hard.iter()
                    .filter(|(k, _)| k.starts_with("limits.") == limits)
                    .map(|(k, h)| {
                        let used = o["status"]["used"][k].as_str().unwrap_or("0");
                        format!("{k}: {used}/{}", h.as_str().unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![name, json!(age(o)), json!(shown(false)), json!(shown(true))]
        }
        "configmaps" => {
            let n = o["data"].as_object().map_or(0, |m| m.len()) + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), json!(age(o))]
        }
        "secrets" => vec![
            name,
            json!(o["type"].as_str().unwrap_or("Opaque")),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
            json!(age(o)),
        ],
        "nodes" => {
            let ready = o["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| if c["status"] == "True" { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let ready = if o["spec"]["unschedulable"] == json!(true) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let address = |t: &str| {
                o["status"]["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|a| a["type"] == t))
                    .and_then(|a| a["address"].as_str())
                    .unwrap_or("<none>")
                    .to_string()
            };
            let info = |k: &str| json!(o["status"]["nodeInfo"][k].as_str().unwrap_or("<unknown>"));
            vec![
                name,
                json!(ready),
                json!("<none>"),
                json!(age(o)),
                json!(o["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                info("osImage"),
                info("kernelVersion"),
                info("containerRuntimeVersion"),
            ]
        }
        "persistentvolumeclaims" => {
            let bound = o["status"]["phase"] == "Bound";
            let modes = access_modes(&o["status"]["accessModes"]);
            vec![
                name,
                json!(o["status"]["phase"].as_str().unwrap_or("Pending")),
                json!(o["spec"]["volumeName"].as_str().unwrap_or("")),
                json!(if bound { o["status"]["capacity"]["storage"].as_str().unwrap_or("") } else { "" }),
                json!(if bound { modes } else { String::new() }),
                json!(o["spec"]["storageClassName"].as_str().unwrap_or("<unset>")),
                json!(o["spec"]["volumeAttributesClassName"].as_str().unwrap_or("<unset>")),
                json!(age(o)),
            ]
        }
        "persistentvolumes" => {
            let claim = &o["spec"]["claimRef"];
            let claim = match (claim["namespace"].as_str(), claim["name"].as_str()) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => String::new(),
            };
            vec![
                name,
                json!(o["spec"]["capacity"]["storage"].as_str().unwrap_or("")),
                json!(access_modes(&o["spec"]["accessModes"])),
                json!(o["spec"]["persistentVolumeReclaimPolicy"].as_str().unwrap_or("Retain")),
                json!(o["status"]["phase"].as_str().unwrap_or("Pending")),
                json!(claim),
                json!(o["spec"]["storageClassName"].as_str().unwrap_or("")),
                json!(o["spec"]["volumeAttributesClassName"].as_str().unwrap_or("<unset>")),
                json!(o["status"]["reason"].as_str().unwrap_or("")),
                json!(age(o)),
            ]
        }
        _ => vec![name, json!(age(o))],
    }
}

fn columns(r: &Resource) -> Vec<Value> {
    let name = col("Name", "string", "Name must be unique within a namespace.");
    let age = col(
        "Age",
        "string",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    let mut cols = match r.plural {
        "pods" => vec![
            name,
            col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", "The aggregate status of the containers in this pod."),
            col("Restarts", "string", "The number of times the containers in this pod have been restarted."),
            age,
            wide(col("IP", "string", "IP address allocated to the pod.")),
            wide(col("Node", "string", "Name of the node where the pod is assigned.")),
            wide(col("Nominated Node", "string", "Name of the node nominated by the scheduler.")),
            wide(col("Readiness Gates", "string", "The readiness gates of the pod.")),
        ],
        "events" => vec![
            col("Last Seen", "string", "The time of the event's last occurrence."),
            col("Type", "string", "The type of the event."),
            col("Reason", "string", "Why the event happened."),
            col("Object", "string", "The object the event is about."),
            wide(col("Subobject", "string", "The part of the object the event is about.")),
            wide(col("Source", "string", "The component reporting the event.")),
            col("Message", "string", "A description of the event."),
            wide(col("First Seen", "string", "The time of the event's first occurrence.")),
            wide(col("Count", "integer", "How often the event occurred.")),
            wide(name.clone()),
        ],
        "endpoints" => vec![name, col("Endpoints", "string", "The endpoints of the service."), age],
        "endpointslices" => vec![
            name,
            col("AddressType", "string", "The type of the addresses."),
            col("Ports", "string", "The ports of the slice."),
            col("Endpoints", "string", "The endpoints of the slice."),
            age,
        ],
        "leases" => vec![name, col("Holder", "string", "The holder of the lease."), age],
        "daemonsets" => vec![
            name,
            col("Desired", "integer", "The number of nodes that should be running the daemon pod."),
            col("Current", "integer", "The number of nodes running at least one daemon pod."),
            col("Ready", "integer", "The number of nodes with a ready daemon pod."),
            col("Up-to-date", "integer", "The number of nodes running the updated daemon pod."),
            col("Available", "integer", "The number of nodes with an available daemon pod."),
            col("Node Selector", "string", "The node selector of the daemon pods."),
            age,
        ],
        "jobs" => vec![
            name,
            col("Status", "string", "Status of the job."),
            col(
                "Completions",
                "string",
                "The desired number of successfully finished pods the job should be run with.",
            ),
            col("Duration", "string", "Time required to complete the job."),
            age,
        ],
        "cronjobs" => vec![
            name,
            col("Schedule", "string", "The schedule in Cron format."),
            col("Timezone", "string", "The time zone name for the given schedule."),
            col("Suspend", "boolean", "Whether the controller suspends subsequent executions."),
            col("Active", "integer", "The number of pointers to currently running jobs."),
            col("Last Schedule", "date", "Information when was the last time the job was successfully scheduled."),
            age,
        ],
        "deployments" => vec![
            name,
            col("Ready", "string", "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age,
        ],
        "replicasets" => vec![
            name,
            col("Desired", "integer", "Number of desired pods."),
            col("Current", "integer", "Number of actual replicas."),
            col("Ready", "integer", "The number of ready replicas for this replica set."),
            age,
        ],
        "statefulsets" => vec![name, col("Ready", "string", "Number of the pod with ready state"), age],
        "services" => vec![
            name,
            col("Type", "string", "The type of the service."),
            col("Cluster-IP", "string", "The cluster IP of the service."),
            col("External-IP", "string", "The external IP of the service."),
            col("Port(s)", "string", "The ports of the service."),
            age,
        ],
        "namespaces" => vec![name, col("Status", "string", "The status of the namespace"), age],
        "horizontalpodautoscalers" => vec![
            name,
            col("Reference", "string", "reference to target resource"),
            col("Targets", "string", "current and target metrics"),
            col("MinPods", "string", "Lower limit for the number of pods."),
            col("MaxPods", "integer", "Upper limit for the number of pods."),
            col("Replicas", "integer", "Current number of replicas."),
            age,
        ],
        "configmaps" => vec![name, col("Data", "string", "Number of keys"), age],
        "certificatesigningrequests" => vec![
            name,
            age,
            col("SignerName", "string", "The name of the signer that should sign the certificate"),
            col("Requestor", "string", "The user who created the request"),
            col("RequestedDuration", "string", "How long the certificate is asked to be valid"),
            col("Condition", "string", "Pending, Approved, Denied or Failed, and Issued"),
        ],
        "resourcequotas" => vec![
            name,
            age,
            col("Request", "string", "Used and hard amounts of what is not a limit"),
            col("Limit", "string", "Used and hard limits"),
        ],
        "secrets" => {
            vec![name, col("Type", "string", "The type of the secret"), col("Data", "string", "Number of items"), age]
        }
        "nodes" => vec![
            name,
            col("Status", "string", "The status of the node"),
            col("Roles", "string", "The roles of the node"),
            age,
            col("Version", "string", "Kubelet Version reported by the node."),
            wide(col("Internal-IP", "string", "List of internal IPs for the node.")),
            wide(col("External-IP", "string", "List of external IPs for the node.")),
            wide(col("OS-Image", "string", "OS image reported by the node from /etc/os-release.")),
            wide(col("Kernel-Version", "string", "Kernel version reported by the node.")),
            wide(col("Container-Runtime", "string", "Container runtime version reported by the node.")),
        ],
        "persistentvolumeclaims" => vec![
            name,
            col("Status", "string", "The status of the claim."),
            col("Volume", "string", "The volume bound to the claim."),
            col("Capacity", "string", "The capacity of the volume."),
            col("Access Modes", "string", "The access modes of the volume."),
            col("StorageClass", "string", "The storage class of the claim."),
            col("VolumeAttributesClass", "string", "The volume attributes class of the claim."),
            age,
        ],
        "persistentvolumes" => vec![
            name,
            col("Capacity", "string", "The capacity of the volume."),
            col("Access Modes", "string", "The access modes of the volume."),
            col("Reclaim Policy", "string", "What happens to the volume when its claim is deleted."),
            col("Status", "string", "The phase of the volume."),
            col("Claim", "string", "The claim bound to the volume."),
            col("StorageClass", "string", "The storage class of the volume."),
            col("VolumeAttributesClass", "string", "The volume attributes class of the volume."),
            col("Reason", "string", "Why the volume is in its phase."),
            age,
        ],
        _ => vec![name, age],
    };
    for c in cols.iter_mut().filter(|c| c["name"] != "Name") {
        c["format"] = json!("");
    }
    cols
}

/// The metadata-only object a row carries (`kubectl get -A` and `--show-labels` use it).
pub fn partial_metadata(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

/// The Table row of `o`, carrying what `include` (`includeObject`) asks for.
pub fn row(r: &Resource, o: &Value, include: Option<&str>) -> Value {
    match include {
        Some("Object") => json!({"cells": cells(r, o), "object": o}),
        Some("None") => json!({"cells": cells(r, o)}),
        _ => json!({"cells": cells(r, o), "object": partial_metadata(o)}),
    }
}

/// A Table's column definitions for `r`.
pub fn column_definitions(r: &Resource) -> Value {
    Value::Array(columns(r))
}

/// A Table of `items`; `headers` false leaves out the column definitions (watch
/// events after the first, as kube-apiserver does). `include` is the request's
/// `includeObject`: each row carries the whole object (`Object`, what `kubectl get
/// --sort-by` asks for), its metadata (`Metadata`, the default) or nothing (`None`).
pub fn table(
    r: &Resource,
    items: &[Value],
    resource_version: &str,
    cont: Option<&str>,
    headers: bool,
    include: Option<&str>,
) -> Value {
    let rows: Vec<Value> = items.iter().map(|o| row(r, o, include)).collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": if headers { Value::Array(columns(r)) } else { Value::Null },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(302), "5m2s");
        assert_eq!(human_duration(3 * 3600), "3h");
        assert_eq!(human_duration(2 * 86400 + 5 * 3600), "2d5h");
        assert_eq!(human_duration(400 * 86400), "400d");
    }

    #[test]
    fn node_and_volume_rows_match_their_columns() {
        let node = json!({"metadata": {"name": "n1"}, "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0-skiff", "osImage": "Debian GNU/Linux 12", "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.6.20"}}});
        let pvc = json!({"metadata": {"name": "www-web-0"}, "spec": {"volumeName": "pv1", "storageClassName": "standard"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}});
        let pv = json!({"metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Delete", "claimRef": {"namespace": "default", "name": "www-web-0"}, "storageClassName": "standard"},
            "status": {"phase": "Bound"}});
        for (plural, obj, want) in [
            (
                "nodes",
                &node,
                vec![
                    "n1",
                    "Ready",
                    "<none>",
                    "v1.32.0-skiff",
                    "10.0.0.5",
                    "<none>",
                    "Debian GNU/Linux 12",
                    "6.1.0",
                    "containerd://1.6.20",
                ],
            ),
            ("persistentvolumeclaims", &pvc, vec!["www-web-0", "Bound", "pv1", "1Gi", "RWO", "standard", "<unset>"]),
            (
                "persistentvolumes",
                &pv,
                vec!["pv1", "1Gi", "RWO,ROX", "Delete", "Bound", "default/www-web-0", "standard", "<unset>", ""],
            ),
        ] {
            let r = crate::registry::find("", "v1", plural).unwrap();
            let t = table(r, std::slice::from_ref(obj), "7", None, true, None);
            let names: Vec<&str> =
                t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
            let cells = t["rows"][0]["cells"].as_array().unwrap();
            assert_eq!(names.len(), cells.len(), "{plural}: {names:?}");
            let shown: Vec<&str> =
                names.iter().zip(cells).filter(|(n, _)| **n != "Age").map(|(_, c)| c.as_str().unwrap()).collect();
            assert_eq!(shown, want, "{plural}");
        }
    }

    #[test]
    fn pod_rows_show_ready_status_restarts() {
        let r = crate::registry::find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{}, {}]},
            "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table(r, std::slice::from_ref(&pod), "7", None, true, None);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(
            table(r, std::slice::from_ref(&pod), "7", None, true, Some("Object"))["rows"][0]["object"],
            pod,
            "for --sort-by"
        );
        assert!(table(r, &[pod], "7", None, true, Some("None"))["rows"][0].get("object").is_none());
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], 3);
        assert_eq!(t["columnDefinitions"][1]["name"], "Ready");
    }
}
