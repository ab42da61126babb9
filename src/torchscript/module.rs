//! A [`CausalLm`] over a TorchScript module (`tch::CModule`).

use std::path::Path;

use tch::{CModule, Device, IValue, Kind, Tensor};

use super::masked::MaskedModule;
use super::metadata::ExportMetadata;
use crate::dtype::DType;
use crate::error::{torch_summary, Error, Result};
pub use crate::matmul::F32Matmul;
use crate::model::{check_block, check_input, CausalLm, ModelInfo, ModelOutput};

/// Which calling convention a module follows (see the [module docs](super)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleForm {
    /// `forward(input_ids, position_ids, attention_mask, k_cache, v_cache) -> (logits, hidden)`,
    /// writing the block's keys and values into the caches in place.
    Cached,
    /// `forward(input_ids) -> (logits, hidden)` or `-> logits`: the whole sequence every call.
    Uncached,
}

/// What the adapter must know about a module that is not described by a `metadata.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    /// The calling convention.
    pub form: ModuleForm,
    /// Vocabulary size (the logits' last dimension).
    pub vocab_size: i64,
    /// Layers (the caches' first dimension).
    pub num_layers: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Positions to allocate in the caches: the context this adapter serves.
    pub max_context: usize,
    /// The kind the module computes in.
    pub dtype: DType,
    /// Where it runs.
    pub device: Device,
    /// Whether to call the module's `prepack()` method once after loading (exports whose
    /// `metadata.json` says `"prepack": true`: it reorders weights for the CPU matrix library).
    pub prepack: bool,
    /// With `prepack`, call `prepack_onednn()` instead of `prepack()` (f32 products through
    /// oneDNN; see [`F32Matmul`]).
    pub onednn: bool,
    /// Whether libtorch's graph executor may profile and re-optimise the module (see
    /// [`LoadOptions::graph_optimizer`]).
    pub graph_optimizer: bool,
}

/// Options for [`TorchScriptLm::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Which exported dtype to load (default float32).
    pub dtype: DType,
    /// Where to run (default CPU).
    pub device: Device,
    /// Context to allocate the cache for (default: the model's, at most 2048).
    pub max_context: Option<usize>,
    /// Which form to load (default cached).
    pub form: ModuleForm,
    /// Let libtorch's graph executor profile and re-optimise the module (default off). It
    /// specialises a module on the shapes of its inputs, and a decode changes them on every call
    /// (the cache grows): on SmolLM2 it made the first two calls take 0.4-0.7 s each, against
    /// 0.05 s without it (docs/benchmarks.md). The adapter sets the
    /// calling thread's switch (`torch::jit::setGraphExecutorOptimize`) to this value for each of
    /// its calls and back to libtorch's default (on) after it.
    pub graph_optimizer: bool,
    /// Which CPU library an f32 export's matrix products run in (default [`F32Matmul::Auto`]).
    pub f32_matmul: F32Matmul,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            max_context: None,
            form: ModuleForm::Cached,
            graph_optimizer: false,
            f32_matmul: F32Matmul::Auto,
        }
    }
}

/// A TorchScript module as a [`CausalLm`]. On construction it probes the module with a short
/// input and checks the outputs' arity, shapes, vocabulary and dtype, so a module that does not
/// fit fails with [`Error::BadModule`] or [`Error::BadOutputShape`] before any decoding.
pub struct TorchScriptLm {
    module: CModule,
    path: String,
    form: ModuleForm,
    info: ModelInfo,
    caches: Option<(Tensor, Tensor)>,
    len: usize,
    graph_optimizer: bool,
    /// The masked form, when the export has one (see [`MaskedLm`](crate::MaskedLm)).
    pub(super) masked: Option<MaskedModule>,
}

impl std::fmt::Debug for TorchScriptLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchScriptLm")
            .field("path", &self.path)
            .field("form", &self.form)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn dtype_key(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::Bf16 => "bf16",
        DType::F16 => "f16",
        DType::Int8 => "int8",
    }
}

