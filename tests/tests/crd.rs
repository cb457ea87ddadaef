//! The Webhook API against the real API server: the committed CRD YAML is what the types
//! generate, the CRD installs, `kubectl get webhooks` prints its columns, and the API server
//! itself refuses invalid Webhooks with a message naming the field.

use hookline_tests::{Env, LogDump, TestNamespace, crd, repo_root};

#[test]
fn committed_crd_yaml_and_the_charts_copy_match_what_crdgen_generates_from_the_types() {
    for (c, dir) in hookline_crds::crds()
        .into_iter()
        .flat_map(|c| [(c.clone(), "crds/manifests"), (c, "charts/hookline/crds")])
    {
        let path = repo_root().join(dir).join(hookline_crds::file_name(&c));
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let generated = hookline_crds::to_yaml(&c).unwrap();
        assert!(
            committed == generated,
            "{} is out of date with the Rust types in crds/src; run `make crds` and commit the result",
            path.display()
        );
    }
}

const VALID: &str = r#"
apiVersion: hookline.dev/v1alpha1
kind: Webhook
metadata: {name: NAME}
spec:
  url: https://hooks.acme.example/fraud
  eventTypes: [transaction.approved, transaction.rejected, "transaction.*"]
  delivery:
    timeout: 30s
    retry: {maxAttempts: 10, backoff: exponential, initialDelay: 1s, maxDelay: 10h}
    ordering: PerKey
    maxInFlight: 32
    rateLimit: {perSecond: 100}
  headers: {x-team: risk}
"#;

fn webhook(name: &str, spec_yaml: &str) -> String {
    format!(
        "apiVersion: hookline.dev/v1alpha1\nkind: Webhook\nmetadata: {{name: {name}}}\nspec:\n{spec_yaml}"
    )
}

#[tokio::test]
async fn crd_installs_and_kubectl_get_webhooks_prints_the_printer_columns() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    crd::install(&client).await.unwrap();
    let ns = TestNamespace::create(&env, &client, "crd").await.unwrap();

    let (ok, _, err) = env
        .kubectl_stdin(
            &["apply", "-n", &ns.name, "-f", "-"],
            &VALID.replace("NAME", "fraud-decisions"),
        )
        .unwrap();
    assert!(ok, "a valid Webhook must be accepted: {err}");

    let table = env.kubectl(&["get", "webhooks", "-n", &ns.name]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "URL",
            "EVENTS",
            "DELIVERED",
            "FAILED",
            "LAST",
            "SUCCESS",
            "AGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("fraud-decisions") && table.contains("https://hooks.acme.example/fraud"),
        "{table}"
    );

    // The short name and the category reach the same objects.
    let by_short = env
        .kubectl(&["get", "wh", "-n", &ns.name, "-o", "name"])
        .unwrap();
    assert_eq!(by_short.trim(), "webhook.hookline.dev/fraud-decisions");
    let by_category = env
        .kubectl(&["get", "hookline", "-n", &ns.name, "-o", "name"])
        .unwrap();
    assert_eq!(by_category.trim(), "webhook.hookline.dev/fraud-decisions");

    // The wide view adds circuit, paused and the reason.
    let wide = env
        .kubectl(&["get", "webhooks", "-n", &ns.name, "-o", "wide"])
        .unwrap();
    for col in ["CIRCUIT", "PAUSED", "REASON"] {
        assert!(wide.lines().next().unwrap().contains(col), "{wide}");
    }
}

