//! The HTTP layer: routes, thin handlers and the OpenAPI document.
//!
//! A handler parses (extractors), authorizes through [`Actor`], calls the application
//! layer in [`crate::app`] and converts the result. No SQL here.

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::Value;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, Ref, RefOr, ResponseBuilder,
        path::{Operation as DocOperation, ParameterIn},
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{
    actor::{Actor, Credentials, parse_id, source_ip},
    app::{
        Page,
        agent::{self, CachePurge, PurgeResult},
        backup_drills,
        backups::{self, Backup, BackupAccepted, BackupFilter, TenantBackupFilter},
        billing::{
            self, CloseRequest, ClosedPeriod, ConflictQuery, ExportQuery, Format, Ingested, Margin,
            MarginQuery, Metering, MeteringQuery, NewPrice, Price, Resolution, SampleBatch,
            SampleConflict,
        },
        idempotency::IdemKey,
        nodes::{self, NewNode, Node, NodeChange},
        operations::{self, Operation, OperationFilter},
        placement::{self, PlacementMap, RebalanceAnswer, RebalanceRequest},
        plans::{self, BackupPolicy, NewBackupPolicy, NewPlan, Plan},
        restores::{
            self, CloneAccepted, NewBackupClone, NewClone, NewRestore, Restore, RestoreAccepted,
        },
        sessions::{self, Login, RefreshRequest, TokenPair},
        sites::{self, Accepted, Created, NewSite, Site, SiteChange, SiteFilter},
        tenants::{self, NewTenant, Tenant, TenantChange},
        tokens::{self, ApiToken, CreatedToken, NewToken},
        users::{self, Invitation, Invited, Member, NewStaffUser, RoleChange, User},
    },
    audit_log::{self, AuditEvent, AuditFilter},
    domain::{BackupId, NodeId, OperationId, PlanId, SiteId, StaffRole, TenantId, TokenId},
    error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Problem},
    metrics,
    state::AppState,
};

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/me", get(me))
        .route("/users", get(list_staff).post(create_staff))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{token}", axum::routing::delete(revoke_token))
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/tenants/{tenant}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route(
            "/tenants/{tenant}/users",
            get(list_members).post(invite_member),
        )
        .route(
            "/tenants/{tenant}/users/{user}",
            axum::routing::patch(change_role).delete(remove_member),
        )
        .route("/tenants/{tenant}/sites", get(list_sites).post(create_site))
        .route("/tenants/{tenant}/audit", get(tenant_audit))
        .route(
            "/sites/{site}",
            get(get_site).patch(update_site).delete(delete_site),
        )
        .route("/sites/{site}/suspend", post(suspend_site))
        .route("/sites/{site}/resume", post(resume_site))
        .route("/sites/{site}/cache/purge", post(purge_site_cache))
        .route(
            "/sites/{site}/backups",
            get(list_backups).post(create_backup),
        )
        .route("/backups/{backup}", get(get_backup).delete(delete_backup))
        .route("/backups/{backup}/verify", post(verify_backup))
        .route("/backups/{backup}/clones", post(clone_backup))
        .route("/tenants/{tenant}/backups", get(list_tenant_backups))
        .route("/sites/{site}/restores", post(create_restore))
        .route("/sites/{site}/clones", post(create_clone))
        .route("/restores/{restore}", get(get_restore))
        .route("/agent/report", post(agent_report))
        .route("/agent/purge", post(agent_purge))
        .route("/placement", get(placement_map))
        .route("/placement/rebalance", post(rebalance))
        .route("/plans", get(list_plans).post(create_plan))
        .route("/plans/{plan}/prices", get(list_prices).post(add_price))
        .route(
            "/plans/{plan}/backup-policy",
            get(get_backup_policy).put(set_backup_policy),
        )
        .route("/billing/samples", post(ingest_samples))
        .route("/billing/close", post(close_period))
        .route("/billing/exports", get(billing_export))
        .route("/billing/margins", get(billing_margins))
        .route("/billing/conflicts", get(list_conflicts))
        .route("/billing/metering", get(billing_metering))
        .route(
            "/billing/conflicts/{conflict}/resolve",
            post(resolve_conflict),
        )
        .route("/nodes", get(list_nodes).post(register_node))
        .route(
            "/nodes/{node}",
            axum::routing::patch(update_node).delete(remove_node),
        )
        .route("/operations", get(list_operations))
        .route("/operations/{operation}", get(get_operation))
        .route("/audit", get(staff_audit))
        .route("/admin/reconcilers", get(reconcilers))
        .route("/admin/reconcilers/run", post(run_reconcilers))
        .route("/admin/acme", get(acme_settings).put(set_acme_settings))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found);
    let body_limit = state.config.body_limit_bytes;
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::certs::edge::router())
        .route(
            "/metrics",
            get(metrics::handler).with_state(state.metrics.clone()),
        )
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs").url("/docs/openapi.json", ApiDoc::openapi()),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(in_request_scope))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The request's id as [`SetRequestIdLayer`] set it (or the caller sent it).
fn request_id_of<B>(request: &axum::http::Request<B>) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// The span every log line of a request is written in: its id with the method and URI,
/// at `info` so that it is on whenever the lines in it are.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        request_id = %request_id_of(request),
    )
}

/// Lets the problem of a failed request name its id ([`crate::error::request_scope`]).
async fn in_request_scope(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = request_id_of(&request);
    crate::error::request_scope(id, next.run(request)).await
}

