//! The administrators' pages: users (search, filters, keyset paging), one user (role, active
//! flag, sessions, reset link, deletion), the audit log. The same use cases as `/admin/*`,
//! with the same parsing of filters.

use std::sync::Arc;

use chrono::{NaiveDate, TimeDelta};
use poem::web::{Data, Path};
use poem::{Request, Response, handler};
use serde::Deserialize;

use super::Console;
use super::form_state::FormState;
use super::forms::{Fields, Guard, Posted, submitted};
use super::guard::{Visitor, see_other};
use super::pages::{self, Chrome, EventView, SessionView, UserView, query_string};
use crate::domain::service::{Actor, AdminError};
use crate::domain::{AuditKind, AuditQuery, Principal, UserChanges, UserId, UserQuery};
use crate::inbound::web::params::{
    optional, parse_bool, parse_id, parse_role, parse_search, user_id,
};
use crate::inbound::web::problem::{FieldErrors, Problem};

/// Rows on a page of users or events.
const PAGE_SIZE: u32 = 50;

/// The filters of the users page.
#[derive(Debug, Default, Deserialize)]
struct UsersQuery {
    q: Option<String>,
    role: Option<String>,
    is_active: Option<String>,
    email_verified: Option<String>,
    /// Keyset paging: only users older than this id.
    before: Option<String>,
    done: Option<String>,
}

#[handler]
pub(super) async fn user_list(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let (visitor, _) = or_page!(console.admin(req).await);
    let query: UsersQuery = req.params().unwrap_or_default();
    let text = |value: &Option<String>| value.as_deref().unwrap_or_default().trim().to_owned();
    let (q, role, active, verified) = (
        text(&query.q),
        text(&query.role),
        text(&query.is_active),
        text(&query.email_verified),
    );
    let form = FormState::default()
        .keep("q", &q)
        .keep("role", &role)
        .keep("is_active", &active)
        .keep("email_verified", &verified);
    let mut checks = FieldErrors::default();
    let search = optional(&mut checks, "q", Some(&q), parse_search);
    let role_filter = optional(&mut checks, "role", Some(&role), parse_role);
    let active_filter = optional(&mut checks, "is_active", Some(&active), parse_bool);
    let verified_filter = optional(&mut checks, "email_verified", Some(&verified), parse_bool);
    let before = optional(&mut checks, "before", query.before.as_deref(), parse_id);
    let listed = match checks.finish(Some(())) {
        Err(problem) => Err(problem),
        Ok(()) => {
            let filter = UserQuery {
                search,
                role: role_filter,
                is_active: active_filter,
                email_verified: verified_filter,
                before: before.map(UserId),
                limit: PAGE_SIZE,
            };
            console
                .core
                .admin
                .list_accounts(&filter)
                .await
                .map_err(Problem::from)
        }
    };
    let (form, users) = match listed {
        Ok(users) => (form, users),
        Err(problem) => (form.failed(&problem), Vec::new()),
    };
    let next = (users.len() == PAGE_SIZE as usize)
        .then(|| users.last())
        .flatten()
        .map(|last| {
            let before = last.id.0.to_string();
            query_string(&[
                ("q", &q),
                ("role", &role),
                ("is_active", &active),
                ("email_verified", &verified),
                ("before", &before),
            ])
        });
    let status = form.status();
    let page = pages::AdminUsers {
        chrome: Chrome::new("Users", &visitor).noting(query.done.as_deref()),
        form,
        users: users.iter().map(UserView::from).collect(),
        next,
    };
    console.page(&visitor, &page, status)
}

