//! Field ownership for the fake API server: `metadata.managedFields`, server-side apply's merge,
//! conflicts, forced takeover and pruning, and the ownership an ordinary write (create, PUT,
//! merge or JSON patch) takes, as upstream's field manager keeps them.
//!
//! Upstream: sigs.k8s.io/structured-merge-diff `merge.Updater` (`Apply`, `Update`, `update`,
//! `prune`) over typed values, wrapped by k8s.io/apiserver's `managedfields/internal` managers.
//! Here a field set is a set of paths; a path is a list of fieldsV1 elements, `f:<field>` or
//! `k:<key as JSON>` for an item of a list with merge keys, exactly as `fieldsV1` spells them.
//! The schema is reduced to what matters for the objects tokengate applies: in both webhook
//! configuration kinds `webhooks` and `webhooks[].matchConditions` are lists keyed by `name`
//! (`+listType=map`, `+listMapKey=name` in k8s.io/api/admissionregistration/v1), so are
//! `spec.matchConditions` and `spec.variables` of both admission-policy kinds, and in every
//! kind `metadata.ownerReferences` is keyed by `uid`; every other list is atomic (as
//! structured-merge-diff's deduced schema treats lists it knows nothing about).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

/// A path of fieldsV1 elements.
pub type Path = Vec<String>;

/// A set of paths.
pub type FieldSet = BTreeSet<Path>;

/// What a managed fields entry records (`ManagedFieldsOperationType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug)]
pub struct Manager {
    pub name: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

/// A field another manager owns and an apply would change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The owner as upstream prints it (`printManager` in k8s.io/apiserver's
    /// `managedfields/internal/conflict.go`).
    pub manager: String,
    /// The path as structured-merge-diff prints it (`fieldpath.Path.String`), e.g.
    /// `.webhooks[name="a"].timeoutSeconds`.
    pub field: String,
}

/// The merge keys of the list reached by `fields` (field names only) in an object of `kind`,
/// or `None` for an atomic list.
fn list_keys(kind: &str, fields: &[String]) -> Option<&'static [&'static str]> {
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    let webhook_configuration = matches!(kind, "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration");
    let admission_policy = matches!(kind, "ValidatingAdmissionPolicy" | "MutatingAdmissionPolicy");
    match fields.as_slice() {
        ["webhooks"] | ["webhooks", "matchConditions"] if webhook_configuration => Some(&["name"]),
        ["spec", "matchConditions"] | ["spec", "variables"] if admission_policy => Some(&["name"]),
        ["metadata", "ownerReferences"] => Some(&["uid"]),
        _ => None,
    }
}

/// The fields upstream never tracks (k8s.io/apiserver `managedfields/internal/stripmeta.go`,
/// `NewStripMetaManager`): type and identity, server-set metadata, and the managed fields.
fn stripped(path: &[String]) -> bool {
    const META: &[&str] = &[
        "f:name",
        "f:namespace",
        "f:uid",
        "f:resourceVersion",
        "f:generation",
        "f:creationTimestamp",
        "f:selfLink",
        "f:managedFields",
        "f:clusterName",
    ];
    match path {
        [] => true,
        [first, ..] if first == "f:apiVersion" || first == "f:kind" => true,
        [first] => first == "f:metadata",
        [first, second, ..] => first == "f:metadata" && META.contains(&second.as_str()),
    }
}

/// The `k:` element of a list item: its merge keys as JSON (keys sorted).
fn item_key(item: &Value, keys: &[&str]) -> String {
    let key: Map<String, Value> = keys.iter().map(|k| (k.to_string(), item[*k].clone())).collect();
    format!("k:{}", Value::Object(key))
}

