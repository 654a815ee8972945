//! The two rankers and their weight files.
//!
//! Weights are safetensors files (what PyTorch, JAX and the `safetensors` library
//! write), little-endian f32, PyTorch `nn.Linear` layout (`[out, in]`):
//!
//! - `light.safetensors`: `weight` `[1, F]`, `bias` `[1]` (logistic regression);
//!   metadata `features` lists the F feature names, checked against this build's.
//! - `heavy.safetensors`: `layer1.weight` `[H1, F]`, `layer1.bias` `[H1]`,
//!   `layer2.weight` `[H2, H1]`, `layer2.bias` `[H2]`, `heads.weight` `[4, H2]`,
//!   `heads.bias` `[4]`, `head_weights` `[4]` (like, retweet, reply, negative
//!   feedback); ReLU hidden layers, sigmoid heads, score = sum of head_weights x p.
//!
//! A file with a missing tensor or a wrong shape is refused, naming the tensor and the
//! shapes. Without a model directory the built-in defaults are used (the same weights
//! as `models/default/`, which `shardrank model export` writes).

pub mod defaults;
mod file;
pub mod heavy;
pub mod light;

pub use heavy::HeavyModel;
pub use light::LightModel;

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("{path}: tensor `{tensor}` {msg}")]
    Tensor {
        path: String,
        tensor: String,
        msg: String,
    },
}

/// Both rankers.
#[derive(Clone, Debug)]
pub struct Models {
    pub light: LightModel,
    pub heavy: HeavyModel,
}

pub const LIGHT_FILE: &str = "light.safetensors";
pub const HEAVY_FILE: &str = "heavy.safetensors";

impl Models {
    /// The built-in default models.
    pub fn builtin() -> Models {
        Models {
            light: defaults::light(),
            heavy: defaults::heavy(),
        }
    }

    /// Loads `light.safetensors` and `heavy.safetensors` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Models, ModelError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map(|b| (b, path.display().to_string()))
                .map_err(|e| ModelError::File {
                    path: path.display().to_string(),
                    msg: e.to_string(),
                })
        };
        let (lb, lp) = read(LIGHT_FILE)?;
        let (hb, hp) = read(HEAVY_FILE)?;
        Ok(Models {
            light: LightModel::from_safetensors(&lb, &lp)?,
            heavy: HeavyModel::from_safetensors(&hb, &hp)?,
        })
    }

    /// Writes both files into `dir` (created if missing).
    pub fn save_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(LIGHT_FILE), self.light.to_safetensors())?;
        std::fs::write(dir.join(HEAVY_FILE), self.heavy.to_safetensors())?;
        Ok(())
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + crate::fastmath::exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files shipped in deploy/models/default are the built-in models, exactly.
    #[test]
    fn shipped_default_files_are_the_builtin_models() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/models/default");
        let m = Models::load_dir(&dir).expect("shipped model files load");
        let b = Models::builtin();
        assert_eq!(m.light, b.light);
        assert_eq!(m.heavy, b.heavy);
    }

    #[test]
    fn missing_dir_names_the_file() {
        let err = Models::load_dir(Path::new("/nonexistent/models"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/models/light.safetensors"),
            "{err}"
        );
    }
}
