//! The RBAC matrix: every endpoint × every role, and cross-tenant 404s.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, random_name};

struct Fixture {
    tenant: String,
    site: String,
    member_user: String,
}

/// Every role we test, and its token.
struct Roles {
    admin: String,
    operator: String,
    owner: String,
    member: String,
    viewer: String,
    /// The owner of another tenant.
    outsider: String,
}

impl Roles {
    fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("admin", &self.admin),
            ("operator", &self.operator),
            ("owner", &self.owner),
            ("member", &self.member),
            ("viewer", &self.viewer),
            ("outsider", &self.outsider),
        ]
    }
}

#[tokio::test]
async fn every_endpoint_by_every_role() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let other = app.create_tenant(&admin, "globex").await;
    let (owner, _) = app.user_with_role(&admin, &tenant, "owner").await;
    let (member, member_user) = app.user_with_role(&admin, &tenant, "member").await;
    let (viewer, _) = app.user_with_role(&admin, &tenant, "viewer").await;
    let (outsider, _) = app.user_with_role(&admin, &other, "owner").await;
    let operator = app.staff_with_role(&admin, "operator").await;
    let roles = Roles {
        admin,
        operator,
        owner,
        member,
        viewer,
        outsider,
    };

    let (status, created) = app
        .create_site(&roles.member, &tenant, "matrix.example")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let site = created["site"]["id"].as_str().unwrap().to_owned();
    let op = created["operation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.wait_operation(&roles.admin, &op).await["state"],
        "succeeded"
    );
    let fx = Fixture {
        tenant,
        site,
        member_user,
    };

    // (method, path, body, expected status per role: admin, operator, owner, member, viewer, outsider)
    type Case = (Method, String, Option<Value>, [u16; 6]);
    let t = &fx.tenant;
    let s = &fx.site;
    let reads: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/tenants".into(),
            None,
            [200, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/v1/tenants/{t}"),
            None,
            [200, 200, 200, 200, 200, 404],
        ),
        (
            Method::GET,
            format!("/v1/tenants/{t}/users"),
            None,
            [200, 200, 200, 200, 200, 404],
        ),
        (
            Method::GET,
            format!("/v1/tenants/{t}/sites"),
            None,
            [200, 200, 200, 200, 200, 404],
        ),
        (
            Method::GET,
            format!("/v1/sites/{s}"),
            None,
            [200, 200, 200, 200, 200, 404],
        ),
        (
            Method::GET,
            format!("/v1/operations/{op}"),
            None,
            [200, 200, 200, 200, 200, 404],
        ),
        (
            Method::GET,
            format!("/v1/tenants/{t}/audit"),
            None,
            [200, 200, 200, 403, 403, 404],
        ),
        (
            Method::GET,
            "/v1/audit".into(),
            None,
            [200, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/plans".into(),
            None,
            [200, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/v1/nodes".into(),
            None,
            [200, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/users".into(),
            None,
            [200, 403, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/me".into(),
            None,
            [200, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/v1/tokens".into(),
            None,
            [200, 200, 200, 200, 200, 200],
        ),
    ];
    for (method, path, body, expected) in reads {
        check(&app, &roles, method, &path, body, expected).await;
    }

    // Mutations: each role gets a fresh target where the action would consume it.
    for (i, (role, token)) in roles.all().into_iter().enumerate() {
        let n = i + 1;
        let expect = |codes: [u16; 6]| codes[i];
        let cases: Vec<(Method, String, Option<Value>, u16)> = vec![
            (
                Method::POST,
                "/v1/tenants".into(),
                Some(json!({ "slug": format!("t-{n}"), "name": "T" })),
                expect([201, 201, 403, 403, 403, 403]),
            ),
            (
                Method::PATCH,
                format!("/v1/tenants/{t}"),
                Some(json!({ "name": "Acme Inc" })),
                expect([200, 200, 403, 403, 403, 404]),
            ),
            (
                Method::POST,
                "/v1/plans".into(),
                Some(
                    json!({ "slug": format!("p-{n}"), "name": "P", "slots": 1, "storage_mb": 512, "memory_mb": 256, "cpu_millis": 250, "price_cents": 100 }),
                ),
                expect([201, 403, 403, 403, 403, 403]),
            ),
            (
                Method::POST,
                "/v1/nodes".into(),
                Some(json!({ "name": format!("w-{n}"), "role": "worker" })),
                expect([201, 201, 403, 403, 403, 403]),
            ),
            (
                Method::POST,
                "/v1/users".into(),
                Some(
                    json!({ "email": format!("s{n}@staff.test"), "password": "long-enough-password", "staff_role": "operator" }),
                ),
                expect([201, 403, 403, 403, 403, 403]),
            ),
            (
                Method::POST,
                format!("/v1/tenants/{t}/users"),
                Some(
                    json!({ "email": format!("{}@x.test", random_name("inv")), "role": "viewer" }),
                ),
                expect([201, 201, 201, 403, 403, 404]),
            ),
            (
                Method::PATCH,
                format!("/v1/tenants/{t}/users/{}", fx.member_user),
                Some(json!({ "role": "member" })),
                expect([200, 200, 200, 403, 403, 404]),
            ),
            (
                Method::POST,
                format!("/v1/tenants/{t}/sites"),
                Some(
                    json!({ "name": "S", "domain": format!("site{n}.example"), "plan": "starter" }),
                ),
                expect([202, 202, 202, 202, 403, 404]),
            ),
            (
                Method::PATCH,
                format!("/v1/sites/{s}"),
                Some(json!({ "name": format!("Renamed {n}") })),
                expect([202, 202, 202, 202, 403, 404]),
            ),
            (
                Method::POST,
                "/v1/tokens".into(),
                Some(json!({ "name": "ci", "scopes": ["read"] })),
                expect([201, 201, 201, 201, 201, 201]),
            ),
        ];
        for (method, path, body, expected) in cases {
            let (status, body) = app.request(method.clone(), &path, Some(token), body).await;
            assert_eq!(status.as_u16(), expected, "{role} {method} {path}: {body}");
            assert_problem_if_error(status, &body);
            if let Some(op) = body["operation"]["id"].as_str() {
                app.wait_operation(&roles.admin, op).await;
            }
        }
    }

    // Site lifecycle actions per role on a site of its own (viewers and outsiders on the fixture).
    for (i, (role, token)) in roles.all().into_iter().enumerate() {
        let allowed = i < 4;
        let target = if allowed {
            let (status, created) = app
                .create_site(&roles.admin, t, &format!("life{i}.example"))
                .await;
            assert_eq!(status, StatusCode::ACCEPTED);
            let id = created["site"]["id"].as_str().unwrap().to_owned();
            app.wait_operation(&roles.admin, created["operation"]["id"].as_str().unwrap())
                .await;
            id
        } else {
            s.clone()
        };
        let denied = if i == 5 { 404 } else { 403 };
        for (method, path) in [
            (Method::POST, format!("/v1/sites/{target}/suspend")),
            (Method::POST, format!("/v1/sites/{target}/resume")),
            (Method::DELETE, format!("/v1/sites/{target}")),
        ] {
            let (status, body) = app.request(method.clone(), &path, Some(token), None).await;
            let expected = if allowed { 202 } else { denied };
            assert_eq!(status.as_u16(), expected, "{role} {method} {path}: {body}");
            if allowed {
                app.wait_operation(&roles.admin, body["operation"]["id"].as_str().unwrap())
                    .await;
            } else {
                assert_problem_if_error(status, &body);
            }
        }
    }

    // Removing a member and deleting a tenant.
    let (victim_token, victim) = app.user_with_role(&roles.admin, t, "viewer").await;
    drop(victim_token);
    for (i, (role, token)) in roles.all().into_iter().enumerate() {
        let expected = [204, 204, 204, 403, 403, 404][i];
        let target = if expected == 204 {
            app.user_with_role(&roles.admin, t, "viewer").await.1
        } else {
            victim.clone()
        };
        let (status, body) = app
            .request(
                Method::DELETE,
                &format!("/v1/tenants/{t}/users/{target}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status.as_u16(), expected, "{role} remove member: {body}");
    }
    for (i, (role, token)) in roles.all().into_iter().enumerate() {
        // Only members of a tenant learn it exists: the others get 404 before the role check.
        let expected = [204, 403, 404, 404, 404, 404][i];
        let empty = app.create_tenant(&roles.admin, &format!("empty-{i}")).await;
        let (status, body) = app
            .request(
                Method::DELETE,
                &format!("/v1/tenants/{empty}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status.as_u16(), expected, "{role} delete tenant: {body}");
    }
    app.finish().await;
}

async fn check(
    app: &TestApp,
    roles: &Roles,
    method: Method,
    path: &str,
    body: Option<Value>,
    expected: [u16; 6],
) {
    for (i, (role, token)) in roles.all().into_iter().enumerate() {
        let (status, response) = app
            .request(method.clone(), path, Some(token), body.clone())
            .await;
        assert_eq!(
            status.as_u16(),
            expected[i],
            "{role} {method} {path}: {response}"
        );
        assert_problem_if_error(status, &response);
    }
}

fn assert_problem_if_error(status: StatusCode, body: &Value) {
    if status.is_client_error() {
        assert_eq!(body["status"], status.as_u16(), "problem+json body: {body}");
        assert!(
            body["type"]
                .as_str()
                .unwrap()
                .starts_with("https://pressdock.dev/problems/"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn another_tenants_resources_are_not_found() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let a = app.create_tenant(&admin, "tenant-a").await;
    let b = app.create_tenant(&admin, "tenant-b").await;
    let (owner_a, _) = app.user_with_role(&admin, &a, "owner").await;
    let (owner_b, _) = app.user_with_role(&admin, &b, "owner").await;
    let (_, created) = app.create_site(&owner_b, &b, "b-site.example").await;
    let site_b = created["site"]["id"].as_str().unwrap();
    let op_b = created["operation"]["id"].as_str().unwrap();
    app.wait_operation(&owner_b, op_b).await;

    for (method, path, body) in [
        (Method::GET, format!("/v1/sites/{site_b}"), None),
        (
            Method::PATCH,
            format!("/v1/sites/{site_b}"),
            Some(json!({ "name": "mine now" })),
        ),
        (Method::DELETE, format!("/v1/sites/{site_b}"), None),
        (Method::POST, format!("/v1/sites/{site_b}/suspend"), None),
        (Method::GET, format!("/v1/operations/{op_b}"), None),
        (Method::GET, format!("/v1/tenants/{b}"), None),
        (Method::GET, format!("/v1/tenants/{b}/sites"), None),
        (
            Method::POST,
            format!("/v1/tenants/{b}/sites"),
            Some(json!({ "name": "x", "domain": "steal.example", "plan": "starter" })),
        ),
        (Method::GET, format!("/v1/tenants/{b}/users"), None),
        (Method::GET, format!("/v1/tenants/{b}/audit"), None),
    ] {
        let (status, response) = app
            .request(method.clone(), &path, Some(&owner_a), body)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {response}");
        assert_eq!(response["type"], "https://pressdock.dev/problems/not-found");
    }
    // The listing of A shows none of B's sites, and B's site is untouched.
    let (_, list) = app.get(&format!("/v1/tenants/{a}/sites"), &owner_a).await;
    assert_eq!(list["items"], json!([]));
    let (_, site) = app.get(&format!("/v1/sites/{site_b}"), &owner_b).await;
    assert_eq!(site["state"], "active");
    assert_eq!(site["name"], "Site");
    app.finish().await;
}