/// Every owned path of `value` with its value: leaves (scalars, atomic lists, null and empty
/// maps) carry it, items of keyed lists (members with children) carry `None`.
/// structured-merge-diff: `TypedValue.ToFieldSet` (`toFieldSetWalker`) and `Compare`.
fn leaves(value: &Value, kind: &str) -> BTreeMap<Path, Option<Value>> {
    fn walk(
        value: &Value,
        kind: &str,
        path: &mut Path,
        fields: &mut Vec<String>,
        out: &mut BTreeMap<Path, Option<Value>>,
    ) {
        match value {
            Value::Object(map) => {
                if map.is_empty() && !path.is_empty() {
                    out.insert(path.clone(), Some(value.clone()));
                }
                for (name, child) in map {
                    path.push(format!("f:{name}"));
                    fields.push(name.clone());
                    walk(child, kind, path, fields, out);
                    fields.pop();
                    path.pop();
                }
            }
            Value::Array(items) => match list_keys(kind, fields) {
                Some(keys) => {
                    for item in items {
                        path.push(item_key(item, keys));
                        out.insert(path.clone(), None);
                        if let Value::Object(map) = item {
                            for (name, child) in map {
                                path.push(format!("f:{name}"));
                                fields.push(name.clone());
                                walk(child, kind, path, fields, out);
                                fields.pop();
                                path.pop();
                            }
                        }
                        path.pop();
                    }
                }
                None => {
                    out.insert(path.clone(), Some(value.clone()));
                }
            },
            _ => {
                out.insert(path.clone(), Some(value.clone()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(value, kind, &mut Vec::new(), &mut Vec::new(), &mut out);
    out.retain(|path, _| !stripped(path));
    out
}

/// The field set of an applied configuration (structured-merge-diff `TypedValue.ToFieldSet`).
pub fn field_set(value: &Value, kind: &str) -> FieldSet {
    leaves(value, kind).into_keys().collect()
}

/// What changed from `old` to `new`: (added, modified, removed), as structured-merge-diff's
/// `TypedValue.Compare`.
fn compare(old: &Value, new: &Value, kind: &str) -> (FieldSet, FieldSet, FieldSet) {
    let (old, new) = (leaves(old, kind), leaves(new, kind));
    let added = new.keys().filter(|p| !old.contains_key(*p)).cloned().collect();
    let removed = old.keys().filter(|p| !new.contains_key(*p)).cloned().collect();
    let modified = new.iter().filter(|(p, v)| old.get(*p).is_some_and(|o| o != *v)).map(|(p, _)| p.clone()).collect();
    (added, modified, removed)
}

/// Server-side apply's merge of a configuration into the live object (structured-merge-diff
/// `TypedValue.Merge`): maps field by field, keyed lists item by item, everything else replaced.
fn merge(live: &Value, config: &Value, kind: &str, fields: &mut Vec<String>) -> Value {
    match (live, config) {
        (Value::Object(live), Value::Object(config)) => {
            let mut out = live.clone();
            for (name, value) in config {
                fields.push(name.clone());
                let merged = match live.get(name) {
                    Some(current) => merge(current, value, kind, fields),
                    None => value.clone(),
                };
                fields.pop();
                out.insert(name.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(live), Value::Array(config)) => match list_keys(kind, fields) {
            Some(keys) => {
                let mut out = live.clone();
                for item in config {
                    let key = item_key(item, keys);
                    match out.iter().position(|current| item_key(current, keys) == key) {
                        Some(i) => out[i] = merge(&out[i], item, kind, fields),
                        None => out.push(item.clone()),
                    }
                }
                Value::Array(out)
            }
            None => Value::Array(config.clone()),
        },
        (_, config) => config.clone(),
    }
}

/// Removes the field or list item at `path` (structured-merge-diff `TypedValue.RemoveItems`).
fn remove(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = value;
    for element in parents {
        let next = match element.strip_prefix("f:") {
            Some(name) => node.get_mut(name),
            None => {
                let key: Value = serde_json::from_str(&element[2..]).unwrap_or(Value::Null);
                node.as_array_mut().and_then(|items| items.iter_mut().find(|item| key_matches(item, &key)))
            }
        };
        match next {
            Some(next) => node = next,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(name) => {
            if let Some(map) = node.as_object_mut() {
                map.remove(name);
            }
        }
        None => {
            let key: Value = serde_json::from_str(&last[2..]).unwrap_or(Value::Null);
            if let Some(items) = node.as_array_mut() {
                items.retain(|item| !key_matches(item, &key));
            }
        }
    }
}

fn key_matches(item: &Value, key: &Value) -> bool {
    key.as_object().is_some_and(|key| key.iter().all(|(k, v)| item.get(k).unwrap_or(&Value::Null) == v))
}

/// `fieldsV1` of a set: nested objects, `{".": {}}` marking a member that also has children.
pub fn encode(set: &FieldSet) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[String]) {
        match path.split_first() {
            None => {
                node.insert(".".into(), json!({}));
            }
            Some((first, rest)) => {
                let child = node.entry(first.clone()).or_insert_with(|| json!({}));
                insert(child.as_object_mut().expect("fieldsV1 nodes are objects"), rest);
            }
        }
    }
    fn tidy(node: &mut Map<String, Value>) {
        for child in node.values_mut() {
            if let Value::Object(map) = child {
                if map.len() == 1 && map.contains_key(".") {
                    map.clear();
                } else {
                    tidy(map);
                }
            }
        }
    }
    let mut root = Map::new();
    for path in set {
        insert(&mut root, path);
    }
    tidy(&mut root);
    Value::Object(root)
}

/// The set a `fieldsV1` encodes.
pub fn decode(fields: &Value) -> FieldSet {
    fn walk(node: &Map<String, Value>, path: &mut Path, out: &mut FieldSet) {
        for (element, child) in node {
            if element == "." {
                out.insert(path.clone());
                continue;
            }
            path.push(element.clone());
            match child.as_object() {
                Some(map) if !map.is_empty() => walk(map, path, out),
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    if let Some(map) = fields.as_object() {
        walk(map, &mut Vec::new(), &mut out);
    }
    out
}

/// The managers recorded in an object's `metadata.managedFields`.
pub fn managers(object: &Value) -> Vec<Manager> {
    let entries = object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|entry| Manager {
            name: entry["manager"].as_str().unwrap_or_default().to_string(),
            operation: if entry["operation"] == "Apply" { Operation::Apply } else { Operation::Update },
            api_version: entry["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: entry["time"].as_str().unwrap_or_default().to_string(),
            fields: decode(&entry["fieldsV1"]),
        })
        .collect()
}

fn write_managers(object: &mut Value, managers: &[Manager]) {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if managers.is_empty() {
        metadata.remove("managedFields");
        return;
    }
    let entries = managers
        .iter()
        .map(|m| {
            json!({
                "manager": m.name,
                "operation": m.operation.as_str(),
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode(&m.fields),
            })
        })
        .collect();
    metadata.insert("managedFields".into(), Value::Array(entries));
}

fn without_managers(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    object
}

fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        match element.strip_prefix("f:") {
            Some(name) => {
                out.push('.');
                out.push_str(name);
            }
            None => {
                let key: Value = serde_json::from_str(&element[2..]).unwrap_or(Value::Null);
                let parts: Vec<String> =
                    key.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
        }
    }
    out
}

fn print_manager(manager: &Manager) -> String {
    match manager.operation {
        Operation::Apply => format!("{:?}", manager.name),
        Operation::Update => format!("{:?} using {} at {}", manager.name, manager.api_version, manager.time),
    }
}

/// The manager's entry, added when missing (without a time yet: see [`stamp`]).
fn entry<'a>(managers: &'a mut Vec<Manager>, name: &str, operation: Operation, api_version: &str) -> &'a mut Manager {
    let found = managers.iter().position(|m| m.name == name && m.operation == operation);
    let index = found.unwrap_or_else(|| {
        managers.push(Manager {
            name: name.to_string(),
            operation,
            api_version: api_version.to_string(),
            time: String::new(),
            fields: FieldSet::new(),
        });
        managers.len() - 1
    });
    let manager = &mut managers[index];
    manager.api_version = api_version.to_string();
    manager
}

/// Dates the manager's entry `now` when the write changed the object or what it owns (or the
/// entry is new); an apply that changes nothing keeps the entry as it was, so the object stays
/// byte for byte the same and the API server writes nothing (k8s.io/apiserver
/// `managedfields/internal/managedfieldsupdater.go`; etcd3 `GuaranteedUpdate` skips an
/// unchanged object).
fn stamp(managers: &mut [Manager], name: &str, operation: Operation, changed: bool, now: &str) {
    if let Some(manager) = managers.iter_mut().find(|m| m.name == name && m.operation == operation) {
        if changed || manager.time.is_empty() {
            manager.time = now.to_string();
        }
    }
}

/// Server-side apply of `config` by `manager` to `live` (`None`: the object is created), as
/// structured-merge-diff's `Updater.Apply`: the configuration is merged in; a field another
/// manager owns and the merge would add or change is a conflict, refused unless `force`, which
/// moves it to `manager`; `manager`'s set becomes exactly the configuration's fields; a field it
/// owned before and no longer applies is removed unless another manager owns it (or something
/// beneath it: `prune`, `addBackOwnedItems`). An object that has no managed fields yet gets them
/// first, owned by `before-first-apply` (k8s.io/apiserver `managedfields/internal/
/// skipnonapplied.go`).
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let kind = config["kind"].as_str().or_else(|| live.and_then(|l| l["kind"].as_str())).unwrap_or_default();
    let api_version = config["apiVersion"].as_str().unwrap_or_default();
    let empty = json!({});
    let current = live.map(without_managers).unwrap_or(empty);
    let mut owners = live.map(managers).unwrap_or_default();
    if live.is_some() && owners.is_empty() {
        owners.push(Manager {
            name: "before-first-apply".into(),
            operation: Operation::Update,
            api_version: api_version.to_string(),
            time: now.to_string(),
            fields: field_set(&current, kind),
        });
    }
    let config = without_managers(config);
    let mut merged = merge(&current, &config, kind, &mut Vec::new());
    let (added, modified, _) = compare(&current, &merged, kind);
    let changed: FieldSet = added.union(&modified).cloned().collect();
    let mine = owners.iter().position(|m| m.name == manager && m.operation == Operation::Apply);
    let last = mine.map(|i| owners[i].fields.clone()).unwrap_or_default();
    let mut conflicts = Vec::new();
    for (i, owner) in owners.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        for path in owner.fields.intersection(&changed) {
            conflicts.push((i, path.clone()));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts
            .iter()
            .map(|(i, path)| Conflict { manager: print_manager(&owners[*i]), field: path_string(path) })
            .collect());
    }
    for (i, path) in &conflicts {
        owners[*i].fields.remove(path);
    }
    let applied = field_set(&config, kind);
    let set_changed = last != applied;
    entry(&mut owners, manager, Operation::Apply, api_version).fields = applied.clone();
    let others: FieldSet = owners
        .iter()
        .filter(|m| !(m.name == manager && m.operation == Operation::Apply))
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let owned_beneath = |path: &Path| others.iter().chain(applied.iter()).any(|o| o.starts_with(path));
    // A list item's key fields go with the item, never on their own (structured-merge-diff
    // `Set.EnsureNamedFieldsAreMembers`, used by `prune` and `addBackOwnedItems`).
    let key_field = |path: &Path| match path.as_slice() {
        [.., item, field] => item.strip_prefix("k:").is_some_and(|key| {
            let key: Value = serde_json::from_str(key).unwrap_or(Value::Null);
            field.strip_prefix("f:").is_some_and(|field| key.get(field).is_some())
        }),
        _ => false,
    };
    for path in last.difference(&applied) {
        if !owned_beneath(path) && !key_field(path) {
            remove(&mut merged, path);
        }
    }
    owners.retain(|m| !m.fields.is_empty());
    stamp(&mut owners, manager, Operation::Apply, set_changed || merged != current, now);
    write_managers(&mut merged, &owners);
    Ok(merged)
}

/// An ordinary write (create, PUT, merge or JSON patch) by `manager`, as structured-merge-diff's
/// `Updater.Update`: never a conflict; the fields it adds or changes move to `manager`, the
/// fields it removes leave every manager. An object that has no managed fields is not tracked
/// until its first apply (k8s.io/apiserver `managedfields/internal/skipnonapplied.go`); a created
/// one is (`DefaultTrackOnCreateProbability` is 1).
pub fn update(live: Option<&Value>, new: &Value, manager: &str, now: &str) -> Value {
    let kind = new["kind"].as_str().unwrap_or_default();
    let api_version = new["apiVersion"].as_str().unwrap_or_default();
    let mut updated = without_managers(new);
    let mut owners = live.map(managers).unwrap_or_default();
    if live.is_some() && owners.is_empty() {
        return updated;
    }
    let current = live.map(without_managers).unwrap_or_else(|| json!({}));
    let (added, modified, removed) = compare(&current, &updated, kind);
    for owner in owners.iter_mut().filter(|m| !(m.name == manager && m.operation == Operation::Update)) {
        owner.fields.retain(|p| !added.contains(p) && !modified.contains(p) && !removed.contains(p));
    }
    let changed = !(added.is_empty() && modified.is_empty() && removed.is_empty());
    let mine = entry(&mut owners, manager, Operation::Update, api_version);
    mine.fields.retain(|p| !removed.contains(p));
    mine.fields.extend(added);
    mine.fields.extend(modified);
    owners.retain(|m| !m.fields.is_empty());
    stamp(&mut owners, manager, Operation::Update, changed, now);
    write_managers(&mut updated, &owners);
    updated
}
