//! The projected tokens that other mutating webhooks add to pods at admission, which no manifest
//! shows: AWS IRSA (the EKS pod identity webhook) and Azure workload identity.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::manifest::Document;

// aws/amazon-eks-pod-identity-webhook: `NewModifier` (pkg/handler/handler.go) defaults to the
// audience sts.amazonaws.com and 86400 s (`pkg.DefaultTokenExpiration`) in the volume
// `aws-iam-token`, file /var/run/secrets/eks.amazonaws.com/serviceaccount/token. Only a pod whose
// ServiceAccount carries a non-empty `eks.amazonaws.com/role-arn` is mutated; the SA's
// `eks.amazonaws.com/audience` replaces the audience; the lifetime is the pod's
// `eks.amazonaws.com/token-expiration`, else the SA's, else the default
// (`buildPodPatchConfig`), a value that does not parse is ignored and one below 3600 s is raised to
// 3600 (`pkg.ValidateMinTokenExpiration`). Its objectSelector leaves out pods labelled
// `eks.amazonaws.com/skip-pod-identity-webhook`.
const EKS_ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
const EKS_AUDIENCE: &str = "eks.amazonaws.com/audience";
const EKS_TOKEN_EXPIRATION: &str = "eks.amazonaws.com/token-expiration";
const EKS_SKIP_LABEL: &str = "eks.amazonaws.com/skip-pod-identity-webhook";
const EKS_DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
const EKS_DEFAULT_SECONDS: u64 = 86_400;
const EKS_MIN_SECONDS: i64 = 3_600;

// Azure/azure-workload-identity (pkg/webhook/consts.go, webhook.go): the webhook's objectSelector
// takes pods labelled `azure.workload.identity/use: "true"`; it adds a token for
// `api://AzureADTokenExchange` (`DefaultAudience`) whose lifetime is the pod's
// `azure.workload.identity/service-account-token-expiration`, else the SA's, else 3600 s
// (`getServiceAccountTokenExpiration`); a value outside 3600..=86400 or that does not parse makes
// it refuse the pod. It injects whether or not the SA has `azure.workload.identity/client-id`
// (that only fills AZURE_CLIENT_ID).
const AZURE_USE_LABEL: &str = "azure.workload.identity/use";
const AZURE_TOKEN_EXPIRATION: &str = "azure.workload.identity/service-account-token-expiration";
const AZURE_AUDIENCE: &str = "api://AzureADTokenExchange";
const AZURE_SECONDS: std::ops::RangeInclusive<u64> = 3_600..=86_400;
const AZURE_DEFAULT_SECONDS: u64 = 3_600;

/// A mutating webhook that adds a projected service-account token to pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Injector {
    /// AWS IRSA: amazon-eks-pod-identity-webhook.
    EksPodIdentity,
    /// Azure workload identity's mutating webhook.
    AzureWorkloadIdentity,
}

impl Injector {
    /// Which webhook it is and what makes it act, for the drafted policy's comments.
    pub fn describe(self) -> &'static str {
        match self {
            Injector::EksPodIdentity => {
                "the EKS pod identity webhook (IRSA; ServiceAccounts annotated eks.amazonaws.com/role-arn)"
            }
            Injector::AzureWorkloadIdentity => {
                "the Azure workload identity webhook (pods labelled azure.workload.identity/use: \"true\")"
            }
        }
    }
}

/// One token a webhook adds to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub injector: Injector,
    pub audience: String,
    pub seconds: u64,
}

/// The annotations of the ServiceAccounts among the documents, by namespace and name.
#[derive(Debug, Default)]
pub struct ServiceAccounts(BTreeMap<(String, String), BTreeMap<String, String>>);

