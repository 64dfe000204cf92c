//! Decoding on CPU threads ahead of the GPU: while the GPU runs batch k, a
//! background thread decodes batch k+1 with every core.

use super::images::decode;
use anyhow::Result;
use image::RgbImage;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;

/// One file's decoding outcome.
pub struct Decoded {
    pub path: PathBuf,
    pub image: Result<RgbImage>,
}

/// Decodes `paths` in order, `batch` at a time, one batch ahead of the consumer.
pub fn decode_batches(paths: Vec<PathBuf>, batch: usize) -> impl Iterator<Item = Vec<Decoded>> {
    let (sender, receiver) = mpsc::sync_channel(1);
    thread::spawn(move || {
        let workers = thread::available_parallelism().map_or(2, |n| n.get());
        for chunk in paths.chunks(batch.max(1)) {
            if sender.send(decode_parallel(chunk, workers)).is_err() {
                return; // the consumer stopped early
            }
        }
    });
    receiver.into_iter()
}

/// Decodes the lists of paths it is given on a background thread, in order,
/// so that one batch decodes while the GPU runs the one before.
pub struct Decoder {
    requests: mpsc::Sender<Vec<PathBuf>>,
    results: mpsc::Receiver<Vec<Decoded>>,
}

impl Decoder {
    pub fn spawn() -> Self {
        let (requests, todo) = mpsc::channel::<Vec<PathBuf>>();
        let (done, results) = mpsc::channel();
        thread::spawn(move || {
            let workers = thread::available_parallelism().map_or(2, |n| n.get());
            for paths in todo {
                if done.send(decode_parallel(&paths, workers)).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        Decoder { requests, results }
    }

    /// Starts decoding `paths` after the lists requested before.
    pub fn request(&self, paths: Vec<PathBuf>) {
        // A send fails only when the thread died; receive() reports that.
        let _ = self.requests.send(paths);
    }

    /// The decoded images of the oldest request not yet received.
    pub fn receive(&self) -> Result<Vec<Decoded>> {
        self.results
            .recv()
            .map_err(|_| anyhow::anyhow!("the image decoding thread stopped"))
    }
}

pub(crate) fn decode_parallel(paths: &[PathBuf], workers: usize) -> Vec<Decoded> {
    let per_worker = paths.len().div_ceil(workers).max(1);
    thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(per_worker)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|p| Decoded {
                            path: p.clone(),
                            image: decode(p),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decoder thread"))
            .collect()
    })
}

/// The usable part of a decoded batch, in order.
pub struct Usable {
    /// Position of each usable image in the batch.
    pub positions: Vec<usize>,
    pub paths: Vec<PathBuf>,
    pub images: Vec<RgbImage>,
    pub skipped: usize,
}

/// Keeps the images that decoded and pass `check`; warns of each other one
/// with its path and the reason.
pub fn usable(batch: Vec<Decoded>, check: impl Fn(&RgbImage) -> Result<()>) -> Usable {
    let mut u = Usable {
        positions: Vec::new(),
        paths: Vec::new(),
        images: Vec::new(),
        skipped: 0,
    };
    for (i, d) in batch.into_iter().enumerate() {
        match d.image.and_then(|img| check(&img).map(|_| img)) {
            Ok(img) => {
                u.positions.push(i);
                u.paths.push(d.path);
                u.images.push(img);
            }
            Err(e) => {
                log::warn!("skipping {}: {e:#}", d.path.display());
                u.skipped += 1;
            }
        }
    }
    u
}
