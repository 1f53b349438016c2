//! Injection planning: what each matching injection would add to a pod, and the JSON Patch.
//!
//! Plans are computed from the typed pod (read-only); the patch is a list of `add` operations
//! against the raw object, so fields tokengate does not know survive untouched.

use std::collections::{BTreeMap, HashMap};

use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::PointerBuf;
use serde_json::{json, Value};

use super::lookup::ServiceAccountInfo;
use super::pod_view::{Container, PodSpec, PodView, Volume};
use super::{rules, Violation};
use crate::k8s;
use crate::policy::{expiration_or_default, EnvSource, InjectedEnv, Injection, Policy};

pub use crate::k8s::names::SKIP_ANNOTATION;

/// A container of the pod: `containers[i]` or `initContainers[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Init(usize),
    Main(usize),
}

impl Slot {
    fn array(self) -> &'static str {
        match self {
            Slot::Init(_) => "initContainers",
            Slot::Main(_) => "containers",
        }
    }

    fn index(self) -> usize {
        match self {
            Slot::Init(i) | Slot::Main(i) => i,
        }
    }

    fn container(self, spec: &PodSpec) -> Container<'_> {
        let container = match self {
            Slot::Init(i) => spec.init_containers().get(i),
            Slot::Main(i) => spec.containers().get(i),
        };
        container.expect("slots are taken from the containers of this spec")
    }

    fn field(self, pod_field: &str) -> String {
        format!("{pod_field}.{}[{}]", self.array(), self.index())
    }
}

/// What one injection would add to the pod.
#[derive(Debug, Default)]
pub struct Additions {
    volume: Option<Value>,
    mounts: Vec<(Slot, Value)>,
    env: Vec<(Slot, Value)>,
}

impl Additions {
    fn is_empty(&self) -> bool {
        self.volume.is_none() && self.mounts.is_empty() && self.env.is_empty()
    }
}

/// Where a matching injection stands on this pod.
#[derive(Debug)]
pub enum State {
    /// Everything it adds is already there.
    Present,
    /// Some of it is missing; `field` is the first missing place.
    Missing { field: String, additions: Additions },
    /// Something different already holds its volume name, mount path or variable.
    Collision(Violation),
}

/// One injection that matches the pod, and where it stands.
#[derive(Debug)]
pub struct Planned<'p> {
    pub injection: &'p Injection,
    pub state: State,
}

/// Plans every injection that matches the pod, except optional ones the pod opted out of
/// with [`SKIP_ANNOTATION`]. `notes` receives what the requester should know (an env variable
/// left out because the service account lacks the annotation).
pub fn plan<'p>(
    view: &PodView<'_>,
    policy: &'p Policy,
    service_account: Option<&ServiceAccountInfo>,
    notes: &mut Vec<String>,
) -> Vec<Planned<'p>> {
    let skipped = skipped_names(view);
    let mut pending_env: HashMap<(Slot, String), String> = HashMap::new();
    policy
        .injections()
        .iter()
        .filter(|injection| injection.required || !skipped.contains(&injection.name.as_str()))
        .filter(|injection| matches(injection, view, service_account))
        .map(|injection| Planned {
            injection,
            state: plan_one(injection, view, policy, service_account, &mut pending_env, notes),
        })
        .collect()
}

/// Whether an injection applies to the pod (namespace, labels, service-account annotation).
pub fn matches(injection: &Injection, view: &PodView<'_>, service_account: Option<&ServiceAccountInfo>) -> bool {
    injection.namespaces.is_match(view.namespace)
        && injection.pod_selector.matches(view.labels)
        && injection
            .service_account_annotation
            .as_ref()
            .is_none_or(|key| service_account.is_some_and(|sa| sa.annotations.contains_key(key)))
}

/// Whether planning the injection needs the pod's service account.
pub fn needs_service_account(injection: &Injection) -> bool {
    injection.service_account_annotation.is_some()
        || injection.env.iter().any(|e| matches!(e.source, EnvSource::ServiceAccountAnnotation(_)))
}

/// The injections the pod's author opted out of with [`SKIP_ANNOTATION`].
pub fn skipped_names<'a>(view: &PodView<'a>) -> Vec<&'a str> {
    view.annotations
        .and_then(|a| a.get(SKIP_ANNOTATION))
        .map(|list| list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect())
        .unwrap_or_default()
}

/// Where `injection` stands on the pod. `pending_env` holds the variables earlier injections add
/// (per container); this one's are added to it unless it collides.
fn plan_one(
    injection: &Injection,
    view: &PodView<'_>,
    policy: &Policy,
    service_account: Option<&ServiceAccountInfo>,
    pending_env: &mut HashMap<(Slot, String), String>,
    notes: &mut Vec<String>,
) -> State {
    let planner = Planner { injection, view, policy, service_account };
    let mut progress = Progress::default();
    if let Err(collision) = planner.plan(&mut progress, pending_env, notes) {
        return State::Collision(collision);
    }
    // Variables this injection adds; other injections see them only if it does not collide.
    pending_env.extend(progress.adding_env);
    match progress.first_missing {
        Some(field) if !progress.additions.is_empty() => State::Missing { field, additions: progress.additions },
        _ => State::Present,
    }
}

