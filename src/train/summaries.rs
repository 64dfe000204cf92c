//! TensorBoard event files (`--summaries-dir`): TFRecord framing around
//! hand-encoded `Event` protocol buffers holding scalar summaries.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// TFRecord's masked CRC-32C.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An Event with wall_time (1), step (2) and either file_version (3) or summary (5).
fn event(step: i64, body_field: u32, body: &[u8]) -> Vec<u8> {
    let mut e = vec![0x09];
    e.extend_from_slice(&now().to_le_bytes());
    e.push(0x10);
    varint(step as u64, &mut e);
    bytes_field(body_field, body, &mut e);
    e
}

/// One events file of scalar summaries.
pub struct SummaryWriter {
    out: BufWriter<File>,
}

impl SummaryWriter {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}", now() as u64));
        let file =
            File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut w = SummaryWriter {
            out: BufWriter::new(file),
        };
        w.record(&event(0, 3, b"brain.Event:2"))?;
        Ok(w)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())?;
        Ok(())
    }

    /// Appends a scalar (Summary.Value with tag and simple_value) at `step`.
    pub fn scalar(&mut self, tag: &str, value: f32, step: u32) -> Result<()> {
        let mut v = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut v);
        v.push(0x15);
        v.extend_from_slice(&value.to_le_bytes());
        let mut summary = Vec::new();
        bytes_field(1, &v, &mut summary);
        self.record(&event(step as i64, 5, &summary))?;
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_framed_with_valid_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SummaryWriter::create(dir.path()).unwrap();
        w.scalar("accuracy", 0.75, 10).unwrap();
        drop(w);
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert!(file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains("tfevents"));
        let bytes = std::fs::read(file).unwrap();
        let mut at = 0;
        let mut records = Vec::new();
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()),
                masked_crc(&bytes[at..at + 8])
            );
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(
                u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()),
                masked_crc(data)
            );
            records.push(data.to_vec());
            at += 16 + len;
        }
        assert_eq!(records.len(), 2);
        assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
        assert!(records[1].windows(8).any(|w| w == b"accuracy"));
        assert!(records[1].windows(4).any(|w| w == 0.75f32.to_le_bytes()));
        // The known CRC-32C test vector, masked.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
