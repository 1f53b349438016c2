//! What a live object tokengate applied holds beyond what it applied (added by hand), and the
//! JSON patch, guarded by `test` operations, that removes it.
//!
//! Server-side apply never removes a field another manager owns, and a field added to
//! tokengate's objects (an `objectSelector`, a match condition, a binding's `matchResources`, a
//! webhook) can switch enforcement off, so after every apply the live object is compared with
//! what was applied and the rest is removed. Two things are left alone: values the API server
//! defaults, and a `caBundle` tokengate does not set (cert-manager's cainjector's).

use json_patch::{PatchOperation, RemoveOperation, TestOperation};
use jsonptr::PointerBuf;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::Value;

use super::FIELD_MANAGER;

/// Removes from the live object `name` what its `live[root]` holds beyond `wanted[root]`;
/// returns the paths removed (none when there was nothing to remove).
pub async fn remove(
    api: &Api<DynamicObject>,
    name: &str,
    live: &Value,
    wanted: &Value,
    root: &str,
) -> Result<Vec<String>, kube::Error> {
    let (operations, removed) = removals(&live[root], &wanted[root], root);
    if !operations.is_empty() {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
        api.patch(name, &params, &Patch::Json::<()>(json_patch::Patch(operations))).await?;
    }
    Ok(removed)
}

/// What `live` (the object's field `root`) holds beyond `wanted`: JSON patch operations removing
/// it, and the paths removed as people read them (`webhooks[name="a"].objectSelector`). Each
/// removal is guarded by a `test` of the value removed and of the name of every named item it is
/// in, so a concurrent change makes the patch fail rather than remove something else. Lists of
/// named items (webhooks, `matchConditions`, `variables`) are matched by name, as the API
/// server's merge keys them; other lists are atomic, and the forced apply has already set them.
pub fn removals(live: &Value, wanted: &Value, root: &str) -> (Vec<PatchOperation>, Vec<String>) {
    let mut walk = Walk { tokens: vec![root.to_string()], shown: root.to_string(), ..Walk::default() };
    walk.compare(live, wanted);
    (walk.operations, walk.removed)
}

/// The state of one comparison: where it is, and what it has found.
#[derive(Default)]
struct Walk {
    /// The JSON pointer tokens of the value compared.
    tokens: Vec<String>,
    /// The same path as shown to people.
    shown: String,
    /// The `test`s of the names of the named items the value is in, not yet emitted.
    name_tests: Vec<PatchOperation>,
    operations: Vec<PatchOperation>,
    removed: Vec<String>,
}

impl Walk {
    fn compare(&mut self, live: &Value, wanted: &Value) {
        match (live, wanted) {
            (Value::Object(fields), Value::Object(wanted_fields)) => {
                for (field, value) in fields {
                    let shown = format!(".{field}");
                    match wanted_fields.get(field) {
                        None if is_left_alone(field, value) => {}
                        None => self.within(field.clone(), &shown, None, |walk| walk.remove(value)),
                        Some(wanted_value) => {
                            self.within(field.clone(), &shown, None, |walk| walk.compare(value, wanted_value))
                        }
                    }
                }
            }
            (Value::Array(items), Value::Array(wanted_items)) if is_named_list(items.iter().chain(wanted_items)) => {
                // From the last item back, so that each removal leaves the indexes before it valid.
                for (i, item) in items.iter().enumerate().rev() {
                    let shown = format!("[name={}]", item["name"]);
                    match wanted_items.iter().find(|wanted_item| wanted_item["name"] == item["name"]) {
                        None => self.within(i.to_string(), &shown, None, |walk| walk.remove(item)),
                        Some(wanted_item) => self
                            .within(i.to_string(), &shown, Some(&item["name"]), |walk| walk.compare(item, wanted_item)),
                    }
                }
            }
            _ => {}
        }
    }

