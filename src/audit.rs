//! `tokengate audit`: every existing Pod, workload, CSIDriver and legacy token Secret of a live
//! cluster (or of one namespace), judged against a policy one page at a time.
//!
//! Memory stays flat as the cluster grows: ServiceAccounts are kept only as the reduced views
//! lookups read ([`crate::cluster::views`]); Pods, workloads and Secrets are judged page by page
//! and only their findings are kept. An object that does not decode is reported as a finding of
//! its own; a kind the caller may not list (403) is named in [`Audit::unread`] and the rest of
//! the cluster is still judged. A kind whose list expires between two pages (`410 Expired`: the
//! API server compacted the snapshot its continue token points at) is listed again from the
//! start, its findings so far dropped, as client-go's pager does (`ListPager`,
//! `FullListIfExpired`); after [`EXPIRED_LIST_RESTARTS`] such restarts the audit fails naming
//! the kind: a partial list is never reported as the whole cluster.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, GroupVersionKind, ListParams, PartialObjectMeta};
use kube::core::DynamicResourceScope;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cluster::views::ServiceAccountView;
use crate::cluster::{ObjectStore, ServiceAccountInfo};
use crate::manifest::Document;
use crate::policy::{EnvSource, Policy};
use crate::report::{Finding, ObjectRef, Report};
use crate::review::legacy_token::{SERVICE_ACCOUNT_NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE};
use crate::review::{rules, WorkloadKind};
use crate::simulate::{self, Extras};

/// Objects listed per API call: one page is decoded, judged and dropped before the next.
const PAGE_SIZE: u32 = 250;

/// Objects read from a cluster are judged as they run (no mutation is simulated) and always name
/// their namespace.
const OPTIONS: simulate::Options<'static> =
    simulate::Options { default_namespace: "default", mutate_pods_first: false, assume_present: &[] };

/// How often a kind's list is started again after expiring between two pages.
pub const EXPIRED_LIST_RESTARTS: usize = 3;

/// How legacy token Secrets are named in progress and in [`Audit::unread`].
const LEGACY_TOKEN_SECRETS: &str = "Secret (legacy token)";

/// What an audit found.
#[derive(Debug, Clone)]
pub struct Audit {
    /// The findings of every object that was read.
    pub report: Report,
    /// Kinds that could not be listed (or not completely), with the API server's reason.
    pub unread: Vec<Unread>,
}

/// A kind the audit could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    pub kind: String,
    /// The API server's answer, e.g. `forbidden: ...`.
    pub reason: String,
}

/// Why an audit stopped: the cluster could not be listed at all.
#[derive(Debug, thiserror::Error)]
#[error("listing {kind}: {message}")]
pub struct AuditError {
    pub kind: String,
    pub message: String,
}

/// Lists the cluster (every namespace, or only `namespace`; CSIDrivers are cluster-scoped and
/// always listed) and checks every Pod (as it runs: no mutation is simulated), every workload
/// not owned by a controller (a ReplicaSet of a Deployment is judged through its Deployment),
/// every CSIDriver, and every legacy token Secret (listed by type, metadata only: their data is
/// never read). `progress` receives `(kind, count)` after each kind.
pub async fn audit(
    client: Client,
    policy: &Policy,
    namespace: Option<&str>,
    progress: impl Fn(&str, usize),
) -> Result<Audit, AuditError> {
    let lookups = ObjectStore::default();
    let report = Report::empty(policy.mode().as_str());
    let mut auditor = Auditor {
        client,
        namespace: namespace.map(str::to_string),
        policy,
        lookups,
        audit: Audit { report, unread: Vec::new() },
    };
    // Progress is shown for kinds listed completely; the others are named in `unread`.
    let listed = |auditor: &Auditor<'_>, kind: &str, count: usize| {
        if !auditor.audit.unread.iter().any(|unread| unread.kind == kind) {
            progress(kind, count);
        }
    };
    let count = auditor.completely("ServiceAccount", Listing::ServiceAccounts).await?;
    listed(&auditor, "ServiceAccount", count);
    let count = auditor.completely("CSIDriver", Listing::CsiDrivers).await?;
    listed(&auditor, "CSIDriver", count);
    let pods = ApiResource::erase::<Pod>(&());
    let count = auditor.completely("Pod", Listing::Objects { resource: &pods, skip_controlled: false }).await?;
    listed(&auditor, "Pod", count);
    for kind in WorkloadKind::ALL {
        let (group, name) = kind.group_kind();
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", name), kind.plural());
        let count = auditor.completely(name, Listing::Objects { resource: &resource, skip_controlled: true }).await?;
        listed(&auditor, name, count);
    }
    let count = auditor.completely(LEGACY_TOKEN_SECRETS, Listing::LegacyTokenSecrets).await?;
    listed(&auditor, LEGACY_TOKEN_SECRETS, count);
    Ok(auditor.audit)
}

