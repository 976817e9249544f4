//! What each instance does beside serving: purging, refreshing keys, delivering mail, and
//! hearing the signal to stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::Core;
use crate::domain::service::{DeliveryOutcome, SigningKeys};

pub(super) async fn purge_periodically(core: Arc<Core>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        match core.upkeep.purge_expired_sessions().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "purged dead sessions"),
            Err(err) => tracing::warn!(error = %err, "session purge failed; will retry"),
        }
        if let Err(err) = core.upkeep.purge_expired_limits().await {
            tracing::warn!(error = %err, "rate-limit purge failed; will retry");
        }
    }
}

/// Keeps this instance's keys in step with the key table: every `every`, and at once when the
/// database announces a change of the table. (A token naming a `kid` this instance does not
/// know sets off a reload of its own, in the core, paced by `UNKNOWN_KID_PAUSE`.)
pub(super) async fn refresh_keys_periodically(
    keys: Arc<SigningKeys>,
    changed: Arc<tokio::sync::Notify>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate, and the keys were just loaded
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = changed.notified() => {}
        }
        let outcome = match keys.refresh().await {
            Ok(()) => "ok",
            Err(err) => {
                tracing::warn!(error = %err, "signing key refresh failed; will retry");
                "failed"
            }
        };
        metrics::counter!("portcullis_signing_key_refreshes_total", "outcome" => outcome)
            .increment(1);
        metrics::gauge!("portcullis_signing_keys_published").set(keys.published().len() as f64);
    }
}

/// How often each instance looks for mail to deliver.
pub(super) const MAIL_POLL: Duration = Duration::from_millis(500);
/// How often the outbox depth is sampled for `/metrics`.
const MAIL_DEPTH_EVERY: Duration = Duration::from_secs(5);

/// Completes once `stop` says so (or its sender is gone).
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Delivers queued mail every `every`, and records what became of it, until `stop`: a round
/// under way when it comes finishes first, so no message is cut off mid-send.
pub(super) async fn deliver_mail_periodically(
    core: Arc<Core>,
    every: Duration,
    stop: watch::Receiver<bool>,
) {
    if !core.delivery.mail_configured() {
        return;
    }
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled = std::time::Instant::now() - MAIL_DEPTH_EVERY;
    let stopping = stopped(stop);
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stopping => return,
        }
        match core.delivery.deliver_mail().await {
            Ok(deliveries) => {
                for delivery in deliveries {
                    let outcome = match delivery.outcome {
                        DeliveryOutcome::Sent => "sent",
                        DeliveryOutcome::Dropped => "dropped",
                        DeliveryOutcome::Retrying => "retrying",
                        DeliveryOutcome::Failed => "failed",
                    };
                    metrics::counter!("portcullis_mail_jobs_total", "job" => delivery.job, "outcome" => outcome)
                        .increment(1);
                    if delivery.outcome == DeliveryOutcome::Sent {
                        metrics::histogram!("portcullis_mail_delivery_seconds", "job" => delivery.job)
                            .record(delivery.waited.as_seconds_f64());
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "mail delivery failed; will retry"),
        }
        if sampled.elapsed() >= MAIL_DEPTH_EVERY {
            sampled = std::time::Instant::now();
            if let Ok(depth) = core.delivery.mail_depth().await {
                metrics::gauge!("portcullis_mail_outbox", "state" => "pending")
                    .set(depth.pending as f64);
                metrics::gauge!("portcullis_mail_outbox", "state" => "failed")
                    .set(depth.failed as f64);
            }
        }
    }
}

/// Completes on SIGTERM (what containers send) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
