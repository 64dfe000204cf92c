//! Decoded images kept in memory within a byte budget (the least recently
//! used evicted first, re-decoded when needed again), and a background thread
//! that decodes the next batch while the GPU works on the current one.

use super::loader::decode_parallel;
use anyhow::{anyhow, Result};
use image::RgbImage;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;

struct Entry {
    image: Arc<RgbImage>,
    last_use: u64,
}

pub struct DecodeCache {
    paths: Vec<PathBuf>,
    budget: u64,
    used: u64,
    clock: u64,
    entries: HashMap<usize, Entry>,
    pub decoded: usize,
}

impl DecodeCache {
    /// A cache of the images at `paths`, holding at most `budget` bytes of
    /// pixels (more only while one request needs more).
    pub fn new(paths: Vec<PathBuf>, budget: u64) -> Self {
        DecodeCache {
            paths,
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
            decoded: 0,
        }
    }

    /// The images at `indices` (repeats allowed), decoding the missing ones on every core.
    pub fn get(&mut self, indices: &[usize]) -> Result<Vec<Arc<RgbImage>>> {
        self.clock += 1;
        let mut missing: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|i| !self.entries.contains_key(i))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let paths: Vec<PathBuf> = missing.iter().map(|&i| self.paths[i].clone()).collect();
        let workers = thread::available_parallelism().map_or(2, |n| n.get());
        for (&i, d) in missing.iter().zip(decode_parallel(&paths, workers)) {
            let image = d
                .image
                .map_err(|e| anyhow!("cannot read {}: {e:#}", d.path.display()))?;
            self.used += image.as_raw().len() as u64;
            self.decoded += 1;
            let entry = Entry {
                image: Arc::new(image),
                last_use: 0,
            };
            self.entries.insert(i, entry);
        }
        let images = indices
            .iter()
            .map(|i| {
                let entry = self.entries.get_mut(i).expect("just decoded");
                entry.last_use = self.clock;
                entry.image.clone()
            })
            .collect();
        self.evict();
        Ok(images)
    }

    /// Drops least recently used images until the budget holds, sparing the current request's.
    fn evict(&mut self) {
        while self.used > self.budget {
            let oldest = self
                .entries
                .iter()
                .filter(|(_, e)| e.last_use < self.clock)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(&i, _)| i);
            let Some(i) = oldest else { return };
            let entry = self.entries.remove(&i).expect("present");
            self.used -= entry.image.as_raw().len() as u64;
        }
    }

    /// Bytes of pixels held now.
    pub fn used(&self) -> u64 {
        self.used
    }
}

/// A [`DecodeCache`] on its own thread: requests are answered in order, so
/// the next request can be decoding while the caller uses the last answer.
pub struct Prefetcher {
    requests: SyncSender<Vec<usize>>,
    answers: Receiver<Result<Vec<Arc<RgbImage>>>>,
}

impl Prefetcher {
    pub fn spawn(mut cache: DecodeCache) -> Self {
        let (requests, incoming) = mpsc::sync_channel::<Vec<usize>>(2);
        let (outgoing, answers) = mpsc::sync_channel(2);
        thread::spawn(move || {
            for indices in incoming {
                if outgoing.send(cache.get(&indices)).is_err() {
                    return; // the caller is gone
                }
            }
        });
        Prefetcher { requests, answers }
    }

    /// Asks for the images at `indices`; `receive` returns them, in request order.
    pub fn request(&self, indices: Vec<usize>) {
        // A send fails only when the thread has ended, which `receive` reports.
        let _ = self.requests.send(indices);
    }

    pub fn receive(&self) -> Result<Vec<Arc<RgbImage>>> {
        self.answers
            .recv()
            .map_err(|_| anyhow!("the image decoding thread stopped"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = (0..n)
            .map(|i| {
                let path = dir.path().join(format!("{i}.png"));
                RgbImage::from_pixel(10, 10, image::Rgb([i as u8, 0, 0]))
                    .save(&path)
                    .unwrap();
                path
            })
            .collect();
        (dir, paths)
    }

    #[test]
    fn keeps_to_its_budget_and_redecodes_what_it_dropped() {
        let (_dir, paths) = folder(5);
        let mut cache = DecodeCache::new(paths, 2 * 300); // two 10×10 RGB images
        cache.get(&[0]).unwrap();
        let images = cache.get(&[1, 1]).unwrap();
        assert_eq!(images[1].get_pixel(0, 0)[0], 1);
        assert_eq!(cache.decoded, 2);
        cache.get(&[2]).unwrap(); // evicts 0, the least recently used
        assert_eq!(cache.used(), 600);
        cache.get(&[1]).unwrap();
        assert_eq!(cache.decoded, 3, "1 was kept");
        cache.get(&[0]).unwrap();
        assert_eq!(cache.decoded, 4, "0 was dropped and decoded again");
        // One request larger than the budget is still answered in full.
        assert_eq!(cache.get(&[0, 1, 2, 3, 4]).unwrap().len(), 5);
    }

    #[test]
    fn a_broken_file_is_named() {
        let (dir, mut paths) = folder(1);
        let bad = dir.path().join("bad.jpg");
        std::fs::write(&bad, b"not a jpeg").unwrap();
        paths.push(bad);
        let prefetcher = Prefetcher::spawn(DecodeCache::new(paths, 1 << 20));
        prefetcher.request(vec![0]);
        prefetcher.request(vec![1]);
        assert!(prefetcher.receive().is_ok());
        let err = prefetcher.receive().unwrap_err().to_string();
        assert!(err.contains("bad.jpg"), "{err}");
    }
}
