//! The HTTP side: routes, reading images from a request (one raw body or
//! multipart/form-data; the bytes tell the format), limits, JSON errors,
//! the access log and /metrics.

use super::worker::{Job, Refusal};
use super::{ServeConfig, Shared};
use crate::data::images::{decode_bytes, TooLarge};
use crate::head::classifier::{top_k, Prediction};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;

pub struct AppState {
    queue: SyncSender<Job>,
    shared: Arc<Shared>,
    /// Decodings at once: one per core, on blocking threads.
    decoders: Semaphore,
    request_timeout: Duration,
    default_top_k: usize,
}

impl AppState {
    pub fn new(queue: SyncSender<Job>, shared: Arc<Shared>, config: &ServeConfig) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(AppState {
            queue,
            shared,
            decoders: Semaphore::new(cores),
            request_timeout: config.request_timeout,
            default_top_k: config.default_top_k,
        })
    }
}

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/model", get(model))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), access_log))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed on this request",
            )
            .into_response()
        }))
        .with_state(state)
}

/// An error answer: its status and `{"error": message}`.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn not_ready() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is still loading",
        )
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Images answered, for the access log.
#[derive(Clone, Copy)]
struct ImageCount(usize);

#[derive(Deserialize)]
struct ClassifyQuery {
    top_k: Option<usize>,
}

#[derive(Serialize)]
struct ImageAnswer {
    /// The multipart file name (or field name), or "body".
    name: String,
    predictions: Vec<Prediction>,
}

#[derive(Serialize)]
struct ClassifyAnswer {
    images: Vec<ImageAnswer>,
}

async fn classify(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ClassifyQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let model = state.shared.model.get().ok_or_else(ApiError::not_ready)?;
    let parts = read_images(request).await?;
    let names: Vec<String> = parts.iter().map(|(name, _)| name.clone()).collect();
    let images = decode_all(&state, parts).await?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    match state.queue.try_send(Job { images, reply }) {
        Ok(()) => {
            state.shared.metrics.queue_depth.inc();
        }
        Err(TrySendError::Full(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the queue is full: try again shortly",
            ))
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is stopping",
            ))
        }
    }
    let probabilities = match tokio::time::timeout(state.request_timeout, answer).await {
        Err(_) => {
            let waited = state.request_timeout.as_secs_f64();
            let message = format!("no answer within {waited} s");
            return Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, message));
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the GPU worker stopped",
            ))
        }
        Ok(Ok(Err(Refusal { status, message }))) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(ApiError::new(status, message));
        }
        Ok(Ok(Ok(rows))) => rows,
    };
    let k = query.top_k.unwrap_or(state.default_top_k);
    let answer = ClassifyAnswer {
        images: names
            .into_iter()
            .zip(&probabilities)
            .map(|(name, p)| ImageAnswer {
                name,
                predictions: top_k(p, &model.labels, k),
            })
            .collect(),
    };
    let mut response = Json(answer).into_response();
    response
        .extensions_mut()
        .insert(ImageCount(probabilities.len()));
    Ok(response)
}

/// The request's images: every part of a multipart/form-data body, or the
/// whole body; named for error messages and answers.
async fn read_images(request: Request) -> Result<Vec<(String, Bytes)>, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        if body.is_empty() {
            let message =
                "the request has no body: send an image, or multipart/form-data with images";
            return Err(ApiError::new(StatusCode::BAD_REQUEST, message));
        }
        return Ok(vec![("body".into(), body)]);
    }
    let malformed = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            e.status(),
            format!("malformed multipart body: {}", e.body_text()),
        )
    };
    let mut form = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("malformed multipart body: {}", e.body_text()),
        )
    })?;
    let mut parts = Vec::new();
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = (field.file_name().or(field.name()).map(String::from))
            .unwrap_or_else(|| format!("part {}", parts.len() + 1));
        let bytes = field.bytes().await.map_err(malformed)?;
        parts.push((name, bytes));
    }
    if parts.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the multipart body holds no image",
        ));
    }
    Ok(parts)
}

/// Decodes every part on blocking threads (a few at once); the first that
/// fails refuses the request, naming it.
async fn decode_all(
    state: &AppState,
    parts: Vec<(String, Bytes)>,
) -> Result<Vec<image::RgbImage>, ApiError> {
    let _permit = state.decoders.acquire().await.expect("never closed");
    let decoded = tokio::task::spawn_blocking(move || {
        parts
            .into_iter()
            .map(|(name, bytes)| decode_bytes(&bytes).map_err(|e| (name, e)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "decoding failed"))?;
    decoded.map_err(|(name, e)| {
        let status = match e.downcast_ref::<TooLarge>() {
            Some(_) => StatusCode::PAYLOAD_TOO_LARGE,
            None => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, format!("{name}: {e:#}"))
    })
}

async fn model(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let model = state.shared.model.get().ok_or_else(ApiError::not_ready)?;
    Ok(Json(model).into_response())
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.shared.model.get() {
        Some(_) => (StatusCode::OK, "ready\n").into_response(),
        None => ApiError::not_ready().into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        state.shared.metrics.text(),
    )
        .into_response()
}

/// One line per request (method, path, status, images, latency) and its metrics.
async fn access_log(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let images = response.extensions().get::<ImageCount>().map_or(0, |c| c.0);
    let status = response.status().as_u16();
    state.shared.metrics.answered(status, seconds);
    log::info!(
        "{method} {path} {status} {images} images {:.1} ms",
        seconds * 1000.0
    );
    response
}