    /// Runs `step` one level down, at `token` (shown as `shown`); `name`, for a named item kept,
    /// is tested before anything in it is removed.
    fn within(&mut self, token: String, shown: &str, name: Option<&Value>, step: impl FnOnce(&mut Self)) {
        let shown_before = self.shown.len();
        self.tokens.push(token);
        self.shown.push_str(shown);
        let tests_before = self.name_tests.len();
        if let Some(name) = name {
            let mut path = self.pointer();
            path.push_back("name");
            self.name_tests.push(PatchOperation::Test(TestOperation { path, value: name.clone() }));
        }
        step(self);
        self.name_tests.truncate(tests_before.min(self.name_tests.len()));
        self.shown.truncate(shown_before);
        self.tokens.pop();
    }

    /// Removes the value here, `value`, after the name tests still due and a test of the value.
    fn remove(&mut self, value: &Value) {
        self.operations.append(&mut self.name_tests);
        let path = self.pointer();
        self.operations.push(PatchOperation::Test(TestOperation { path: path.clone(), value: value.clone() }));
        self.operations.push(PatchOperation::Remove(RemoveOperation { path }));
        self.removed.push(self.shown.clone());
    }

    fn pointer(&self) -> PointerBuf {
        PointerBuf::from_tokens(self.tokens.iter().map(String::as_str))
    }
}

/// Whether a field tokengate does not set stays: a value the API server defaults in a webhook or
/// an admission policy (k8s.io/kubernetes `pkg/apis/admissionregistration/v1/defaults.go`:
/// `SetDefaults_ValidatingWebhook`, `SetDefaults_MutatingWebhook`,
/// `SetDefaults_ValidatingAdmissionPolicySpec`, `SetDefaults_MatchResources`), or a `caBundle`
/// (cert-manager's cainjector, or whoever set it, keeps it).
fn is_left_alone(field: &str, value: &Value) -> bool {
    match field {
        "objectSelector" | "namespaceSelector" => value.as_object().is_some_and(|selector| selector.is_empty()),
        "reinvocationPolicy" => value == "Never",
        "matchPolicy" => value == "Equivalent",
        "failurePolicy" => value == "Fail",
        "caBundle" => true,
        _ => false,
    }
}