/// The page of one user, showing `form`'s failure if any.
async fn user_page(
    console: &Console,
    visitor: &Visitor,
    id: UserId,
    form: FormState,
    done: Option<&str>,
) -> Response {
    let found = async {
        let user = console.core.admin.account(id).await?;
        let sessions = console.core.admin.account_sessions(id).await?;
        let factors = console.core.factors.factors(id).await?;
        Ok::<_, AdminError>((user, sessions, factors))
    };
    let (user, sessions, factors) = match found.await {
        Ok(found) => found,
        Err(err) => return console.failure(visitor, &Problem::from(err)),
    };
    let status = form.status();
    let page = pages::AdminUser {
        chrome: Chrome::new(user.email.as_str(), visitor).noting(done),
        form,
        user: UserView::from(&user),
        sessions: sessions.iter().map(|s| SessionView::new(s, None)).collect(),
        factors: pages::factors_text(factors),
        csrf: visitor.session_csrf().unwrap_or_default(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn user_detail(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
) -> Response {
    let (visitor, _) = or_page!(console.admin(req).await);
    let done = super::PageQuery::of(req).done;
    match user_id(&id.0) {
        Ok(id) => {
            user_page(
                &console,
                &visitor,
                id,
                FormState::default(),
                done.as_deref(),
            )
            .await
        }
        Err(problem) => console.failure(&visitor, &problem),
    }
}

/// After an admin's change to user `id`: back to the user's page with notice `done`, or the
/// page again with what failed.
async fn after_action<T>(
    console: &Console,
    visitor: &Visitor,
    id: UserId,
    result: Result<T, AdminError>,
    done: &str,
) -> Response {
    match result {
        Ok(_) => see_other(&format!("/console/admin/users/{}?done={done}", id.0)),
        Err(err) => {
            let form = FormState::default().failed(&Problem::from(err));
            user_page(console, visitor, id, form, None).await
        }
    }
}

/// An admin's POST about user `id`: the admin and the form, once it passed the guard.
async fn admin_post(
    req: &Request,
    console: &Console,
    id: &str,
    form: Posted,
) -> Result<(Visitor, Principal, UserId, Fields), Response> {
    let (visitor, principal) = console.admin(req).await?;
    let fields = submitted(console, req, &visitor, form, Guard::Session)?;
    let id = user_id(id).map_err(|problem| console.failure(&visitor, &problem))?;
    Ok((visitor, principal, id, fields))
}

/// Sets role and active flag, as `PATCH /admin/users/{id}` does.
#[handler]
pub(super) async fn update_user(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, admin, id, fields) = or_page!(admin_post(req, &console, &id.0, form).await);
    let mut checks = FieldErrors::default();
    let role = checks.check("role", parse_role(fields.get("role")));
    let role = match checks.finish(role) {
        Ok(role) => role,
        Err(problem) => {
            return user_page(
                &console,
                &visitor,
                id,
                FormState::default().failed(&problem),
                None,
            )
            .await;
        }
    };
    // An unchecked box is not sent at all.
    let changes = UserChanges {
        role: Some(role),
        is_active: Some(fields.get("is_active") == "true"),
        ..UserChanges::default()
    };
    let client = console.client(req);
    let result = console
        .core
        .admin
        .update_account(Actor::Admin(&admin, &client), id, changes)
        .await;
    after_action(&console, &visitor, id, result, "user-updated").await
}

/// Ends every session of the user, as `DELETE /admin/users/{id}/sessions` does.
#[handler]
pub(super) async fn end_sessions(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, admin, id, _) = or_page!(admin_post(req, &console, &id.0, form).await);
    let client = console.client(req);
    let result = console
        .core
        .admin
        .end_account_sessions(Actor::Admin(&admin, &client), id)
        .await;
    after_action(&console, &visitor, id, result, "sessions-ended").await
}

/// Mails the user a reset link, as `POST /admin/users/{id}/password-reset` does.
#[handler]
pub(super) async fn send_reset_link(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, admin, id, _) = or_page!(admin_post(req, &console, &id.0, form).await);
    let client = console.client(req);
    let result = console
        .core
        .admin
        .send_reset_link(Actor::Admin(&admin, &client), id)
        .await;
    after_action(&console, &visitor, id, result, "reset-link-sent").await
}

/// Removes the user's authenticator app, recovery codes and passkeys, as
/// `DELETE /admin/users/{id}/factors` does.
#[handler]
pub(super) async fn reset_two_step(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, admin, id, _) = or_page!(admin_post(req, &console, &id.0, form).await);
    let client = console.client(req);
    let result = console
        .core
        .admin
        .reset_factors(Actor::Admin(&admin, &client), id)
        .await;
    after_action(&console, &visitor, id, result, "two-step-reset").await
}

async fn delete_form(
    console: &Console,
    visitor: &Visitor,
    id: UserId,
    form: FormState,
) -> Response {
    let user = match console.core.admin.account(id).await {
        Ok(user) => user,
        Err(err) => return console.failure(visitor, &Problem::from(err)),
    };
    let status = form.status();
    let page = pages::AdminDelete {
        chrome: Chrome::new("Delete a user", visitor),
        form,
        user: UserView::from(&user),
        csrf: visitor.session_csrf().unwrap_or_default(),
    };
    console.page(visitor, &page, status)
}

