//! The dashboard's static files, embedded by `flare-web`.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// `GET /`: the dashboard page.
pub async fn index() -> Response {
    serve("/")
}

/// `GET /assets/{path}`: scripts and styles of the dashboard.
pub async fn asset(Path(path): Path<String>) -> Response {
    serve(&format!("/assets/{path}"))
}

fn serve(path: &str) -> Response {
    let Some(asset) = flare_web::asset(path) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    // The page is small and names its assets; assets keep their names across builds, so they
    // are revalidated rather than cached for long.
    let cache = if asset.is_page {
        "no-cache"
    } else {
        "public, max-age=300"
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}
