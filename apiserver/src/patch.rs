//! Patches: JSON merge patch (RFC 7386), JSON Patch (RFC 6902), and strategic merge
//! patch with the merge keys of the built-in lists kubectl patches.

use serde_json::{Map, Value};

use crate::status::{ApiError, ApiResult};

/// RFC 7386: objects merge, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The merge key of the lists Kubernetes merges by key rather than replaces, by field name.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "tolerations" => "key",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Strategic merge patch: like a merge patch, but lists of keyed items (containers by
/// name, ports by containerPort, ...) merge item by item; `$patch: delete` removes an
/// item, `$patch: replace` replaces the whole map; `$setElementOrder/...` and
/// `$retainKeys` directives are accepted and need no action here.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut v = patch.clone();
        v.as_object_mut().expect("an object").remove("$patch");
        *target = v;
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(gone)) = (t.get_mut(field), v) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v, t.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(existing))) => {
                for item in items {
                    let id = item.get(key).cloned();
                    let pos = id.as_ref().and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            existing.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic_merge_patch(&mut existing[i], item)?,
                        (None, false) => existing.push(item.clone()),
                    }
                }
            }
            (_, Value::Object(_), Some(existing)) => strategic_merge_patch(existing, v)?,
            _ => {
                let mut v = v.clone();
                strip_directives(&mut v);
                t.insert(k.clone(), v);
            }
        }
    }
    Ok(())
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => {
            a.retain(|x| x.get("$patch").and_then(Value::as_str) != Some("delete"));
            a.iter_mut().for_each(strip_directives);
        }
        _ => {}
    }
}

/// RFC 6902 JSON Patch: add, remove, replace, move, copy, test.
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops = patch.as_array().ok_or_else(|| ApiError::bad_request("a JSON Patch must be an array of operations"))?;
    for op in ops {
        let kind = op["op"].as_str().ok_or_else(|| ApiError::bad_request("a JSON Patch operation needs \"op\""))?;
        let path = op["path"].as_str().ok_or_else(|| ApiError::bad_request("a JSON Patch operation needs \"path\""))?;
        match kind {
            "add" => add(target, path, op["value"].clone())?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, op["value"].clone())?;
            }
            "move" | "copy" => {
                let from = op["from"].as_str().ok_or_else(|| ApiError::bad_request("move and copy need \"from\""))?;
                let v = if kind == "move" {
                    remove(target, from)?
                } else {
                    target.pointer(from).cloned().ok_or_else(|| missing(from))?
                };
                add(target, path, v)?;
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(ApiError::new(422, "Invalid", format!("the test operation on {path} failed")));
                }
            }
            other => return Err(ApiError::bad_request(format!("unknown JSON Patch operation {other:?}"))),
        }
    }
    Ok(())
}

fn missing(path: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("the server rejected our request due to an error in our request: path {path} does not exist"),
    )
}

fn split(path: &str) -> ApiResult<(String, String)> {
    let (parent, last) =
        path.rsplit_once('/').ok_or_else(|| ApiError::bad_request(format!("bad JSON pointer {path:?}")))?;
    Ok((parent.to_string(), last.replace("~1", "/").replace("~0", "~")))
}

fn add(target: &mut Value, path: &str, value: Value) -> ApiResult<()> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match target.pointer_mut(&parent).ok_or_else(|| missing(&parent))? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| missing(path))?;
                if i > a.len() {
                    return Err(missing(path));
                }
                a.insert(i, value);
            }
        }
        _ => return Err(missing(path)),
    }
    Ok(())
}

fn remove(target: &mut Value, path: &str) -> ApiResult<Value> {
    let (parent, last) = split(path)?;
    match target.pointer_mut(&parent).ok_or_else(|| missing(&parent))? {
        Value::Object(m) => m.remove(&last).ok_or_else(|| missing(path)),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing(path))?;
            if i >= a.len() {
                return Err(missing(path));
            }
            Ok(a.remove(i))
        }
        _ => Err(missing(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}});
        let p = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "y:2"}, {"name": "c", "image": "z"}]}});
        strategic_merge_patch(&mut t, &p).unwrap();
        assert_eq!(t["spec"]["containers"][0]["image"], "x:1");
        assert_eq!(t["spec"]["containers"][1]["image"], "y:2");
        assert_eq!(t["spec"]["containers"][2]["name"], "c");
        strategic_merge_patch(&mut t, &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})).unwrap();
        assert_eq!(t["spec"]["containers"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn json_patch_rfc6902() {
        let mut t = json!({"spec": {"template": {"a": 1}}, "metadata": {"annotations": {"x": "1"}}});
        json_patch(
            &mut t,
            &json!([{"op": "replace", "path": "/spec/template", "value": {"b": 2}},
                    {"op": "add", "path": "/metadata/labels", "value": {"app": "web"}},
                    {"op": "remove", "path": "/metadata/annotations/x"},
                    {"op": "test", "path": "/spec/template/b", "value": 2}]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"spec": {"template": {"b": 2}}, "metadata": {"annotations": {}, "labels": {"app": "web"}}})
        );
        assert!(json_patch(&mut t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
