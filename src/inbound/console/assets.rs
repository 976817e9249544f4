//! The console's stylesheet, compiled into the binary: the pages load nothing from another
//! host, and need no script at all.

use poem::http::header;
use poem::{Response, handler};

const STYLESHEET: &str = include_str!("console.css");

#[handler]
pub(super) fn stylesheet() -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/css; charset=utf-8")
        // Not `immutable`: its URL has no version in it, and a new release may change it.
        .header(header::CACHE_CONTROL, "public, max-age=3600")
        .body(STYLESHEET)
}