/// The router of the agents' listener (`[agent] listen`): only what the agents call.
pub fn agent_router(state: AppState) -> Router {
    let body_limit = state.config.body_limit_bytes;
    Router::new()
        .route("/v1/agent/report", post(agent_report))
        .route("/v1/agent/purge", post(agent_purge))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(in_request_scope))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// What the edge's Traefik tasks ask of the platform, alone on `certs.edge_listen`: the
/// provider document, the HTTP-01 answers, `/healthz`.
pub fn edge_router(state: AppState) -> Router {
    Router::new()
        .merge(crate::certs::edge::router())
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

/// Liveness: the process answers.
async fn healthz() -> Json<Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the control-plane database answers.
async fn readyz(State(state): State<AppState>) -> Response {
    match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.db)
        .await
    {
        Ok(_) => Json(serde_json::json!({ "status": "ready", "database": "ok" })).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "unready", "database": "unreachable" })),
            )
                .into_response()
        }
    }
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The peer address, for login rate limits.
pub struct SourceIp(Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for SourceIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(source_ip(parts)))
    }
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Login,
    responses((status = 200, body = TokenPair), (status = 401, body = Problem), (status = 429, body = Problem)))]
async fn login(
    State(state): State<AppState>,
    SourceIp(ip): SourceIp,
    ApiJson(input): ApiJson<Login>,
) -> ApiResult<Json<TokenPair>> {
    Ok(Json(sessions::login(&state, input, ip).await?))
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = Problem)))]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    Ok(Json(sessions::refresh(&state, input).await?))
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204)))]
async fn logout(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    sessions::logout(&state, input).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = User)))]
async fn me(State(state): State<AppState>, actor: Actor) -> ApiResult<Json<User>> {
    Ok(Json(users::me(&state, &actor).await?))
}

#[utoipa::path(get, path = "/v1/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [User])))]
async fn list_staff(State(state): State<AppState>, actor: Actor) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(users::list_staff(&state, &actor).await?))
}

#[utoipa::path(post, path = "/v1/users", tag = "users", security(("bearer" = [])), request_body = NewStaffUser,
    responses((status = 201, body = User), (status = 409, body = Problem)))]
async fn create_staff(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(input): ApiJson<NewStaffUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    Ok((
        StatusCode::CREATED,
        Json(users::create_staff(&state, &actor, input).await?),
    ))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, body = [ApiToken])))]
async fn list_tokens(
    State(state): State<AppState>,
    actor: Actor,
) -> ApiResult<Json<Vec<ApiToken>>> {
    Ok(Json(tokens::list(&state, &actor).await?))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])), request_body = NewToken,
    responses((status = 201, body = CreatedToken)))]
async fn create_token(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(input): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    Ok((
        StatusCode::CREATED,
        Json(tokens::create(&state, &actor, input).await?),
    ))
}

#[utoipa::path(delete, path = "/v1/tokens/{token}", tag = "tokens", security(("bearer" = [])),
    params(("token" = String, Path)), responses((status = 204)))]
async fn revoke_token(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(token): ApiPath<String>,
) -> ApiResult<StatusCode> {
    tokens::revoke(&state, &actor, &TokenId::from_path(&token)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = [Tenant])))]
async fn list_tenants(State(state): State<AppState>, actor: Actor) -> ApiResult<Json<Vec<Tenant>>> {
    Ok(Json(tenants::list(&state, &actor).await?))
}

#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])), request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 409, body = Problem)))]
async fn create_tenant(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(input): ApiJson<NewTenant>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    Ok((
        StatusCode::CREATED,
        Json(tenants::create(&state, &actor, input).await?),
    ))
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = Tenant)))]
async fn get_tenant(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<Tenant>> {
    Ok(Json(
        tenants::get(&state, &actor, &TenantId::from_path(&tenant)?).await?,
    ))
}

#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", security(("bearer" = [])), request_body = TenantChange,
    params(("tenant" = String, Path)), responses((status = 200, body = Tenant)))]
async fn update_tenant(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(input): ApiJson<TenantChange>,
) -> ApiResult<Json<Tenant>> {
    Ok(Json(
        tenants::update(&state, &actor, &TenantId::from_path(&tenant)?, input).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path)), responses((status = 204), (status = 409, body = Problem)))]
