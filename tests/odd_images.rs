//! Images as they come: each odd file is either converted to RGB or skipped
//! with a warning naming it and the reason, by the decoder and by
//! `features`, `retrain` and `classify` on a folder holding all of them.

use image::{ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
use retrain::data::images::decode;
use std::path::{Path, PathBuf};

mod common;
use common::{retrain, stderr};

/// A small picture with a gradient, so that conversions can be checked.
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 90]))
}

fn png(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            image,
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    bytes
}

fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(image)
        .unwrap();
    bytes
}

/// A palette PNG (two colours, 1 bit per pixel), written with the png crate.
fn palette_png() -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, 8, 2);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_palette(vec![255, 0, 0, 0, 0, 255]);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&[0b1010_1010, 0b0101_0101])
        .unwrap();
    writer.finish().unwrap();
    bytes
}

fn sixteen_bit_png() -> Vec<u8> {
    let image =
        image::ImageBuffer::<Rgb<u16>, _>::from_fn(9, 7, |x, _| Rgb([x as u16 * 7000, 0, 65535]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb16(image)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

fn alpha_png() -> Vec<u8> {
    let image = RgbaImage::from_fn(6, 4, |x, _| Rgba([200, x as u8 * 40, 10, 0]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(image)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// Two frames, red then blue.
fn animated_gif() -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
        for colour in [[255, 0, 0, 255], [0, 0, 255, 255]] {
            let frame = image::Frame::new(RgbaImage::from_pixel(8, 8, Rgba(colour)));
            encoder.encode_frame(frame).unwrap();
        }
    }
    bytes
}

fn cmyk_jpeg() -> Vec<u8> {
    let mut bytes = Vec::new();
    let cmyk: Vec<u8> = (0..16 * 12)
        .flat_map(|i| [0, (i % 200) as u8, 255, 0])
        .collect();
    jpeg_encoder::Encoder::new(&mut bytes, 90)
        .encode(&cmyk, 16, 12, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    bytes
}

fn grey_jpeg() -> Vec<u8> {
    let grey = image::GrayImage::from_fn(10, 10, |x, y| image::Luma([(x * 20 + y) as u8]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageLuma8(grey)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    bytes
}

/// A 1×1 PNG whose header claims 100,000 × 100,000 pixels (CRC fixed up).
fn bomb_png() -> Vec<u8> {
    let mut bytes = png(&picture(1, 1));
    // Signature (8), IHDR length (4), "IHDR" (4), width, height.
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// An odd file: its name, its bytes, and Some(size) when it converts.
type OddFile = (PathBuf, Vec<u8>, Option<(u32, u32)>);

fn odd_files() -> Vec<OddFile> {
    use std::os::unix::ffi::OsStrExt;
    let whole = jpeg(&picture(64, 48));
    let non_utf8 = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    vec![
        ("empty.jpg".into(), Vec::new(), None),
        (
            "truncated.jpg".into(),
            whole[..whole.len() / 3].to_vec(),
            None,
        ),
        ("text.jpg".into(), b"not an image at all".to_vec(), None),
        ("bomb.png".into(), bomb_png(), None),
        ("png_named.jpg".into(), png(&picture(5, 4)), Some((5, 4))),
        ("cmyk.jpg".into(), cmyk_jpeg(), Some((16, 12))),
        ("grey.jpg".into(), grey_jpeg(), Some((10, 10))),
        ("sixteen_bit.png".into(), sixteen_bit_png(), Some((9, 7))),
        ("palette.png".into(), palette_png(), Some((8, 2))),
        ("alpha.png".into(), alpha_png(), Some((6, 4))),
        ("animated.gif".into(), animated_gif(), Some((8, 8))),
        ("one.png".into(), png(&picture(1, 1)), Some((1, 1))),
        (
            "tall.png".into(),
            png(&picture(1, 20_000)),
            Some((1, 20_000)),
        ),
        (PathBuf::from(non_utf8), png(&picture(3, 3)), Some((3, 3))),
    ]
}

fn write_odd_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes, _) in odd_files() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn each_odd_file_is_converted_or_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    write_odd_folder(dir.path());
    for (name, _, expected) in odd_files() {
        let decoded = decode(&dir.path().join(&name));
        match expected {
            Some(size) => {
                let image = decoded.unwrap_or_else(|e| panic!("{name:?}: {e:#}"));
                assert_eq!(image.dimensions(), size, "{name:?}");
            }
            None => {
                let e = format!("{:#}", decoded.expect_err(&format!("{name:?} decoded")));
                assert!(
                    e.contains("not a readable image") || e.contains("megapixels"),
                    "{name:?}: {e}"
                );
            }
        }
    }
    let e = format!("{:#}", decode(&dir.path().join("bomb.png")).unwrap_err());
    assert!(
        e.contains("100000×100000 pixels is more than the 64 megapixels"),
        "{e}"
    );
    // Alpha is dropped, palette colours looked up, the first GIF frame kept.
    let alpha = decode(&dir.path().join("alpha.png")).unwrap();
    assert_eq!(alpha.get_pixel(3, 0).0, [200, 120, 10]);
    let palette = decode(&dir.path().join("palette.png")).unwrap();
    assert_eq!(palette.get_pixel(0, 0).0, [0, 0, 255]);
    assert_eq!(palette.get_pixel(1, 0).0, [255, 0, 0]);
    let gif = decode(&dir.path().join("animated.gif")).unwrap();
    assert_eq!(gif.get_pixel(4, 4).0, [255, 0, 0]);
    let sixteen = decode(&dir.path().join("sixteen_bit.png")).unwrap();
    assert_eq!(sixteen.get_pixel(1, 0).0, [27, 0, 255]);
}

/// Every refused file is named in a warning with its reason.
fn assert_skipped_each_bad_file(log: &str) {
    for (name, _, expected) in odd_files() {
        if expected.is_none() {
            let name = name.display().to_string();
            assert!(
                log.lines()
                    .any(|l| l.starts_with("WARNING: skipping") && l.contains(&name)),
                "no warning for {name}:\n{log}"
            );
        }
    }
}

#[test]
fn features_retrain_and_classify_skip_what_they_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let odd = root.join("images/odd");
    write_odd_folder(&odd);
    // A folder that leads back to itself: searched once, not forever.
    std::os::unix::fs::symlink(".", odd.join("loop")).unwrap();
    let plain = root.join("images/plain");
    std::fs::create_dir_all(&plain).unwrap();
    for i in 0..10 {
        std::fs::write(plain.join(format!("{i}.png")), png(&picture(20 + i, 16))).unwrap();
    }
    let model = ["--architecture", "mobilenet_v2", "--input-size", "32"];
    let converts = odd_files().iter().filter(|f| f.2.is_some()).count();

    let mut args = vec!["features", "--image-dir", "images/odd", "--output", "f.npy"];
    args.extend(model);
    let o = retrain(root, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_skipped_each_bad_file(&stderr(&o));
    assert!(
        stderr(&o).contains("leads back to a folder already searched"),
        "{}",
        stderr(&o)
    );
    let paths = std::fs::read_to_string(root.join("f.npy.paths")).unwrap();
    assert_eq!(paths.lines().count(), converts, "{paths}");

    let mut args = vec!["--image-dir", "images", "--how-many-training-steps", "5"];
    args.extend(["--validation-percentage", "0", "--testing-percentage", "0"]);
    args.extend(model);
    let o = retrain(root, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_skipped_each_bad_file(&stderr(&o));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("retrain-output/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["images"]["skipped"], odd_files().len() - converts);
    assert_eq!(metrics["images"]["training"], converts + 10);

    let graph = "retrain-output/model.safetensors";
    let o = retrain(
        root,
        &["classify", "--json", "--graph", graph, "images/odd"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_skipped_each_bad_file(&stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), converts);
}

/// `retrain` run as the unprivileged user `nobody` (setpriv), from copies it
/// can read: the tests may run as root, which reads every file whatever its
/// permissions.
fn retrain_as_nobody(root: &Path, args: &[&str]) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt;
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    let binary = root.join("retrain");
    std::fs::copy(env!("CARGO_BIN_EXE_retrain"), &binary).unwrap();
    let cache = root.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let weights = retrain::convert::default_weights::default_weights_path(
        retrain::model::architecture::Architecture::MobileNetV2,
    );
    std::fs::copy(&weights, cache.join(weights.file_name().unwrap())).unwrap();
    for p in [root, &cache] {
        open(p, 0o777).unwrap();
    }
    open(&binary, 0o755).unwrap();
    open(&cache.join(weights.file_name().unwrap()), 0o644).unwrap();
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(args)
        .current_dir(root)
        .env("RETRAIN_CACHE_DIR", &cache)
        .env("HOME", root)
        .output()
        .unwrap()
}

#[test]
fn an_unreadable_image_is_skipped_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("fine.png"), png(&picture(40, 30))).unwrap();
    std::fs::write(images.join("locked.png"), png(&picture(40, 30))).unwrap();
    std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode = |m| std::fs::Permissions::from_mode(m);
    std::fs::set_permissions(images.join("fine.png"), mode(0o644)).unwrap();
    std::fs::set_permissions(images.join("locked.png"), mode(0o000)).unwrap();
    // The weights are fetched and converted on first use, by root.
    let model = ["--architecture", "mobilenet_v2", "--input-size", "32"];
    let mut args = vec!["features", "--image-dir", "images", "--output", "f.npy"];
    args.extend(model);
    let o = retrain(root, &args);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = retrain_as_nobody(root, &args);
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.lines().any(|l| l.starts_with("WARNING: skipping")
            && l.contains("locked.png")
            && l.contains("Permission denied")),
        "{log}"
    );
    let paths = std::fs::read_to_string(root.join("f.npy.paths")).unwrap();
    assert_eq!(
        paths.lines().collect::<Vec<_>>(),
        ["images/fine.png"],
        "{paths}"
    );
}
