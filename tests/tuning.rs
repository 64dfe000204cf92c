//! The kernel autotuner: it measures every conv shape of the network once,
//! caches its choices per device, and the tuned network computes what the
//! untuned one does.

mod common;

use retrain::convert::default_weights;
use retrain::engine::Engine;
use retrain::fine_tune::blocks::{TrainableBlocks, DEFAULT_FROM};
use retrain::fine_tune::network::TrainableNetwork;
use retrain::fine_tune::settings::{FineTuneSettings, Rule};
use retrain::gpu::kernels::ConvVariant;
use retrain::gpu::params::ConvParams;
use retrain::gpu::tuning::{
    default_variant, shape_key, tune_and_check, CheckedTuning, Tuning, TuningWork,
};
use retrain::gpu::Gpu;
use retrain::model::inception_v3::inception_v3;
use retrain::model::weights::WeightFile;
use retrain::model::Architecture;
use retrain::train::standardize::{Standardization, StandardizedHead};

#[test]
fn tuning_is_cached_per_device_and_changes_no_result() {
    let weights = default_weights::resolve(None, Architecture::InceptionV3).unwrap();
    let mobilenet = default_weights::resolve(None, Architecture::MobileNetV2).unwrap();
    let cache = tempfile::tempdir().unwrap();
    // This test binary holds this one test, so setting the variable is safe.
    unsafe {
        std::env::set_var("RETRAIN_CACHE_DIR", cache.path());
        std::env::remove_var("RETRAIN_TUNE");
    }
    let file = WeightFile::open(&weights).unwrap();
    let size = Some((75, 90));
    let mut engine = Engine::new(Gpu::new().unwrap(), &file, size).unwrap();
    assert!(!engine.is_tuned());
    let mut rng = common::rng(3);
    let input = common::random_vec(&mut rng, 2 * 75 * 90 * 3);
    let before = engine.run_tensors(&input, 2, &["bottleneck"]).unwrap();

    let mut steps = 0;
    engine.tune(&mut |_| steps += 1).unwrap();
    // Every conv shape, and the 8 distinct groups of sibling 1×1 convs timed
    // merged and apart (mixed5 and mixed6 have the same, mixed7 and mixed8 too).
    assert_eq!(steps, engine.tuning_steps());
    assert_eq!(engine.tuning().merges.len(), 8);
    assert!(engine.is_tuned());
    let after = engine.run_tensors(&input, 2, &["bottleneck"]).unwrap();
    let err = common::rel_l2(&after[0], &before[0]);
    assert!(err < 1e-5, "tuned network differs by {err:e}");

    // A new engine on the same device starts tuned, from the cache file.
    let files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "one tuning file");
    let again = Engine::new(Gpu::new().unwrap(), &file, size).unwrap();
    assert!(again.is_tuned());
    let cached = Tuning::load(&again.gpu);
    assert_eq!(
        cached.choices,
        engine.tuning().choices,
        "the cache holds what was measured"
    );
    assert_eq!(cached.merges, engine.tuning().merges);
    assert_eq!(
        again.merged_groups(),
        engine.merged_groups(),
        "and merges as measured"
    );

    // Timed whole against the defaults (what a first use does after tuning).
    let (tuned, defaults) = engine.time_against_defaults().unwrap();
    let positive = |t: f64| t.is_finite() && t > 0.0;
    assert!(positive(tuned) && positive(defaults), "{tuned} {defaults}");
    // Keeping the defaults (where a tuning loses to them twice) records them
    // for every shape, unmerged, computes what the untuned network did, and
    // is cached once saved.
    engine.keep_defaults().unwrap();
    engine.save().unwrap();
    assert!(engine.is_tuned());
    assert_eq!(engine.merged_groups(), 0);
    assert_runs_the_default_variants(&engine);
    assert!(engine.tuning().merges.values().all(|m| !m));
    let kept = engine.run_tensors(&input, 2, &["bottleneck"]).unwrap();
    assert_eq!(
        kept[0], before[0],
        "the defaults compute what the untuned network did"
    );
    let cached = Tuning::load(&engine.gpu);
    assert_eq!(cached.choices, engine.tuning().choices);
    assert_eq!(cached.merges, engine.tuning().merges);

    // MobileNet V2's depthwise convs get a measured workgroup size each, and
    // the tuned network computes what the untuned one does.
    let file = WeightFile::open(&mobilenet).unwrap();
    let mut engine = Engine::new(Gpu::new().unwrap(), &file, Some((48, 40))).unwrap();
    assert!(!engine.is_tuned());
    let input = common::random_vec(&mut rng, 48 * 40 * 3);
    let before = engine.run_tensors(&input, 1, &["bottleneck"]).unwrap();
    engine.tune(&mut |_| {}).unwrap();
    assert!(engine.is_tuned());
    // 17 depthwise convs; shapes repeat (key: kernel, stride, channels, map size).
    assert!(
        engine.tuning().depthwise.len() >= 5,
        "{:?}",
        engine.tuning().depthwise
    );
    let after = engine.run_tensors(&input, 1, &["bottleneck"]).unwrap();
    let err = common::rel_l2(&after[0], &before[0]);
    assert!(err < 1e-5, "tuned MobileNet differs by {err:e}");
    assert_eq!(
        Tuning::load(&engine.gpu).depthwise,
        engine.tuning().depthwise
    );

    // A tuning that loses to the defaults (here: any, as the bar is 0) is
    // redone once, then the defaults are kept, for depthwise convs too.
    tune_and_check(&mut engine, 0.0).unwrap();
    assert!(engine.is_tuned());
    assert_runs_the_default_variants(&engine);
    // 256: the depthwise workgroup before measuring.
    assert!(
        engine.tuning().depthwise.values().all(|&g| g == 256),
        "{:?}",
        engine.tuning().depthwise
    );
    assert_eq!(
        Tuning::load(&engine.gpu).depthwise,
        engine.tuning().depthwise
    );

    // Fine-tuning's input gradients: their shapes the engine did not measure
    // are tuned on first use and checked against the defaults; a check every
    // tuning fails tunes them again, then keeps the defaults for them alone.
    let gpu = Gpu::new().unwrap();
    let file = WeightFile::open(&weights).unwrap();
    let network = inception_v3(75, 90).unwrap();
    let blocks = TrainableBlocks::new(&network, DEFAULT_FROM).unwrap();
    let convs = blocks.input_gradient_convs();
    let dim = 2048;
    let head = StandardizedHead {
        weights: common::random_vec(&mut rng, dim * 2),
        biases: vec![0.0; 2],
        standardization: Standardization::identity(dim),
    };
    let settings = FineTuneSettings {
        from: DEFAULT_FROM.into(),
        epochs: 1,
        learning_rate: 1e-4,
        rule: Rule::Adam,
        weight_decay: 1e-4,
        batch_size: 2,
        dropout: 0.0,
        patience: 0,
    };
    let mut cache = Tuning::load(&gpu);
    let (new, old): (Vec<ConvParams>, Vec<ConvParams>) =
        (convs.iter()).partition(|p| !cache.choices.contains_key(&shape_key(p)));
    assert!(!new.is_empty(), "the engine measured them all");
    assert!(!old.is_empty(), "the engine measured none of them");
    // The engine's choices for the shapes both share, made unlike the
    // defaults, so that keeping the defaults for them would show.
    let other = (ConvVariant::CANDIDATES.into_iter())
        .find(|v| *v != default_variant(&gpu) && old.iter().all(|p| v.fits(p, &gpu)))
        .unwrap();
    for p in &old {
        cache.choices.insert(shape_key(p), other);
    }
    cache.save().unwrap();
    let before = Tuning::load(&gpu);
    let mut net = TrainableNetwork::new(&gpu, blocks, &file, &head, &settings).unwrap();
    net.tune_on_first_use(&gpu).unwrap();
    let cached = Tuning::load(&gpu);
    for p in &convs {
        let measured = cached.choices.get(&shape_key(p)).copied();
        assert_eq!(
            measured,
            Some(net.tuning.variant(&gpu, p)),
            "{}",
            shape_key(p)
        );
    }
    net.tuning.forget(&TuningWork {
        convs: new.clone(),
        ..Default::default()
    });
    net.tune_input_gradients(&gpu, 0.0).unwrap();
    let cached = Tuning::load(&gpu);
    for p in &new {
        assert_eq!(net.tuning.variant(&gpu, p), default_variant(&gpu));
        assert_eq!(
            cached.choices.get(&shape_key(p)),
            Some(&default_variant(&gpu))
        );
    }
    for p in &old {
        let key = shape_key(p);
        assert_eq!(cached.choices.get(&key), before.choices.get(&key), "{key}");
    }
}

/// Every conv of the network as it runs has the adapter's default variant.
fn assert_runs_the_default_variants(engine: &Engine) {
    let default = default_variant(&engine.gpu);
    for p in engine.distinct_convs(1) {
        assert_eq!(engine.tuning().variant(&engine.gpu, &p), default);
    }
}
