//! retrain.py's image distortions (--random_scale, --random_crop,
//! --flip_left_right, --random_brightness), drawn per image and per step.

use rand::rngs::StdRng;
use rand::Rng;

/// How one image is turned into the network's input: resized to `resize`
/// (height, width), an input-sized window at `crop` (y, x) taken, mirrored
/// left-right if `flip`, pixel values multiplied by `brightness`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Distortion {
    pub resize: (u32, u32),
    pub crop: (u32, u32),
    pub flip: bool,
    pub brightness: f32,
}

impl Distortion {
    /// No distortion: a plain resize to the input size.
    pub fn none(input: (u32, u32)) -> Self {
        Distortion {
            resize: input,
            crop: (0, 0),
            flip: false,
            brightness: 1.0,
        }
    }
}

/// The distortion flags, as integer percentages like retrain.py's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DistortionFlags {
    pub flip_left_right: bool,
    pub random_crop: u32,
    pub random_scale: u32,
    pub random_brightness: u32,
}

impl DistortionFlags {
    pub fn any(&self) -> bool {
        self.flip_left_right
            || self.random_crop > 0
            || self.random_scale > 0
            || self.random_brightness > 0
    }

    /// One draw of retrain.py's distortion for a network input of `input`
    /// (height, width): scale = (1 + crop/100)·U[1, 1 + scale/100]; resize to
    /// ⌊scale·size⌋ (tf.cast's truncation); a uniformly placed input-sized crop;
    /// a flip with probability ½; brightness U[1 − b/100, 1 + b/100].
    pub fn sample(&self, rng: &mut StdRng, input: (u32, u32)) -> Distortion {
        let margin = 1.0 + self.random_crop as f64 / 100.0;
        let resize_scale = 1.0 + rng.random::<f64>() * self.random_scale as f64 / 100.0;
        let scale = margin * resize_scale;
        let resize = (
            ((scale * input.0 as f64) as u32).max(input.0),
            ((scale * input.1 as f64) as u32).max(input.1),
        );
        let crop = (
            rng.random_range(0..=resize.0 - input.0),
            rng.random_range(0..=resize.1 - input.1),
        );
        let flip = self.flip_left_right && rng.random_bool(0.5);
        let spread = self.random_brightness as f64 / 100.0;
        let brightness = (1.0 - spread + 2.0 * spread * rng.random::<f64>()) as f32;
        Distortion {
            resize,
            crop,
            flip,
            brightness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_stay_within_their_bounds_and_cover_them() {
        let flags = DistortionFlags {
            flip_left_right: true,
            random_crop: 10,
            random_scale: 20,
            random_brightness: 30,
        };
        let input = (100, 80);
        let mut rng = StdRng::seed_from_u64(4);
        let draws: Vec<Distortion> = (0..5000).map(|_| flags.sample(&mut rng, input)).collect();
        for d in &draws {
            // scale in [1.1, 1.1·1.2]
            assert!((110..=132).contains(&d.resize.0), "{d:?}");
            assert!((88..=105).contains(&d.resize.1), "{d:?}");
            assert!(d.crop.0 <= d.resize.0 - input.0 && d.crop.1 <= d.resize.1 - input.1);
            assert!((0.7..=1.3).contains(&d.brightness));
        }
        let flips = draws.iter().filter(|d| d.flip).count();
        assert!((2300..2700).contains(&flips), "{flips}");
        let extreme = |f: fn(&Distortion) -> f32, lo: f32, hi: f32| {
            let (min, max) = draws
                .iter()
                .map(f)
                .fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(v), b.max(v)));
            assert!(min < lo && max > hi, "range {min}..{max}");
        };
        extreme(|d| d.brightness, 0.71, 1.29);
        extreme(|d| d.resize.0 as f32, 111.0, 130.0);
        extreme(|d| d.crop.1 as f32, 1.0, 20.0);
    }

    #[test]
    fn no_flags_means_no_distortion() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = DistortionFlags::default().sample(&mut rng, (75, 90));
        assert_eq!(d, Distortion::none((75, 90)));
        assert!(!DistortionFlags::default().any());
    }
}