async fn delete_tenant(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<StatusCode> {
    tenants::delete(&state, &actor, &TenantId::from_path(&tenant)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/users", tag = "users", security(("bearer" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = [Member])))]
async fn list_members(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<Vec<Member>>> {
    Ok(Json(
        users::list_members(&state, &actor, &TenantId::from_path(&tenant)?).await?,
    ))
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/users", tag = "users", security(("bearer" = [])), request_body = Invitation,
    params(("tenant" = String, Path)), responses((status = 201, body = Invited), (status = 409, body = Problem)))]
async fn invite_member(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(input): ApiJson<Invitation>,
) -> ApiResult<(StatusCode, Json<Invited>)> {
    Ok((
        StatusCode::CREATED,
        Json(users::invite(&state, &actor, &TenantId::from_path(&tenant)?, input).await?),
    ))
}

#[utoipa::path(patch, path = "/v1/tenants/{tenant}/users/{user}", tag = "users", security(("bearer" = [])), request_body = RoleChange,
    params(("tenant" = String, Path), ("user" = String, Path)), responses((status = 200, body = Member), (status = 409, body = Problem)))]
async fn change_role(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath((tenant, user)): ApiPath<(String, String)>,
    ApiJson(input): ApiJson<RoleChange>,
) -> ApiResult<Json<Member>> {
    Ok(Json(
        users::change_role(
            &state,
            &actor,
            &TenantId::from_path(&tenant)?,
            &parse_id(&user, "member")?,
            input,
        )
        .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/users/{user}", tag = "users", security(("bearer" = [])),
    params(("tenant" = String, Path), ("user" = String, Path)), responses((status = 204), (status = 409, body = Problem)))]
async fn remove_member(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath((tenant, user)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    users::remove(
        &state,
        &actor,
        &TenantId::from_path(&tenant)?,
        &parse_id(&user, "member")?,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/sites", tag = "sites", security(("bearer" = [])),
    params(("tenant" = String, Path), SiteFilter), responses((status = 200, body = Page<Site>)))]
async fn list_sites(
    State(state): State<AppState>,
    credentials: Credentials,
    ApiPath(tenant): ApiPath<String>,
    filter: Result<ApiQuery<SiteFilter>, ApiError>,
) -> ApiResult<Json<Page<Site>>> {
    // The caller is read with the page (one statement); a bad query string is answered
    // after the caller is known, as on every route.
    let filter = filter.map(|ApiQuery(filter)| filter);
    Ok(Json(
        sites::list(&state, credentials, &tenant, filter).await?,
    ))
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/sites", tag = "sites", security(("bearer" = [])), request_body = NewSite,
    params(("tenant" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "Repeats of a request with this key return the first response")),
    responses((status = 202, body = Accepted), (status = 409, body = Problem)))]
async fn create_site(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(tenant): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let tenant = TenantId::from_path(&tenant)?;
    let idem = match headers.get("idempotency-key") {
        Some(value) => Some(IdemKey::parse(
            value
                .to_str()
                .map_err(|_| ApiError::field("Idempotency-Key", "must be visible ASCII"))?,
            "POST",
            &format!("/v1/tenants/{tenant}/sites"),
            &body,
        )?),
        None => None,
    };
    let input: NewSite = parse_body(body)?;
    Ok(
        match sites::create(&state, &actor, &tenant, input, idem).await? {
            Created::New(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
            Created::Replayed(replay) => {
                let mut response = (replay.status, Json(replay.body)).into_response();
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                response
            }
        },
    )
}

/// Deserializes a JSON value already read, naming the failing field.
fn parse_body<T: serde::de::DeserializeOwned>(body: Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(body).map_err(|err| {
        let path = err.path().to_string();
        // A body that is not an object at all is the body's fault, not an element's.
        let field = if path == "." || path.starts_with('[') {
            "body".to_owned()
        } else {
            path
        };
        ApiError::field(field, err.into_inner().to_string())
    })
}

#[utoipa::path(get, path = "/v1/sites/{site}", tag = "sites", security(("bearer" = [])),
    params(("site" = String, Path)), responses((status = 200, body = Site)))]
async fn get_site(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<Json<Site>> {
    Ok(Json(
        sites::get(&state, &actor, &SiteId::from_path(&site)?).await?,
    ))
}

#[utoipa::path(patch, path = "/v1/sites/{site}", tag = "sites", security(("bearer" = [])), request_body = SiteChange,
    params(("site" = String, Path)), responses((status = 202, body = Accepted), (status = 409, body = Problem)))]
async fn update_site(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
    ApiJson(input): ApiJson<SiteChange>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let accepted = sites::update(&state, &actor, &SiteId::from_path(&site)?, input).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

async fn transition(
    state: AppState,
    actor: Actor,
    site: String,
    kind: crate::states::OperationKind,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(sites::transition(&state, &actor, &SiteId::from_path(&site)?, kind).await?),
    ))
}

#[utoipa::path(delete, path = "/v1/sites/{site}", tag = "sites", security(("bearer" = [])),
    params(("site" = String, Path)), responses((status = 202, body = Accepted), (status = 409, body = Problem)))]
async fn delete_site(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    transition(state, actor, site, crate::states::OperationKind::SiteDelete).await
}

#[utoipa::path(post, path = "/v1/sites/{site}/suspend", tag = "sites", security(("bearer" = [])),
    params(("site" = String, Path)), responses((status = 202, body = Accepted), (status = 409, body = Problem)))]
async fn suspend_site(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    transition(
        state,
        actor,
        site,
        crate::states::OperationKind::SiteSuspend,
    )
    .await
}

#[utoipa::path(post, path = "/v1/sites/{site}/resume", tag = "sites", security(("bearer" = [])),
    params(("site" = String, Path)), responses((status = 202, body = Accepted), (status = 409, body = Problem)))]
async fn resume_site(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    transition(state, actor, site, crate::states::OperationKind::SiteResume).await
}

#[utoipa::path(post, path = "/v1/sites/{site}/cache/purge", tag = "sites", security(("bearer" = [])),
    params(("site" = String, Path)), request_body = CachePurge,
    responses((status = 200, body = PurgeResult), (status = 409, body = Problem), (status = 503, body = Problem)))]
async fn purge_site_cache(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
    ApiJson(input): ApiJson<CachePurge>,
) -> ApiResult<Json<PurgeResult>> {
    let site = SiteId::from_path(&site)?;
    Ok(Json(
        agent::tenant_purge(&state, &actor, &site, input).await?,
    ))
}

/// The headers of an agent's call that carries a bearer token, extracted before the body:
/// a call without one is 401 whatever its body (the body is not read). The token itself
/// belongs to the site the body names, so it is checked with the body ([`agent_body`]).
struct AgentBearer(HeaderMap);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AgentBearer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let has_token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| !token.trim().is_empty());
        if has_token {
            Ok(Self(parts.headers.clone()))
        } else {
            Err(ApiError::Unauthorized("a valid agent token is required"))
        }
    }
}

/// A site agent's report (`agent_protocol::AgentReport`); the answer carries the
/// site's desired config. Authenticated with the site's agent token.
#[utoipa::path(post, path = "/v1/agent/report", tag = "agent", security(("agent_token" = [])),
    request_body(content = Object, description = "agent_protocol::AgentReport"),
    responses((status = 200, description = "agent_protocol::ReportResponse", body = Object), (status = 404, body = Problem)))]
