//! Resources served under several versions from one stored object. HPAs are stored in
//! their autoscaling/v2 form and converted for autoscaling/v1 on the way in and out:
//! v1's `targetCPUUtilizationPercentage` is v2's CPU `Utilization` resource metric.

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::registry::Resource;

fn is_hpa_v1(r: &Resource) -> bool {
    r.group == "autoscaling" && r.version == "v1"
}

/// Does the resource's version show `obj` (in its stored form) differently?
pub fn needs_view(r: &Resource, obj: &Value) -> bool {
    is_hpa_v1(r) && obj["apiVersion"] == "autoscaling/v2"
}

/// The object as the resource's version shows it (from the stored form).
pub fn to_view(r: &Resource, mut obj: Value) -> Value {
    if !needs_view(r, &obj) {
        return obj;
    }
    obj["apiVersion"] = json!("autoscaling/v1");
    let cpu = |metrics: &Value, field: &str| {
        metrics.as_array().and_then(|ms| {
            ms.iter()
                .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
                .and_then(|m| m["resource"][field]["averageUtilization"].as_i64())
        })
    };
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(p) = cpu(spec.get("metrics").unwrap_or(&Value::Null), "target") {
            spec.insert("targetCPUUtilizationPercentage".into(), json!(p));
        }
        spec.remove("metrics");
        spec.remove("behavior");
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        if let Some(p) = cpu(status.get("currentMetrics").unwrap_or(&Value::Null), "current") {
            status.insert("currentCPUUtilizationPercentage".into(), json!(p));
        }
        status.remove("currentMetrics");
        status.remove("conditions");
    }
    obj
}

/// The stored form of an object written through the resource's version.
pub fn to_storage<'a>(r: &Resource, obj: &'a Value) -> Cow<'a, Value> {
    if !is_hpa_v1(r) {
        return Cow::Borrowed(obj);
    }
    let mut obj = obj.clone();
    obj["apiVersion"] = json!("autoscaling/v2");
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(p) = spec.remove("targetCPUUtilizationPercentage") {
            spec.insert(
                "metrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": p}}}]),
            );
        }
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        if let Some(p) = status.remove("currentCPUUtilizationPercentage") {
            status.insert(
                "currentMetrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": p}}}]),
            );
        }
    }
    Cow::Owned(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_v1_and_v2_are_views_of_one_object() {
        let v1 = crate::registry::find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let obj = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                     "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 80}});
        let stored = to_storage(v1, &obj);
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
        assert!(stored["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(to_view(v1, stored.into_owned()), obj);
        let v2 = crate::registry::find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        assert_eq!(*to_storage(v2, &obj), obj, "other resources pass through");
    }
}
