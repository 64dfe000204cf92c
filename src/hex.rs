//! Lowercase hexadecimal of bytes: how hashes appear in file names and metadata.

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
