//! The route table: every route of the API is mounted here, once, through `utoipa_axum::routes!`, so the
//! OpenAPI document is generated from the code that mounts the handlers and cannot drift from it.

pub mod agent_protocol;
pub mod agents;
pub mod audit;
pub mod events;
pub mod execute;
pub mod grants;
pub mod health;
pub mod hooks;
pub mod metrics;
pub mod notifications;
pub mod run_after;
pub mod runs;
pub mod schedule;
pub mod schedule_preview;
pub mod script_packages;
pub mod scripts;
pub mod secrets;
pub mod session;
pub mod setup;
pub mod tasks;
pub mod tokens;
pub mod users;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{
    IntoParams, Modify, OpenApi, ToSchema,
    openapi::{
        self, RefOr, Response,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ErrorBody, state::AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "Automa", description = "Manage, schedule, sandbox and audit Python scripts."),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// All API routes, with their OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(session::login))
        .routes(routes!(session::logout))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::me, users::update_me))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(users::revoke_sessions))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(agents::list, agents::create))
        .routes(routes!(agents::get, agents::update, agents::delete))
        .routes(routes!(agents::events))
        .routes(routes!(scripts::list, scripts::create))
        .routes(routes!(scripts::get, scripts::update, scripts::delete))
        .routes(routes!(scripts::versions))
        .routes(routes!(scripts::version))
        .routes(routes!(script_packages::update_lock))
        .routes(routes!(tasks::list, tasks::create))
        .routes(routes!(tasks::get, tasks::update, tasks::delete))
        .routes(routes!(hooks::list, hooks::create))
        .routes(routes!(hooks::revoke))
        .routes(routes!(hooks::trigger))
        .routes(routes!(schedule::upcoming))
        .routes(routes!(schedule::pause))
        .routes(routes!(schedule::resume))
        .routes(routes!(audit::list))
        .routes(routes!(audit::list_alias))
        .routes(routes!(audit::verify))
        .routes(routes!(execute::task))
        .routes(routes!(execute::adhoc))
        .routes(routes!(runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(runs::logs))
        .routes(routes!(runs::stream))
        .routes(routes!(runs::cancel))
        .routes(routes!(secrets::list, secrets::create))
        .routes(routes!(secrets::get, secrets::update, secrets::delete))
        .routes(routes!(events::events))
        .routes(routes!(agent_protocol::heartbeat))
        .routes(routes!(agent_protocol::claim))
        .routes(routes!(agent_protocol::logs))
        .routes(routes!(agent_protocol::finish))
        .routes(routes!(agent_protocol::hand_back))
        .routes(routes!(agent_protocol::goodbye))
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(metrics::scrape))
        .routes(routes!(setup::status))
        .routes(routes!(schedule_preview::preview))
        .routes(routes!(notifications::list, notifications::create))
        .routes(routes!(notifications::get, notifications::update, notifications::delete))
        .routes(routes!(notifications::test))
        .routes(routes!(notifications::deliveries))
        .routes(routes!(notifications::run_deliveries))
        .routes(routes!(notifications::get_task, notifications::set_task, notifications::reset_task))
}

/// Completes the document once every route is mounted: security schemes and the error responses derived from
/// each operation. (utoipa applies `modifiers` before the router adds its paths, hence a separate step.)
pub fn complete(openapi: &mut openapi::OpenApi) {
    SecuritySchemes.modify(openapi);
    ErrorResponses.modify(openapi);
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A session token from POST /token, or an API token (atm_...). The requirement lists the least role.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        let agent = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An agent's enrollment token (atma_...)."))
            .build();
        components.add_security_scheme("agent", SecurityScheme::Http(agent));
    }
}

/// Adds the error responses every operation can give, derived from what it is: secured routes can answer 401
/// and 403, routes with a path parameter 404, routes with a body 400 and 413, and every route 422 (an invalid
/// field or parameter, or an undeclared query parameter). Declaring them here rather than on each handler keeps
/// the document truthful as routes are added.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let error = |description: &str| -> RefOr<Response> {
            RefOr::T(
                openapi::ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        openapi::ContentBuilder::new()
                            .schema(Some(openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_parameter = path.contains('{');
            for operation in operations(item) {
                let responses = &mut operation.responses.responses;
                describe_responses(responses);
                let mut add = |status: &str, description: &str| {
                    responses.entry(status.to_owned()).or_insert_with(|| error(description));
                };
                let anonymous = openapi::security::SecurityRequirement::default();
                if operation.security.iter().flatten().any(|requirement| *requirement != anonymous) {
                    add("401", "Missing, invalid or expired credentials");
                    add("403", "The credentials' role is not enough for this route");
                }
                if has_path_parameter {
                    add("404", "No such resource");
                }
                if operation.request_body.is_some() {
                    add("400", "Malformed body");
                    add("413", "Body larger than the server accepts");
                }
                // Every operation refuses query parameters it does not declare (see `auth::enforce_access`).
                add("422", "A field or query parameter is invalid, or a query parameter is unknown; `field` names it");
                // The client limits of `rate_limit` and `serving` apply to every operation.
                add("408", "The request did not arrive in time (`AUTOMA_REQUEST_TIMEOUT_SECONDS`)");
                add("429", "Too many requests from this token or address; `Retry-After` says when to try again");
                add("500", "Server fault; details are in the server's log");
                // Answered by the HTTP layer before any route, without a body.
                responses.entry("431".to_owned()).or_insert_with(|| {
                    RefOr::T(
                        openapi::ResponseBuilder::new()
                            .description("The request head is larger than the server accepts (no body)")
                            .build(),
                    )
                });
            }
        }
    }
}

/// OpenAPI requires a description on every response; one the handler left without gets its status's name.
fn describe_responses(responses: &mut std::collections::BTreeMap<String, RefOr<Response>>) {
    for (status, response) in responses.iter_mut() {
        if let RefOr::T(response) = response
            && response.description.is_empty()
        {
            let reason = status.parse().ok().and_then(|code| axum::http::StatusCode::from_u16(code).ok());
            response.description = reason.and_then(|code| code.canonical_reason()).unwrap_or("Success").to_owned();
        }
    }
}

fn operations(item: &mut openapi::PathItem) -> impl Iterator<Item = &mut openapi::path::Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
}

/// One event of a Server-Sent Events stream, as a client reads it: `event` names its kind, `data` is JSON text
/// (the run, the agent's id, or an output chunk), `id` is a log chunk's sequence number, for resuming.
#[derive(ToSchema)]
pub struct ServerSentEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// `limit` and `offset` of every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// Items per page (default 50); a value outside 1-500 is clamped to that range.
    pub limit: Option<i64>,
    /// Items to skip (default 0); a negative value counts as 0.
    pub offset: Option<i64>,
}

impl Paging {
    pub fn page(&self) -> automa_store::Page {
        automa_store::Page::new(self.limit, self.offset)
    }
}

/// A page of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items in the whole list.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

impl<T> Page<T> {
    pub fn from_listed<S>(listed: automa_store::Listed<S>, page: automa_store::Page, map: impl FnMut(S) -> T) -> Self {
        Page {
            items: listed.items.into_iter().map(map).collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        }
    }
}

/// Deserialises a present field, null included, as `Some`: with `#[serde(default)]`, an absent field stays
/// `None`, so an update can tell "leave as is" from "set to null".
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}