impl TorchScriptLm {
    /// Loads an export folder written by `scripts/export_hf.py` (`metadata.json` and the module
    /// for the requested dtype and form).
    pub fn load(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let meta = ExportMetadata::read(dir)?;
        let key = dtype_key(options.dtype);
        let files = meta.dtypes.get(key).ok_or_else(|| {
            Error::config(
                "dtype",
                format!(
                    "`{key}` was not exported to {}; available: {}",
                    dir.display(),
                    meta.dtypes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let file = match options.form {
            ModuleForm::Cached => files.cached.as_ref(),
            ModuleForm::Uncached => files.uncached.as_ref(),
        }
        .ok_or_else(|| {
            let have: Vec<&str> = [
                (files.cached.is_some(), "Cached"),
                (files.uncached.is_some(), "Uncached"),
            ]
            .into_iter()
            .filter_map(|(has, name)| has.then_some(name))
            .collect();
            Error::config(
                "form",
                format!(
                    "the {:?} form of `{key}` was not exported (`{}` has: {}; the `{}` \
                     architecture's cached form may not exist: docs/bring-your-own-model.md)",
                    options.form,
                    dir.display(),
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    },
                    meta.architecture
                ),
            )
        })?;
        let max_context = meta.context(options.max_context)?;
        let spec = ModuleSpec {
            form: options.form,
            vocab_size: meta.vocab_size,
            num_layers: meta.num_layers,
            num_kv_heads: meta.num_kv_heads,
            head_dim: meta.head_dim,
            max_context,
            dtype: options.dtype,
            device: options.device,
            // The uncached form is transformers' own module, traced: nothing to prepack.
            prepack: files.prepack && options.form == ModuleForm::Cached,
            onednn: options
                .f32_matmul
                .use_onednn(files.onednn, options.dtype, options.device)?
                && options.form == ModuleForm::Cached,
            graph_optimizer: options.graph_optimizer,
        };
        let mut lm = Self::from_file(dir.join(file), spec.clone())?;
        if let (ModuleForm::Cached, Some(masked)) = (options.form, files.masked.as_ref()) {
            lm.masked = Some(MaskedModule::load(&dir.join(masked), &spec)?);
        }
        Ok(lm)
    }

    /// Loads a module file that follows `spec`.
    pub fn from_file(path: impl AsRef<Path>, spec: ModuleSpec) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::Io {
                action: "reading",
                path: path.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let module = load_module(path, &spec)?;
        Self::from_module(module, path.display().to_string(), spec)
    }

    /// Wraps a loaded module (calling its `prepack()` first when `spec.prepack`); `name`
    /// appears in errors.
    pub fn from_module(mut module: CModule, name: String, spec: ModuleSpec) -> Result<Self> {
        prepare_module(&mut module, &name, &spec)?;
        let kind = spec.dtype.kind();
        let caches = match spec.form {
            ModuleForm::Cached => {
                let shape = [
                    spec.num_layers as i64,
                    1,
                    spec.num_kv_heads as i64,
                    spec.max_context as i64,
                    spec.head_dim as i64,
                ];
                Some((
                    Tensor::f_zeros(shape, (kind, spec.device))?,
                    Tensor::f_zeros(shape, (kind, spec.device))?,
                ))
            }
            ModuleForm::Uncached => None,
        };
        let mut info = ModelInfo::new(spec.vocab_size, spec.max_context);
        info.has_cache = spec.form == ModuleForm::Cached;
        info.device = spec.device;
        info.kind = kind;
        let mut lm = TorchScriptLm {
            module,
            path: name,
            form: spec.form,
            info,
            caches,
            len: 0,
            graph_optimizer: spec.graph_optimizer,
            masked: None,
        };
        lm.probe()?;
        Ok(lm)
    }

    pub(super) fn bad(&self, problem: String) -> Error {
        Error::BadModule {
            path: self.path.clone(),
            problem,
            source: None,
        }
    }

    /// A libtorch failure of this module: one line in the message, the whole text as the source.
    pub(super) fn bad_torch(&self, what: &str, e: tch::TchError) -> Error {
        Error::BadModule {
            path: self.path.clone(),
            problem: format!("{what} failed: {}", torch_summary(&e)),
            source: Some(e),
        }
    }

    /// Runs a two-token block and checks everything the convention promises.
    fn probe(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let ids = Tensor::f_zeros([1, 2], (Kind::Int64, self.info.device))?;
        let out = self.forward(&ids, 0)?;
        if out.logits.kind() != self.info.kind {
            return Err(self.bad(format!(
                "it computes logits in {:?}, but {:?} was requested (load the matching export)",
                out.logits.kind(),
                self.info.kind
            )));
        }
        self.len = 0;
        Ok(())
    }

    fn call(&self, inputs: &[IValue]) -> Result<ModelOutput> {
        let signature = match self.form {
            ModuleForm::Cached => {
                "forward(input_ids, position_ids, attention_mask, k_cache, v_cache)"
            }
            ModuleForm::Uncached => "forward(input_ids)",
        };
        self.call_module(&self.module, signature, inputs)
    }

    /// Calls `module` and unpacks `(logits, hidden)` or `logits`, naming the module's file and
    /// `signature` in errors.
    pub(super) fn call_module(
        &self,
        module: &CModule,
        signature: &str,
        inputs: &[IValue],
    ) -> Result<ModelOutput> {
        let switch = |on: bool| {
            tch::jit::f_set_graph_executor_optimize(on)
                .map_err(|e| self.bad(format!("setting the graph executor's optimiser: {e}")))
        };
        switch(self.graph_optimizer)?;
        let out = module.forward_is(inputs);
        switch(true)?;
        let out = out.map_err(|e| self.bad_torch(&format!("calling {signature}"), e))?;
        let tensors: Vec<Tensor> = match out {
            IValue::Tensor(t) => vec![t],
            IValue::Tuple(items) | IValue::GenericList(items) => items
                .into_iter()
                .map(|v| match v {
                    IValue::Tensor(t) => Ok(t),
                    other => Err(self.bad(format!(
                        "{signature} must return tensors, got an item {:?}",
                        ivalue_kind(&other)
                    ))),
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(self.bad(format!(
                    "{signature} must return (logits, hidden) or logits, got {:?}",
                    ivalue_kind(&other)
                )))
            }
        };
        let mut it = tensors.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(logits), hidden, None) => Ok(ModelOutput { logits, hidden }),
            _ => Err(self.bad(format!(
                "{signature} must return (logits, hidden) or logits, got more than two tensors"
            ))),
        }
    }

    /// The calling convention this module follows.
    pub fn form(&self) -> ModuleForm {
        self.form
    }
}

/// Loads a TorchScript file onto `spec`'s device.
pub(super) fn load_module(path: &Path, spec: &ModuleSpec) -> Result<CModule> {
    crate::cuda::check_device(spec.device)?;
    CModule::load_on_device(path, spec.device).map_err(|e| Error::BadModule {
        path: path.display().to_string(),
        problem: format!(
            "libtorch could not load it as TorchScript: {}",
            torch_summary(&e)
        ),
        source: Some(e),
    })
}

/// Eval mode, and the module's `prepack()` once when `spec` says so.
pub(super) fn prepare_module(module: &mut CModule, name: &str, spec: &ModuleSpec) -> Result<()> {
    module.set_eval();
    if spec.prepack {
        let _guard = tch::no_grad_guard();
        let method = if spec.onednn {
            "prepack_onednn"
        } else {
            "prepack"
        };
        module
            .method_is::<IValue>(method, &[])
            .map_err(|e| Error::BadModule {
                path: name.to_string(),
                problem: format!(
                    "calling its {method}() method failed: {}",
                    torch_summary(&e)
                ),
                source: Some(e),
            })?;
    }
    Ok(())
}

fn ivalue_kind(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tensor(_) => "Tensor",
        IValue::Double(_) => "float",
        IValue::Int(_) => "int",
        IValue::Bool(_) => "bool",
        IValue::Tuple(_) => "tuple",
        IValue::String(_) => "str",
        IValue::GenericList(_) | IValue::TensorList(_) => "list",
        IValue::GenericDict(_) => "dict",
        _ => "another value",
    }
}

impl CausalLm for TorchScriptLm {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        let t = check_input(tokens, self.info.vocab_size, "TorchScriptLm::forward")?;
        let device = self.info.device;
        let out = match &self.caches {
            Some((k, v)) => {
                check_block(start, t, self.len, self.info.max_context)?;
                let end = (start + t) as i64;
                let positions = Tensor::f_arange_start(start as i64, end, (Kind::Int64, device))?
                    .f_unsqueeze(0)?;
                let mask = Tensor::f_ones([1, end], (Kind::Int64, device))?;
                // Positions >= start are overwritten in place: this is the truncate.
                self.len = start;
                let out = self.call(&[
                    IValue::Tensor(tokens.shallow_clone()),
                    IValue::Tensor(positions),
                    IValue::Tensor(mask),
                    IValue::Tensor(k.shallow_clone()),
                    IValue::Tensor(v.shallow_clone()),
                ])?;
                self.len = start + t;
                out
            }
            None => {
                if start != 0 {
                    return Err(Error::CacheGap { start, cached: 0 });
                }
                if t > self.info.max_context {
                    return Err(Error::BlockBeyondContext {
                        start,
                        block_len: t,
                        max_context: self.info.max_context,
                    });
                }
                self.call(&[IValue::Tensor(tokens.shallow_clone())])?
            }
        };
        crate::model::check_output(&out, t, self.info.vocab_size)
            .map_err(|e| self.bad(format!("it broke the calling convention: {e}")))?;
        Ok(out)
    }

    fn cached_len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.len = self.len.min(len);
        Ok(())
    }

    fn as_masked(&mut self) -> Option<&mut dyn crate::masked::MaskedLm> {
        if self.masked.is_some() {
            Some(self)
        } else {
            None
        }
    }

    fn token_embeddings(&self) -> Option<Tensor> {
        let params = self.module.named_parameters().ok()?;
        let vocab = Some(&self.info.vocab_size);
        params.into_iter().find_map(|(name, t)| {
            if (name.ends_with("embed.weight") || name.ends_with("embed_tokens.weight"))
                && t.size().first() == vocab
            {
                Some(t)
            } else if name.ends_with("embed.wt") && t.size().get(1) == vocab {
                // An export that stores the tied table once, transposed for its LM head.
                Some(t.tr())
            } else {
                None
            }
        })
    }
}