async fn agent_report(
    State(state): State<AppState>,
    AgentBearer(headers): AgentBearer,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<agent_protocol::ReportResponse>> {
    let report = agent_body(&state, &headers, body).await?;
    Ok(Json(agent::report(&state, &headers, report).await?))
}

/// An agent's body, typed, with the token checked first: a body that does not parse is
/// 422 only for the holder of the token of the site it names, 401 for everyone else. A
/// body that parses is authenticated once, by the call it is for.
async fn agent_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Value,
) -> ApiResult<T> {
    let site_id = body
        .get("site_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match parse_body(body) {
        Ok(typed) => Ok(typed),
        Err(invalid) => {
            agent::check_token(state, headers, &site_id).await?;
            Err(invalid)
        }
    }
}

/// A site agent asks to purge what WordPress changed. Authenticated with the site's
/// agent token.
#[utoipa::path(post, path = "/v1/agent/purge", tag = "agent", security(("agent_token" = [])),
    request_body(content = Object, description = "{site_id, paths, all}"),
    responses((status = 202, body = PurgeResult), (status = 404, body = Problem)))]
async fn agent_purge(
    State(state): State<AppState>,
    AgentBearer(headers): AgentBearer,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<(StatusCode, Json<PurgeResult>)> {
    let input: agent_protocol::PurgeRequest = agent_body(&state, &headers, body).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(agent::agent_purge(&state, &headers, input).await?),
    ))
}

/// Workers, their sites and utilisation, the moves a rebalance would make now, and the
/// latest moves with their timings. Staff only.
#[utoipa::path(get, path = "/v1/placement", tag = "placement", security(("bearer" = [])),
    responses((status = 200, body = PlacementMap)))]
async fn placement_map(
    State(state): State<AppState>,
    actor: Actor,
) -> ApiResult<Json<PlacementMap>> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    Ok(Json(
        placement::map(&state.db, &state.config.placement).await?,
    ))
}

/// Plans a rebalance; with `"dry_run": false` starts a `site.move` operation per move
/// (202). Staff admins and operators.
#[utoipa::path(post, path = "/v1/placement/rebalance", tag = "placement", security(("bearer" = [])),
    request_body = RebalanceRequest,
    responses((status = 200, body = RebalanceAnswer), (status = 202, body = RebalanceAnswer), (status = 409, body = Problem)))]
async fn rebalance(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(input): ApiJson<RebalanceRequest>,
) -> ApiResult<(StatusCode, Json<RebalanceAnswer>)> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    if input.max_moves.is_some_and(|n| !(1..=1000).contains(&n)) {
        return Err(ApiError::field("max_moves", "must be between 1 and 1000"));
    }
    if !input.dry_run && placement::moves_in_flight(&state.db).await? > 0 {
        return Err(ApiError::conflict(
            None,
            "moves are under way; see GET /v1/placement and try again when they finish",
        ));
    }
    let answer = placement::rebalance(
        &state.db,
        &state.backends,
        &state.config.placement,
        Some(&actor),
        &input,
        false,
    )
    .await?;
    if !answer.operations.is_empty() {
        state.wake_runner();
    }
    let status = if answer.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(answer)))
}

#[utoipa::path(get, path = "/v1/plans", tag = "plans", security(("bearer" = [])),
    responses((status = 200, body = [Plan])))]
async fn list_plans(State(state): State<AppState>, _actor: Actor) -> ApiResult<Json<Vec<Plan>>> {
    Ok(Json(plans::list(&state).await?))
}

#[utoipa::path(post, path = "/v1/plans", tag = "plans", security(("bearer" = [])), request_body = NewPlan,
    responses((status = 201, body = Plan), (status = 409, body = Problem)))]
async fn create_plan(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(input): ApiJson<NewPlan>,
) -> ApiResult<(StatusCode, Json<Plan>)> {
    Ok((
        StatusCode::CREATED,
        Json(plans::create(&state, &actor, input).await?),
    ))
}

#[utoipa::path(get, path = "/v1/plans/{plan}/prices", tag = "billing", security(("bearer" = [])),
    params(("plan" = String, Path, description = "The plan's id.")),
    responses((status = 200, body = [Price])))]
async fn list_prices(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(plan): ApiPath<String>,
) -> ApiResult<Json<Vec<Price>>> {
    Ok(Json(
        billing::prices(&state, &PlanId::from_path(&plan)?).await?,
    ))
}

/// Adds a price from a later date (staff admin); prices never apply retroactively.
#[utoipa::path(post, path = "/v1/plans/{plan}/prices", tag = "billing", security(("bearer" = [])),
    params(("plan" = String, Path, description = "The plan's id.")), request_body = NewPrice,
    responses((status = 201, body = Price), (status = 409, body = Problem)))]
async fn add_price(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(plan): ApiPath<String>,
    ApiJson(input): ApiJson<NewPrice>,
) -> ApiResult<(StatusCode, Json<Price>)> {
    let plan = PlanId::from_path(&plan)?;
    let today = chrono::Utc::now().date_naive();
    Ok((
        StatusCode::CREATED,
        Json(billing::add_price(&state, &actor, &plan, input, today).await?),
    ))
}

/// Stores hourly usage samples (staff). A sample already stored (same site, hour and
/// source) is left unchanged; one with other values is not applied but kept as a conflict
/// and reported in the answer.
#[utoipa::path(post, path = "/v1/billing/samples", tag = "billing", security(("bearer" = [])),
    request_body = SampleBatch,
    responses((status = 200, body = Ingested), (status = 409, body = Problem)))]