impl ServiceAccounts {
    /// Every `v1` ServiceAccount among `documents`; those without a namespace are in
    /// `default_namespace`.
    pub fn index(documents: &[Document], default_namespace: &str) -> Self {
        let mut accounts = BTreeMap::new();
        for object in documents.iter().map(|d| &d.object) {
            let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
            if (text("/apiVersion"), text("/kind")) != (Some("v1"), Some("ServiceAccount")) {
                continue;
            }
            let namespace = text("/metadata/namespace").unwrap_or(default_namespace).to_string();
            let name = text("/metadata/name").unwrap_or_default().to_string();
            accounts.insert((namespace, name), string_map(object, "/metadata/annotations"));
        }
        ServiceAccounts(accounts)
    }

    /// The ServiceAccounts for which the EKS pod identity webhook adds a token to every pod that
    /// runs as them: `(namespace, name, token)`.
    pub fn irsa(&self) -> impl Iterator<Item = (&str, &str, Injected)> {
        self.0.iter().filter_map(|((namespace, name), annotations)| {
            Some((namespace.as_str(), name.as_str(), eks_token(annotations, None)?))
        })
    }

    fn annotations(&self, namespace: &str, name: &str) -> Option<&BTreeMap<String, String>> {
        self.0.get(&(namespace.to_string(), name.to_string()))
    }
}

/// Whether the annotation `key` of a ServiceAccount can change what these webhooks add.
pub fn reads_service_account_annotation(key: &str) -> bool {
    key.starts_with("eks.amazonaws.com/") || key.starts_with("azure.workload.identity/")
}

/// The tokens the webhooks will add to `pod` (a Pod, or a template as a Pod) that runs as
/// `service_account` in `namespace`, given its ServiceAccount's annotations among `accounts`.
pub fn of_pod(pod: &Value, (namespace, service_account): (&str, &str), accounts: &ServiceAccounts) -> Vec<Injected> {
    let account = accounts.annotations(namespace, service_account);
    let (labels, annotations) = (string_map(pod, "/metadata/labels"), string_map(pod, "/metadata/annotations"));
    let mut found = Vec::new();
    if !labels.contains_key(EKS_SKIP_LABEL) {
        found.extend(account.and_then(|account| eks_token(account, Some(&annotations))));
    }
    if labels.get(AZURE_USE_LABEL).is_some_and(|value| value == "true") {
        found.extend(azure_token(Some(&annotations), account));
    }
    found
}

/// The string values of the object at `pointer` in `object` (labels, annotations).
fn string_map(object: &Value, pointer: &str) -> BTreeMap<String, String> {
    let map = object.pointer(pointer).and_then(Value::as_object).into_iter().flatten();
    map.filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string()))).collect()
}

/// The IRSA token for a ServiceAccount with these annotations, with the pod's annotations when
/// known; `None` without a role ARN.
fn eks_token(account: &BTreeMap<String, String>, pod: Option<&BTreeMap<String, String>>) -> Option<Injected> {
    account.get(EKS_ROLE_ARN).filter(|arn| !arn.is_empty())?;
    let audience = account.get(EKS_AUDIENCE).map_or(EKS_DEFAULT_AUDIENCE, String::as_str);
    let parsed = |annotations| annotation(annotations, EKS_TOKEN_EXPIRATION)?.trim().parse::<i64>().ok();
    let seconds = match parsed(pod).or_else(|| parsed(Some(account))) {
        Some(seconds) => u64::try_from(seconds.max(EKS_MIN_SECONDS)).expect("at least the minimum"),
        None => EKS_DEFAULT_SECONDS,
    };
    Some(Injected { injector: Injector::EksPodIdentity, audience: audience.to_string(), seconds })
}

/// The Azure workload identity token of a labelled pod; `None` when its lifetime annotation
/// makes the webhook refuse the pod.
fn azure_token(pod: Option<&BTreeMap<String, String>>, account: Option<&BTreeMap<String, String>>) -> Option<Injected> {
    let given = |annotations| annotation(annotations, AZURE_TOKEN_EXPIRATION).filter(|value| !value.is_empty());
    let seconds = match given(pod).or_else(|| given(account)) {
        Some(value) => value.parse::<u64>().ok().filter(|s| AZURE_SECONDS.contains(s))?,
        None => AZURE_DEFAULT_SECONDS,
    };
    Some(Injected { injector: Injector::AzureWorkloadIdentity, audience: AZURE_AUDIENCE.to_string(), seconds })
}

