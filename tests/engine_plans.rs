//! The engine keeps a plan (every activation buffer and bind group of a batch
//! size) per batch size: a run that alternates full batches and a remainder
//! builds each once, not at every batch. Released (while fine-tuning needs
//! the memory), they are built again and give the same bottlenecks.

use image::RgbImage;
use retrain::convert::default_weights;
use retrain::engine::Engine;
use retrain::gpu::Gpu;
use retrain::model::weights::WeightFile;
use retrain::model::Architecture;

#[test]
fn plans_are_built_once_per_batch_size() {
    let path = default_weights::resolve(None, Architecture::MobileNetV2).unwrap();
    let file = WeightFile::open(&path).unwrap();
    let mut engine = Engine::new(Gpu::new().unwrap(), &file, Some((32, 32))).unwrap();
    let images: Vec<RgbImage> = (0..engine.max_batch() + 3)
        .map(|i| {
            RgbImage::from_fn(40, 36, |x, y| {
                image::Rgb([(x * 5 + i) as u8, (y * 7) as u8, i as u8])
            })
        })
        .collect();
    let first = engine.bottlenecks(&images).unwrap();
    assert_eq!(engine.plans_built(), 2, "a full batch and a remainder");
    let again = engine.bottlenecks(&images).unwrap();
    assert_eq!(engine.plans_built(), 2, "both plans kept");
    assert_eq!(first, again);
    engine.release_memory();
    let rebuilt = engine.bottlenecks(&images).unwrap();
    assert_eq!(engine.plans_built(), 4, "both plans built again");
    assert_eq!(first, rebuilt);
}