/// What planning one injection reads: the injection, the pod, the policy and the pod's
/// service account.
struct Planner<'a> {
    injection: &'a Injection,
    view: &'a PodView<'a>,
    policy: &'a Policy,
    service_account: Option<&'a ServiceAccountInfo>,
}

/// What planning one injection has found so far.
#[derive(Default)]
struct Progress {
    additions: Additions,
    /// The first place something is missing.
    first_missing: Option<String>,
    /// The variables it adds, by container and name.
    adding_env: Vec<((Slot, String), String)>,
}

impl Progress {
    /// Records that something is missing at `field`, unless something was missing earlier.
    fn missing(&mut self, field: impl FnOnce() -> String) {
        self.first_missing.get_or_insert_with(field);
    }
}

impl Planner<'_> {
    /// Plans the volume, then the mount and variables of each target container, in that
    /// order; the first collision ends planning.
    fn plan(
        &self,
        progress: &mut Progress,
        pending_env: &HashMap<(Slot, String), String>,
        notes: &mut Vec<String>,
    ) -> Result<(), Violation> {
        self.plan_volume(progress)?;
        for slot in target_slots(self.view.spec, self.injection) {
            self.plan_mount(slot, progress)?;
            self.plan_env(slot, pending_env, progress, notes)?;
        }
        Ok(())
    }

    /// The token volume: there already, missing, or its name taken by another volume.
    fn plan_volume(&self, progress: &mut Progress) -> Result<(), Violation> {
        let (field, name, wanted) = (&self.view.field, &self.injection.name, &self.injection.volume);
        let volumes = self.view.spec.volumes();
        match volumes.iter().enumerate().find(|(_, v)| v.name == wanted.name) {
            Some((_, volume)) if is_injected_volume(&volume, self.injection, self.policy) => Ok(()),
            Some((i, _)) => Err(Violation::new(
                rules::POD_INJECTIONS,
                format!("{field}.volumes[{i}].name"),
                format!(
                    "volume {:?} already exists and is not the token volume injection {name:?} adds; rename or remove it",
                    wanted.name
                ),
            )),
            None => {
                let mut token = json!({"expirationSeconds": wanted.expiration_seconds, "path": wanted.path});
                if !wanted.audience.is_empty() {
                    token["audience"] = json!(wanted.audience);
                }
                progress.additions.volume =
                    Some(json!({"name": wanted.name, "projected": {"sources": [{"serviceAccountToken": token}]}}));
                progress.missing(|| format!("{field}.volumes"));
                Ok(())
            }
        }
    }

    /// The volume's mount in the container at `slot`: there already, missing, or shadowed by
    /// another mount.
    fn plan_mount(&self, slot: Slot, progress: &mut Progress) -> Result<(), Violation> {
        let (injection, wanted) = (self.injection, &self.injection.volume);
        let slot_field = slot.field(&self.view.field);
        let container = slot.container(self.view.spec);
        // The runtime resolves mount paths (`/x/` is `/x`), and a mount at or beneath the
        // injected path shows another volume where the token should be.
        let shadowing = container
            .volume_mounts()
            .enumerate()
            .find(|(_, m)| m.name != wanted.name && k8s::is_within(m.mount_path, &injection.mount_path));
        if let Some((j, mount)) = shadowing {
            return Err(Violation::new(
                rules::POD_INJECTIONS,
                format!("{slot_field}.volumeMounts[{j}].mountPath"),
                format!(
                    "{:?} mounts volume {:?} at or beneath {:?}, where injection {:?} mounts {:?}; remove that mount",
                    mount.mount_path, mount.name, injection.mount_path, injection.name, wanted.name
                ),
            ));
        }
        let clean = k8s::clean_path(&injection.mount_path);
        if !container.volume_mounts().any(|m| k8s::clean_path(m.mount_path) == clean) {
            progress
                .additions
                .mounts
                .push((slot, json!({"name": wanted.name, "mountPath": injection.mount_path, "readOnly": true})));
            progress.missing(|| format!("{slot_field}.volumeMounts"));
        }
        Ok(())
    }

    /// The injection's variables in the container at `slot`: each there already, missing, or
    /// set to something else by the pod or by another injection.
    fn plan_env(
        &self,
        slot: Slot,
        pending_env: &HashMap<(Slot, String), String>,
        progress: &mut Progress,
        notes: &mut Vec<String>,
    ) -> Result<(), Violation> {
        let (name, slot_field) = (&self.injection.name, slot.field(&self.view.field));
        let container = slot.container(self.view.spec);
        for var in &self.injection.env {
            let Some(value) = self.env_value(var, notes) else { continue };
            // The kubelet keeps the last entry of a name (`makeEnvironmentVariables` in
            // pkg/kubelet/kubelet_pods.go builds a map in order), so that is the one to judge.
            let existing = container.env().enumerate().filter(|(_, e)| e.name == var.name).last();
            let pending = pending_env.get(&(slot, var.name.clone()));
            match (existing, pending) {
                (Some((_, found)), _) if found.value == Some(value.as_str()) && !found.value_from => {}
                (Some((k, _)), _) => {
                    return Err(Violation::new(
                        rules::POD_INJECTIONS,
                        format!("{slot_field}.env[{k}]"),
                        format!(
                            "{} is already set to something else; injection {name:?} sets it, remove it from the pod",
                            var.name
                        ),
                    ))
                }
                (None, Some(other)) if *other == value => {}
                (None, Some(_)) => {
                    return Err(Violation::new(
                        rules::POD_INJECTIONS,
                        format!("{slot_field}.env"),
                        format!("{} is set differently by two injections that match this pod", var.name),
                    ))
                }
                (None, None) => {
                    progress.adding_env.push(((slot, var.name.clone()), value.clone()));
                    progress.additions.env.push((slot, json!({"name": var.name, "value": value})));
                    progress.missing(|| format!("{slot_field}.env"));
                }
            }
        }
        Ok(())
    }

    /// The value the injection gives `var`; `None`, with a note, when it comes from a
    /// service-account annotation the service account lacks.
    fn env_value(&self, var: &InjectedEnv, notes: &mut Vec<String>) -> Option<String> {
        let key = match &var.source {
            EnvSource::Value(value) => return Some(value.clone()),
            EnvSource::ServiceAccountAnnotation(key) => key,
        };
        if let Some(value) = self.service_account.and_then(|sa| sa.annotations.get(key)) {
            return Some(value.clone());
        }
        let note = format!(
            "injection {:?}: {} not set, service account {}/{} has no annotation {key:?}",
            self.injection.name, var.name, self.view.namespace, self.view.service_account
        );
        if !notes.contains(&note) {
            notes.push(note);
        }
        None
    }
}

