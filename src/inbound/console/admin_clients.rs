//! The administrators' page of the OpenID provider's clients: the list, registering one (its
//! secret shown once), rotating a secret, deleting. The same use cases as `/admin/clients`.

use std::sync::Arc;

use askama::Template;
use poem::web::{Data, Path};
use poem::{Request, Response, handler};

use super::Console;
use super::form_state::FormState;
use super::forms::{Guard, Posted, submitted};
use super::guard::{Visitor, see_other};
use super::pages::{Chrome, when};
use crate::domain::Principal;
use crate::domain::oauth::{ClientId, ClientSettings, GrantType, OAuthClient, Scopes};
use crate::domain::service::{Actor, RegisteredClient};
use crate::inbound::web::problem::Problem;

/// The clients page.
#[derive(Template)]
#[template(
    path = "admin_clients.html",
    config = "src/inbound/console/askama.toml"
)]
struct ClientsPage {
    chrome: Chrome,
    form: FormState,
    csrf: String,
    clients: Vec<ClientView>,
    /// A secret just made: its client, and the secret, shown this once.
    fresh: Option<(String, String)>,
}

struct ClientView {
    id: String,
    name: String,
    kind: &'static str,
    first_party: bool,
    redirect_uris: String,
    created: String,
}

impl From<&OAuthClient> for ClientView {
    fn from(client: &OAuthClient) -> Self {
        Self {
            id: client.id.to_string(),
            name: client.settings.name.clone(),
            kind: if client.settings.public {
                "public"
            } else {
                "confidential"
            },
            first_party: client.settings.first_party,
            redirect_uris: client.settings.redirect_uris.join(" "),
            created: when(client.created_at),
        }
    }
}

async fn clients_page(
    console: &Console,
    visitor: &Visitor,
    form: FormState,
    fresh: Option<RegisteredClient>,
    done: Option<&str>,
) -> Response {
    let clients = match console.core.clients.list().await {
        Ok(clients) => clients,
        Err(err) => return console.failure(visitor, &Problem::from(err)),
    };
    let status = form.status();
    let page = ClientsPage {
        chrome: Chrome::new("Applications", visitor).noting(done),
        form,
        csrf: visitor.session_csrf().unwrap_or_default(),
        clients: clients.iter().map(ClientView::from).collect(),
        fresh: fresh.and_then(|made| Some((made.client.settings.name, made.secret?))),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn client_list(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let (visitor, _) = or_page!(console.admin(req).await);
    let done = super::PageQuery::of(req).done;
    clients_page(
        &console,
        &visitor,
        FormState::default(),
        None,
        done.as_deref(),
    )
    .await
}

/// One URI per line.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn admin_form(
    req: &Request,
    console: &Console,
    form: Posted,
) -> Result<(Visitor, Principal, super::forms::Fields), Response> {
    let (visitor, principal) = console.admin(req).await?;
    let fields = submitted(console, req, &visitor, form, Guard::Session)?;
    Ok((visitor, principal, fields))
}

/// Registers a client, as `POST /admin/clients` does.
#[handler]
pub(super) async fn create_client(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let (visitor, admin, fields) = or_page!(admin_form(req, &console, form).await);
    let shown = FormState::default()
        .keep("name", fields.get("name"))
        .keep("redirect_uris", fields.get("redirect_uris"))
        .keep(
            "post_logout_redirect_uris",
            fields.get("post_logout_redirect_uris"),
        );
    let settings = ClientSettings {
        name: fields.get("name").to_owned(),
        redirect_uris: lines(fields.get("redirect_uris")),
        post_logout_redirect_uris: lines(fields.get("post_logout_redirect_uris")),
        public: fields.has("public"),
        first_party: fields.has("first_party"),
        scopes: Scopes::all(),
        grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
    };
    let client = console.client(req);
    match console
        .core
        .clients
        .create(settings, Actor::Admin(&admin, &client))
        .await
    {
        Ok(made) => clients_page(&console, &visitor, FormState::default(), Some(made), None).await,
        Err(err) => {
            let form = shown.failed(&Problem::from(err));
            clients_page(&console, &visitor, form, None, None).await
        }
    }
}

/// A new secret, shown once, as `POST /admin/clients/{client_id}/secret` does.
#[handler]
pub(super) async fn rotate_secret(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, admin, _) = or_page!(admin_form(req, &console, form).await);
    let client = console.client(req);
    match console
        .core
        .clients
        .rotate_secret(&ClientId(id.0), Actor::Admin(&admin, &client))
        .await
    {
        Ok(rotated) => {
            clients_page(
                &console,
                &visitor,
                FormState::default(),
                Some(rotated),
                None,
            )
            .await
        }
        Err(err) => console.failure(&visitor, &Problem::from(err)),
    }
}

/// Deletes a client, as `DELETE /admin/clients/{client_id}` does.
#[handler]
pub(super) async fn delete_client(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, admin, _) = or_page!(admin_form(req, &console, form).await);
    let client = console.client(req);
    match console
        .core
        .clients
        .delete(&ClientId(id.0), Actor::Admin(&admin, &client))
        .await
    {
        Ok(()) => see_other("/console/admin/clients?done=client-deleted"),
        Err(err) => console.failure(&visitor, &Problem::from(err)),
    }
}
