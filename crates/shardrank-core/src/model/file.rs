//! Reading and writing f32 tensors in safetensors files, with errors that name the
//! tensor and the shapes.

use super::ModelError;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

pub(crate) struct Reader<'a> {
    st: SafeTensors<'a>,
    pub metadata: HashMap<String, String>,
    path: String,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], path: &str) -> Result<Self, ModelError> {
        let bad = |e: safetensors::SafeTensorError| ModelError::File {
            path: path.to_string(),
            msg: format!("not a valid safetensors file: {e}"),
        };
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(bad)?;
        let st = SafeTensors::deserialize(bytes).map_err(bad)?;
        Ok(Reader {
            st,
            metadata: meta.metadata().clone().unwrap_or_default(),
            path: path.to_string(),
        })
    }

    fn err(&self, tensor: &str, msg: String) -> ModelError {
        ModelError::Tensor {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            msg,
        }
    }

    /// The tensor `name` as f32 values with its shape; `want` gives the expected shape,
    /// `None` for a dimension that may be anything (checked later against other tensors).
    pub fn f32s(
        &self,
        name: &str,
        want: &[Option<usize>],
    ) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| self.err(name, "is missing".into()))?;
        if t.dtype() != Dtype::F32 {
            return Err(self.err(name, format!("has dtype {:?}, expected F32", t.dtype())));
        }
        let shape = t.shape().to_vec();
        let fits = shape.len() == want.len()
            && shape
                .iter()
                .zip(want)
                .all(|(s, w)| w.is_none_or(|w| w == *s));
        if !fits || shape.contains(&0) {
            let want_txt: Vec<String> = want
                .iter()
                .map(|w| w.map_or("*".to_string(), |w| w.to_string()))
                .collect();
            return Err(self.err(
                name,
                format!("has shape {shape:?}, expected [{}]", want_txt.join(", ")),
            ));
        }
        let values = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((values, shape))
    }
}

/// Serialises named f32 tensors (name, shape, values) with metadata.
pub(crate) fn write(
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.to_string(),
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                    .expect("shape matches data"),
            )
        })
        .collect();
    safetensors::serialize(views, Some(metadata)).expect("in-memory serialisation cannot fail")
}
