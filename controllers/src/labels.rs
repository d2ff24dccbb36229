//! Label selectors (`matchLabels` and `matchExpressions`) on label maps.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Does `sel` select `labels`? An empty selector selects everything; a missing one
/// (None) nothing, as for workloads.
pub fn matches(sel: Option<&LabelSelector>, labels: Option<&BTreeMap<String, String>>) -> bool {
    let Some(sel) = sel else { return false };
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let has = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => has.is_some_and(|v| values.contains(v)),
            "NotIn" => has.is_none_or(|v| !values.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Does the map selector (a Service's `spec.selector`) select `labels`? Empty selects nothing.
pub fn map_matches(sel: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    !sel.is_empty() && labels.is_some_and(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let sel = LabelSelector {
            match_labels: Some(l(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(matches(Some(&sel), Some(&l(&[("app", "web")]))));
        assert!(!matches(Some(&sel), Some(&l(&[("app", "web"), ("tier", "db")]))));
        assert!(!matches(Some(&sel), Some(&l(&[("app", "api")]))));
        assert!(matches(Some(&LabelSelector::default()), None));
        assert!(!matches(None, Some(&l(&[("app", "web")]))));
        assert!(map_matches(&l(&[("app", "web")]), Some(&l(&[("app", "web"), ("x", "y")]))));
        assert!(!map_matches(&BTreeMap::new(), Some(&l(&[("app", "web")]))));
    }
}