/// The containers an injection mounts into, init containers first.
fn target_slots(spec: &PodSpec, injection: &Injection) -> Vec<Slot> {
    let init_slots = spec
        .init_containers()
        .iter()
        .enumerate()
        .filter(|(_, c)| injection.init_containers && injection.containers.is_match(c.name))
        .map(|(i, _)| Slot::Init(i));
    let main_slots = spec
        .containers()
        .iter()
        .enumerate()
        .filter(|(_, c)| injection.containers.is_match(c.name))
        .map(|(i, _)| Slot::Main(i));
    init_slots.chain(main_slots).collect()
}

/// Whether an existing volume is exactly the injection's token volume.
fn is_injected_volume(volume: &Volume<'_>, injection: &Injection, policy: &Policy) -> bool {
    volume.sole_token().is_some_and(|token| {
        policy.normalize(token.audience) == injection.volume.audience
            && expiration_or_default(token.expiration_seconds) == injection.volume.expiration_seconds
            && token.path == injection.volume.path
    })
}

/// The JSON Patch (only `add` operations) that applies `additions` to a pod whose spec is
/// `spec`: arrays the pod lacks are created whole, existing ones are appended to.
pub fn render<'a>(spec: &PodSpec, additions: impl IntoIterator<Item = &'a Additions>) -> Patch {
    let mut volumes = Vec::new();
    let mut mounts: BTreeMap<Slot, Vec<Value>> = BTreeMap::new();
    let mut env: BTreeMap<Slot, Vec<Value>> = BTreeMap::new();
    for addition in additions {
        volumes.extend(addition.volume.iter().cloned());
        for (slot, value) in &addition.mounts {
            mounts.entry(*slot).or_default().push(value.clone());
        }
        for (slot, value) in &addition.env {
            env.entry(*slot).or_default().push(value.clone());
        }
    }
    let mut ops = Vec::new();
    add_to_array(&mut ops, &["spec", "volumes"], spec.volumes.is_some(), volumes);
    for (slot, values) in mounts {
        let index = slot.index().to_string();
        let exists = slot.container(spec).has_mounts;
        add_to_array(&mut ops, &["spec", slot.array(), &index, "volumeMounts"], exists, values);
    }
    for (slot, values) in env {
        let index = slot.index().to_string();
        let exists = slot.container(spec).has_env;
        add_to_array(&mut ops, &["spec", slot.array(), &index, "env"], exists, values);
    }
    Patch(ops)
}

/// Appends `values` to the array at `path`, or creates it when `exists` is false.
fn add_to_array(ops: &mut Vec<PatchOperation>, path: &[&str], exists: bool, values: Vec<Value>) {
    if values.is_empty() {
        return;
    }
    let path = PointerBuf::from_tokens(path.iter().copied());
    if exists {
        for value in values {
            let mut item = path.clone();
            item.push_back("-");
            ops.push(PatchOperation::Add(AddOperation { path: item, value }));
        }
    } else {
        ops.push(PatchOperation::Add(AddOperation { path, value: Value::Array(values) }));
    }
}
