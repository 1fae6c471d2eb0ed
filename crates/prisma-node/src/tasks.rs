//! Long operations as napi Tasks, resolved on the JS thread: computed on the libtorch thread
//! (`TorchTask`, so `compute` runs there), or on the libuv pool (`AsyncTask`) for file work that
//! touches no libtorch (saving tensors from JS).

use crate::convert::{guard, js_error, lock, to_js_error, TensorData};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::model::{from_f32, to_f32_vec};
use prisma_core::{Model, RunRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Owned = (Vec<i64>, Vec<f32>);

#[napi(object)]
pub struct RunOutput {
    /// 'hook_logits' when the model has a head, else 'ln_final.hook_normalized', or the residual when stopping early.
    pub output: TensorData,
    /// One per matched hook, in forward order, named by hook.
    pub cache: Vec<TensorData>,
}

pub struct RunTask {
    pub model: Arc<Mutex<Model>>,
    pub pixels: Option<Owned>,
    pub cache: Vec<String>,
    pub stop_at_layer: Option<usize>,
    pub start_at_layer: Option<usize>,
    pub start_resid: Option<Owned>,
    pub interventions: Option<String>,
    pub tensors: Vec<(Option<String>, Vec<i64>, Vec<f32>)>,
    /// SAEs spliced into this run only, and their modules (to check their device).
    pub splices: Vec<prisma_core::hooks::SpliceSpec>,
    pub modules: Vec<Arc<Mutex<prisma_core::sae::SaeModule>>>,
}

pub struct RunResult {
    output: (String, Owned),
    cache: Vec<(String, Owned)>,
}

impl Task for RunTask {
    type Output = RunResult;
    type JsValue = RunOutput;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let model = lock(&self.model)?;
            model.use_threads();
            for m in &self.modules {
                crate::sae::check_module_device(&model, m).map_err(to_js_error)?;
            }
            let tensor = |(shape, data): &Owned| from_f32(shape, data).map_err(to_js_error);
            let mut tensors = HashMap::new();
            for (i, (name, shape, data)) in self.tensors.iter().enumerate() {
                let name = name.clone().unwrap_or_else(|| format!("t{i}"));
                tensors.insert(name, from_f32(shape, data).map_err(to_js_error)?);
            }
            let interventions = match &self.interventions {
                Some(json) if !json.trim().is_empty() => Model::parse_interventions(json).map_err(to_js_error)?,
                _ => Vec::new(),
            };
            let request = RunRequest {
                pixels: self.pixels.as_ref().map(tensor).transpose()?,
                cache: self.cache.clone(),
                stop_at_layer: self.stop_at_layer,
                start_at_layer: self.start_at_layer,
                start_resid: self.start_resid.as_ref().map(tensor).transpose()?,
                interventions,
                tensors,
                splices: self.splices.clone(),
            };
            let out = model.run(request).map_err(to_js_error)?;
            let output = (out.output_name.to_string(), to_f32_vec(&out.output).map_err(to_js_error)?);
            let cache =
                out.cache.iter().map(|(p, t)| Ok((p.to_string(), to_f32_vec(t).map_err(to_js_error)?))).collect::<Result<Vec<_>>>()?;
            Ok(RunResult { output, cache })
        })
    }

    fn resolve(&mut self, _env: Env, out: Self::Output) -> Result<Self::JsValue> {
        let js = |(name, (shape, data)): (String, Owned)| TensorData { name, shape, dtype: "float32".into(), data: data.into() };
        Ok(RunOutput { output: js(out.output), cache: out.cache.into_iter().map(js).collect() })
    }
}

pub struct SaveTask {
    pub path: String,
    pub tensors: Vec<(Option<String>, Vec<i64>, Vec<f32>)>,
    pub metadata: Option<HashMap<String, String>>,
}

impl Task for SaveTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<Self::Output> {
        // Plain f32 buffers to a file: no libtorch, so no need to wait for its thread.
        guard(|| {
            let tensors: Vec<prisma_core::tensor_file::NamedF32> = std::mem::take(&mut self.tensors)
                .into_iter()
                .enumerate()
                .map(|(i, (n, s, d))| (n.unwrap_or_else(|| format!("t{i}")), s, d))
                .collect();
            prisma_core::tensor_file::save_safetensors(std::path::Path::new(&self.path), &tensors, self.metadata.take())
                .map_err(to_js_error)
        })
    }

    fn resolve(&mut self, _env: Env, _out: Self::Output) -> Result<Self::JsValue> {
        Ok(())
    }

    fn reject(&mut self, env: Env, err: Error) -> Result<Self::JsValue> {
        Err(js_error(&env, err))
    }
}

pub struct PromptsTask {
    pub model: Arc<Mutex<Model>>,
    pub labels: Vec<String>,
    pub prompts: Vec<String>,
}

impl Task for PromptsTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let mut model = lock(&self.model)?;
            model.set_class_prompts(self.labels.clone(), self.prompts.clone()).map_err(to_js_error)
        })
    }

    fn resolve(&mut self, _env: Env, _output: Self::Output) -> Result<Self::JsValue> {
        Ok(())
    }
}
