//! RBAC is really on in the local API server: an identity allowed to read Secrets in one
//! namespace only can read them there and is refused in another — the ground tenant isolation
//! stands on. And the chart's tenant API identity (ServiceAccount `hookline-api`) may review
//! tokens and nothing else: whatever the API does for a caller it does with the caller's token.

use hookline_tests::{Env, LogDump, TestNamespace, install};
use k8s_openapi::api::{
    core::v1::{Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{Api, api::PostParams};
use serde_json::json;

#[tokio::test]
async fn identity_bound_to_one_namespace_cannot_read_secrets_of_another() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let admin = env.client().await.unwrap();
    let mine = TestNamespace::create(&env, &admin, "rbac-a").await.unwrap();
    let theirs = TestNamespace::create(&env, &admin, "rbac-b").await.unwrap();

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s"}, "stringData": {"k": "v"}
    }))
    .unwrap();
    for ns in [&mine.name, &theirs.name] {
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let pp = PostParams::default();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "tenant"}})).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &mine.name)
        .create(&pp, &sa)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "read-secrets"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), &mine.name)
        .create(&pp, &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "read-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": mine.name}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &mine.name)
        .create(&pp, &binding)
        .await
        .unwrap();

    let tenant = env.client_as(&admin, &mine.name, "tenant").await.unwrap();

    let own = Api::<Secret>::namespaced(tenant.clone(), &mine.name)
        .get("s")
        .await;
    assert!(
        own.is_ok(),
        "reading its own namespace's Secret must work: {own:?}"
    );
    match Api::<Secret>::namespaced(tenant.clone(), &theirs.name)
        .get("s")
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("reading another namespace's Secret must be forbidden, got {other:?}"),
    }
    match Api::<Secret>::all(tenant).list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("listing Secrets cluster-wide must be forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn the_api_service_account_may_review_tokens_and_nothing_else() {
    use k8s_openapi::api::authentication::v1::TokenReview;
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let admin = env.client().await.unwrap();
    install::controller(&env, &admin).await.unwrap();
    let tenant = TestNamespace::create(&env, &admin, "rbac-api")
        .await
        .unwrap();
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}))
            .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &tenant.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let api = env
        .client_as(&admin, install::OPERATOR_NAMESPACE, "hookline-api")
        .await
        .unwrap();

    // Its one right: asking who a token belongs to (this one belongs to nobody).
    let review: TokenReview =
        serde_json::from_value(json!({"spec": {"token": "not-a-token"}})).unwrap();
    let answer = Api::<TokenReview>::all(api.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    assert_ne!(answer.status.and_then(|s| s.authenticated), Some(true));

    match Api::<Secret>::namespaced(api.clone(), &tenant.name)
        .get("s")
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("the API's own identity must not read a tenant Secret, got {other:?}"),
    }
    for (group, resource, verb, ns) in [
        ("", "secrets", "list", tenant.name.as_str()),
        ("hookline.dev", "webhooks", "list", tenant.name.as_str()),
        ("hookline.dev", "webhooks", "create", tenant.name.as_str()),
        ("hookline.dev", "deliveries", "list", tenant.name.as_str()),
        ("", "users", "impersonate", ""),
        ("", "serviceaccounts", "impersonate", tenant.name.as_str()),
        ("authorization.k8s.io", "subjectaccessreviews", "create", ""),
        ("", "secrets", "get", install::OPERATOR_NAMESPACE),
    ] {
        let review: SelfSubjectAccessReview = serde_json::from_value(json!({
            "spec": {"resourceAttributes": {"namespace": ns, "group": group, "resource": resource, "verb": verb}}
        }))
        .unwrap();
        let answer = Api::<SelfSubjectAccessReview>::all(api.clone())
            .create(&PostParams::default(), &review)
            .await
            .unwrap();
        assert!(
            !answer.status.is_some_and(|s| s.allowed),
            "hookline-api may not {verb} {resource} in {ns:?}"
        );
    }
}
