"""The Python `kubernetes` client against `skiff apiserver` (run by tests/apiserver.rs).

Usage: k8s_client.py KUBECONFIG. Exits non-zero, with the failing assertion, on any
deviation. Expects the store compacted before it runs (for the 410 check)."""

import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()

ver = client.VersionApi().get_code()
assert ver.major == "1" and ver.minor == "32", ver

# Create, read, list with selectors.
cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"app": "py"}), data={"a": "1"})
created = v1.create_namespaced_config_map("default", cm)
assert created.metadata.uid and created.metadata.resource_version, created.metadata
got = v1.read_namespaced_config_map("py", "default")
assert got.data == {"a": "1"}, got.data
names = [i.metadata.name for i in v1.list_namespaced_config_map("default", label_selector="app=py").items]
assert names == ["py"], names
names = [i.metadata.name for i in v1.list_namespaced_config_map("default", label_selector="app notin (py)").items]
assert "py" not in names, names
try:
    v1.create_namespaced_config_map("default", cm)
    raise AssertionError("creating twice must fail")
except ApiException as e:
    assert e.status == 409 and "AlreadyExists" in e.body, (e.status, e.body)

# Optimistic concurrency: a replace with a stale resourceVersion is a 409 Conflict.
got.data = {"a": "2"}
v1.replace_namespaced_config_map("py", "default", got)
got.data = {"a": "3"}
try:
    v1.replace_namespaced_config_map("py", "default", got)
    raise AssertionError("a stale replace must fail")
except ApiException as e:
    assert e.status == 409 and "Conflict" in e.body, (e.status, e.body)

# A Deployment: create from a dict, strategic-merge patch, read back typed.
dep = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
        },
    },
}
apps.create_namespaced_deployment("default", dep)
apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 4}})
d = apps.read_namespaced_deployment("web", "default")
assert d.spec.replicas == 4 and d.metadata.generation == 2, (d.spec.replicas, d.metadata.generation)
assert d.spec.strategy.type == "RollingUpdate", d.spec.strategy
scale = apps.read_namespaced_deployment_scale("web", "default")
assert scale.spec.replicas == 4, scale
apps.delete_namespaced_deployment("web", "default", propagation_policy="Background")
try:
    apps.read_namespaced_deployment("web", "default")
    raise AssertionError("deleted")
except ApiException as e:
    assert e.status == 404, e.status

# Watch from a resourceVersion replays what happened after it.
rv = v1.list_namespaced_config_map("default").metadata.resource_version
v1.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py2")))
v1.patch_namespaced_config_map("py2", "default", {"data": {"k": "v"}})
v1.delete_namespaced_config_map("py2", "default")
events = [
    (e["type"], e["object"].metadata.name)
    for e in watch.Watch().stream(v1.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=2)
]
assert events == [("ADDED", "py2"), ("MODIFIED", "py2"), ("DELETED", "py2")], events

# A watch from a compacted revision: the client sees 410 Expired.
try:
    for _ in watch.Watch().stream(v1.list_namespaced_config_map, "default", resource_version="2", timeout_seconds=2):
        pass
    raise AssertionError("a watch from a compacted revision must fail")
except ApiException as e:
    assert e.status == 410, (e.status, e.reason)

print("python client: ok")
