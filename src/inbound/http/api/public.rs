//! Routes anyone may call.

use std::sync::Arc;

use poem::http::StatusCode;

use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use crate::domain::Core;
use crate::inbound::http::dto::MessageResponse;
use crate::inbound::http::server::Draining;
use crate::inbound::web::metrics::MetricsExporter;
use crate::inbound::web::problem::{Failure, Problem, error_statuses};

error_statuses!(
    /// Errors of `GET /ready`.
    NotReady: 503 => "The database does not answer, or the instance is shutting down"
);

error_statuses!(
    /// Errors of `GET /metrics`.
    MetricsElsewhere: 404 => "Metrics are served on the management listener (`metrics_listen`)"
);

pub struct PublicApi {
    pub core: Arc<Core>,
    /// `None` when `/metrics` has a listener of its own.
    pub metrics: Option<MetricsExporter>,
    pub draining: Draining,
}

#[derive(ApiResponse)]
enum MetricsText {
    /// The Prometheus text exposition format (version 0.0.4).
    #[oai(
        status = 200,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    )]
    Ok(PlainText<String>),
}

#[OpenApi(tag = "ApiTags::Public")]
impl PublicApi {
    /// A public endpoint
    ///
    /// Needs no token.
    #[oai(path = "/public", method = "get")]
    async fn public(&self) -> Json<MessageResponse> {
        Json(MessageResponse::new("This is a public endpoint"))
    }

    /// Liveness
    ///
    /// Answers as long as the process serves requests; touches no database.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> Json<MessageResponse> {
        Json(MessageResponse::new("OK"))
    }

    /// Readiness
    ///
    /// Answers 200 when the database answers, 503 otherwise, and 503 from the moment the
    /// instance is told to stop.
    #[oai(path = "/ready", method = "get")]
    async fn ready(&self) -> Result<Json<MessageResponse>, Failure<NotReady>> {
        if self.draining.is_under_way() {
            return Err(Problem::unavailable("Shutting down", 1).into());
        }
        self.core.upkeep.ready().await?;
        Ok(Json(MessageResponse::new("OK")))
    }

    /// Metrics
    ///
    /// Prometheus text format: requests by route and status, latency histograms, login
    /// outcomes, abuse-limit refusals, password-hash queue depth and wait time, database pool
    /// use. In production only on the management listener (`metrics_listen`): on the API's
    /// address it is 404.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> Result<MetricsText, Failure<MetricsElsewhere>> {
        let metrics = self
            .metrics
            .as_ref()
            .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "Not Found"))?;
        Ok(MetricsText::Ok(PlainText(metrics.render())))
    }
}