async fn ingest_samples(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(batch): ApiJson<SampleBatch>,
) -> ApiResult<Json<Ingested>> {
    Ok(Json(billing::ingest(&state, &actor, batch).await?))
}

/// Closes a billing period (staff admin): its lines are frozen and never change.
#[utoipa::path(post, path = "/v1/billing/close", tag = "billing", security(("bearer" = [])),
    request_body = CloseRequest,
    responses((status = 201, body = ClosedPeriod), (status = 409, body = Problem)))]
async fn close_period(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(input): ApiJson<CloseRequest>,
) -> ApiResult<(StatusCode, Json<ClosedPeriod>)> {
    Ok((
        StatusCode::CREATED,
        Json(billing::close(&state, &actor, input, chrono::Utc::now()).await?),
    ))
}

/// A period's billing lines (staff: every tenant; a tenant owner: their own), streamed as
/// RFC 4180 CSV with a header row or as JSON Lines. A closed period's export is the same,
/// byte for byte, every time.
#[utoipa::path(get, path = "/v1/billing/exports", tag = "billing", security(("bearer" = [])),
    params(ExportQuery),
    responses((status = 200, description = "The lines, one per site and charge, then each tenant's totals.",
        content((String = "text/csv"), (String = "application/jsonl"))),
        (status = 404, body = Problem)))]
async fn billing_export(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let export = billing::authorize_export(&state, &actor, query).await?;
    let (content_type, name) = match export.format {
        Format::Csv => ("text/csv; charset=utf-8; header=present", "csv"),
        Format::Jsonl => ("application/jsonl", "jsonl"),
    };
    let disposition = format!(
        "attachment; filename=\"pressdock-usage-{}.{name}\"",
        export.period
    );
    let (tx, rx) = futures::channel::mpsc::channel(4);
    tokio::spawn(billing::stream_export(
        state.db.clone(),
        export,
        chrono::Utc::now(),
        tx,
    ));
    let mut response = axum::body::Body::from_stream(rx).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(axum::http::header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Samples that disagreed with the stored sample of their key, in a period (staff).
#[utoipa::path(get, path = "/v1/billing/conflicts", tag = "billing", security(("bearer" = [])),
    params(ConflictQuery), responses((status = 200, body = [SampleConflict])))]
async fn list_conflicts(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<ConflictQuery>,
) -> ApiResult<Json<Vec<SampleConflict>>> {
    Ok(Json(billing::conflicts(&state, &actor, query).await?))
}

/// Accepts a conflicting sample (it replaces the stored one) or rejects it (staff admin),
/// once.
#[utoipa::path(post, path = "/v1/billing/conflicts/{conflict}/resolve", tag = "billing",
    security(("bearer" = [])), params(("conflict" = String, Path, pattern = "^[0-9]{1,18}$")),
    request_body = Resolution,
    responses((status = 200, body = SampleConflict), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn resolve_conflict(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(conflict): ApiPath<String>,
    ApiJson(input): ApiJson<Resolution>,
) -> ApiResult<Json<SampleConflict>> {
    Ok(Json(
        billing::resolve_conflict(&state, &actor, &conflict, input, chrono::Utc::now()).await?,
    ))
}

/// A site's hours in a month (staff): the edge's counts (billed) beside the agent's
/// access-log counts and storage samples, with the gaps of each source.
#[utoipa::path(get, path = "/v1/billing/metering", tag = "billing", security(("bearer" = [])),
    params(MeteringQuery), responses((status = 200, body = Metering), (status = 404, body = Problem)))]
async fn billing_metering(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<MeteringQuery>,
) -> ApiResult<Json<Metering>> {
    Ok(Json(
        billing::metering(&state, &actor, query, chrono::Utc::now()).await?,
    ))
}

/// Revenue, cost and margin per tenant and plan (staff): the cluster's monthly cost
/// allocated to sites by worker slots used.
#[utoipa::path(get, path = "/v1/billing/margins", tag = "billing", security(("bearer" = [])),
    params(MarginQuery), responses((status = 200, body = [Margin]), (status = 409, body = Problem)))]
async fn billing_margins(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<MarginQuery>,
) -> ApiResult<Json<Vec<Margin>>> {
    Ok(Json(
        billing::margins(&state, &actor, query, chrono::Utc::now()).await?,
    ))
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, body = [Node])))]
async fn list_nodes(State(state): State<AppState>, actor: Actor) -> ApiResult<Json<Vec<Node>>> {
    Ok(Json(nodes::list(&state, &actor).await?))
}

#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])), request_body = NewNode,
    responses((status = 201, body = Node), (status = 409, body = Problem)))]
async fn register_node(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(input): ApiJson<NewNode>,
) -> ApiResult<(StatusCode, Json<Node>)> {
    Ok((
        StatusCode::CREATED,
        Json(nodes::register(&state, &actor, input).await?),
    ))
}

#[utoipa::path(patch, path = "/v1/nodes/{node}", tag = "nodes", security(("bearer" = [])), request_body = NodeChange,
    params(("node" = String, Path)), responses((status = 200, body = Node), (status = 409, body = Problem)))]
async fn update_node(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(node): ApiPath<String>,
    ApiJson(input): ApiJson<NodeChange>,
) -> ApiResult<Json<Node>> {
    Ok(Json(
        nodes::update(&state, &actor, &NodeId::from_path(&node)?, input).await?,
    ))
}