/// The value of the annotation `key`, if any.
fn annotation<'a>(annotations: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    annotations?.get(key).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accounts(annotations: Value) -> ServiceAccounts {
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": {"name": "web", "namespace": "team-a", "annotations": annotations}});
        ServiceAccounts::index(&[Document::from_cluster(account)], "default")
    }

    fn injected(metadata: Value, accounts: &ServiceAccounts) -> Vec<(Injector, String, u64)> {
        let pod = json!({"metadata": metadata, "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}]}});
        let found = of_pod(&pod, ("team-a", "web"), accounts);
        found.into_iter().map(|i| (i.injector, i.audience, i.seconds)).collect()
    }

    #[test]
    fn irsa_follows_the_service_account_and_the_pods_annotations() {
        use Injector::EksPodIdentity as Eks;
        let arn = json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/web"});
        assert_eq!(injected(json!({}), &accounts(arn.clone())), [(Eks, "sts.amazonaws.com".into(), 86_400)]);
        let custom = json!({"eks.amazonaws.com/role-arn": "arn", "eks.amazonaws.com/audience": "custom",
                            "eks.amazonaws.com/token-expiration": "7200"});
        assert_eq!(injected(json!({}), &accounts(custom)), [(Eks, "custom".into(), 7200)]);
        let pod = json!({"annotations": {"eks.amazonaws.com/token-expiration": "600"}});
        assert_eq!(injected(pod, &accounts(arn.clone())), [(Eks, "sts.amazonaws.com".into(), 3600)], "raised");
        let pod = json!({"annotations": {"eks.amazonaws.com/token-expiration": "soon"}});
        assert_eq!(injected(pod, &accounts(arn.clone())), [(Eks, "sts.amazonaws.com".into(), 86_400)], "ignored");
        let skipped = json!({"labels": {"eks.amazonaws.com/skip-pod-identity-webhook": "true"}});
        assert!(injected(skipped, &accounts(arn.clone())).is_empty());
        assert!(injected(json!({}), &accounts(json!({"eks.amazonaws.com/role-arn": ""}))).is_empty());
        assert!(injected(json!({}), &ServiceAccounts::default()).is_empty(), "no ServiceAccount, no role");
        let listed: Vec<_> =
            accounts(arn).irsa().map(|(ns, sa, i)| (ns.to_string(), sa.to_string(), i.seconds)).collect();
        assert_eq!(listed, [("team-a".to_string(), "web".to_string(), 86_400)]);
    }

    #[test]
    fn azure_workload_identity_follows_the_pod_label_and_lifetime_annotations() {
        use Injector::AzureWorkloadIdentity as Azure;
        let audience = || "api://AzureADTokenExchange".to_string();
        let labelled = json!({"labels": {"azure.workload.identity/use": "true"}});
        assert_eq!(injected(labelled.clone(), &ServiceAccounts::default()), [(Azure, audience(), 3600)]);
        let account = accounts(json!({"azure.workload.identity/service-account-token-expiration": "7200"}));
        assert_eq!(injected(labelled, &account), [(Azure, audience(), 7200)]);
        let pod = json!({"labels": {"azure.workload.identity/use": "true"},
                         "annotations": {"azure.workload.identity/service-account-token-expiration": "86400"}});
        assert_eq!(injected(pod, &account), [(Azure, audience(), 86_400)], "the pod's annotation first");
        let refused = json!({"labels": {"azure.workload.identity/use": "true"},
                             "annotations": {"azure.workload.identity/service-account-token-expiration": "600"}});
        assert!(injected(refused, &account).is_empty(), "the webhook refuses the pod: no token");
        assert!(injected(json!({"labels": {"azure.workload.identity/use": "false"}}), &account).is_empty());
    }
}