/// The confirmation asked before a deletion.
#[handler]
pub(super) async fn delete_page(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
) -> Response {
    let (visitor, _) = or_page!(console.admin(req).await);
    match user_id(&id.0) {
        Ok(id) => delete_form(&console, &visitor, id, FormState::default()).await,
        Err(problem) => console.failure(&visitor, &problem),
    }
}

/// Deletes the user, as `DELETE /admin/users/{id}` does.
#[handler]
pub(super) async fn delete_user(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, admin, id, _) = or_page!(admin_post(req, &console, &id.0, form).await);
    let client = console.client(req);
    match console
        .core
        .admin
        .delete_account(Actor::Admin(&admin, &client), id)
        .await
    {
        Ok(()) => see_other("/console/admin/users?done=user-deleted"),
        Err(err) => {
            let form = FormState::default().failed(&Problem::from(err));
            delete_form(&console, &visitor, id, form).await
        }
    }
}

/// The filters of the audit log.
#[derive(Debug, Default, Deserialize)]
struct AuditFilters {
    kind: Option<String>,
    user_id: Option<String>,
    actor_id: Option<String>,
    /// A UTC day, `YYYY-MM-DD` (what a date input sends).
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
}

fn parse_day(text: &str) -> Result<NaiveDate, &'static str> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| "must be a day, such as 2026-11-28")
}

fn parse_kind(text: &str) -> Result<AuditKind, &'static str> {
    AuditKind::parse(text).ok_or("is not an event kind")
}

fn parse_event_id(text: &str) -> Result<i64, &'static str> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or("must be an event id")
}

#[handler]
pub(super) async fn audit_log(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let (visitor, _) = or_page!(console.admin(req).await);
    let filters: AuditFilters = req.params().unwrap_or_default();
    let text = |value: &Option<String>| value.as_deref().unwrap_or_default().trim().to_owned();
    let typed = [
        ("kind", text(&filters.kind)),
        ("user_id", text(&filters.user_id)),
        ("actor_id", text(&filters.actor_id)),
        ("since", text(&filters.since)),
        ("until", text(&filters.until)),
    ];
    let form = typed
        .iter()
        .fold(FormState::default(), |form, (name, value)| {
            form.keep(name, value)
        });
    let [kind, user, actor, since, until] = typed.each_ref().map(|(_, value)| value.as_str());
    let mut checks = FieldErrors::default();
    let query = AuditQuery {
        kind: optional(&mut checks, "kind", Some(kind), parse_kind),
        user_id: optional(&mut checks, "user_id", Some(user), parse_id).map(UserId),
        actor_id: optional(&mut checks, "actor_id", Some(actor), parse_id).map(UserId),
        since: optional(&mut checks, "since", Some(since), parse_day)
            .map(|day| day.and_time(chrono::NaiveTime::MIN).and_utc()),
        // The whole day: up to the first instant of the next.
        until: optional(&mut checks, "until", Some(until), parse_day)
            .map(|day| day.and_time(chrono::NaiveTime::MIN).and_utc() + TimeDelta::days(1)),
        before: optional(
            &mut checks,
            "before",
            filters.before.as_deref(),
            parse_event_id,
        ),
        limit: PAGE_SIZE,
    };
    let listed = match checks.finish(Some(())) {
        Ok(()) => console
            .core
            .admin
            .audit_events(&query)
            .await
            .map_err(Problem::from),
        Err(problem) => Err(problem),
    };
    let (form, events) = match listed {
        Ok(events) => (form, events),
        Err(problem) => (form.failed(&problem), Vec::new()),
    };
    let next = (events.len() == PAGE_SIZE as usize)
        .then(|| events.last())
        .flatten()
        .map(|last| {
            let before = last.id.to_string();
            let mut pairs: Vec<(&str, &str)> =
                typed.iter().map(|(n, v)| (*n, v.as_str())).collect();
            pairs.push(("before", &before));
            query_string(&pairs)
        });
    let status = form.status();
    let page = pages::AdminAudit {
        chrome: Chrome::new("Audit log", &visitor),
        form,
        kinds: AuditKind::ALL.iter().map(|kind| kind.as_str()).collect(),
        events: events.iter().map(EventView::from).collect(),
        next,
    };
    console.page(&visitor, &page, status)
}
