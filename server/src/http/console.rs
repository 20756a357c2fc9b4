//! The web console (`serve --console`): static pages embedded in the
//! binary, served under `/console`. It holds no authorization of its own:
//! the page calls the JSON API on the same origin with the key the user
//! pasted, and shows the API's answers.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

/// Every console response's Content-Security-Policy: same-origin scripts,
/// styles and requests only, no inline code, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../../console/index.html");

/// The embedded assets: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("../../console/app.js")),
    ("api.js", JS, include_bytes!("../../console/api.js")),
    ("dom.js", JS, include_bytes!("../../console/dom.js")),
    ("views.js", JS, include_bytes!("../../console/views.js")),
    (
        "console.css",
        CSS,
        include_bytes!("../../console/console.css"),
    ),
    (
        "uPlot.iife.min.js",
        JS,
        include_bytes!("../../console/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        CSS,
        include_bytes!("../../console/vendor/uPlot.min.css"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// `router` with the console's routes added when `on` (`--console`);
/// `cascade` says whether a revocation takes the key's descendants with it
/// (`--attenuate`), which the revoke dialog tells the user.
pub fn with_console(router: Router, on: bool, cascade: bool) -> Router {
    if !on {
        return router;
    }
    let config = format!(r#"{{"cascade":{cascade}}}"#);
    let console = Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route(
            "/console/config.json",
            get(move || {
                let config = config.clone();
                async move { asset("application/json", Body::from(config)) }
            }),
        )
        .route("/console/assets/{name}", get(assets))
        .layer(middleware::map_response(security_headers))
        // Logged and counted like the API's requests.
        .layer(middleware::from_fn(crate::http::router::log_request));
    router.merge(console)
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", Body::from(INDEX))
}

async fn assets(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => asset(content_type, Body::from(*bytes)),
        None => keygate::tower::problem(StatusCode::NOT_FOUND, "no such console asset"),
    }
}

fn asset(content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The headers of every console response, its 404s included.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages and assets change with the binary; a stale cached module would
    // run against a newer API.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}
