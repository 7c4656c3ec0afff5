//! The OpenAPI document of the `/v1` routes, generated from the handlers' annotations and the
//! `protocol::admin` types, and served at `/openapi.json`. CI runs schemathesis against the running
//! service from this document (`admin/schemathesis.sh`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "liaotian admin API",
        description = "The server API for the app's own backend. Every call acts as the reserved \
                       `system` account. Authenticate with a server key (`ADMIN_KEYS`) as \
                       `Authorization: Bearer <key>`; client tokens are refused."
    ),
    paths(
        routes::publish,
        routes::create_group,
        routes::get_group,
        routes::add_members,
        routes::remove_member,
        routes::set_role,
        routes::history,
        routes::presence,
        routes::ban,
        routes::unban,
        routes::revoke,
    ),
    modifiers(&ServerKey),
    security(("server_key" = [])),
)]
pub struct ApiDoc;

struct ServerKey;

impl Modify for ServerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "server_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON.
pub fn json() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}
