//! The light ranker: logistic regression over the feature vector, run on every
//! candidate, so it is one dot product and a sigmoid.

use super::file::{write, Reader};
use super::{sigmoid, ModelError};
use crate::features::{FEATURE_NAMES, NUM_FEATURES};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub struct LightModel {
    pub weights: [f32; NUM_FEATURES],
    pub bias: f32,
}

impl LightModel {
    /// P(engagement) for one feature vector.
    #[inline]
    pub fn score(&self, x: &[f32; NUM_FEATURES]) -> f32 {
        let mut z = self.bias;
        for (w, v) in self.weights.iter().zip(x) {
            z += w * v;
        }
        sigmoid(z)
    }

    pub fn from_safetensors(bytes: &[u8], path: &str) -> Result<Self, ModelError> {
        let r = Reader::new(bytes, path)?;
        check_feature_names(&r, path)?;
        let (w, _) = r.f32s("weight", &[Some(1), Some(NUM_FEATURES)])?;
        let (b, _) = r.f32s("bias", &[Some(1)])?;
        let mut weights = [0.0; NUM_FEATURES];
        weights.copy_from_slice(&w);
        Ok(LightModel {
            weights,
            bias: b[0],
        })
    }

    pub fn to_safetensors(&self) -> Vec<u8> {
        let meta = HashMap::from([
            ("model".to_string(), "shardrank.light.v1".to_string()),
            ("features".to_string(), FEATURE_NAMES.join(",")),
        ]);
        write(
            &[
                ("weight", vec![1, NUM_FEATURES], &self.weights[..]),
                ("bias", vec![1], &[self.bias][..]),
            ],
            meta,
        )
    }
}

/// A file that names its features must name this build's, in this order.
pub(crate) fn check_feature_names(r: &Reader, path: &str) -> Result<(), ModelError> {
    if let Some(names) = r.metadata.get("features") {
        let want = FEATURE_NAMES.join(",");
        if *names != want {
            return Err(ModelError::File {
                path: path.to_string(),
                msg: format!("was trained on features [{names}], this build computes [{want}]"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_the_logistic_of_the_dot_product() {
        let mut m = LightModel {
            weights: [0.0; NUM_FEATURES],
            bias: -1.0,
        };
        m.weights[0] = 2.0;
        m.weights[5] = -0.5;
        let mut x = [0.0; NUM_FEATURES];
        x[0] = 1.5;
        x[5] = 2.0;
        x[9] = 100.0; // weight 0: no effect
                      // z = -1 + 3 - 1 = 1
        let want = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((m.score(&x) as f64 - want).abs() < 1e-7);
    }

    #[test]
    fn file_round_trip_and_shape_errors() {
        let m = super::super::defaults::light();
        let bytes = m.to_safetensors();
        assert_eq!(LightModel::from_safetensors(&bytes, "x").unwrap(), m);

        let wrong = write(
            &[
                ("weight", vec![1, 3], &[1.0, 2.0, 3.0][..]),
                ("bias", vec![1], &[0.0][..]),
            ],
            HashMap::new(),
        );
        let err = LightModel::from_safetensors(&wrong, "m/light.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`weight`")
                && err.contains("[1, 3]")
                && err.contains(&format!("[1, {NUM_FEATURES}]")),
            "{err}"
        );
        let missing = write(
            &[("weight", vec![1, NUM_FEATURES], &[0.0; NUM_FEATURES][..])],
            HashMap::new(),
        );
        let err = LightModel::from_safetensors(&missing, "p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`bias` is missing"), "{err}");
    }
}
