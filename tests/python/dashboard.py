"""Drives the Skiff dashboard in headless Chromium, as a user would.

usage: dashboard.py URL KUBECONFIG KUBECTL ARTIFACTS_DIR

URL is the dashboard served by `skiff dashboard`; kubectl changes the cluster behind the
page's back and checks what the page's buttons did. Screenshots go to ARTIFACTS_DIR
(overview.png, workloads.png, pod.png; failure.png when a wait times out).
Prints "dashboard: ok" at the end.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

URL, KUBECONFIG, KUBECTL, ARTIFACTS = sys.argv[1:5]
os.makedirs(ARTIFACTS, exist_ok=True)


def kubectl(*args, stdin=None):
    r = subprocess.run([KUBECTL, "--kubeconfig", KUBECONFIG, *args], input=stdin, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return r.stdout


profile = tempfile.mkdtemp(prefix="skiff-chromium-")
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
# No background traffic: Chromium must talk to nothing but the dashboard on loopback.
for arg in [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    f"--user-data-dir={profile}",
]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def page_text(css="body"):
    return driver.find_element(By.CSS_SELECTOR, css).text


def wait_for(what, cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = cond()
            if value:
                return value
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        time.sleep(0.25)
    driver.save_screenshot(os.path.join(ARTIFACTS, "failure.png"))
    console = "\n".join(e["message"] for e in driver.get_log("browser"))
    raise SystemExit(f"timed out after {timeout} s waiting for {what}\npage:\n{page_text()}\nconsole:\n{console}")


def rows(section):
    """The cells' texts of each row of the table in section #`section`."""
    out = []
    for tr in driver.find_elements(By.CSS_SELECTOR, f"#{section} tbody tr"):
        out.append([td.text for td in tr.find_elements(By.TAG_NAME, "td")])
    return out


def web_pods(status="Running"):
    return [r for r in rows("pods") if r[0].startswith("web-") and r[2] == status]


def click(css, done=None, what=None):
    """Clicks the element when it is there, as often as needed until `done()` holds:
    the page redraws what changed on every watch event, so an element found a moment ago
    may have been replaced, and a click can land between two drawings."""

    def attempt():
        driver.find_element(By.CSS_SELECTOR, css).click()
        if done is None:
            return True
        deadline = time.time() + 5
        while time.time() < deadline:
            if done():
                return True
            time.sleep(0.2)
        return False

    wait_for(what or f"{css} to be clickable", attempt, timeout=60)


def nav(view):
    click(f'nav a[data-view="{view}"]')


try:
    # Overview: the node, the store member, both with their status.
    driver.get(URL)
    wait_for("the node to show as Ready", lambda: any(r[0] == "up-test" and r[1] == "Ready" for r in rows("nodes")))
    wait_for("the store member to show as leader", lambda: any(r[2] == "leader" for r in rows("store")))
    assert "1/1" in page_text("#card-nodes"), page_text("#card-nodes")

    # A Deployment applied with kubectl shows up with its pods.
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {
                    "labels": {"app": "web"},
                    "annotations": {"fake.skiff.io/cpu-usage": "150m", "fake.skiff.io/memory-usage": "40Mi"},
                },
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
            },
        },
    }
    nav("workloads")
    wait_for("the workloads page", lambda: driver.find_elements(By.CSS_SELECTOR, "#deployments"))
    kubectl("apply", "-f", "-", stdin=json.dumps(deployment))
    wait_for("2 web pods Running", lambda: len(web_pods()) == 2)
    wait_for("the Deployment to show 2/2", lambda: any(r[0] == "web" and r[2] == "2/2" for r in rows("deployments")))

    # Scale with the page's own controls; the page sees the new pods through its watch.
    def set_replicas():
        box = driver.find_element(By.ID, "replicas/deployments/default/web")
        box.clear()
        box.send_keys("4")
        return box.get_attribute("value") == "4"

    wait_for("the replica box to take 4", set_replicas, timeout=10)
    click('button.scale[data-name="web"]', lambda: "Scaled deployment web to 4." in page_text("#error"), "the scale notice")
    wait_for("4 web pods Running", lambda: len(web_pods()) == 4)
    wait_for("the Deployment to show 4/4", lambda: any(r[0] == "web" and r[2] == "4/4" for r in rows("deployments")))
    replicas = kubectl("get", "deployment", "web", "-o", "jsonpath={.spec.replicas}")
    assert replicas == "4", f"kubectl sees {replicas} replicas"
    driver.save_screenshot(os.path.join(ARTIFACTS, "workloads.png"))

    # Restart: a rollout with a new ReplicaSet, as `kubectl rollout restart` makes.
    click('button.restart[data-name="web"]', lambda: "Restarting deployment web." in page_text("#error"), "the restart notice")
    restarted = kubectl(
        "get", "deployment", "web", "-o", "jsonpath={.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}"
    )
    assert restarted.strip(), "no restartedAt annotation"
    wait_for("a second ReplicaSet", lambda: len([r for r in rows("replicasets") if r[0].startswith("web-")]) == 2)
    out = kubectl("rollout", "status", "deployment/web", "--timeout=120s")
    assert "successfully rolled out" in out, out
    wait_for("4 web pods Running after the restart", lambda: len(web_pods()) == 4 and len(rows("pods")) == 4)

    # One pod's page: its status and node.
    click("#pods tbody tr a.pod")
    wait_for("the pod page", lambda: "Running" in page_text("#pod") and "up-test" in page_text("#pod"))
    # Simulated nodes have no logs: the page says so instead of failing quietly.
    wait_for("the logs' explanation", lambda: "has no agent endpoint (a simulated node)" in page_text("#logs"))
    driver.save_screenshot(os.path.join(ARTIFACTS, "pod.png"))

    # Services and events, including text that must stay text.
    kubectl("expose", "deployment", "web", "--port=80")
    nav("services")
    wait_for("the web Service", lambda: any(r[0] == "web" and r[2] == "ClusterIP" for r in rows("services")))
    wait_for("the web endpoints", lambda: any(r[0] == "web" and r[2].count(":80") == 4 for r in rows("endpoints")))
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "markup"},
        "involvedObject": {"kind": "Pod", "name": "x", "namespace": "default"},
        "reason": "Test",
        "message": '<b id="injected">bold</b>',
        "type": "Normal",
    }
    kubectl("create", "-f", "-", stdin=json.dumps(event))
    nav("events")
    wait_for("the ScalingReplicaSet events", lambda: any(r[2] == "ScalingReplicaSet" for r in rows("events")))
    wait_for("the test event, as text", lambda: any(r[4] == '<b id="injected">bold</b>' for r in rows("events")))
    assert not driver.find_elements(By.ID, "injected"), "an event message was rendered as markup"

    # Usage over time: the API server samples every 15 s.
    nav("overview")
    wait_for("a node usage sample", lambda: "up-test" in page_text("#usage .legend"), timeout=120)
    wait_for("the node's CPU use", lambda: any(r[0] == "up-test" and r[2].startswith("600m /") for r in rows("nodes")), timeout=120)
    driver.save_screenshot(os.path.join(ARTIFACTS, "overview.png"))
    assert "1/1" in page_text("#card-deployments"), page_text("#card-deployments")
finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)

print("dashboard: ok")