/// Removes an empty node that is not a live swarm node. Staff.
#[utoipa::path(delete, path = "/v1/nodes/{node}", tag = "nodes", security(("bearer" = [])),
    params(("node" = String, Path)), responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn remove_node(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(node): ApiPath<String>,
) -> ApiResult<StatusCode> {
    nodes::remove(&state, &actor, &NodeId::from_path(&node)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a backup of the site: its database (one consistent snapshot) and wp-content,
/// streamed to S3. The backup is `complete` once every object was written and read back.
#[utoipa::path(post, path = "/v1/sites/{site}/backups", tag = "backups", security(("bearer" = [])),
    params(("site" = String, Path)), responses((status = 202, body = BackupAccepted), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn create_backup(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<BackupAccepted>)> {
    let accepted = backups::create(&state, &actor, &SiteId::from_path(&site)?).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// The site's backups, newest first, with their states and sizes.
#[utoipa::path(get, path = "/v1/sites/{site}/backups", tag = "backups", security(("bearer" = [])),
    params(("site" = String, Path), BackupFilter), responses((status = 200, body = Page<Backup>), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn list_backups(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
    ApiQuery(filter): ApiQuery<BackupFilter>,
) -> ApiResult<Json<Page<Backup>>> {
    Ok(Json(
        backups::list(&state, &actor, &SiteId::from_path(&site)?, filter).await?,
    ))
}

#[utoipa::path(get, path = "/v1/backups/{backup}", tag = "backups", security(("bearer" = [])),
    params(("backup" = String, Path)), responses((status = 200, body = Backup), (status = 404, body = Problem)))]
async fn get_backup(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(backup): ApiPath<String>,
) -> ApiResult<Json<Backup>> {
    Ok(Json(
        backups::get(&state, &actor, &BackupId::from_path(&backup)?).await?,
    ))
}

/// Deletes a complete or failed backup's objects; the backup is then `deleted`.
#[utoipa::path(delete, path = "/v1/backups/{backup}", tag = "backups", security(("bearer" = [])),
    params(("backup" = String, Path)), responses((status = 202, body = BackupAccepted), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_backup(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(backup): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<BackupAccepted>)> {
    let accepted = backups::delete(&state, &actor, &BackupId::from_path(&backup)?).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Staff: runs a drill of a complete backup now. The backup is restored into a scratch
/// database and folder, compared with its manifest (sizes and SHA-256 of every object,
/// row counts of every table, files and bytes), and the scratch dropped; the result is
/// recorded on the backup (`verified_at`, `verify_result`, `verify_error`).
#[utoipa::path(post, path = "/v1/backups/{backup}/verify", tag = "backups", security(("bearer" = [])),
    params(("backup" = String, Path)), responses((status = 202, body = BackupAccepted), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn verify_backup(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(backup): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<BackupAccepted>)> {
    let accepted = backup_drills::verify(&state, &actor, &BackupId::from_path(&backup)?).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Restores one of the site's complete backups into it: the backup is checked (every
/// object's SHA-256 against its manifest, every statement of the dump) before anything is
/// overwritten, the site is backed up as it is (`pre_restore_backup_id`: the way back),
/// then its database (through the site's own database user) and wp-content are replaced
/// and its cached pages banned.
///
/// On a deleted site (until its backups are pruned, `[backups] final_retention_days`
/// after the delete) this brings the site back: the same id, its primary domain (409
/// naming `domain` if another site uses it now), the aliases it had that no site uses
/// now (the others are listed in `aliases_taken`), its plan and settings; the operation
/// (`site.undelete`) makes its database, users, folder, service and edge hosts again and
/// restores the backup into them before the site starts. If it fails, everything it made
/// is removed and the site is deleted as it was.
#[utoipa::path(post, path = "/v1/sites/{site}/restores", tag = "backups", security(("bearer" = [])),
    params(("site" = String, Path)), request_body = NewRestore,
    responses((status = 202, body = RestoreAccepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_restore(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
    ApiJson(input): ApiJson<NewRestore>,
) -> ApiResult<(StatusCode, Json<RestoreAccepted>)> {
    let accepted = restores::restore(&state, &actor, &SiteId::from_path(&site)?, input).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Clones the site into a new site of the same tenant and plan with another domain: the
/// new site is created as any site is, then a backup of the source (its latest complete
/// one by default) is restored into it with the source's primary domain rewritten in the
/// database, serialized PHP values included.
#[utoipa::path(post, path = "/v1/sites/{site}/clones", tag = "backups", security(("bearer" = [])),
    params(("site" = String, Path)), request_body = NewClone,
    responses((status = 202, body = CloneAccepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_clone(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(site): ApiPath<String>,
    ApiJson(input): ApiJson<NewClone>,
) -> ApiResult<(StatusCode, Json<CloneAccepted>)> {
    let accepted = restores::clone(&state, &actor, &SiteId::from_path(&site)?, input).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// A new site made from a complete backup of the caller's tenant, a deleted site's final
/// backup included (how a deleted site is brought back): created as any site is, with the
/// backed-up site's plan and settings, then the backup restored into it with the
/// backed-up site's primary domain rewritten into the new one.
#[utoipa::path(post, path = "/v1/backups/{backup}/clones", tag = "backups", security(("bearer" = [])),
    params(("backup" = String, Path)), request_body = NewBackupClone,
    responses((status = 202, body = CloneAccepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn clone_backup(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(backup): ApiPath<String>,
    ApiJson(input): ApiJson<NewBackupClone>,
) -> ApiResult<(StatusCode, Json<CloneAccepted>)> {
    let accepted =
        restores::clone_backup(&state, &actor, &BackupId::from_path(&backup)?, input).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// The tenant's backups of all its sites, deleted sites included, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/backups", tag = "backups", security(("bearer" = [])),
    params(("tenant" = String, Path), TenantBackupFilter), responses((status = 200, body = Page<Backup>), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn list_tenant_backups(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(filter): ApiQuery<TenantBackupFilter>,
) -> ApiResult<Json<Page<Backup>>> {
    Ok(Json(
        backups::list_for_tenant(&state, &actor, &TenantId::from_path(&tenant)?, filter).await?,
    ))
}

/// The plan's backup policy: its schedule and retention (404 when it has none).
#[utoipa::path(get, path = "/v1/plans/{plan}/backup-policy", tag = "plans", security(("bearer" = [])),
    params(("plan" = String, Path, description = "The plan's id.")),
    responses((status = 200, body = BackupPolicy), (status = 404, body = Problem)))]
async fn get_backup_policy(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(plan): ApiPath<String>,
) -> ApiResult<Json<BackupPolicy>> {
    Ok(Json(
        plans::backup_policy(&state, &PlanId::from_path(&plan)?).await?,
    ))
}

/// Sets the plan's backup policy (staff admins): every N hours or daily at a UTC time, and
/// how many scheduled backups (and of what age) each site keeps.
#[utoipa::path(put, path = "/v1/plans/{plan}/backup-policy", tag = "plans", security(("bearer" = [])),
    params(("plan" = String, Path, description = "The plan's id.")), request_body = NewBackupPolicy,
    responses((status = 200, body = BackupPolicy), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn set_backup_policy(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(plan): ApiPath<String>,
    ApiJson(input): ApiJson<NewBackupPolicy>,
) -> ApiResult<Json<BackupPolicy>> {
    Ok(Json(
        plans::set_backup_policy(&state, &actor, &PlanId::from_path(&plan)?, input).await?,
    ))
}

#[utoipa::path(get, path = "/v1/restores/{restore}", tag = "backups", security(("bearer" = [])),
    params(("restore" = String, Path)), responses((status = 200, body = Restore), (status = 404, body = Problem)))]
async fn get_restore(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(restore): ApiPath<String>,
) -> ApiResult<Json<Restore>> {
    Ok(Json(
        restores::get(&state, &actor, &parse_id(&restore, "restore")?).await?,
    ))
}

/// Operations newest first, scoped to the caller's tenants (staff: all).
#[utoipa::path(get, path = "/v1/operations", tag = "operations", security(("bearer" = [])),
    params(OperationFilter), responses((status = 200, body = Page<Operation>), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn list_operations(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(filter): ApiQuery<OperationFilter>,
) -> ApiResult<Json<Page<Operation>>> {
    Ok(Json(operations::list(&state, &actor, filter).await?))
}

#[utoipa::path(get, path = "/v1/operations/{operation}", tag = "operations", security(("bearer" = [])),
    params(("operation" = String, Path)), responses((status = 200, body = Operation)))]
async fn get_operation(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(op): ApiPath<String>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(
        operations::get(&state, &actor, &OperationId::from_path(&op)?).await?,
    ))
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])),
    params(AuditFilter), responses((status = 200, body = Page<AuditEvent>)))]
async fn staff_audit(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(filter): ApiQuery<AuditFilter>,
) -> ApiResult<Json<Page<AuditEvent>>> {
    Ok(Json(audit_log::list(&state, &actor, None, filter).await?))
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit", tag = "audit", security(("bearer" = [])),
    params(("tenant" = String, Path), AuditFilter), responses((status = 200, body = Page<AuditEvent>)))]
async fn tenant_audit(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(filter): ApiQuery<AuditFilter>,
) -> ApiResult<Json<Page<AuditEvent>>> {
    Ok(Json(
        audit_log::list(&state, &actor, Some(&TenantId::from_path(&tenant)?), filter).await?,
    ))
}

#[utoipa::path(get, path = "/v1/admin/reconcilers", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = [crate::background::reconcile::ReconcilerStatus])))]
async fn reconcilers(
    State(state): State<AppState>,
    actor: Actor,
) -> ApiResult<Json<Vec<crate::background::reconcile::ReconcilerStatus>>> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    Ok(Json(crate::background::reconcile::status(&state.db).await?))
}

#[utoipa::path(post, path = "/v1/admin/reconcilers/run", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The result of each reconciler"), (status = 409, body = Problem)))]
async fn run_reconcilers(State(state): State<AppState>, actor: Actor) -> ApiResult<Json<Value>> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    match crate::background::reconcile::run_all(
        &state.db,
        &state.backends,
        state.config.agent.report_url(),
        state.config.reconcile.orphan_grace_secs,
    )
    .await?
    {
        Some(result) => Ok(Json(result)),
        None => Err(ApiError::conflict(
            None,
            "a reconcile pass is running; see GET /v1/admin/reconcilers",
        )),
    }
}

#[utoipa::path(get, path = "/v1/admin/acme", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = crate::certs::AcmeSettings)))]
async fn acme_settings(
    State(state): State<AppState>,
    actor: Actor,
) -> ApiResult<Json<crate::certs::AcmeSettings>> {
    Ok(Json(crate::certs::get_settings(&state, &actor).await?))
}

#[utoipa::path(put, path = "/v1/admin/acme", tag = "admin", security(("bearer" = [])),
    request_body = crate::certs::AcmeSettingsChange,
    responses((status = 200, body = crate::certs::AcmeSettings)))]
async fn set_acme_settings(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(input): ApiJson<crate::certs::AcmeSettingsChange>,
) -> ApiResult<Json<crate::certs::AcmeSettings>> {
    Ok(Json(
        crate::certs::put_settings(&state, &actor, input).await?,
    ))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT or pdt_ API token")
                        .build(),
                ),
            );
            components.add_security_scheme(
                "agent_token",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("The site's agent token (`PRESSDOCK_AGENT_TOKEN`)"))
                        .build(),
                ),
            );
        }
    }
}

