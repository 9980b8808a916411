//! Login, refresh rotation and reuse detection, logout, API tokens, rate limits, secrets.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{ADMIN_EMAIL, PASSWORD, TestApp};

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    let first = app.login(ADMIN_EMAIL, PASSWORD).await;
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 900);
    let r1 = first["refresh_token"].as_str().unwrap();
    assert!(r1.starts_with("pdr_"));

    let (status, second) = app
        .request(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": r1 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2, "the refresh token rotates");
    let (status, me) = app
        .get("/v1/me", second["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["email"], ADMIN_EMAIL);
    assert_eq!(me["staff_role"], "admin");

    // Reusing the rotated token revokes the whole family, including r2.
    let (status, body) = app
        .request(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": r1 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["detail"].as_str().unwrap().contains("already used"),
        "{body}"
    );
    let (status, _) = app
        .request(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": r2 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Logout revokes a fresh login's family.
    let third = app.login(ADMIN_EMAIL, PASSWORD).await;
    let r3 = third["refresh_token"].as_str().unwrap();
    let (status, _) = app
        .request(
            Method::POST,
            "/v1/auth/logout",
            None,
            Some(json!({ "refresh_token": r3 })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .request(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": r3 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Refresh tokens are stored hashed: the database never holds the token itself.
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 64 && !h.starts_with("pdr_"))
    );
    app.finish().await;
}

#[tokio::test]
async fn api_tokens_are_shown_once_scoped_and_revocable() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (status, created) = app
        .post(
            "/v1/tokens",
            &admin,
            json!({ "name": "ci", "scopes": ["read"], "expires_in_days": 30 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("pdt_"));
    assert!(created["expires_at"].is_string());

    // Read scope: GET works, a mutation is refused.
    let (status, tenants) = app.get("/v1/tenants", &secret).await;
    assert_eq!(status, StatusCode::OK, "{tenants}");
    let (status, body) = app
        .post(
            "/v1/tenants",
            &secret,
            json!({ "slug": "nope", "name": "Nope" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["detail"].as_str().unwrap().contains("read scope"),
        "{body}"
    );

    // The secret never appears again.
    let (_, list) = app.get("/v1/tokens", &admin).await;
    assert_eq!(list[0]["name"], "ci");
    assert!(!list.to_string().contains(&secret));
    assert!(list[0].get("secret").is_none());
    assert!(
        list[0]["last_used_at"].is_string(),
        "use is recorded: {list}"
    );

    let (status, write) = app
        .post(
            "/v1/tokens",
            &admin,
            json!({ "name": "deploy", "scopes": ["write"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let write_secret = write["secret"].as_str().unwrap();
    let (status, _) = app
        .post(
            "/v1/tenants",
            write_secret,
            json!({ "slug": "via-token", "name": "Via token" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let id = created["id"].as_str().unwrap();
    let (status, _) = app
        .request(
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get("/v1/tenants", &secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // Audit records the creation without the secret.
    let (_, audit) = app.get("/v1/audit?action=token.create", &admin).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 2);
    assert!(!audit.to_string().contains("pdt_"));
    app.finish().await;
}

/// The actor of a token request is read in one query with the route's tenant: the role,
/// revocation and a removed membership count at the very next request; `last_used_at`
/// is written at most once a minute.
#[tokio::test]
async fn api_token_role_revocation_and_use_are_read_on_every_request() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = app.create_tenant(&admin, "token-a").await;
    let b = app.create_tenant(&admin, "token-b").await;
    let (owner, user) = app.user_with_role(&admin, &a, "owner").await;
    // A second owner, so that the first one's role may be lowered below.
    app.user_with_role(&admin, &a, "owner").await;
    let (status, created) = app
        .post(
            "/v1/tokens",
            &owner,
            json!({ "name": "deploy", "scopes": ["write"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["secret"].as_str().unwrap().to_owned();
    let token_id = created["id"].as_str().unwrap().to_owned();
    assert!(created["last_used_at"].is_null(), "{created}");

    let (status, page) = app.get(&format!("/v1/tenants/{a}/sites"), &token).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"], json!([]));
    // Another tenant, a tenant that does not exist, a malformed id: not found alike.
    for other in [b.as_str(), "zzzzzzzzzz", "not-an-id"] {
        let (status, body) = app.get(&format!("/v1/tenants/{other}/sites"), &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{other}: {body}");
        assert_eq!(body["type"], "https://pressdock.dev/problems/not-found");
    }

    // Used: recorded once; used again within the minute: not written again.
    let used = |list: &serde_json::Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == token_id.as_str())
            .map(|t| t["last_used_at"].clone())
            .unwrap()
    };
    let (_, list) = app.get("/v1/tokens", &owner).await;
    let first = used(&list);
    assert!(first.is_string(), "{list}");
    app.get(&format!("/v1/tenants/{a}/sites"), &token).await;
    let (_, list) = app.get("/v1/tokens", &owner).await;
    assert_eq!(used(&list), first, "{list}");
    // A minute later (moved back in the database) the next use writes it.
    sqlx::query(
        "UPDATE api_tokens SET last_used_at = last_used_at - INTERVAL 2 MINUTE WHERE id = ?",
    )
    .bind(&token_id)
    .execute(&app.db)
    .await
    .unwrap();
    let (_, list) = app.get("/v1/tokens", &owner).await;
    let moved = used(&list);
    assert_ne!(moved, first);
    app.get(&format!("/v1/tenants/{a}/sites"), &token).await;
    let (_, list) = app.get("/v1/tokens", &owner).await;
    let again = used(&list);
    assert!(
        again.as_str().unwrap() > moved.as_str().unwrap(),
        "{moved} then {again}"
    );

    // A smaller role applies to the next request.
    let (status, body) = app
        .request(
            Method::PATCH,
            &format!("/v1/tenants/{a}/users/{user}"),
            Some(&admin),
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(
            &format!("/v1/tenants/{a}/sites"),
            &token,
            json!({ "name": "Site", "domain": "viewer.example", "plan": "starter" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["detail"],
        "your role in this tenant does not allow this"
    );
    // No membership: the tenant is not found for this user any more.
    let (status, body) = app
        .request(
            Method::DELETE,
            &format!("/v1/tenants/{a}/users/{user}"),
            Some(&admin),
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (status, _) = app.get(&format!("/v1/tenants/{a}/sites"), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Revoked: refused at the next request (nothing about a token is cached).
    let (status, _) = app
        .request(
            Method::DELETE,
            &format!("/v1/tokens/{token_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get("/v1/tenants", &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["detail"],
        "the API token is invalid, expired or revoked"
    );
    app.finish().await;
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_account() {
    let app = TestApp::spawn_with(|c| c.auth.max_failed_logins_per_account = 3).await;
    for _ in 0..3 {
        let (status, body) = app
            .request(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({ "email": ADMIN_EMAIL, "password": "wrong-password" })),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["detail"], "wrong e-mail address or password");
    }
    // Even the right password is refused while the account is limited.
    let (status, headers, body) = app
        .request_full(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "email": ADMIN_EMAIL, "password": PASSWORD })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["type"],
        "https://pressdock.dev/problems/too-many-requests"
    );
    assert!(headers.get("retry-after").is_some());
    app.finish().await;
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address() {
    let app = TestApp::spawn_with(|c| c.auth.max_failed_logins_per_address = 4).await;
    for i in 0..4 {
        let (status, _) = app
            .request(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({ "email": format!("nobody{i}@x.test"), "password": "whatever-pass" })),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = app
        .request(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "email": ADMIN_EMAIL, "password": PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    app.finish().await;
}

#[tokio::test]
async fn passwords_are_argon2id_and_never_returned() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let (status, invited) = app
        .post(
            &format!("/v1/tenants/{tenant}/users"),
            &admin,
            json!({ "email": "new@acme.test", "role": "member" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let initial = invited["initial_password"].as_str().unwrap();
    assert_eq!(initial.len(), 20);
    app.login("new@acme.test", initial).await;
    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'new@acme.test'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let (_, members) = app
        .get(&format!("/v1/tenants/{tenant}/users"), &admin)
        .await;
    assert!(!members.to_string().contains(initial));
    assert!(!members.to_string().contains("argon2"));
    app.finish().await;
}

#[tokio::test]
async fn missing_or_bad_credentials_are_401() {
    let app = TestApp::spawn().await;
    for token in [None, Some("garbage"), Some("pdt_0000")] {
        let (status, body) = app.request(Method::GET, "/v1/tenants", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["type"], "https://pressdock.dev/problems/unauthorized");
    }
    app.finish().await;
}
