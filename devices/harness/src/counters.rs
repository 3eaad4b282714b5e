//! Counter snapshots: the per-case delta (end − begin) of every numeric leaf.

use serde_json::{Map, Value};

/// `end − begin` for every numeric leaf of `end`; a leaf missing from `begin` counts
/// from 0. Non-numeric leaves (names, kinds) keep their `end` value. Arrays of objects
/// with a `"name"` are matched by name (the `devices` list), other arrays by index.
pub fn delta(begin: &Value, end: &Value) -> Value {
    match (begin, end) {
        (_, Value::Number(e)) => num_delta(begin.as_number(), e),
        (_, Value::Object(eo)) => {
            let empty = Map::new();
            let bo = begin.as_object().unwrap_or(&empty);
            let mut out = Map::new();
            for (k, ev) in eo {
                out.insert(k.clone(), delta(bo.get(k).unwrap_or(&Value::Null), ev));
            }
            Value::Object(out)
        }
        (_, Value::Array(ea)) => {
            let empty = vec![];
            let ba = begin.as_array().unwrap_or(&empty);
            let named = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
            Value::Array(
                ea.iter()
                    .enumerate()
                    .map(|(i, ev)| {
                        let bv = match named(ev) {
                            Some(n) => ba.iter().find(|b| named(b).as_deref() == Some(&n)),
                            None => ba.get(i),
                        };
                        delta(bv.unwrap_or(&Value::Null), ev)
                    })
                    .collect(),
            )
        }
        (_, other) => other.clone(),
    }
}

fn num_delta(begin: Option<&serde_json::Number>, end: &serde_json::Number) -> Value {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    let b = match begin {
        None => Some(0),
        Some(b) => int(b),
    };
    if let (Some(b), Some(e)) = (b, int(end)) {
        let d = e - b;
        return i64::try_from(d)
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(d as f64));
    }
    let bf = begin.and_then(serde_json::Number::as_f64).unwrap_or(0.0);
    serde_json::Number::from_f64(end.as_f64().unwrap_or(0.0) - bf)
        .map_or(Value::Null, Value::Number)
}

/// The numeric leaf at a dotted path (`devices[nvme0].dma.peers.gpu0.write_bytes`):
/// a `[name]` segment selects the array element with that `"name"`.
pub fn leaf(v: &Value, path: &str) -> Option<i64> {
    let mut cur = v;
    for seg in path.split('.') {
        let (key, sel) = match seg.split_once('[') {
            Some((k, rest)) => (k, Some(rest.trim_end_matches(']'))),
            None => (seg, None),
        };
        if !key.is_empty() {
            cur = cur.get(key)?;
        }
        if let Some(name) = sel {
            cur = cur
                .as_array()?
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?;
        }
    }
    cur.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_leaves_subtract() {
        let b = json!({"a": 5, "b": {"c": 10}});
        let e = json!({"a": 7, "b": {"c": 10}});
        assert_eq!(delta(&b, &e), json!({"a": 2, "b": {"c": 0}}));
    }

    #[test]
    fn missing_begin_counts_from_zero() {
        let b = json!({"peers": {}});
        let e = json!({"peers": {"gpu0": {"write_bytes": 4096}}});
        assert_eq!(
            delta(&b, &e),
            json!({"peers": {"gpu0": {"write_bytes": 4096}}})
        );
    }

    #[test]
    fn named_arrays_match_by_name_and_strings_are_kept() {
        let b = json!({"devices": [{"name": "gpu0", "kind": "gpu", "n": 1}, {"name": "nvme0", "kind": "nvme", "n": 10}]});
        let e = json!({"devices": [{"name": "nvme0", "kind": "nvme", "n": 15}, {"name": "gpu0", "kind": "gpu", "n": 1}]});
        assert_eq!(
            delta(&b, &e),
            json!({"devices": [{"name": "nvme0", "kind": "nvme", "n": 5}, {"name": "gpu0", "kind": "gpu", "n": 0}]})
        );
    }

    #[test]
    fn unnamed_arrays_match_by_index_and_floats_work() {
        assert_eq!(delta(&json!([1, 2]), &json!([4, 2, 3])), json!([3, 0, 3]));
        assert_eq!(
            delta(&json!({"s": 1.5}), &json!({"s": 4.0})),
            json!({"s": 2.5})
        );
    }

    #[test]
    fn large_u64_counters() {
        let b = json!({"x": u64::MAX - 10});
        let e = json!({"x": u64::MAX});
        assert_eq!(delta(&b, &e), json!({"x": 10}));
    }

    #[test]
    fn leaf_paths() {
        let v = json!({"devices": [{"name": "nvme0", "dma": {"peers": {"gpu0": {"write_bytes": 64}}}}]});
        assert_eq!(
            leaf(&v, "devices[nvme0].dma.peers.gpu0.write_bytes"),
            Some(64)
        );
        assert_eq!(leaf(&v, "devices[gpu0].dma"), None);
    }
}