/// One kind's list.
#[derive(Clone, Copy)]
enum Listing<'r> {
    ServiceAccounts,
    CsiDrivers,
    /// Pods or a workload kind; with `skip_controlled`, objects owned by a controller are left
    /// to their owner.
    Objects {
        resource: &'r ApiResource,
        skip_controlled: bool,
    },
    LegacyTokenSecrets,
}

/// Why a kind's list stopped before its last page.
enum Interrupted {
    /// The continue token expired (`410 Expired`); the API server's message.
    Expired(String),
    /// Any other failure: the audit stops.
    Failed(AuditError),
}

impl From<AuditError> for Interrupted {
    fn from(err: AuditError) -> Self {
        Interrupted::Failed(err)
    }
}

struct Auditor<'a> {
    client: Client,
    namespace: Option<String>,
    policy: &'a Policy,
    /// What lookups read: the reduced ServiceAccounts and the CSIDrivers.
    lookups: ObjectStore,
    audit: Audit,
}

impl Auditor<'_> {
    /// Lists one kind to its last page, starting again (and dropping what it found so far) when
    /// the list expires between two pages.
    async fn completely(&mut self, kind: &str, listing: Listing<'_>) -> Result<usize, AuditError> {
        let mut expired = 0;
        loop {
            let mark = (self.audit.report.checked, self.audit.report.violations.len(), self.audit.unread.len());
            let listed = match listing {
                Listing::ServiceAccounts => self.service_accounts().await,
                Listing::CsiDrivers => self.csi_drivers().await,
                Listing::Objects { resource, skip_controlled } => self.objects(resource, kind, skip_controlled).await,
                Listing::LegacyTokenSecrets => self.legacy_token_secrets().await,
            };
            match listed {
                Ok(count) => return Ok(count),
                Err(Interrupted::Failed(err)) => return Err(err),
                Err(Interrupted::Expired(message)) => {
                    self.audit.report.checked = mark.0;
                    self.audit.report.violations.truncate(mark.1);
                    self.audit.unread.truncate(mark.2);
                    expired += 1;
                    if expired > EXPIRED_LIST_RESTARTS {
                        return Err(AuditError {
                            kind: kind.to_string(),
                            message: format!(
                                "the list expired {expired} times before its last page (410 Expired: the API \
                                 server compacted its history between two pages; audit one namespace at a \
                                 time with -n to shorten each list): {message}"
                            ),
                        });
                    }
                }
            }
        }
    }

    /// Keeps every ServiceAccount for the lookups of the objects judged later, with only the
    /// annotations the policy reads.
    async fn service_accounts(&mut self) -> Result<usize, Interrupted> {
        let read = annotations_read(self.policy);
        let resource = ApiResource::erase::<ServiceAccount>(&());
        let mut pages = Pages::new(self.api(&resource));
        let mut count = 0;
        while let Some(page) = pages.next().await {
            let Some(items) = self.page("ServiceAccount", page, count)? else { break };
            for account in items {
                count += 1;
                let (namespace, name) = (account.text("namespace"), account.text("name").unwrap_or_default());
                match ServiceAccountView::deserialize(&account.object) {
                    Ok(view) => {
                        let annotations = view.metadata.annotations.iter().flatten();
                        let kept = annotations.filter(|(key, _)| read.contains(*key));
                        let info =
                            ServiceAccountInfo { annotations: kept.map(|(k, v)| (k.clone(), v.clone())).collect() };
                        self.lookups.insert_service_account(&namespace.unwrap_or_default(), &name, info);
                    }
                    Err(err) => self.undecodable("ServiceAccount", namespace, name, &err.to_string()),
                }
            }
        }
        Ok(count)
    }

    /// Judges every CSIDriver and keeps them for the lookups of pods.
    async fn csi_drivers(&mut self) -> Result<usize, Interrupted> {
        let resource = ApiResource::erase::<CSIDriver>(&());
        let mut pages = Pages::new(Api::<Item>::all_with(self.client.clone(), &resource));
        let mut drivers = Vec::new();
        while let Some(page) = pages.next().await {
            let Some(items) = self.page("CSIDriver", page, drivers.len())? else { break };
            for object in items {
                if let Some(value) = self.decoded(object, &resource) {
                    // One that does not decode is reported by the check below.
                    let _ = self.lookups.insert(&value);
                    drivers.push(value);
                }
            }
        }
        let count = drivers.len();
        self.judge(drivers).await;
        Ok(count)
    }

    /// Judges every object of `resource`, page by page; with `skip_controlled`, objects owned by
    /// a controller are left to their owner.
    async fn objects(
        &mut self,
        resource: &ApiResource,
        kind: &str,
        skip_controlled: bool,
    ) -> Result<usize, Interrupted> {
        let mut pages = Pages::new(self.api(resource));
        let mut count = 0;
        while let Some(page) = pages.next().await {
            let Some(items) = self.page(kind, page, count)? else { break };
            count += items.len();
            let controlled =
                |object: &Item| object.owner_references().iter().any(|owner| owner.controller == Some(true));
            let documents: Vec<Value> = items
                .into_iter()
                .filter(|object| !(skip_controlled && controlled(object)))
                .filter_map(|object| self.decoded(object, resource))
                .collect();
            self.judge(documents).await;
        }
        Ok(count)
    }

    /// Every Secret of type `kubernetes.io/service-account-token`, as metadata only (selected by
    /// the API server's `type` field selector, so no other Secret and no Secret's data is ever
    /// transferred), rebuilt as the few fields the decision reads.
    async fn legacy_token_secrets(&mut self) -> Result<usize, Interrupted> {
        let api = self.secrets_api();
        let mut pages = Pages::new(api);
        pages.params = pages.params.fields(&format!("type={SERVICE_ACCOUNT_TOKEN_TYPE}"));
        let mut count = 0;
        while let Some(page) = pages.next().await {
            let Some(items) = self.page(LEGACY_TOKEN_SECRETS, page, count)? else { break };
            count += items.len();
            let secrets = items.iter().map(|secret| {
                let annotation = secret.annotations().get(SERVICE_ACCOUNT_NAME_ANNOTATION);
                json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": secret.metadata.name,
                        "namespace": secret.metadata.namespace,
                        "annotations": {SERVICE_ACCOUNT_NAME_ANNOTATION: annotation},
                    },
                    "type": SERVICE_ACCOUNT_TOKEN_TYPE,
                })
            });
            self.judge(secrets.collect()).await;
        }
        Ok(count)
    }

    /// The API of a namespaced kind in the audited namespace, or in all of them.
    fn api(&self, resource: &ApiResource) -> Api<Item> {
        match &self.namespace {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// The legacy token Secrets' API (metadata only) in the audited namespace, or in all of them.
    fn secrets_api(&self) -> Api<PartialObjectMeta<Secret>> {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    /// A page's items; `None` (and the kind named in [`Audit::unread`]) when the API server
    /// refuses to list the kind, [`Interrupted::Expired`] when the list's continue token expired,
    /// an error when the API server cannot be reached at all.
    fn page<K>(
        &mut self,
        kind: &str,
        page: Result<Vec<K>, kube::Error>,
        read: usize,
    ) -> Result<Option<Vec<K>>, Interrupted> {
        let err = match page {
            Ok(items) => return Ok(Some(items)),
            Err(err) => err,
        };
        let partly = if read > 0 { format!(" (after {read} object(s))") } else { String::new() };
        match &err {
            kube::Error::Api(status) if status.code == 410 => Err(Interrupted::Expired(status.message.clone())),
            kube::Error::Api(status) if status.is_forbidden() || status.is_not_found() => {
                let what = if status.is_forbidden() { "forbidden" } else { "not served by this API server" };
                let reason = format!("{what}{partly}: {}", status.message);
                self.audit.unread.push(Unread { kind: kind.to_string(), reason });
                Ok(None)
            }
            _ => Err(AuditError { kind: kind.to_string(), message: format!("{err}{partly}") }.into()),
        }
    }

    /// The object as JSON with `apiVersion` and `kind` (list items may lack them), or `None`
    /// when its metadata does not decode (reported as a finding). The rest of the object is
    /// decoded by the check, which reports what does not decode in the same way.
    fn decoded(&mut self, item: Item, resource: &ApiResource) -> Option<Value> {
        if let Some(error) = &item.invalid {
            let (namespace, name) = (item.text("namespace"), item.text("name").unwrap_or_default());
            self.undecodable(&resource.kind, namespace, name, &format!("metadata: {error}"));
            return None;
        }
        let mut object = item.object;
        if let Some(fields) = object.as_object_mut() {
            fields.insert("apiVersion".into(), Value::String(resource.api_version.clone()));
            fields.insert("kind".into(), Value::String(resource.kind.clone()));
        }
        Some(object)
    }

    fn undecodable(&mut self, kind: &str, namespace: Option<String>, name: String, error: &str) {
        self.audit.report.checked += 1;
        self.audit.report.violations.push(Finding {
            object: ObjectRef { file: None, line: None, rendered: None, kind: kind.to_string(), namespace, name },
            rule: rules::READABLE_REQUEST,
            field: "object".to_string(),
            message: format!("does not decode, so it could not be judged: {error}"),
            decided: None,
        });
    }

    /// Judges a page of objects and keeps only the findings.
    async fn judge(&mut self, objects: Vec<Value>) {
        let documents: Vec<Document> = objects.into_iter().map(Document::from_cluster).collect();
        let page = simulate::judge(self.policy, &documents, &self.lookups, &Extras::default(), OPTIONS).await;
        self.audit.report.checked += page.checked;
        self.audit.report.violations.extend(page.violations);
    }
}

/// The ServiceAccount annotations the policy reads: injections' `serviceAccountAnnotation`
/// selectors and environment values taken from an annotation.
fn annotations_read(policy: &Policy) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for injection in policy.injections() {
        keys.extend(injection.service_account_annotation.clone());
        for var in &injection.env {
            if let EnvSource::ServiceAccountAnnotation(key) = &var.source {
                keys.insert(key.clone());
            }
        }
    }
    keys
}

/// One list item as JSON. Every item of a page decodes whatever its fields hold (a page is
/// never lost to one odd object); whether its metadata decodes is kept for the caller.
#[derive(Debug, Clone)]
struct Item {
    metadata: ObjectMeta,
    /// Why `metadata` is empty: the item's metadata does not decode.
    invalid: Option<String>,
    object: Value,
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = Value::deserialize(deserializer)?;
        let metadata = object.get("metadata").map(ObjectMeta::deserialize).transpose();
        let (metadata, invalid) = match metadata {
            Ok(metadata) => (metadata.unwrap_or_default(), None),
            Err(err) => (ObjectMeta::default(), Some(err.to_string())),
        };
        Ok(Item { metadata, invalid, object })
    }
}

impl Item {
    fn text(&self, field: &str) -> Option<String> {
        self.object.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).map(str::to_string)
    }
}

/// Any kind, given by its [`ApiResource`] (as kube's `DynamicObject`).
impl Resource for Item {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.kind)
    }
    fn group(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.group)
    }
    fn version(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.version)
    }
    fn api_version(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.api_version)
    }
    fn plural(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.plural)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The pages of a list, fetched one at a time.
struct Pages<K> {
    api: Api<K>,
    params: ListParams,
    done: bool,
}

impl<K: Clone + DeserializeOwned + Debug> Pages<K> {
    fn new(api: Api<K>) -> Self {
        Self { api, params: ListParams::default().limit(PAGE_SIZE), done: false }
    }

    async fn next(&mut self) -> Option<Result<Vec<K>, kube::Error>> {
        if self.done {
            return None;
        }
        let page = match self.api.list(&self.params).await {
            Ok(page) => page,
            Err(err) => {
                self.done = true;
                return Some(Err(err));
            }
        };
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => self.params = self.params.clone().continue_token(&token),
            None => self.done = true,
        }
        Some(Ok(page.items))
    }
}
