//! A model folder with everything needed to decode text: the model, its tokenizer, its EOS ids
//! and chat template.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Device;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::feature::{FeatureDraftConfig, DRAFT_CONFIG_FILE};
use crate::heads::{HeadsConfig, WithHeads, HEADS_CONFIG_FILE};
use crate::model::CausalLm;
use crate::native::{Bf16Inputs, NativeLm, NativeOptions};
use crate::tokenizer::{ByteTokenizer, ChatTemplate, HfTokenizer, TextTokenizer, END_OF_TEXT};
use crate::torchscript::{ExportMetadata, F32Matmul, LoadOptions, ModuleForm, TorchScriptLm};
use crate::transformer::{Transformer, CONFIG_FILE};

/// The folder of the embedded default model, shipped with the crate.
pub fn embedded_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/embedded"))
}

/// How to load a [`ModelBundle`].
#[derive(Debug, Clone, PartialEq)]
pub struct BundleOptions {
    /// Floating-point kind (default float32).
    pub dtype: DType,
    /// Device (default CPU).
    pub device: Device,
    /// Context to allocate caches for, for exported models (default: the model's, at most 2048).
    pub max_context: Option<usize>,
    /// Proposal heads to attach to an exported model.
    pub heads: HeadsChoice,
    /// The CPU library of an exported f32 model's matrix products (default auto: oneDNN on
    /// AMD CPUs; see [`F32Matmul`]).
    pub f32_matmul: F32Matmul,
    /// What computes an exported model: its TorchScript module (default) or the crate's native
    /// CPU decoder ([`Backend::Native`]).
    pub backend: Backend,
    /// What the native decoder multiplies bf16 weights with (default float32; bfloat16 by the
    /// CPU's dot products: see [`Bf16Inputs`]). Bfloat16 is refused with the TorchScript
    /// backend and with weights other than bf16.
    pub bf16_inputs: Bf16Inputs,
}

/// What computes an exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The exported TorchScript module, through libtorch (any device, every weight form).
    #[default]
    TorchScript,
    /// The native decoder where it can compute the export with every option asked for (a
    /// plain Llama-shaped export with its `native` description, on the CPU, vectorised here,
    /// in f32, bf16 or int8, with the default `f32_matmul`), else the TorchScript module.
    /// What `decode` and `blockwise-server` use by default: SmolLM2's native f32 step is about
    /// twice as fast as its TorchScript one (docs/benchmarks.md). [`ModelBundle::backend`]
    /// says which was taken.
    Auto,
    /// The crate's own CPU kernels ([`NativeLm`]): plain Llama-shaped exports, f32, bf16 or
    /// int8 weights (f32 activations; or bf16 weights times bf16 inputs by the CPU's dot
    /// products, see [`Bf16Inputs`]), CPU only. Loading it sets libtorch's intra-op threads to one: libtorch's
    /// OpenMP workers spin for milliseconds after each parallel operation, on the cores the
    /// native decoder's threads need (SmolLM2's f32 step measured 23-28 ms with them against
    /// 13-17 ms without, on a 2-core AMD EPYC).
    Native,
}

impl Backend {
    /// Parses `torchscript`, `native` or `auto`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "torchscript" => Ok(Backend::TorchScript),
            "native" => Ok(Backend::Native),
            "auto" => Ok(Backend::Auto),
            other => Err(Error::config(
                "backend",
                format!("is `{other}`; expected torchscript, native or auto"),
            )),
        }
    }

    /// What `self` computes an export with `meta` by under `options`: [`Backend::Auto`] made
    /// native or TorchScript, the others as they are.
    pub fn resolve(self, meta: &ExportMetadata, options: &BundleOptions) -> Backend {
        if self != Backend::Auto {
            return self;
        }
        let native = crate::native::vectorised()
            && options.device == Device::Cpu
            && options.f32_matmul == F32Matmul::Auto
            && matches!(options.dtype, DType::F32 | DType::Bf16 | DType::Int8)
            && meta.native.as_ref().is_some_and(|d| d.shape == "llama")
            && meta.dtypes.get("f32").is_some_and(|f| f.cached.is_some());
        if native {
            Backend::Native
        } else {
            Backend::TorchScript
        }
    }
}

