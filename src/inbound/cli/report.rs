//! What the listing commands print: an aligned table for people, or JSON for scripts.

use serde_json::json;

use crate::domain::import::ImportPlan;
use crate::domain::oauth::OAuthClient;
use crate::domain::{AuditEvent, KeyState, SigningKey, User};
use crate::outbound::sea_orm::Backup;

/// `rows` under `header`, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_rfc3339())
}

/// Users as a table, or as a JSON array.
pub fn users(users: &[User], as_json: bool) -> String {
    if as_json {
        let items: Vec<_> = users
            .iter()
            .map(|u| {
                json!({
                    "id": u.id.0,
                    "email": u.email.as_str(),
                    "full_name": u.full_name.as_ref().map(|n| n.as_str()),
                    "role": u.role.as_str(),
                    "is_active": u.is_active,
                    "email_verified": u.email_verified,
                    "created_at": u.created_at.to_rfc3339(),
                    "last_login_at": u.last_login_at.map(|t| t.to_rfc3339()),
                })
            })
            .collect();
        return format!("{}\n", serde_json::Value::from(items));
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.id.to_string(),
                u.email.to_string(),
                u.role.to_string(),
                if u.is_active { "yes" } else { "no" }.into(),
                if u.email_verified { "yes" } else { "no" }.into(),
                time(u.last_login_at),
            ]
        })
        .collect();
    table(
        &["ID", "EMAIL", "ROLE", "ACTIVE", "VERIFIED", "LAST LOGIN"],
        &rows,
    )
}

/// Audit events as a table, or as a JSON array.
pub fn audit(events: &[AuditEvent], as_json: bool) -> String {
    if as_json {
        let items: Vec<_> = events
            .iter()
            .map(|e| {
                let event = &e.event;
                json!({
                    "id": e.id,
                    "at": event.at.to_rfc3339(),
                    "kind": event.kind.as_str(),
                    "outcome": if event.success { "success" } else { "failure" },
                    "user_id": event.user_id.map(|id| id.0),
                    "actor_id": event.actor_id.map(|id| id.0),
                    "ip": event.client.ip,
                    "user_agent": event.client.user_agent,
                    "detail": event.detail,
                })
            })
            .collect();
        return format!("{}\n", serde_json::Value::from(items));
    }
    let id = |id: Option<crate::domain::UserId>| id.map_or_else(|| "-".into(), |id| id.to_string());
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let event = &e.event;
            vec![
                e.id.to_string(),
                event.at.to_rfc3339(),
                event.kind.as_str().into(),
                if event.success { "success" } else { "failure" }.into(),
                id(event.user_id),
                id(event.actor_id),
                event.client.ip.clone().unwrap_or_else(|| "-".into()),
                event
                    .detail
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    table(
        &[
            "ID", "AT", "KIND", "OUTCOME", "USER", "ACTOR", "IP", "DETAIL",
        ],
        &rows,
    )
}

/// What an import did (or, `dry_run`, would do): each conflict and skipped row, then the
/// counts.
pub fn import(plan: &ImportPlan, dry_run: bool) -> String {
    let mut out = String::new();
    for c in &plan.conflicts {
        out.push_str(&format!(
            "conflict: source id {} ({}): {}\n",
            c.source_id, c.email, c.reason
        ));
    }
    for s in &plan.skipped {
        out.push_str(&format!(
            "skipped: source id {} ({}): {}\n",
            s.source_id, s.email, s.reason
        ));
    }
    let would = if dry_run { "would be " } else { "" };
    let imported = if plan.refused { 0 } else { plan.inserts.len() };
    let updated = if plan.refused { 0 } else { plan.updates.len() };
    out.push_str(&format!(
        "{imported} {would}imported, {updated} {would}updated, {} unchanged, {} conflicts, {} skipped\n",
        plan.unchanged,
        plan.conflicts.len(),
        plan.skipped.len()
    ));
    if plan.refused {
        out.push_str(
            "nothing imported: resolve the conflicts in pyauth, or choose with \
             --on-conflict keep-oldest or keep-newest\n",
        );
    } else if !plan.writes() {
        out.push_str("nothing to do: no user is new or changed\n");
    }
    out
}

/// Signing keys as a table, or as a JSON array (public parts only).
pub fn keys(keys: &[SigningKey], as_json: bool) -> String {
    let retires = |key: &SigningKey| match key.state {
        KeyState::Retired => key.retired_at,
        _ => key.retires_at,
    };
    if as_json {
        let items: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({
                    "kid": k.kid,
                    "algorithm": k.algorithm.as_str(),
                    "state": k.state.as_str(),
                    "created_at": k.created_at.to_rfc3339(),
                    "activates_at": k.activates_at.to_rfc3339(),
                    "retires_at": retires(k).map(|t| t.to_rfc3339()),
                })
            })
            .collect();
        return format!("{}\n", serde_json::Value::from(items));
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.kid.clone(),
                k.algorithm.to_string(),
                k.state.to_string(),
                k.created_at.to_rfc3339(),
                k.activates_at.to_rfc3339(),
                time(retires(k)),
            ]
        })
        .collect();
    table(
        &[
            "KID",
            "ALGORITHM",
            "STATE",
            "CREATED",
            "ACTIVATES",
            "RETIRES",
        ],
        &rows,
    )
}

