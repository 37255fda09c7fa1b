//! `tgpipe-loadtest baseline`: a bare axum webhook handler, the ceiling an ingress is
//! measured against.
//!
//! It does what any webhook must do at the least (accept the connection, read the
//! whole body, answer 200) and nothing else: no checks, no parsing, no broker. The
//! ingress's throughput is quoted as a fraction of this handler's on the same load.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;

/// The baseline's routes: `POST /webhook/{bot_id}` reads the body and answers 200.
pub fn app() -> Router {
    Router::new().route("/webhook/{bot_id}", post(accept))
}

async fn accept(body: Bytes) -> StatusCode {
    // Keep the body alive until here so it is really read, as a real handler would.
    std::hint::black_box(body);
    StatusCode::OK
}

/// Serves the baseline on `addr` until the process is stopped.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "baseline webhook handler listening");
    axum::serve(listener, app())
        .with_graceful_shutdown(tgpipe_shared::shutdown::signal())
        .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn answers_200_to_any_post_and_405_otherwise() {
        let ok = app()
            .oneshot(
                Request::post("/webhook/1")
                    .body(Body::from("anything"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let get = app()
            .oneshot(Request::get("/webhook/1").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
