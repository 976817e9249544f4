//! The console's stylesheet and its one script, compiled into the binary: the pages load
//! nothing from another host. Every page works without the script; it only adds passkeys.

use poem::http::header;
use poem::{Response, handler};

const STYLESHEET: &str = include_str!("console.css");
const PASSKEYS_SCRIPT: &str = include_str!("passkeys.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        // Not `immutable`: its URL has no version in it, and a new release may change it.
        .header(header::CACHE_CONTROL, "public, max-age=3600")
        .body(body)
}

#[handler]
pub(super) fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

#[handler]
pub(super) fn passkeys_script() -> Response {
    asset("text/javascript; charset=utf-8", PASSKEYS_SCRIPT)
}