/// Each case: a name, the spec, and what the API server's message must mention.
fn invalid_cases() -> Vec<(&'static str, String, &'static str)> {
    let ev = "  eventTypes: [a.b]\n";
    vec![
        (
            "ftp-scheme",
            format!("  url: ftp://hooks.example/x\n{ev}"),
            "spec.url",
        ),
        ("not-a-url", format!("  url: 'https://'\n{ev}"), "spec.url"),
        (
            "credentials-in-url",
            format!("  url: https://user:pw@hooks.example/x\n{ev}"),
            "spec.url",
        ),
        (
            "fragment-in-url",
            format!("  url: https://hooks.example/x#frag\n{ev}"),
            "spec.url",
        ),
        (
            "double-star-pattern",
            "  url: https://h.example/x\n  eventTypes: ['transaction.**']\n".into(),
            "spec.eventTypes",
        ),
        ("missing-url", ev.to_string(), "spec.url"),
        (
            "no-event-types",
            "  url: https://h.example/x\n  eventTypes: []\n".into(),
            "spec.eventTypes",
        ),
        (
            "bad-event-type",
            "  url: https://h.example/x\n  eventTypes: ['has space']\n".into(),
            "spec.eventTypes",
        ),
        (
            "too-many-event-types",
            format!(
                "  url: https://h.example/x\n  eventTypes: [{}]\n",
                (0..65)
                    .map(|i| format!("t{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "spec.eventTypes",
        ),
        (
            "timeout-format",
            format!("  url: https://h.example/x\n{ev}  delivery: {{timeout: 30 seconds}}\n"),
            "spec.delivery.timeout",
        ),
        (
            "timeout-range",
            format!("  url: https://h.example/x\n{ev}  delivery: {{timeout: 10m}}\n"),
            "spec.delivery.timeout",
        ),
        (
            "max-attempts",
            format!("  url: https://h.example/x\n{ev}  delivery: {{retry: {{maxAttempts: 0}}}}\n"),
            "spec.delivery.retry.maxAttempts",
        ),
        (
            "initial-after-max",
            format!(
                "  url: https://h.example/x\n{ev}  delivery: {{retry: {{initialDelay: 1h, maxDelay: 10s}}}}\n"
            ),
            "spec.delivery.retry",
        ),
        (
            "backoff-kind",
            format!(
                "  url: https://h.example/x\n{ev}  delivery: {{retry: {{backoff: fibonacci}}}}\n"
            ),
            "spec.delivery.retry.backoff",
        ),
        (
            "max-in-flight",
            format!("  url: https://h.example/x\n{ev}  delivery: {{maxInFlight: 5000}}\n"),
            "spec.delivery.maxInFlight",
        ),
        (
            "rate-limit",
            format!(
                "  url: https://h.example/x\n{ev}  delivery: {{rateLimit: {{perSecond: 0}}}}\n"
            ),
            "spec.delivery.rateLimit.perSecond",
        ),
        (
            "ordering",
            format!("  url: https://h.example/x\n{ev}  delivery: {{ordering: Random}}\n"),
            "spec.delivery.ordering",
        ),
        (
            "reserved-header",
            format!("  url: https://h.example/x\n{ev}  headers: {{Webhook-Signature: forged}}\n"),
            "spec.headers",
        ),
        (
            "authorization-header",
            format!("  url: https://h.example/x\n{ev}  headers: {{authorization: Bearer x}}\n"),
            "spec.headers",
        ),
        (
            "header-name",
            format!("  url: https://h.example/x\n{ev}  headers: {{'bad name': x}}\n"),
            "spec.headers",
        ),
        (
            "secret-ref-name",
            format!("  url: https://h.example/x\n{ev}  secretRef: {{name: Not_Valid}}\n"),
            "spec.secretRef.name",
        ),
    ]
}

#[tokio::test]
async fn api_server_refuses_invalid_webhooks_with_a_message_naming_the_field() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    crd::install(&client).await.unwrap();
    let ns = TestNamespace::create(&env, &client, "invalid")
        .await
        .unwrap();

    let cases = invalid_cases();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for (name, spec, field) in &cases {
        let (ok, _, err) = env
            .kubectl_stdin(&["create", "-n", &ns.name, "-f", "-"], &webhook(name, spec))
            .unwrap();
        if ok {
            failures.push(format!(
                "{name}: accepted, expected a refusal naming {field}"
            ));
        } else if !err.contains(field) {
            failures.push(format!(
                "{name}: refused, but the message does not name {field}: {err}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // None of them was stored.
    let stored = env
        .kubectl(&["get", "webhooks", "-n", &ns.name, "-o", "name"])
        .unwrap();
    assert!(
        stored.trim().is_empty(),
        "invalid Webhooks were stored: {stored}"
    );
}
