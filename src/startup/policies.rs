//! The settings, turned into the policies the core decides by: one `From<&Settings>` each, so
//! that what a setting means to the core is written once.

use chrono::TimeDelta;

use crate::config::Settings;
use crate::domain::service::{LimitPolicy, MailPolicy, MfaPolicy, ProviderPolicy, Quota};
use crate::domain::{AuthPolicy, KeyPolicy, PasswordPolicy};

/// Everything the core decides by: lifetimes, limits, mail, passwords and second factors.
impl From<&Settings> for AuthPolicy {
    fn from(settings: &Settings) -> Self {
        Self {
            access_token_ttl: TimeDelta::minutes(settings.access_token_expire_minutes),
            leeway: TimeDelta::seconds(settings.jwt_leeway_seconds),
            refresh_token_ttl: TimeDelta::days(settings.refresh_token_expire_days),
            session_max_age: TimeDelta::days(settings.session_max_age_days),
            max_sessions_per_user: settings.max_sessions_per_user,
            audit_retention: TimeDelta::days(settings.audit_retention_days),
            audit_fold_window: TimeDelta::seconds(settings.audit_fold_window_seconds),
            limits: LimitPolicy::from(settings),
            mail: MailPolicy::from(settings),
            password: PasswordPolicy {
                min_score: settings.password_min_score,
            },
            pyauth_tokens_until: settings.accept_pyauth_tokens_until,
            mfa: MfaPolicy {
                issuer: settings.totp_issuer.clone(),
                ..MfaPolicy::default()
            },
            provider: ProviderPolicy {
                enabled: settings.provider_off_reason().is_none(),
                issuer: settings.jwt_issuer.clone(),
                id_token_ttl: TimeDelta::seconds(settings.id_token_ttl_seconds),
                ..ProviderPolicy::default()
            },
        }
    }
}

/// The abuse limits: every quota counts in windows of `rate_limit_window_seconds`.
impl From<&Settings> for LimitPolicy {
    fn from(settings: &Settings) -> Self {
        let quota = |max| Quota {
            max,
            window: TimeDelta::seconds(settings.rate_limit_window_seconds),
        };
        LimitPolicy {
            enabled: settings.rate_limits_enabled,
            login_per_ip: quota(settings.login_limit_per_ip),
            login_per_account: quota(settings.login_limit_per_account),
            register_per_ip: quota(settings.register_limit_per_ip),
            register_per_account: quota(settings.register_limit_per_account),
            refresh_per_ip: quota(settings.refresh_limit_per_ip),
            refresh_per_account: quota(settings.refresh_limit_per_account),
            token_per_ip: quota(settings.token_limit_per_ip),
            token_per_client: quota(settings.token_limit_per_client),
            password_check_per_ip: quota(settings.password_check_limit_per_ip),
            password_check_per_account: quota(settings.password_check_limit_per_account),
            mail_per_ip: quota(settings.mail_limit_per_ip),
            mail_per_account: quota(settings.mail_limit_per_account),
            mail_per_recipient: quota(settings.mail_limit_per_recipient),
            ipv6_prefix_len: settings.ipv6_prefix_length,
            free_failures: settings.login_free_failures,
            max_delay: TimeDelta::seconds(settings.login_failure_delay_max_seconds),
            ..LimitPolicy::default()
        }
    }
}

/// The mail flows: links, lifetimes and the outbox's retries.
impl From<&Settings> for MailPolicy {
    fn from(settings: &Settings) -> Self {
        MailPolicy {
            public_url: settings.public_url(),
            reset_link: settings.reset_link_template.clone(),
            verify_link: settings.verify_link_template.clone(),
            email_change_link: settings.email_change_link_template.clone(),
            reset_ttl: TimeDelta::minutes(settings.password_reset_ttl_minutes),
            invitation_ttl: TimeDelta::hours(settings.invitation_ttl_hours),
            verification_ttl: TimeDelta::hours(settings.email_verification_ttl_hours),
            require_verified: settings.require_verified_email,
            verify_on_register: settings.verify_email_on_register,
            max_attempts: settings.mail_max_attempts,
            retry_base: TimeDelta::seconds(settings.mail_retry_base_seconds),
        }
    }
}

/// Signing-key rotation, timed so that a new key is published before it signs and an old one
/// verifies as long as a token it signed may live.
impl From<&Settings> for KeyPolicy {
    fn from(settings: &Settings) -> Self {
        let token_ttl = TimeDelta::minutes(settings.access_token_expire_minutes);
        let refresh = TimeDelta::seconds(settings.signing_key_refresh_seconds.cast_signed());
        KeyPolicy {
            rotation_period: TimeDelta::days(settings.signing_key_rotation_days),
            publication_delay: TimeDelta::seconds(settings.jwks_max_age) + token_ttl + refresh,
            verification_hold: token_ttl
                + TimeDelta::seconds(settings.jwt_leeway_seconds)
                + refresh,
        }
    }
}