/// The media type of every error answer ([`ApiError`]'s RFC 9457 body).
const PROBLEM_JSON: &str = "application/problem+json";

/// The error answers every route of a kind gives, added here once to each operation of
/// the document, so that an annotation lists only the answers particular to its route
/// (409, 429) and a new route is documented as the extractors and [`Actor`] make it behave:
///
/// - signed in (`bearer`): 401 (no, bad or expired credentials), 403 (role or read-only
///   token); the agents' token (`agent_token`): 401;
/// - path parameters: 404 (every one is a generated [`crate::domain::Id`]: anything else,
///   or an id the caller may not see, is not found), and their schema says so;
/// - query parameters: 422 naming the parameter;
/// - a JSON body: 400 (not JSON), 413 (over `body_limit_bytes`), 415 (not
///   `application/json`), 422 (fields);
/// - every route: 503 while the database is unreachable (with `Retry-After`).
///
/// Problem bodies that an annotation wrote as `application/json` are moved to
/// `application/problem+json`, the content type [`ApiError`] sends.
struct SharedErrors;

impl Modify for SharedErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_shared_errors(operation);
            }
        }
    }
}

fn add_shared_errors(operation: &mut DocOperation) {
    let schemes: Vec<String> = operation
        .security
        .iter()
        .flatten()
        .filter_map(|requirement| serde_json::to_value(requirement).ok())
        .filter_map(|value| {
            value
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
        })
        .flatten()
        .collect();
    let mut has_path = false;
    let mut has_query = false;
    for parameter in operation.parameters.iter_mut().flatten() {
        match parameter.parameter_in {
            ParameterIn::Path => {
                has_path = true;
                parameter.schema = Some(RefOr::T(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some("^[a-z2-7]{10}$"))
                        .description(Some("A generated id: 10 of a-z and 2-7."))
                        .into(),
                ));
            }
            ParameterIn::Query => has_query = true,
            _ => {}
        }
    }
    let has_body = operation.request_body.is_some();
    let mut wanted: Vec<u16> = Vec::new();
    if schemes.iter().any(|s| s == "bearer") {
        wanted.extend([401, 403]);
    }
    if schemes.iter().any(|s| s == "agent_token") {
        wanted.push(401);
    }
    if has_path {
        wanted.push(404);
    }
    if has_query {
        wanted.push(422);
    }
    if has_body {
        wanted.extend([400, 413, 415, 422]);
    }
    wanted.push(503);
    let responses = &mut operation.responses.responses;
    for status in wanted {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(problem_response(status)));
    }
    let problem = serde_json::to_value(Ref::from_schema_name("Problem")).unwrap_or_default();
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let is_problem = response
            .content
            .get("application/json")
            .is_some_and(|content| {
                serde_json::to_value(&content.schema).unwrap_or_default() == problem
            });
        if is_problem {
            response.content.shift_remove("application/json");
            response.content.insert(
                PROBLEM_JSON.to_owned(),
                Content::new(Some(Ref::from_schema_name("Problem"))),
            );
            if response.description.is_empty() {
                response.description = status
                    .parse()
                    .map(describe_error)
                    .unwrap_or_default()
                    .to_owned();
            }
        }
    }
}

