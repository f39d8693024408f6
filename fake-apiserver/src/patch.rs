//! Merge patch (RFC 7386), JSON patch (RFC 6902) and a small strategic-merge subset.

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
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

/// Strategic merge patch, reduced to what matters for the kinds served here: a merge patch,
/// except that `metadata.finalizers` merges as a set (its patch strategy is `merge`) and
/// `$deleteFromPrimitiveList/finalizers` removes entries.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let mut patch = patch.clone();
    let mut add: Vec<Value> = Vec::new();
    let mut remove: Vec<Value> = Vec::new();
    if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(Value::Array(a)) = m.remove("finalizers") {
            add = a;
        }
        if let Some(Value::Array(a)) = m.remove("$deleteFromPrimitiveList/finalizers") {
            remove = a;
        }
    }
    merge_patch(target, &patch);
    if add.is_empty() && remove.is_empty() {
        return;
    }
    let meta = crate::util::meta_mut(target);
    let mut fins: Vec<Value> = meta
        .get("finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for f in add {
        if !fins.contains(&f) {
            fins.push(f);
        }
    }
    fins.retain(|f| !remove.contains(f));
    meta.insert("finalizers".into(), Value::Array(fins));
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("JSON pointer must start with '/': {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn get_path<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn get_parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for t in &tokens[..tokens.len().saturating_sub(1)] {
        cur = match cur {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => a.get_mut(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = split_pointer(path)?;
    if tokens.is_empty() {
        *doc = value;
        return Ok(());
    }
    let last = tokens.last().expect("non-empty").clone();
    let missing =
        || format!("add operation does not apply: doc is missing path: {path:?}: missing value");
    match get_parent_mut(doc, &tokens).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let idx: usize = last.parse().map_err(|_| {
                format!("Unable to access invalid index: {last}: invalid index referenced")
            })?;
            if idx > a.len() {
                return Err(format!(
                    "Unable to access invalid index: {idx}: invalid index referenced"
                ));
            }
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(missing()),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = split_pointer(path)?;
    let last = tokens
        .last()
        .ok_or_else(|| "unable to remove the whole document".to_string())?
        .clone();
    let missing =
        || format!("remove operation does not apply: doc is missing path: {path:?}: missing value");
    match get_parent_mut(doc, &tokens).ok_or_else(missing)? {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| format!("Unable to remove nonexistent key: {last}: missing value")),
        Value::Array(a) => {
            let idx: usize = last.parse().map_err(|_| {
                format!("Unable to access invalid index: {last}: invalid index referenced")
            })?;
            if idx >= a.len() {
                return Err(format!(
                    "Unable to access invalid index: {idx}: invalid index referenced"
                ));
            }
            Ok(a.remove(idx))
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 6902 JSON patch. Error texts follow evanphx/json-patch, which
/// kube-apiserver uses and quotes in its 422 answers.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or_else(|| {
        "json: cannot unmarshal object into Go value of type jsonpatch.Patch".to_string()
    })?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("operation missing path field: {op}"))?;
        match kind {
            "add" => add(doc, path, op.get("value").cloned().ok_or("missing value")?)?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                let tokens = split_pointer(path)?;
                if get_path(doc, &tokens).is_none() {
                    return Err(format!(
                        "replace operation does not apply: doc is missing key: {path}: missing value"
                    ));
                }
                remove(doc, path)?;
                add(doc, path, op.get("value").cloned().ok_or("missing value")?)?;
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("operation missing from field: {op}"))?;
                let value = if kind == "move" {
                    remove(doc, from)?
                } else {
                    get_path(doc, &split_pointer(from)?)
                        .cloned()
                        .ok_or_else(|| format!("copy operation does not apply: doc is missing from path: {from}: missing value"))?
                };
                add(doc, path, value)?;
            }
            "test" => {
                let expected = op.get("value").cloned().unwrap_or(Value::Null);
                let actual = get_path(doc, &split_pointer(path)?).cloned();
                let ok = match actual {
                    Some(a) => a == expected,
                    None => expected.is_null(),
                };
                if !ok {
                    return Err(format!("testing value {path} failed: test failed"));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_and_remove() {
        let mut doc = json!({"metadata": {"finalizers": ["a", "b"]}});
        let ok = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
                        {"op": "remove", "path": "/metadata/finalizers/0"}]);
        json_patch(&mut doc, &ok).unwrap();
        assert_eq!(doc, json!({"metadata": {"finalizers": ["b"]}}));
        let bad = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "a"}]);
        let err = json_patch(&mut doc, &bad).unwrap_err();
        assert_eq!(
            err,
            "testing value /metadata/finalizers/0 failed: test failed"
        );
    }

    #[test]
    fn merge_and_strategic() {
        let mut doc = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1"}}});
        strategic_merge_patch(
            &mut doc,
            &json!({"metadata": {"finalizers": ["b"], "labels": {"x": null}}}),
        );
        assert_eq!(
            doc,
            json!({"metadata": {"finalizers": ["a", "b"], "labels": {}}})
        );
        merge_patch(&mut doc, &json!({"metadata": {"finalizers": ["c"]}}));
        assert_eq!(doc["metadata"]["finalizers"], json!(["c"]));
    }
}
