//! Two-step verification: the second step of a sign-in, and the account's authenticator app
//! (set it up, confirm it and get the recovery codes, turn it off). The use cases are those of
//! `/auth/mfa/*`; what is the console's own is the QR code, drawn on the server as SVG, since
//! every page must work without script.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Request, Response, handler};
use qrcode::QrCode;
use qrcode::render::svg;

use super::form_state::FormState;
use super::forms::{Guard, Posted, signed_in_post, submitted};
use super::guard::{Visitor, safe_next, see_other};
use super::pages::{self, Chrome, NewSecret};
use super::{Console, PageQuery};
use crate::domain::Principal;
use crate::domain::mfa::TotpCode;
use crate::domain::service::{MfaError, Proof, SecondFactor, TotpEnrolment};
use crate::inbound::web::problem::Problem;

/// `form` after `err`: a wrong code or password goes on `field`, which is what to correct;
/// anything else (a limit, an outage) above the form.
fn failed(form: FormState, field: &str, err: MfaError) -> FormState {
    let on_field = matches!(err, MfaError::InvalidCode | MfaError::WrongPassword);
    let problem = Problem::from(err);
    if on_field {
        form.failed_on(field, &problem)
    } else {
        form.failed(&problem)
    }
}

/// The page that asks for the second step of the pending login `mfa_token`.
pub(super) fn second_step_form(
    console: &Console,
    visitor: &Visitor,
    form: FormState,
    mfa_token: &str,
    next: &str,
) -> Response {
    let status = form.status();
    let page = pages::SignInCode {
        chrome: Chrome::new("Two-step verification", visitor),
        form,
        csrf: visitor.visitor_csrf(),
        mfa_token: mfa_token.to_owned(),
        next: next.to_owned(),
    };
    console.page(visitor, &page, status)
}

/// Completes a sign-in with a code or a recovery code, as `POST /auth/mfa/verify` does.
#[handler]
pub(super) async fn verify_sign_in(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    let fields = or_page!(submitted(&console, req, &visitor, form, Guard::Visitor));
    let next = safe_next(fields.trimmed("next"));
    let mfa_token = fields.get("mfa_token");
    let typed = fields.get("code").trim();
    // One field takes both: an app's code is six digits, a recovery code never is.
    let proof = if TotpCode::parse(typed).is_some() {
        SecondFactor::Code(typed)
    } else {
        SecondFactor::RecoveryCode(typed)
    };
    match console
        .core
        .cookies
        .complete_sign_in_with_cookie(mfa_token, proof, console.client(req))
        .await
    {
        Ok(signed_in) => console.enter(&visitor, next, &signed_in),
        Err(err) => {
            let form = failed(FormState::default(), "code", err);
            second_step_form(&console, &visitor, form, mfa_token, next)
        }
    }
}

/// The account's two-step settings, showing `form`'s failure if any.
async fn settings_page(
    console: &Console,
    visitor: &Visitor,
    principal: &Principal,
    form: FormState,
    done: Option<&str>,
) -> Response {
    let factors = match console.core.factors.factors(principal.user.id).await {
        Ok(factors) => factors,
        Err(err) => return console.failure(visitor, &Problem::from(err)),
    };
    let status = form.status();
    let page = pages::TwoStep {
        chrome: Chrome::new("Two-step verification settings", visitor).noting(done),
        form,
        csrf: visitor.session_csrf().unwrap_or_default(),
        enabled: factors.totp,
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn settings(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let done = PageQuery::of(req).done;
    let (visitor, principal) = or_page!(console.signed_in(req).await);
    settings_page(
        &console,
        &visitor,
        &principal,
        FormState::default(),
        done.as_deref(),
    )
    .await
}

/// The QR code of `uri` as inline SVG, named for screen readers; `None` if it does not fit
/// in one (a URI of thousands of characters), when the key in text still serves.
fn qr_svg(uri: &str) -> Option<String> {
    let code = QrCode::new(uri.as_bytes())
        .inspect_err(|err| tracing::error!(error = %err, "no QR code for a TOTP secret"))
        .ok()?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    // In HTML, the XML declaration would only be a stray comment.
    let element = image.get(image.find("<svg")?..)?;
    Some(element.replacen(
        "<svg",
        r#"<svg role="img" aria-label="QR code to add this account to an authenticator app""#,
        1,
    ))
}

/// The set-up page: the new secret (after a wrong code, none: it was shown already), and the
/// form for a first code.
fn setup_form(
    console: &Console,
    visitor: &Visitor,
    enrolment: Option<&TotpEnrolment>,
    form: FormState,
) -> Response {
    let secret = enrolment.map(|enrolment| {
        let key = enrolment.secret.base32();
        NewSecret {
            qr: qr_svg(&enrolment.uri),
            // Groups of four are how apps and people read a key out.
            key: key
                .as_bytes()
                .chunks(4)
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" "),
        }
    });
    let status = form.status();
    let page = pages::TwoStepSetup {
        chrome: Chrome::new("Set up an authenticator app", visitor),
        form,
        csrf: visitor.session_csrf().unwrap_or_default(),
        secret,
    };
    console.page(visitor, &page, status)
}

/// Starts the set-up as `POST /auth/mfa/totp` does, with the password asked again: a new
/// secret, kept by the server until a first code confirms it.
#[handler]
pub(super) async fn set_up(req: &Request, console: Data<&Arc<Console>>, form: Posted) -> Response {
    let (visitor, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    let proof = Proof::Password(fields.get("current_password"));
    match console
        .core
        .factors
        .begin_totp(&principal, proof, &console.client(req))
        .await
    {
        Ok(enrolment) => setup_form(&console, &visitor, Some(&enrolment), FormState::default()),
        Err(err) => {
            let form = failed(FormState::default(), "current_password", err);
            settings_page(&console, &visitor, &principal, form, None).await
        }
    }
}

/// Confirms the set-up with a first code, as `POST /auth/mfa/totp/confirm` does, and shows
/// the recovery codes, the only time they are ever shown.
#[handler]
pub(super) async fn confirm(req: &Request, console: Data<&Arc<Console>>, form: Posted) -> Response {
    let (visitor, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    match console
        .core
        .factors
        .confirm_totp(&principal, fields.get("code"), &console.client(req))
        .await
    {
        Ok(codes) => console.page(
            &visitor,
            &pages::RecoveryCodes {
                chrome: Chrome::new("Save your recovery codes", &visitor),
                codes,
            },
            StatusCode::OK,
        ),
        Err(err) => {
            let form = failed(FormState::default(), "code", err);
            setup_form(&console, &visitor, None, form)
        }
    }
}

/// Turns the authenticator app off, as `DELETE /auth/mfa/totp` does, on a current code or the
/// password.
#[handler]
pub(super) async fn turn_off(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let (visitor, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    // Two forms post here: one with a code, one with the password.
    let (proof, field) = if fields.has("password") {
        (Proof::Password(fields.get("password")), "password")
    } else {
        (Proof::Code(fields.get("code")), "code")
    };
    match console
        .core
        .factors
        .disable_totp(&principal, proof, &console.client(req))
        .await
    {
        Ok(()) => see_other("/console/account/two-step?done=two-step-off"),
        Err(err) => {
            let form = failed(FormState::default(), field, err);
            settings_page(&console, &visitor, &principal, form, None).await
        }
    }
}