impl std::fmt::Display for Backend {
    /// The form [`Backend::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::TorchScript => "torchscript",
            Backend::Native => "native",
            Backend::Auto => "auto",
        })
    }
}

/// Which proposal heads a model gets. A built-in transformer keeps its own heads unless a folder
/// is named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HeadsChoice {
    /// `heads/` inside the export folder if there is one, else the heads shipped in
    /// `assets/heads/` that were trained for the export's source model, else none.
    #[default]
    Auto,
    /// No heads.
    None,
    /// The heads saved in this folder (see [`WithHeads::save`]).
    Dir(PathBuf),
}

/// The folder of the heads shipped with the crate (one sub-folder per base model).
pub fn shipped_heads_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/heads"))
}

/// The folder of the feature-level drafts shipped with the crate (one sub-folder per base model).
pub fn shipped_drafts_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/drafts"))
}

/// The feature-level draft for an export in `dir` whose source is `source`: `dir/draft` when
/// there is one, else the shipped draft trained for that source.
fn find_draft(dir: &Path, source: Option<&str>) -> Result<Option<PathBuf>> {
    let local = dir.join("draft");
    if local.join(DRAFT_CONFIG_FILE).is_file() {
        return Ok(Some(local));
    }
    let (Some(source), Ok(entries)) = (source, std::fs::read_dir(shipped_drafts_dir())) else {
        return Ok(None);
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    for d in dirs {
        let file = d.join(DRAFT_CONFIG_FILE);
        if file.is_file() {
            let config: FeatureDraftConfig = Error::read_json(&file)?;
            if config.base.as_deref() == Some(source) {
                return Ok(Some(d));
            }
        }
    }
    Ok(None)
}

/// The source model an export was made from, for finding what was trained for it; `None` for
/// a layer-truncated export (shipped heads and drafts match the exact model they were trained
/// on, and a truncated export of the same file has other hidden states).
fn export_source(meta: &ExportMetadata) -> Option<&str> {
    match meta.source.contains_key("truncated") {
        true => None,
        false => meta.source.get("gguf").and_then(|v| v.as_str()),
    }
}

/// The folder of the model `name` as [`ModelBundle::load`] reads it.
fn model_dir(name: &str) -> PathBuf {
    if name == "embedded" {
        embedded_dir()
    } else {
        PathBuf::from(name)
    }
}

/// The feature-level draft [`ModelBundle::load`] attaches to the model `name`
/// ([`ModelBundle::draft`]), found without loading the model: for settings that depend on it
/// before a load, such as `decode`'s draft flags on the default proposer, `auto`. `None` where
/// there is none, or where `name` is no model folder (the load says why).
pub fn draft_for(name: &str) -> Result<Option<PathBuf>> {
    let dir = model_dir(name);
    if dir.join("metadata.json").is_file() {
        let meta = ExportMetadata::read(&dir)?;
        find_draft(&dir, export_source(&meta))
    } else if dir.join(CONFIG_FILE).is_file() {
        find_draft(&dir, None)
    } else {
        Ok(None)
    }
}

/// The heads folder `choice` names for an export whose source is `source` (`None`: no heads).
fn find_heads(dir: &Path, source: Option<&str>, choice: &HeadsChoice) -> Result<Option<PathBuf>> {
    match choice {
        HeadsChoice::None => Ok(None),
        HeadsChoice::Dir(d) => Ok(Some(d.clone())),
        HeadsChoice::Auto => {
            let local = dir.join("heads");
            if local.join(HEADS_CONFIG_FILE).is_file() {
                return Ok(Some(local));
            }
            let Some(source) = source else {
                return Ok(None);
            };
            let Ok(entries) = std::fs::read_dir(shipped_heads_dir()) else {
                return Ok(None);
            };
            let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            dirs.sort();
            for d in dirs {
                let file = d.join(HEADS_CONFIG_FILE);
                if !file.is_file() {
                    continue;
                }
                let config: HeadsConfig = Error::read_json(&file)?;
                if config.base.as_deref() == Some(source) {
                    return Ok(Some(d));
                }
            }
            Ok(None)
        }
    }
}

/// The native decoder for an export, refusing options it cannot honour.
fn load_native(dir: &Path, options: &BundleOptions) -> Result<NativeLm> {
    if options.device != Device::Cpu {
        return Err(Error::config(
            "backend",
            format!(
                "the native decoder runs on the CPU; device {:?} needs --backend torchscript",
                options.device
            ),
        ));
    }
    if options.f32_matmul != F32Matmul::Auto {
        return Err(Error::config(
            "f32_matmul",
            "chooses the CPU library of a TorchScript export's products; the native decoder \
             has its own (drop --f32-matmul or use --backend torchscript)",
        ));
    }
    let lm = NativeLm::load(
        dir,
        &NativeOptions {
            dtype: options.dtype,
            max_context: options.max_context,
            bf16_inputs: options.bf16_inputs,
            ..NativeOptions::default()
        },
    )?;
    tch::set_num_threads(1);
    Ok(lm)
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            max_context: None,
            heads: HeadsChoice::Auto,
            f32_matmul: F32Matmul::Auto,
            backend: Backend::TorchScript,
            bf16_inputs: Bf16Inputs::F32,
        }
    }
}

