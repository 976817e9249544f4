//! The administration routes: users and the audit trail, for admins only.
//!
//! Query parameters are taken as text and parsed here, so that every bad one is a 422 naming
//! it. Cursors are opaque: the last id of a page, tagged with the listing it belongs to and
//! encoded, so a cursor of another listing, or a made-up one, is a 422 too.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use crate::domain::service::{Actor, NewAccount};
use crate::domain::{
    AuditKind, AuditQuery, Core, Email, FullName, Password, Principal, Role, UserChanges, UserId,
    UserQuery,
};
use crate::inbound::http::dto::{
    AdminSession, AdminUser, AdminUserPage, AuditEventResponse, AuditPage, CreateUserRequest,
    FactorName, FactorsResponse, MessageResponse, UpdateUserRequest,
};
use crate::inbound::http::json::JsonBody;
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::params::{
    optional, parse_bool, parse_id, parse_role, parse_search, user_id,
};
use crate::inbound::web::problem::{Failure, FieldErrors, Problem, error_statuses};

/// Items per page when `limit` is not given, and at most.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

error_statuses!(
    /// Errors of the listings.
    ListErrors:
        401 => "No valid token",
        403 => "Insufficient privileges: the caller is not an admin",
        422 => "A bad query parameter or cursor, named in errors",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `POST /admin/users`.
    CreateErrors:
        400 => "Email already registered",
        401 => "No valid token",
        403 => "Insufficient privileges: the caller is not an admin",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "A bad field, named in errors",
        503 => "Mail is not configured (a user without a password needs a link), or the service is overloaded or the database does not answer"
);

error_statuses!(
    /// Errors of the routes of one user.
    UserErrors:
        401 => "No valid token",
        403 => "Insufficient privileges: the caller is not an admin",
        404 => "User not found",
        409 => "Would leave no active admin",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "A bad field, named in errors",
        503 => "Mail is not configured (password reset), or the database does not answer"
);

#[derive(ApiResponse)]
enum Created {
    /// The new user.
    #[oai(status = 201)]
    Created(Json<AdminUser>),
}

#[derive(ApiResponse)]
enum Done {
    /// Done.
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
enum Accepted {
    /// The reset link is on its way.
    #[oai(status = 202)]
    Accepted(Json<MessageResponse>),
}

/// A page's next cursor: the last id of a full page, tagged with its listing.
fn next_cursor(listing: &str, last: Option<i64>, full: bool) -> Option<String> {
    last.filter(|_| full)
        .map(|id| URL_SAFE_NO_PAD.encode(format!("{listing}:{id}")))
}

/// The id a cursor of `listing` points after.
fn parse_cursor(listing: &str, cursor: &str) -> Result<i64, &'static str> {
    const BAD: &str = "is not a cursor of this listing";
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| BAD)?;
    let text = String::from_utf8(bytes).map_err(|_| BAD)?;
    let (tag, id) = text.split_once(':').ok_or(BAD)?;
    if tag != listing {
        return Err(BAD);
    }
    id.parse::<i64>().ok().filter(|id| *id > 0).ok_or(BAD)
}

fn parse_limit(limit: Option<&str>) -> Result<u32, String> {
    match limit.filter(|text| !text.is_empty()) {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| format!("must be a whole number from 1 to {MAX_LIMIT}")),
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, &'static str> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be an RFC 3339 time, such as 2026-11-28T09:00:00Z")
}

pub struct AdminApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

impl AdminApi {
    fn admin<'a>(&self, auth: &'a Authenticated) -> Result<&'a Principal, Problem> {
        admin_caller(&self.core, auth)
    }
}