fn problem_response(status: u16) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(describe_error(status))
        .content(
            PROBLEM_JSON,
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build()
}

fn describe_error(status: u16) -> &'static str {
    match status {
        400 => "The body is not JSON.",
        401 => "No, an invalid or an expired credential.",
        403 => "The caller's role (or a read-only API token) does not allow this.",
        404 => "No such resource, or one the caller may not see.",
        409 => "The resource's state or a unique field conflicts; `errors` names the field.",
        413 => "The body is larger than `body_limit_bytes`.",
        415 => "The body is not sent as `application/json`.",
        422 => "Invalid fields or query parameters; `errors` names each.",
        429 => "Too many attempts; retry after `Retry-After` seconds.",
        503 => "A dependency is unreachable for now; retry after `Retry-After` seconds.",
        _ => "An error.",
    }
}

/// The OpenAPI 3.1 document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "Pressdock API", description = "Control plane of a WordPress hosting platform on Docker Swarm."),
    modifiers(&BearerAuth, &SharedErrors),
    paths(
        login, refresh, logout, me, list_staff, create_staff, list_tokens, create_token, revoke_token,
        list_tenants, create_tenant, get_tenant, update_tenant, delete_tenant,
        list_members, invite_member, change_role, remove_member,
        list_sites, create_site, get_site, update_site, delete_site, suspend_site, resume_site,
        purge_site_cache, agent_report, agent_purge, placement_map, rebalance,
        list_plans, create_plan, list_prices, add_price, ingest_samples, close_period, billing_export, billing_margins, list_conflicts, resolve_conflict, billing_metering, list_nodes, register_node, update_node, remove_node, list_operations, get_operation, staff_audit, tenant_audit, reconcilers, run_reconcilers, acme_settings, set_acme_settings,
        create_backup, list_backups, get_backup, delete_backup, verify_backup, create_restore, create_clone, get_restore,
        clone_backup, list_tenant_backups, get_backup_policy, set_backup_policy,
    ),
    components(schemas(Problem, crate::error::FieldError, Page<Site>, Page<AuditEvent>, Page<Operation>, Page<Backup>)),
)]
pub struct ApiDoc;

/// The OpenAPI document as checked in at `docs/openapi.json`.
pub fn openapi_pretty() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}