/// Whether there are items and every one is an object with a `name`: a list the API server
/// merges by name (an empty list applied leaves the items others added).
fn is_named_list<'a>(mut items: impl Iterator<Item = &'a Value>) -> bool {
    let mut any = false;
    items.all(|item| {
        any = true;
        item["name"].is_string()
    }) && any
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wanted() -> Value {
        json!({"webhooks": [
            {"name": "a", "timeoutSeconds": 3, "clientConfig": {"url": "https://a"},
             "matchConditions": [{"name": "c1", "expression": "true"}]},
            {"name": "b", "timeoutSeconds": 3, "clientConfig": {"url": "https://b"}},
        ]})
    }

    /// The removals from a webhook configuration `live` of what `wanted()` does not set.
    fn webhook_removals(live: &Value) -> (Vec<PatchOperation>, Vec<String>) {
        removals(&live["webhooks"], &wanted()["webhooks"], "webhooks")
    }

    /// The live object after the removals.
    fn repaired(live: &Value) -> (Value, Vec<String>) {
        let (operations, removed) = webhook_removals(live);
        let mut live = live.clone();
        json_patch::patch(&mut live, &operations).expect("the patch applies to the object it was built from");
        (live, removed)
    }

    #[test]
    fn removes_nothing_from_what_was_applied() {
        assert_eq!(webhook_removals(&wanted()), (vec![], vec![]));
    }

    #[test]
    fn keeps_server_defaults_and_a_ca_bundle_it_does_not_set() {
        let mut live = wanted();
        live["webhooks"][0]["objectSelector"] = json!({});
        live["webhooks"][0]["namespaceSelector"] = json!({});
        live["webhooks"][1]["reinvocationPolicy"] = json!("Never");
        live["webhooks"][1]["clientConfig"]["caBundle"] = json!("Q0E=");
        assert_eq!(webhook_removals(&live), (vec![], vec![]));
    }

    #[test]
    fn removes_fields_conditions_and_webhooks_added_by_hand() {
        let mut live = wanted();
        live["webhooks"][0]["objectSelector"] = json!({"matchLabels": {"escape": "yes"}});
        live["webhooks"][0]["matchConditions"] = json!([
            {"name": "escape", "expression": "false"},
            {"name": "c1", "expression": "true"},
            {"name": "other", "expression": "false"},
        ]);
        live["webhooks"][1]["clientConfig"]["service"] = json!({"namespace": "x", "name": "y"});
        live["webhooks"].as_array_mut().expect("webhooks").insert(1, json!({"name": "extra/one", "timeoutSeconds": 1}));
        let (repaired, removed) = repaired(&live);
        assert_eq!(repaired, wanted());
        assert_eq!(removed.len(), 5, "{removed:?}");
        assert!(removed.contains(&r#"webhooks[name="extra/one"]"#.to_string()), "{removed:?}");
    }

    #[test]
    fn a_concurrent_change_makes_the_removal_fail() {
        let mut live = wanted();
        live["webhooks"][0]["objectSelector"] = json!({"matchLabels": {"escape": "yes"}});
        let (operations, _) = webhook_removals(&live);
        live["webhooks"].as_array_mut().expect("webhooks").swap(0, 1);
        assert!(json_patch::patch(&mut live, &operations).is_err(), "the name test fails");
    }

    #[test]
    fn fields_added_by_hand_are_removed_and_defaults_and_applied_fields_kept() {
        let wanted = json!({
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"operations": ["CREATE"]}], "matchPolicy": "Equivalent"},
            "matchConditions": [{"name": "skip-a", "expression": "true"}, {"name": "skip-b", "expression": "true"}],
            "validations": [{"expression": "x"}],
        });
        let mut live = wanted.clone();
        live["matchConstraints"]["namespaceSelector"] = json!({});
        live["matchConstraints"]["objectSelector"] = json!({"matchLabels": {"escape": "yes"}});
        live["matchConditions"] = json!([
            {"name": "skip-a", "expression": "true"},
            {"name": "escape", "expression": "false"},
            {"name": "skip-b", "expression": "true"},
            {"name": "also", "expression": "false"},
        ]);
        live["auditAnnotations"] = json!([{"key": "k", "valueExpression": "'v'"}]);
        let (operations, removed) = removals(&live, &wanted, "spec");
        assert_eq!(
            removed,
            [
                "spec.auditAnnotations",
                "spec.matchConditions[name=\"also\"]",
                "spec.matchConditions[name=\"escape\"]",
                "spec.matchConstraints.objectSelector"
            ]
        );
        let mut patched = json!({"spec": live});
        json_patch::patch(&mut patched, &operations).expect("the patch applies");
        let mut expected = wanted.clone();
        expected["matchConstraints"]["namespaceSelector"] = json!({});
        assert_eq!(patched["spec"], expected, "only what was added by hand is gone");
        assert_eq!(removals(&expected, &wanted, "spec"), (Vec::new(), Vec::new()), "nothing to remove the next time");
    }

    #[test]
    fn a_binding_narrowed_by_hand_loses_its_match_resources() {
        let wanted = json!({"policyName": "tokengate-pods", "validationActions": ["Deny"]});
        let live = json!({"policyName": "tokengate-pods", "validationActions": ["Deny"],
                          "matchResources": {"namespaceSelector": {"matchLabels": {"team": "a"}}}});
        let (_, removed) = removals(&live, &wanted, "spec");
        assert_eq!(removed, ["spec.matchResources"]);
    }

    #[test]
    fn a_condition_added_where_tokengate_applies_none_is_removed() {
        let wanted = json!({"matchConditions": []});
        let live = json!({"matchConditions": [{"name": "escape", "expression": "false"}]});
        assert_eq!(removals(&live, &wanted, "spec").1, [r#"spec.matchConditions[name="escape"]"#]);
    }
}