/// The caller, if an admin: the check of every `/admin` route.
pub(super) fn admin_caller<'a>(
    core: &Core,
    auth: &'a Authenticated,
) -> Result<&'a Principal, Problem> {
    let principal = auth.principal();
    core.accounts.authorize(principal, Role::Admin)?;
    Ok(principal)
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// List users
    ///
    /// Newest first, in pages (keyset: stable while users are added or removed). `q` is
    /// literal text found anywhere in the email or the full name, ignoring case.
    #[oai(path = "/admin/users", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list_users(
        &self,
        auth: Authenticated,
        /// 1 to 200; 50 by default.
        limit: Query<Option<String>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Text to find in the email or the full name (at most 200 characters, no control
        /// characters).
        q: Query<Option<String>>,
        /// `user` or `admin`.
        role: Query<Option<String>>,
        /// `true` or `false`.
        is_active: Query<Option<String>>,
        /// `true` or `false`.
        email_verified: Query<Option<String>>,
    ) -> Result<Json<AdminUserPage>, Failure<ListErrors>> {
        self.admin(&auth)?;
        let mut fields = FieldErrors::default();
        let limit = fields.check("limit", parse_limit(limit.0.as_deref()));
        let before = optional(&mut fields, "cursor", cursor.0.as_deref(), |c| {
            parse_cursor("users", c)
        });
        let search = optional(&mut fields, "q", q.0.as_deref(), parse_search);
        let role = optional(&mut fields, "role", role.0.as_deref(), parse_role);
        let is_active = optional(&mut fields, "is_active", is_active.0.as_deref(), parse_bool);
        let email_verified = optional(
            &mut fields,
            "email_verified",
            email_verified.0.as_deref(),
            parse_bool,
        );
        let limit = fields.finish(limit)?;
        let query = UserQuery {
            search: search.filter(|text| !text.is_empty()),
            role,
            is_active,
            email_verified,
            before: before.map(UserId),
            limit,
        };
        let users = self.core.admin.list_accounts(&query).await?;
        let cursor = next_cursor(
            "users",
            users.last().map(|u| u.id.0),
            users.len() == limit as usize,
        );
        Ok(Json(AdminUserPage {
            items: users.into_iter().map(AdminUser::from).collect(),
            next_cursor: cursor,
        }))
    }

    /// Create a user
    ///
    /// Any role. Without a password, the user gets a link by mail to choose one (valid
    /// `invitation_ttl_hours`).
    #[oai(path = "/admin/users", method = "post")]
    async fn create_user(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<CreateUserRequest>,
    ) -> Result<Created, Failure<CreateErrors>> {
        let admin = self.admin(&auth)?;
        let request = body.0;
        let mut fields = FieldErrors::default();
        let email = fields.check("email", Email::parse(&request.email));
        let full_name = optional(
            &mut fields,
            "full_name",
            request.full_name.as_deref(),
            FullName::parse,
        );
        let password = optional(
            &mut fields,
            "password",
            request.password.as_deref(),
            Password::parse,
        );
        let email = fields.finish(email)?;
        let client = self.proxies.client_info(req);
        let account = NewAccount {
            email,
            full_name,
            role: request.role.map_or(Role::User, Role::from),
            password,
        };
        let user = self
            .core
            .admin
            .create_account(Actor::Admin(admin, &client), account)
            .await?;
        Ok(Created::Created(Json(user.into())))
    }

    /// One user
    #[oai(path = "/admin/users/:id", method = "get")]
    async fn user(
        &self,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Json<AdminUser>, Failure<UserErrors>> {
        self.admin(&auth)?;
        let user = self.core.admin.account(user_id(&id.0)?).await?;
        Ok(Json(user.into()))
    }

    /// Change a user
    ///
    /// Role, active flag, full name, verified flag. Deactivating ends the user's sessions; a
    /// change that would leave no active admin is refused.
    #[oai(path = "/admin/users/:id", method = "patch")]
    async fn update_user(
        &self,
        req: &Request,
        auth: Authenticated,
        id: Path<String>,
        body: JsonBody<UpdateUserRequest>,
    ) -> Result<Json<AdminUser>, Failure<UserErrors>> {
        let admin = self.admin(&auth)?;
        let id = user_id(&id.0)?;
        let request = body.0;
        let mut fields = FieldErrors::default();
        let full_name = match request.full_name {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(name) => {
                fields.check("full_name", FullName::parse(&name)).map(Some)
            }
        };
        fields.finish(Some(()))?;
        let changes = UserChanges {
            role: request.role.map(Role::from),
            is_active: request.is_active,
            full_name,
            email_verified: request.email_verified,
        };
        let client = self.proxies.client_info(req);
        let user = self
            .core
            .admin
            .update_account(Actor::Admin(admin, &client), id, changes)
            .await?;
        Ok(Json(user.into()))
    }

    /// Delete a user
    ///
    /// The user, their sessions and tokens are gone; their audit events stay.
    #[oai(path = "/admin/users/:id", method = "delete")]
    async fn delete_user(
        &self,
        req: &Request,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Done, Failure<UserErrors>> {
        let admin = self.admin(&auth)?;
        let client = self.proxies.client_info(req);
        self.core
            .admin
            .delete_account(Actor::Admin(admin, &client), user_id(&id.0)?)
            .await?;
        Ok(Done::NoContent)
    }

    /// A user's sessions
    #[oai(path = "/admin/users/:id/sessions", method = "get")]
    async fn user_sessions(
        &self,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Json<Vec<AdminSession>>, Failure<UserErrors>> {
        self.admin(&auth)?;
        let sessions = self.core.admin.account_sessions(user_id(&id.0)?).await?;
        Ok(Json(sessions.into_iter().map(AdminSession::from).collect()))
    }

    /// End a user's sessions
    ///
    /// Every session of the user ends: their tokens stop working at once.
    #[oai(path = "/admin/users/:id/sessions", method = "delete")]
    async fn end_user_sessions(
        &self,
        req: &Request,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Done, Failure<UserErrors>> {
        let admin = self.admin(&auth)?;
        let client = self.proxies.client_info(req);
        self.core
            .admin
            .end_account_sessions(Actor::Admin(admin, &client), user_id(&id.0)?)
            .await?;
        Ok(Done::NoContent)
    }

    /// A user's second factors
    #[oai(path = "/admin/users/:id/factors", method = "get")]
    async fn user_factors(
        &self,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Json<FactorsResponse>, Failure<UserErrors>> {
        self.admin(&auth)?;
        let user = self.core.admin.account(user_id(&id.0)?).await?;
        let factors = self.core.factors.factors(user.id).await?;
        Ok(Json(FactorsResponse {
            factors: FactorName::list(factors),
        }))
    }

    /// Reset a user's second factors
    ///
    /// Removes their TOTP factor, recovery codes and passkeys, for a user who lost them: the
    /// next login asks for the password alone. Recorded as `mfa.reset`.
    #[oai(path = "/admin/users/:id/factors", method = "delete")]
    async fn reset_user_factors(
        &self,
        req: &Request,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Done, Failure<UserErrors>> {
        let admin = self.admin(&auth)?;
        let client = self.proxies.client_info(req);
        self.core
            .admin
            .reset_factors(Actor::Admin(admin, &client), user_id(&id.0)?)
            .await?;
        Ok(Done::NoContent)
    }

    /// Mail a user a reset link
    #[oai(path = "/admin/users/:id/password-reset", method = "post")]
    async fn send_reset(
        &self,
        req: &Request,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Accepted, Failure<UserErrors>> {
        let admin = self.admin(&auth)?;
        let client = self.proxies.client_info(req);
        self.core
            .admin
            .send_reset_link(Actor::Admin(admin, &client), user_id(&id.0)?)
            .await?;
        Ok(Accepted::Accepted(Json(MessageResponse::new(
            "A reset link has been sent",
        ))))
    }

    /// The audit trail
    ///
    /// Newest first, in pages; filters combine.
    #[oai(path = "/admin/audit", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        auth: Authenticated,
        /// 1 to 200; 50 by default.
        limit: Query<Option<String>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// The account concerned.
        user_id: Query<Option<String>>,
        /// The admin who acted.
        actor_id: Query<Option<String>>,
        /// An event kind, such as `login.failed`.
        kind: Query<Option<String>>,
        /// RFC 3339: events at or after.
        since: Query<Option<String>>,
        /// RFC 3339: events at or before.
        until: Query<Option<String>>,
    ) -> Result<Json<AuditPage>, Failure<ListErrors>> {
        self.admin(&auth)?;
        let mut fields = FieldErrors::default();
        let limit = fields.check("limit", parse_limit(limit.0.as_deref()));
        let before = optional(&mut fields, "cursor", cursor.0.as_deref(), |c| {
            parse_cursor("audit", c)
        });
        let user = optional(&mut fields, "user_id", user_id.0.as_deref(), parse_id);
        let actor = optional(&mut fields, "actor_id", actor_id.0.as_deref(), parse_id);
        let kind = optional(&mut fields, "kind", kind.0.as_deref(), |k| {
            AuditKind::parse(k).ok_or("is not an event kind")
        });
        let since = optional(&mut fields, "since", since.0.as_deref(), parse_time);
        let until = optional(&mut fields, "until", until.0.as_deref(), parse_time);
        let limit = fields.finish(limit)?;
        let query = AuditQuery {
            user_id: user.map(UserId),
            actor_id: actor.map(UserId),
            kind,
            since,
            until,
            before,
            limit,
        };
        let events = self.core.admin.audit_events(&query).await?;
        let cursor = next_cursor(
            "audit",
            events.last().map(|e| e.id),
            events.len() == limit as usize,
        );
        Ok(Json(AuditPage {
            items: events.into_iter().map(AuditEventResponse::from).collect(),
            next_cursor: cursor,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_belong_to_their_listing() {
        let cursor = next_cursor("users", Some(42), true).unwrap();
        assert_eq!(parse_cursor("users", &cursor), Ok(42));
        assert!(parse_cursor("audit", &cursor).is_err());
        assert!(parse_cursor("users", "not-base64!").is_err());
        assert!(parse_cursor("users", &URL_SAFE_NO_PAD.encode("users:-1")).is_err());
        assert!(parse_cursor("users", "42").is_err());
        assert_eq!(next_cursor("users", Some(42), false), None);
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(parse_limit(None), Ok(50));
        assert_eq!(parse_limit(Some("200")), Ok(200));
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("201")).is_err());
        assert!(parse_limit(Some("ten")).is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::properties::config;

        const LISTINGS: [&str; 2] = ["users", "audit"];

        /// Cursors as a client might alter them: real ones with a character changed, others
        /// encoded by hand, and anything at all.
        fn cursor() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[A-Za-z0-9_-]{0,30}",
                "\\PC{0,20}".prop_map(|text| URL_SAFE_NO_PAD.encode(text)),
                ("(users|audit|)", "[:+-]?[0-9a-z]{0,25}")
                    .prop_map(|(tag, id)| URL_SAFE_NO_PAD.encode(format!("{tag}:{id}"))),
                (
                    1..i64::MAX,
                    any::<prop::sample::Index>(),
                    "[A-Za-z0-9_=/+-]"
                )
                    .prop_map(|(id, at, c)| {
                        let mut cursor = next_cursor("users", Some(id), true).unwrap();
                        let at = at.index(cursor.len());
                        cursor.replace_range(at..=at, &c);
                        cursor
                    }),
            ]
        }

        proptest! {
            #![proptest_config(config(512))]

            #[test]
            fn the_cursor_of_a_page_leads_to_the_same_position_in_its_listing_only(
                id in 1..=i64::MAX,
                listing in 0..LISTINGS.len(),
            ) {
                let cursor = next_cursor(LISTINGS[listing], Some(id), true).unwrap();
                prop_assert_eq!(parse_cursor(LISTINGS[listing], &cursor), Ok(id));
                prop_assert!(parse_cursor(LISTINGS[1 - listing], &cursor).is_err());
                prop_assert_eq!(next_cursor(LISTINGS[listing], Some(id), false), None);
            }

            #[test]
            fn any_cursor_is_refused_or_points_after_a_real_id(cursor in cursor()) {
                for listing in LISTINGS {
                    if let Ok(id) = parse_cursor(listing, &cursor) {
                        prop_assert!(id > 0);
                        let decoded = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
                        let tag = format!("{listing}:");
                        prop_assert!(decoded.starts_with(tag.as_bytes()));
                    }
                }
            }

            #[test]
            fn a_limit_is_within_bounds_or_refused(text in prop_oneof![
                any::<String>(), "[+-]?[0-9]{0,12}", (0u32..=400).prop_map(|n| n.to_string())
            ]) {
                match parse_limit(Some(&text)) {
                    Ok(limit) if text.is_empty() => prop_assert_eq!(limit, DEFAULT_LIMIT),
                    Ok(limit) => {
                        prop_assert!((1..=MAX_LIMIT).contains(&limit));
                        prop_assert_eq!(text.parse::<u32>(), Ok(limit));
                    }
                    Err(_) => prop_assert!(
                        text.parse::<u32>().map_or(true, |n| !(1..=MAX_LIMIT).contains(&n))
                    ),
                }
            }
        }
    }
}
