//! `retrain serve`: the classifier of a retrain run behind HTTP (see serve/).

use super::classify::open_classifier;
use crate::cli::ServeArgs;
use crate::serve::{self, ServeConfig};
use anyhow::Result;
use std::time::Duration;

pub fn run(args: &ServeArgs) -> Result<()> {
    let config = ServeConfig {
        host: args.host.clone(),
        port: args.port,
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        max_body_bytes: args.max_body_mb << 20,
        max_queue: args.max_queue as usize,
        request_timeout: Duration::from_secs(args.timeout_s),
        default_top_k: args.top_k,
    };
    let which = args.classifier.clone();
    let open = Box::new(move || open_classifier(&which));
    serve::run(config, open)
}
