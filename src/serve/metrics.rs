//! What /metrics reports, in Prometheus's (OpenMetrics) text format:
//! requests by status, images classified, batch sizes, queue depth, request
//! latency and the device's name.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

pub struct ServerMetrics {
    registry: Mutex<Registry>,
    pub requests: Family<Vec<(String, String)>, Counter>,
    pub images: Counter,
    pub batch_size: Histogram,
    pub queue_depth: Gauge,
    pub latency_seconds: Histogram,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let m = ServerMetrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            images: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            queue_depth: Gauge::default(),
            latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        {
            let mut r = m.registry.lock().expect("not poisoned");
            r.register(
                "retrain_requests",
                "HTTP requests answered, by status",
                m.requests.clone(),
            );
            r.register(
                "retrain_images_classified",
                "Images classified",
                m.images.clone(),
            );
            r.register(
                "retrain_batch_size",
                "Images per GPU batch",
                m.batch_size.clone(),
            );
            r.register(
                "retrain_queue_depth",
                "Requests waiting for the GPU",
                m.queue_depth.clone(),
            );
            r.register(
                "retrain_request_duration_seconds",
                "Time from a request's arrival to its answer",
                m.latency_seconds.clone(),
            );
        }
        m
    }
}

impl ServerMetrics {
    /// Records the device the model runs on, as an info metric.
    pub fn set_device(&self, name: &str) {
        let info = Info::new(vec![("device".to_string(), name.to_string())]);
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        r.register("retrain_device", "The GPU adapter the model runs on", info);
    }

    /// Counts an answered request.
    pub fn answered(&self, status: u16, seconds: f64) {
        let label = vec![("status".to_string(), status.to_string())];
        self.requests.get_or_create(&label).inc();
        self.latency_seconds.observe(seconds);
    }

    pub fn text(&self) -> String {
        let mut text = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        encode(&mut text, &r).expect("writing to a String cannot fail");
        text
    }
}