/// A client as JSON: the admin API's `OAuthClient`, and its secret when it has just been made.
pub fn client_json(client: &OAuthClient, secret: Option<&str>) -> serde_json::Value {
    let settings = &client.settings;
    let mut value = json!({
        "client_id": client.id.as_str(),
        "name": settings.name,
        "redirect_uris": settings.redirect_uris,
        "post_logout_redirect_uris": settings.post_logout_redirect_uris,
        "public": settings.public,
        "first_party": settings.first_party,
        "scopes": settings.scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>(),
        "grant_types": settings.grant_types.iter().map(|grant| grant.as_str()).collect::<Vec<_>>(),
        "created_at": client.created_at.to_rfc3339(),
    });
    if let Some(secret) = secret {
        value["client_secret"] = secret.into();
    }
    value
}

/// Clients as a table, or as a JSON array.
pub fn clients(clients: &[OAuthClient], as_json: bool) -> String {
    if as_json {
        let items: Vec<_> = clients.iter().map(|c| client_json(c, None)).collect();
        return format!("{}\n", json!(items));
    }
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|client| {
            let settings = &client.settings;
            vec![
                client.id.to_string(),
                settings.name.clone(),
                if settings.public {
                    "public"
                } else {
                    "confidential"
                }
                .to_owned(),
                if settings.first_party { "yes" } else { "no" }.to_owned(),
                settings.redirect_uris.join(" "),
            ]
        })
        .collect();
    table(
        &["CLIENT_ID", "NAME", "TYPE", "FIRST_PARTY", "REDIRECT_URIS"],
        &rows,
    )
}

/// What a backup wrote, as lines for people or one JSON object.
pub fn backup(backup: &Backup, as_json: bool) -> String {
    let (seconds, copy_seconds) = (backup.elapsed.as_secs_f64(), backup.copying.as_secs_f64());
    if as_json {
        return format!(
            "{}\n",
            json!({
                "source": backup.source,
                "path": backup.path,
                "bytes": backup.bytes,
                "pages": backup.pages,
                "users": backup.users,
                "seconds": seconds,
                "copy_seconds": copy_seconds,
            })
        );
    }
    let megabytes = backup.bytes as f64 / 1e6;
    format!(
        "backed up {} to {}\n{} users, {} pages, {megabytes:.1} MB ({} bytes), in {seconds:.2} s \
         (the copy {copy_seconds:.2} s, then the check and the sync)\n",
        backup.source.display(),
        backup.path.display(),
        backup.users,
        backup.pages,
        backup.bytes,
    )
}
