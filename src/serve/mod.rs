//! `retrain serve`: a trained classifier behind HTTP. Requests from every
//! connection are decoded on blocking threads (never on the async runtime's
//! own), queued in one bounded queue, and taken by a single GPU worker in
//! batches (as many as arrived within a few milliseconds, up to the device's
//! batch) that run one forward pass and the head together.

mod metrics;
mod routes;
mod worker;

pub use worker::OpenModel;

use anyhow::{Context, Result};
use metrics::ServerMetrics;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// How the server runs: the flags of `retrain serve`, as plain values.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Images per GPU batch at most (None: as many as the device holds).
    pub max_batch: Option<u32>,
    /// How long the worker waits for more requests to fill a batch.
    pub max_wait: Duration,
    pub max_body_bytes: usize,
    /// Requests waiting for the GPU at most; more are answered 503 at once.
    pub max_queue: usize,
    pub request_timeout: Duration,
    pub default_top_k: usize,
}

/// What the handlers and the worker share.
pub struct Shared {
    /// The loaded model's description; set once it is on the device.
    pub model: OnceLock<worker::ModelSummary>,
    pub metrics: ServerMetrics,
}

/// Serves until SIGINT or SIGTERM (then finishes what is queued) or until
/// the model fails to load.
pub fn run(config: ServeConfig, open: OpenModel) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    runtime.block_on(serve(config, open))
}

async fn serve(config: ServeConfig, open: OpenModel) -> Result<()> {
    let address = (config.host.as_str(), config.port);
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let local = listener.local_addr()?;
    let shared = Arc::new(Shared {
        model: OnceLock::new(),
        metrics: ServerMetrics::default(),
    });
    let (queue, jobs) = std::sync::mpsc::sync_channel(config.max_queue);
    let (failed, load_failure) = tokio::sync::oneshot::channel();
    let settings = worker::Settings {
        max_batch: config.max_batch,
        max_wait: config.max_wait,
    };
    let gpu_worker = worker::spawn(open, jobs, shared.clone(), settings, failed);
    log::info!(
        "Listening on http://{local} (POST /v1/classify; GET /healthz, /metrics, /v1/model); loading the model"
    );
    let state = routes::AppState::new(queue, shared, &config);
    let app = routes::router(state, config.max_body_bytes);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let stopped = async move {
        let why = stop_signal(load_failure).await;
        let _ = stop_tx.send(why);
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
        .context("the HTTP server failed")?;
    // Every connection is closed: the queue's senders are gone, so the worker
    // finishes what it holds and ends.
    gpu_worker.join().ok();
    match stop_rx.await {
        Ok(Some(e)) => Err(e.context("cannot load the model")),
        _ => {
            log::info!("Stopped");
            Ok(())
        }
    }
}

/// Waits for SIGINT, SIGTERM or the model's failure to load (returned).
async fn stop_signal(
    load_failure: tokio::sync::oneshot::Receiver<anyhow::Error>,
) -> Option<anyhow::Error> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM can be caught");
    let why = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = terminate.recv() => None,
        Ok(e) = load_failure => Some(e),
    };
    if why.is_none() {
        log::info!("Stopping: no new connections; finishing the requests in flight");
    }
    why
}