/// A model with its tokenizer, EOS ids and (for instruction-tuned models) chat template.
pub struct ModelBundle {
    /// The model.
    pub model: Box<dyn CausalLm>,
    /// Its tokenizer.
    pub tokenizer: Box<dyn TextTokenizer>,
    /// Ids that end a sequence.
    pub eos: Vec<i64>,
    /// The chat template, when the model has one.
    pub chat: Option<ChatTemplate>,
    /// The export's metadata (oracles included), for exported models.
    pub metadata: Option<ExportMetadata>,
    /// The feature-level draft trained for this model (`DIR/draft`, or one shipped in
    /// `assets/drafts` for the export's source), when there is one.
    pub draft: Option<PathBuf>,
    /// What computes an exported model ([`Backend::TorchScript`] or [`Backend::Native`]: what
    /// [`Backend::Auto`] chose); `None` for a built-in transformer.
    pub backend: Option<Backend>,
}

impl std::fmt::Debug for ModelBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelBundle")
            .field("info", self.model.info())
            .field("eos", &self.eos)
            .field("chat", &self.chat.is_some())
            .finish_non_exhaustive()
    }
}

impl ModelBundle {
    /// Loads `embedded` (the shipped model), a built-in transformer folder (`config.json` +
    /// `model.safetensors`, with a `tokenizer.json` or else the byte-level tokenizer), or an
    /// export folder written by `scripts/export_hf.py` (`metadata.json`, modules,
    /// `tokenizer.json`), with proposal heads as [`BundleOptions::heads`] says.
    pub fn load(name: &str, options: &BundleOptions) -> Result<Self> {
        let dir = model_dir(name);
        if dir.join("metadata.json").is_file() {
            Self::load_export(&dir, options)
        } else if dir.join(CONFIG_FILE).is_file() {
            Self::load_builtin(&dir, options)
        } else {
            Err(Error::Io {
                action: "reading a model from",
                path: dir,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no metadata.json (exported model) or config.json (built-in model) there",
                ),
            })
        }
    }

    fn load_builtin(dir: &Path, options: &BundleOptions) -> Result<Self> {
        if options.backend == Backend::Native {
            return Err(Error::config(
                "backend",
                format!(
                    "the native decoder computes exported models (metadata.json); {} is a \
                     built-in transformer",
                    dir.display()
                ),
            ));
        }
        let mut model = Transformer::load(dir, options.device)?;
        if model.config().dtype != options.dtype {
            model.set_dtype(options.dtype)?;
        }
        let path = dir.join("tokenizer.json");
        let (tokenizer, name): (Box<dyn TextTokenizer>, _) = if path.is_file() {
            let plain = HfTokenizer::from_file(&path, vec![])?;
            let eos = plain.token_id(END_OF_TEXT).into_iter().collect();
            (
                Box::new(HfTokenizer::from_file(&path, eos)?),
                "tokenizer.json",
            )
        } else {
            (Box::new(ByteTokenizer), "byte tokenizer")
        };
        if model.config().vocab_size != tokenizer.vocab_size() {
            return Err(Error::VocabularyMismatch {
                left: "model",
                left_size: model.config().vocab_size,
                right: name,
                right_size: tokenizer.vocab_size(),
            });
        }
        let model: Box<dyn CausalLm> = match &options.heads {
            HeadsChoice::Dir(d) => Box::new(WithHeads::load(model, d)?),
            HeadsChoice::Auto | HeadsChoice::None => Box::new(model),
        };
        Ok(ModelBundle {
            model,
            eos: tokenizer.eos_ids(),
            tokenizer,
            chat: None,
            metadata: None,
            draft: find_draft(dir, None)?,
            backend: None,
        })
    }

    fn load_export(dir: &Path, options: &BundleOptions) -> Result<Self> {
        let meta = ExportMetadata::read(dir)?;
        // An architecture without the cached form (docs/bring-your-own-model.md) is exported in
        // the uncached form only: load that (decode it with `RecomputeVerifier`).
        let uncached_only = meta
            .dtypes
            .get(&options.dtype.to_string())
            .is_some_and(|f| f.cached.is_none() && f.uncached.is_some());
        let backend = options.backend.resolve(&meta, options);
        if backend == Backend::TorchScript && options.bf16_inputs != Bf16Inputs::F32 {
            return Err(Error::config(
                "bf16_inputs",
                "chooses what the native decoder multiplies bf16 weights with; a TorchScript \
                 export's bf16 products are libtorch's (drop --bf16-inputs or use --backend \
                 native)",
            ));
        }
        let model: Box<dyn CausalLm> = match backend {
            Backend::TorchScript | Backend::Auto => Box::new(TorchScriptLm::load(
                dir,
                &LoadOptions {
                    dtype: options.dtype,
                    device: options.device,
                    max_context: options.max_context,
                    f32_matmul: options.f32_matmul,
                    form: if uncached_only {
                        ModuleForm::Uncached
                    } else {
                        ModuleForm::Cached
                    },
                    ..LoadOptions::default()
                },
            )?),
            Backend::Native => Box::new(load_native(dir, options)?),
        };
        let source = export_source(&meta);
        let draft = find_draft(dir, source)?;
        let model: Box<dyn CausalLm> = match find_heads(dir, source, &options.heads)? {
            Some(heads) => Box::new(WithHeads::load(model, heads)?),
            None => model,
        };
        let tokenizer =
            HfTokenizer::from_file(dir.join("tokenizer.json"), meta.eos_token_ids.clone())?;
        if tokenizer.vocab_size() > meta.vocab_size {
            return Err(Error::VocabularyMismatch {
                left: "model",
                left_size: meta.vocab_size,
                right: "tokenizer.json",
                right_size: tokenizer.vocab_size(),
            });
        }
        let chat = match &meta.chat_template {
            Some(src) => {
                let special: BTreeMap<String, String> = meta
                    .special_tokens
                    .iter()
                    .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                    .collect();
                Some(ChatTemplate::new(src, special)?)
            }
            None => None,
        };
        Ok(ModelBundle {
            model,
            tokenizer: Box::new(tokenizer),
            eos: meta.eos_token_ids.clone(),
            chat,
            metadata: Some(meta),
            draft,
            backend: Some(backend),
        })
    }

    /// The prompt's token ids, as transformers encodes them: a plain prompt with the special
    /// tokens the tokenizer adds to a whole input (Gemma's beginning-of-sequence token; none for
    /// SmolLM2), a chat prompt wrapped in the chat template (which writes its own).
    pub fn encode_prompt(&self, text: &str, chat: bool) -> Result<Vec<i64>> {
        if !chat {
            return self.tokenizer.encode_prompt(text);
        }
        let template = self.chat.as_ref().ok_or(Error::MissingCapability {
            component: "--chat",
            capability: "a chat template",
        })?;
        self.tokenizer.encode(&template.user(text)?)
    }
}
