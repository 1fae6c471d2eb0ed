//! Reading PyTorch/pickle files as data, without running any of their code: the one pickle reader,
//! for model checkpoints (`weights/torch_pickle.rs`) and SAE files (`sae/import.rs`).
//!
//! A pickle is a small stack program whose `GLOBAL` + `REDUCE`/`NEWOBJ` opcodes call arbitrary
//! Python callables; loading one with `pickle.load` runs whatever it names. Here the opcodes are
//! parsed (`repugnant-pickle`'s opcode parser) and interpreted by a closed evaluator that calls
//! nothing: the only callables it knows are the ones `torch.save` uses to rebuild tensors and
//! storages, `OrderedDict`, and a short list of configuration dataclasses whose state it keeps as a
//! plain dict. What any other global becomes is the caller's choice (`Globals`): refused with
//! `E_UNSAFE_PICKLE` before anything is built (SAE files), or an inert name whose application gives
//! an inert value (checkpoints, whose training state holds classes such as `argparse.Namespace`
//! beside the tensors; an inert value is never a tensor, so it cannot become a weight).
//!
//! Three containers are understood: the zip format of `torch.save` (`*/data.pkl` + `*/data/<key>`),
//! the legacy `torch.save` stream (magic, protocol, sys info, the object, storage keys, raw storages;
//! also what `torch.storage._load_from_bytes` holds), and a plain pickle whose storages are
//! `_load_from_bytes` blobs (what `pickle.dump` of tensors writes, e.g. ViT-Prisma's `.pkl.gz`).

use crate::error::{PrismaError, Result};
use repugnant_pickle::ops::PickleOp;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Kind, Tensor};

/// What a global outside the known callables and names becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Globals {
    /// `E_UNSAFE_PICKLE` naming it.
    Refuse,
    /// `Py::Global`, and applying it (or a class it names) gives `Py::Inert`.
    Inert,
}

/// Deeper than any file nests its values; `to_json` stops there.
const MAX_JSON_DEPTH: usize = 256;

/// Configuration classes whose pickled instances are read as their field dict (never constructed).
const KNOWN_CLASSES: &[&str] = &[
    "vit_prisma.sae.config.VisionModelSAERunnerConfig",
    "vit_prisma.sae.config.CacheActivationsRunnerConfig",
    "vit_prisma.configs.HookedViTConfig.HookedViTConfig",
];

/// Globals that may appear as plain values (dtype names, storage types); they are kept as names.
fn is_known_name(name: &str) -> bool {
    let torch_dtypes = [
        "float32", "float", "float16", "half", "bfloat16", "float64", "double", "int64", "long", "int32", "int", "int16", "int8", "uint8",
        "bool",
    ];
    match name.strip_prefix("torch.") {
        Some(rest) => rest.ends_with("Storage") && !rest.contains('.') || torch_dtypes.contains(&rest),
        None => false,
    }
}

/// A value of the pickled object graph.
#[derive(Clone, Debug)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Rc<Vec<u8>>),
    List(Rc<RefCell<Vec<Py>>>),
    Tuple(Rc<Vec<Py>>),
    Dict(Rc<RefCell<Vec<(Py, Py)>>>),
    /// A global named but not called (`torch.float32`, `torch.FloatStorage`, a known class).
    Name(String),
    Storage(Rc<Storage>),
    Tensor(Rc<Tensor>),
    /// An instance of a known configuration class: its `__dict__` (a `Dict`) once BUILD has run.
    Object {
        class: String,
        state: Rc<RefCell<Py>>,
    },
    /// A global outside the known ones, read with `Globals::Inert`: only its name.
    Global(String),
    /// What applying such a global gives: nothing of it is kept.
    Inert,
}

/// Dropping a value frees its children from a work list instead of recursively, so a crafted file
/// nesting its values millions deep cannot overflow the stack.
impl Drop for Py {
    fn drop(&mut self) {
        let mut work = Vec::new();
        take_children(self, &mut work);
        while let Some(mut v) = work.pop() {
            take_children(&mut v, &mut work);
        }
    }
}

/// Moves the children this value alone owns into `work`.
fn take_children(v: &mut Py, work: &mut Vec<Py>) {
    match v {
        Py::List(items) => {
            if let Some(cell) = Rc::get_mut(items) {
                work.append(cell.get_mut());
            }
        }
        Py::Tuple(items) => {
            if let Some(items) = Rc::get_mut(items) {
                work.append(items);
            }
        }
        Py::Dict(pairs) => {
            if let Some(cell) = Rc::get_mut(pairs) {
                for (k, v) in cell.get_mut().drain(..) {
                    work.push(k);
                    work.push(v);
                }
            }
        }
        Py::Object { state, .. } => {
            if let Some(cell) = Rc::get_mut(state) {
                work.push(std::mem::replace(cell.get_mut(), Py::None));
            }
        }
        _ => {}
    }
}

#[derive(Debug)]
pub struct Storage {
    kind: Kind,
    bytes: Bytes,
}

/// A storage's bytes: read out of the file, or in place in its memory map (uncompressed zip
/// members, which is how `torch.save` writes them).
#[derive(Debug)]
enum Bytes {
    Owned(Vec<u8>),
    Mapped(Rc<memmap2::Mmap>, Range<usize>),
}

impl Storage {
    fn data(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Owned(v) => v,
            Bytes::Mapped(map, range) => &map[range.clone()],
        }
    }
}

impl Py {
    /// The value under `key` when this is a dict or a known object.
    pub fn get(&self, key: &str) -> Option<Py> {
        match self {
            Py::Dict(items) => items.borrow().iter().find(|(k, _)| matches!(k, Py::Str(s) if s == key)).map(|(_, v)| v.clone()),
            Py::Object { state, .. } => state.borrow().get(key),
            _ => None,
        }
    }

    /// (key, value) pairs of a dict or a known object's fields, keys as strings.
    pub fn items(&self) -> Vec<(String, Py)> {
        match self {
            Py::Dict(items) => items
                .borrow()
                .iter()
                .filter_map(|(k, v)| match k {
                    Py::Str(s) => Some((s.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            Py::Object { state, .. } => state.borrow().items(),
            _ => Vec::new(),
        }
    }

    pub fn as_tensor(&self) -> Option<Tensor> {
        match self {
            Py::Tensor(t) => Some(t.shallow_clone()),
            _ => None,
        }
    }

    /// JSON for the plain-data part of the graph (configs); tensors, storages and inert values
    /// become null, and so does anything nested deeper than any real configuration.
    pub fn to_json(&self) -> serde_json::Value {
        self.to_json_at(0)
    }

    fn to_json_at(&self, depth: usize) -> serde_json::Value {
        use serde_json::Value as J;
        if depth > MAX_JSON_DEPTH {
            return J::Null;
        }
        match self {
            Py::None | Py::Storage(_) | Py::Tensor(_) | Py::Bytes(_) | Py::Inert => J::Null,
            Py::Bool(b) => J::Bool(*b),
            Py::Int(i) => J::from(*i),
            Py::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Py::Str(s) => J::String(s.clone()),
            // `torch.float32` reads back as the string a JSON config would hold.
            Py::Name(n) | Py::Global(n) => J::String(n.clone()),
            Py::List(items) => J::Array(items.borrow().iter().map(|v| v.to_json_at(depth + 1)).collect()),
            Py::Tuple(items) => J::Array(items.iter().map(|v| v.to_json_at(depth + 1)).collect()),
            Py::Dict(_) | Py::Object { .. } => J::Object(self.items().into_iter().map(|(k, v)| (k, v.to_json_at(depth + 1))).collect()),
        }
    }
}

/// Reads a `torch.save` file (zip or legacy) or a plain pickle (optionally gzip-compressed) into its
/// object graph, refusing unknown globals.
pub fn load_file(path: &Path) -> Result<Py> {
    load_file_with(path, Globals::Refuse)
}

/// As `load_file`, with unknown globals handled as `globals` says. A zip's storages stay in the
/// file's memory map until their tensors are built (one copy each).
pub fn load_file_with(path: &Path, globals: Globals) -> Result<Py> {
    let handle = std::fs::File::open(path).map_err(|e| PrismaError::Io { path: path.into(), reason: e.to_string() })?;
    // SAFETY: a read-only map; tensors copy their bytes out of it. A file changed under us can only
    // give wrong values or a format error, never unsoundness in our code, which reads it as bytes.
    let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| PrismaError::Io { path: path.into(), reason: e.to_string() })?;
    let map = Rc::new(map);
    let ctx = Ctx { path: path.to_path_buf(), dry: false, globals };
    if map.starts_with(b"PK\x03\x04") {
        return ctx.load_zip(&map, Some(&map));
    }
    ctx.load(&map)
}

/// As `load_file`, on bytes already read (`path` names them in errors).
pub fn load_bytes(bytes: &[u8], path: &Path) -> Result<Py> {
    load_bytes_with(bytes, path, Globals::Refuse)
}

/// As `load_bytes`, with unknown globals handled as `globals` says.
pub fn load_bytes_with(bytes: &[u8], path: &Path, globals: Globals) -> Result<Py> {
    Ctx { path: path.to_path_buf(), dry: false, globals }.load(bytes)
}

impl Ctx {
    fn load(&self, bytes: &[u8]) -> Result<Py> {
        let ctx = self;
        if bytes.starts_with(b"PK\x03\x04") {
            return ctx.load_zip(bytes, None);
        }
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(bytes).read_to_end(&mut raw).map_err(|e| ctx.bad(format!("not a readable gzip stream ({e})")))?;
            return ctx.load(&raw);
        }
        if bytes.first() != Some(&0x80) {
            return Err(ctx.bad("not a pickle or torch.save file".into()));
        }
        // A legacy torch.save stream starts with the pickled magic number 0x1950a86a20f9469cfc6c.
        let (first, rest) = ctx.run(bytes, &mut NoPersistent)?;
        if matches!(&first, Py::Int(_) | Py::Str(_)) && is_legacy_magic(bytes) {
            return ctx.load_legacy_after_magic(rest);
        }
        Ok(first)
    }
}

fn is_legacy_magic(bytes: &[u8]) -> bool {
    // protocol 2: PROTO 2, LONG1 10 bytes of the magic number (little endian).
    const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    bytes.len() > 14 && bytes[2] == 0x8a && bytes[3] == 10 && bytes[4..14] == MAGIC[..]
}

struct Ctx {
    path: PathBuf,
    /// A first pass over a legacy stream: storages have no bytes yet, so tensors are not built.
    dry: bool,
    globals: Globals,
}

/// Where persistent ids (storages) come from.
trait Persistent {
    fn load(&mut self, ctx: &Ctx, pid: &Py) -> Result<Py>;
}

struct NoPersistent;
impl Persistent for NoPersistent {
    fn load(&mut self, ctx: &Ctx, _pid: &Py) -> Result<Py> {
        Err(ctx.bad("a persistent id outside a torch.save file".into()))
    }
}

/// Zip format: `('storage', type, key, location, numel)` names member `<prefix>/data/<key>`.
struct ZipStorages<'a> {
    archive: zip::ZipArchive<std::io::Cursor<&'a [u8]>>,
    prefix: String,
    loaded: HashMap<String, Rc<Storage>>,
    /// The file's map, when the archive is it: stored members are then used in place.
    map: Option<&'a Rc<memmap2::Mmap>>,
}

impl Persistent for ZipStorages<'_> {
    fn load(&mut self, ctx: &Ctx, pid: &Py) -> Result<Py> {
        let (kind, key, numel) = storage_pid(ctx, pid)?;
        if let Some(s) = self.loaded.get(&key) {
            return Ok(Py::Storage(s.clone()));
        }
        let name = format!("{}/data/{key}", self.prefix);
        let mut member = self.archive.by_name(&name).map_err(|e| ctx.bad(format!("storage '{name}' is missing ({e})")))?;
        let want = numel.checked_mul(kind.elt_size_in_bytes()).ok_or_else(|| ctx.bad(format!("storage '{name}' is too large")))?;
        let (start, size) = (member.data_start() as usize, member.size() as usize);
        let bytes = match self.map {
            Some(map) if member.compression() == zip::CompressionMethod::Stored && start.saturating_add(size) <= map.len() => {
                Bytes::Mapped(Rc::clone(map), start..start + size)
            }
            _ => {
                let mut bytes = Vec::with_capacity(want);
                member.read_to_end(&mut bytes).map_err(|e| ctx.bad(format!("storage '{name}' is unreadable ({e})")))?;
                Bytes::Owned(bytes)
            }
        };
        let storage = Storage { kind, bytes };
        if storage.data().len() < want {
            return Err(ctx.bad(format!("storage '{name}' is truncated: {} of {want} bytes", storage.data().len())));
        }
        let storage = Rc::new(storage);
        self.loaded.insert(key, storage.clone());
        Ok(Py::Storage(storage))
    }
}

/// Legacy format, first pass: storages are declared by key (their bytes follow the object).
#[derive(Default)]
struct LegacyDeclared {
    declared: Vec<(String, Kind, usize)>,
}

impl Persistent for LegacyDeclared {
    fn load(&mut self, ctx: &Ctx, pid: &Py) -> Result<Py> {
        let (kind, key, numel) = storage_pid(ctx, pid)?;
        if !self.declared.iter().any(|(k, _, _)| *k == key) {
            self.declared.push((key, kind, numel));
        }
        Ok(Py::Storage(Rc::new(Storage { kind, bytes: Bytes::Owned(Vec::new()) })))
    }
}

/// Legacy format, second pass: the storages with their bytes.
struct LegacyFilled(HashMap<String, Rc<Storage>>);

impl Persistent for LegacyFilled {
    fn load(&mut self, ctx: &Ctx, pid: &Py) -> Result<Py> {
        let (_, key, _) = storage_pid(ctx, pid)?;
        self.0.get(&key).map(|s| Py::Storage(s.clone())).ok_or_else(|| ctx.bad(format!("storage '{key}' has no data")))
    }
}

fn storage_pid(ctx: &Ctx, pid: &Py) -> Result<(Kind, String, usize)> {
    let Py::Tuple(items) = pid else { return Err(ctx.bad("unexpected persistent id".into())) };
    match items.as_slice() {
        [Py::Str(tag), Py::Name(storage_type), key, _location, Py::Int(numel), ..] if tag == "storage" => {
            let key = match key {
                Py::Str(s) => s.clone(),
                Py::Int(i) => i.to_string(),
                _ => return Err(ctx.bad("unexpected storage key".into())),
            };
            let kind = storage_kind(storage_type).ok_or_else(|| ctx.bad(format!("unsupported storage type {storage_type}")))?;
            let numel = usize::try_from(*numel).map_err(|_| ctx.bad("negative storage size".into()))?;
            Ok((kind, key, numel))
        }
        _ => Err(ctx.bad("unexpected persistent id".into())),
    }
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name.strip_prefix("torch.")? {
        "FloatStorage" => Kind::Float,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "DoubleStorage" => Kind::Double,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

impl Ctx {
    fn bad(&self, reason: String) -> PrismaError {
        PrismaError::WeightsFormat { file: self.path.clone(), reason }
    }

    fn unsafe_global(&self, name: &str) -> PrismaError {
        PrismaError::UnsafePickle { file: self.path.clone(), global: name.to_string() }
    }

    fn load_zip<'a>(&self, bytes: &'a [u8], map: Option<&'a Rc<memmap2::Mmap>>) -> Result<Py> {
        let mut archive =
            zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| self.bad(format!("not a readable torch.save zip ({e})")))?;
        if archive.file_names().any(|n| n.ends_with("/constants.pkl")) {
            return Err(self.bad(
                "a TorchScript archive (torch.jit.save), not a torch.save state dict; save model.state_dict() with torch.save or safetensors"
                    .into(),
            ));
        }
        let data_pkl = archive
            .file_names()
            .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
            .map(str::to_owned)
            .ok_or_else(|| self.bad("no data.pkl in the torch.save zip".into()))?;
        let prefix = data_pkl.strip_suffix("data.pkl").unwrap_or("").trim_end_matches('/').to_string();
        let mut pickle = Vec::new();
        archive
            .by_name(&data_pkl)
            .map_err(|e| self.bad(e.to_string()))?
            .read_to_end(&mut pickle)
            .map_err(|e| self.bad(format!("data.pkl is unreadable ({e})")))?;
        let mut storages = ZipStorages { archive, prefix, loaded: HashMap::new(), map };
        let (value, _) = self.run(&pickle, &mut storages)?;
        Ok(value)
    }

    /// The legacy stream after its magic number: protocol version, sys info, the object, the
    /// sorted storage keys, then each storage as an int64 element count and its raw bytes.
    fn load_legacy_after_magic(&self, rest: &[u8]) -> Result<Py> {
        let (_protocol, rest) = self.run(rest, &mut NoPersistent)?;
        let (_sys_info, object) = self.run(rest, &mut NoPersistent)?;
        // First pass: which storages the object uses (tensors are not built yet).
        let mut declared = LegacyDeclared::default();
        let dry = Ctx { path: self.path.clone(), dry: true, globals: self.globals };
        let (_, rest) = dry.run(object, &mut declared)?;
        let (keys, mut rest) = self.run(rest, &mut NoPersistent)?;
        let keys: Vec<String> = match &keys {
            Py::List(items) => items
                .borrow()
                .iter()
                .map(|k| match k {
                    Py::Str(s) => Ok(s.clone()),
                    Py::Int(i) => Ok(i.to_string()),
                    _ => Err(self.bad("unexpected storage key list".into())),
                })
                .collect::<Result<_>>()?,
            _ => return Err(self.bad("no storage key list after the object".into())),
        };
        let mut filled: HashMap<String, Rc<Storage>> = HashMap::new();
        for key in keys {
            let (_, kind, numel) = declared
                .declared
                .iter()
                .find(|(k, _, _)| *k == key)
                .cloned()
                .ok_or_else(|| self.bad(format!("undeclared storage '{key}'")))?;
            let count_bytes: [u8; 8] =
                rest.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| self.bad(format!("storage '{key}' is truncated")))?;
            let count = u64::from_le_bytes(count_bytes) as usize;
            let n = count.checked_mul(kind.elt_size_in_bytes()).ok_or_else(|| self.bad("storage size overflows".into()))?;
            if count != numel || rest.len() < 8 + n {
                return Err(self.bad(format!("storage '{key}' is truncated or misdeclared")));
            }
            filled.insert(key, Rc::new(Storage { kind, bytes: Bytes::Owned(rest[8..8 + n].to_vec()) }));
            rest = &rest[8 + n..];
        }
        let (value, _) = self.run(object, &mut LegacyFilled(filled))?;
        Ok(value)
    }

    /// Interprets one pickle program; returns its value and the bytes after its STOP.
    fn run<'b>(&self, bytes: &'b [u8], persistent: &mut dyn Persistent) -> Result<(Py, &'b [u8])> {
        let mut stack: Vec<Slot> = Vec::new();
        let mut memo: HashMap<u32, Py> = HashMap::new();
        let mut input = bytes;
        loop {
            let (rest, op) = repugnant_pickle::parsers::parse_op::<nom::error::Error<&[u8]>>(input)
                .map_err(|_| self.bad("truncated or corrupt pickle".into()))?;
            input = rest;
            match op {
                PickleOp::STOP => {
                    let value = pop(self, &mut stack)?;
                    return Ok((value, input));
                }
                PickleOp::PROTO(_) | PickleOp::FRAME(_) => {}
                PickleOp::MARK => stack.push(Slot::Mark),
                PickleOp::POP => {
                    stack.pop();
                }
                PickleOp::POP_MARK => {
                    pop_mark(self, &mut stack)?;
                }
                PickleOp::DUP => {
                    let top = stack.last().cloned().ok_or_else(|| self.bad("stack underrun".into()))?;
                    stack.push(top);
                }
                PickleOp::NONE => push(&mut stack, Py::None),
                PickleOp::NEWTRUE => push(&mut stack, Py::Bool(true)),
                PickleOp::NEWFALSE => push(&mut stack, Py::Bool(false)),
                PickleOp::BININT(v) => push(&mut stack, Py::Int(v as i64)),
                PickleOp::BININT1(v) => push(&mut stack, Py::Int(v as i64)),
                PickleOp::BININT2(v) => push(&mut stack, Py::Int(v as i64)),
                PickleOp::INT(s) => push(
                    &mut stack,
                    match s {
                        "01" => Py::Bool(true),
                        "00" => Py::Bool(false),
                        _ => Py::Int(s.trim().parse().map_err(|_| self.bad("bad INT".into()))?),
                    },
                ),
                PickleOp::LONG(s) => {
                    push(&mut stack, Py::Int(s.trim().trim_end_matches('L').parse().map_err(|_| self.bad("bad LONG".into()))?))
                }
                PickleOp::LONG1(b) | PickleOp::LONG4(b) => {
                    push(&mut stack, Py::Int(long_le(b).ok_or_else(|| self.bad("integer too large".into()))?))
                }
                PickleOp::BINFLOAT(f) => push(&mut stack, Py::Float(f)),
                PickleOp::FLOAT(s) => push(&mut stack, Py::Float(s.trim().parse().map_err(|_| self.bad("bad FLOAT".into()))?)),
                PickleOp::BINUNICODE(s) | PickleOp::SHORT_BINUNICODE(s) | PickleOp::BINUNICODE8(s) | PickleOp::UNICODE(s) => {
                    push(&mut stack, Py::Str(s.to_string()))
                }
                PickleOp::BINSTRING(b) | PickleOp::SHORT_BINSTRING(b) => push(&mut stack, Py::Str(String::from_utf8_lossy(b).into_owned())),
                PickleOp::BINBYTES(b) | PickleOp::SHORT_BINBYTES(b) | PickleOp::BINBYTES8(b) | PickleOp::BYTEARRAY8(b) => {
                    push(&mut stack, Py::Bytes(Rc::new(b.to_vec())))
                }
                PickleOp::EMPTY_LIST => push(&mut stack, Py::List(Rc::new(RefCell::new(Vec::new())))),
                PickleOp::EMPTY_DICT => push(&mut stack, Py::Dict(Rc::new(RefCell::new(Vec::new())))),
                PickleOp::EMPTY_TUPLE => push(&mut stack, Py::Tuple(Rc::new(Vec::new()))),
                PickleOp::EMPTY_SET => push(&mut stack, Py::List(Rc::new(RefCell::new(Vec::new())))),
                PickleOp::TUPLE => {
                    let items = pop_mark(self, &mut stack)?;
                    push(&mut stack, Py::Tuple(Rc::new(items)));
                }
                PickleOp::TUPLE1 | PickleOp::TUPLE2 | PickleOp::TUPLE3 => {
                    let n = match op {
                        PickleOp::TUPLE1 => 1,
                        PickleOp::TUPLE2 => 2,
                        _ => 3,
                    };
                    let mut items = (0..n).map(|_| pop(self, &mut stack)).collect::<Result<Vec<_>>>()?;
                    items.reverse();
                    push(&mut stack, Py::Tuple(Rc::new(items)));
                }
                PickleOp::LIST | PickleOp::FROZENSET => {
                    let items = pop_mark(self, &mut stack)?;
                    push(&mut stack, Py::List(Rc::new(RefCell::new(items))));
                }
                PickleOp::DICT => {
                    let items = pop_mark(self, &mut stack)?;
                    push(&mut stack, Py::Dict(Rc::new(RefCell::new(pairs(self, items)?))));
                }
                PickleOp::APPEND => {
                    let v = pop(self, &mut stack)?;
                    extend(self, top(self, &stack)?, vec![v])?;
                }
                PickleOp::APPENDS | PickleOp::ADDITEMS => {
                    let items = pop_mark(self, &mut stack)?;
                    extend(self, top(self, &stack)?, items)?;
                }
                PickleOp::SETITEM => {
                    let v = pop(self, &mut stack)?;
                    let k = pop(self, &mut stack)?;
                    set_items(self, top(self, &stack)?, vec![(k, v)])?;
                }
                PickleOp::SETITEMS => {
                    let items = pop_mark(self, &mut stack)?;
                    set_items(self, top(self, &stack)?, pairs(self, items)?)?;
                }
                PickleOp::BINPUT(i) => {
                    memo.insert(i as u32, top(self, &stack)?.clone());
                }
                PickleOp::LONG_BINPUT(i) => {
                    memo.insert(i, top(self, &stack)?.clone());
                }
                PickleOp::PUT(s) => {
                    memo.insert(s.trim().parse().map_err(|_| self.bad("bad PUT".into()))?, top(self, &stack)?.clone());
                }
                PickleOp::MEMOIZE => {
                    let n = memo.len() as u32;
                    memo.insert(n, top(self, &stack)?.clone());
                }
                PickleOp::BINGET(i) => {
                    push(&mut stack, memo.get(&(i as u32)).cloned().ok_or_else(|| self.bad("bad memo reference".into()))?)
                }
                PickleOp::LONG_BINGET(i) => push(&mut stack, memo.get(&i).cloned().ok_or_else(|| self.bad("bad memo reference".into()))?),
                PickleOp::GET(s) => {
                    let i: u32 = s.trim().parse().map_err(|_| self.bad("bad GET".into()))?;
                    push(&mut stack, memo.get(&i).cloned().ok_or_else(|| self.bad("bad memo reference".into()))?)
                }
                PickleOp::GLOBAL(module, name) => push(&mut stack, self.global(&format!("{module}.{name}"))?),
                PickleOp::STACK_GLOBAL => {
                    let name = pop(self, &mut stack)?;
                    let module = pop(self, &mut stack)?;
                    match (&module, &name) {
                        (Py::Str(m), Py::Str(n)) => push(&mut stack, self.global(&format!("{m}.{n}"))?),
                        _ => return Err(self.bad("bad STACK_GLOBAL".into())),
                    }
                }
                PickleOp::BINPERSID => {
                    let pid = pop(self, &mut stack)?;
                    push(&mut stack, persistent.load(self, &pid)?);
                }
                PickleOp::PERSID(_) => return Err(self.bad("text persistent ids are not used by torch.save".into())),
                PickleOp::REDUCE => {
                    let args = pop(self, &mut stack)?;
                    let callable = pop(self, &mut stack)?;
                    push(&mut stack, self.call(&callable, &args)?);
                }
                PickleOp::NEWOBJ => {
                    let _args = pop(self, &mut stack)?;
                    let class = pop(self, &mut stack)?;
                    push(&mut stack, self.instantiate(&class)?);
                }
                PickleOp::NEWOBJ_EX => {
                    let _kwargs = pop(self, &mut stack)?;
                    let _args = pop(self, &mut stack)?;
                    let class = pop(self, &mut stack)?;
                    push(&mut stack, self.instantiate(&class)?);
                }
                PickleOp::BUILD => {
                    let state = pop(self, &mut stack)?;
                    let target = top(self, &stack)?;
                    match target {
                        Py::Object { state: slot, .. } => {
                            // (state, slotstate) pairs keep the dict in the first entry.
                            let dict = match &state {
                                Py::Tuple(t) if t.len() == 2 => t[0].clone(),
                                other => other.clone(),
                            };
                            *slot.borrow_mut() = dict;
                        }
                        // OrderedDict state (`_metadata`), tensor state and an inert object's state
                        // carry no numbers we read.
                        Py::Dict(_) | Py::Tensor(_) | Py::Inert => {}
                        _ => return Err(self.bad("BUILD on an unexpected value".into())),
                    }
                }
                PickleOp::INST(module, name) => {
                    let class = self.global(&format!("{module}.{name}"))?;
                    pop_mark(self, &mut stack)?;
                    push(&mut stack, self.instantiate(&class)?);
                }
                PickleOp::OBJ => {
                    let mut items = pop_mark(self, &mut stack)?;
                    if items.is_empty() {
                        return Err(self.bad("OBJ without a class".into()));
                    }
                    let class = items.swap_remove(0);
                    push(&mut stack, self.instantiate(&class)?);
                }
                PickleOp::EXT1(_) | PickleOp::EXT2(_) | PickleOp::EXT4(_) => return Err(self.unsafe_global("copyreg extension")),
                PickleOp::STRING(_) => return Err(self.bad("protocol 0 strings are not supported".into())),
                PickleOp::NEXT_BUFFER | PickleOp::READONLY_BUFFER => return Err(self.bad("out-of-band buffers are not supported".into())),
            }
        }
    }

    /// A global reference: allowed callables and names become `Py::Name`; anything else is refused.
    fn global(&self, name: &str) -> Result<Py> {
        const CALLABLES: &[&str] = &[
            "torch._utils._rebuild_tensor_v2",
            "torch._utils._rebuild_tensor",
            "torch._utils._rebuild_parameter",
            "torch._utils._rebuild_parameter_with_state",
            "torch._tensor._rebuild_from_type_v2",
            "torch.Size",
            "torch.storage._load_from_bytes",
            "collections.OrderedDict",
            "_codecs.encode",
            "torch.device",
            "pathlib.PosixPath",
            "pathlib.WindowsPath",
            "copyreg._reconstructor",
            "builtins.object",
            "builtins.set",
            "builtins.frozenset",
        ];
        if CALLABLES.contains(&name) || KNOWN_CLASSES.contains(&name) || is_known_name(name) {
            Ok(Py::Name(name.to_string()))
        } else {
            self.unknown(name, Py::Global(name.to_string()))
        }
    }

    /// An unknown global (or a known name used as a callable): refused, or `inert` under
    /// `Globals::Inert`.
    fn unknown(&self, name: &str, inert: Py) -> Result<Py> {
        match self.globals {
            Globals::Refuse => Err(self.unsafe_global(name)),
            Globals::Inert => Ok(inert),
        }
    }

    fn instantiate(&self, class: &Py) -> Result<Py> {
        match class {
            Py::Name(n) if KNOWN_CLASSES.contains(&n.as_str()) => {
                Ok(Py::Object { class: n.clone(), state: Rc::new(RefCell::new(Py::Dict(Rc::new(RefCell::new(Vec::new()))))) })
            }
            Py::Name(n) if n == "collections.OrderedDict" => Ok(Py::Dict(Rc::new(RefCell::new(Vec::new())))),
            Py::Name(n) => self.unknown(n, Py::Inert),
            Py::Global(_) | Py::Inert => Ok(Py::Inert),
            _ => Err(self.bad("NEWOBJ on a non-class".into())),
        }
    }

    fn call(&self, callable: &Py, args: &Py) -> Result<Py> {
        let name = match callable {
            Py::Name(name) => name,
            Py::Global(_) | Py::Inert => return Ok(Py::Inert),
            _ => return Err(self.bad("REDUCE on a non-callable".into())),
        };
        let args: Vec<Py> = match args {
            Py::Tuple(t) => t.as_ref().clone(),
            _ => return Err(self.bad(format!("arguments of {name} are not a tuple"))),
        };
        match name.as_str() {
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => self.rebuild_tensor(&args),
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                args.first().cloned().ok_or_else(|| self.bad("empty _rebuild_parameter".into()))
            }
            // (func, new_type, args, state): a tensor subclass; the data is func(*args).
            "torch._tensor._rebuild_from_type_v2" => match args.as_slice() {
                [func, _, inner, ..] => self.call(func, inner),
                _ => Err(self.bad("_rebuild_from_type_v2 with too few arguments".into())),
            },
            "torch.Size" => Ok(args.first().cloned().unwrap_or_else(|| Py::Tuple(Rc::new(Vec::new())))),
            "collections.OrderedDict" | "builtins.set" | "builtins.frozenset" => match args.first() {
                None => Ok(Py::Dict(Rc::new(RefCell::new(Vec::new())))),
                Some(Py::List(items)) if name == "collections.OrderedDict" => {
                    let items = items.borrow().clone();
                    let kv = items
                        .iter()
                        .map(|p| match p {
                            Py::Tuple(t) if t.len() == 2 => Ok((t[0].clone(), t[1].clone())),
                            _ => Err(self.bad("bad OrderedDict item".into())),
                        })
                        .collect::<Result<_>>()?;
                    Ok(Py::Dict(Rc::new(RefCell::new(kv))))
                }
                Some(Py::List(items)) => Ok(Py::List(items.clone())),
                Some(_) => Err(self.bad(format!("unexpected arguments to {name}"))),
            },
            "_codecs.encode" => match args.first() {
                // protocol-2 bytes: the latin-1 code points are the bytes.
                Some(Py::Str(s)) => Ok(Py::Bytes(Rc::new(s.chars().map(|c| c as u32 as u8).collect()))),
                _ => Err(self.bad("unexpected _codecs.encode arguments".into())),
            },
            "torch.device" => match args.as_slice() {
                [Py::Str(s)] => Ok(Py::Str(s.clone())),
                [Py::Str(s), Py::Int(i)] => Ok(Py::Str(format!("{s}:{i}"))),
                _ => Ok(Py::Str("cpu".into())),
            },
            "pathlib.PosixPath" | "pathlib.WindowsPath" => {
                let parts: Vec<String> = args.iter().filter_map(|a| if let Py::Str(s) = a { Some(s.clone()) } else { None }).collect();
                Ok(Py::Str(parts.join("/")))
            }
            "copyreg._reconstructor" => match args.first() {
                Some(class) => self.instantiate(class),
                None => Err(self.bad("empty copyreg._reconstructor".into())),
            },
            "torch.storage._load_from_bytes" => match args.first() {
                Some(Py::Bytes(b)) => match load_bytes(b, &self.path)? {
                    s @ Py::Storage(_) => Ok(s),
                    _ => Err(self.bad("_load_from_bytes did not hold a storage".into())),
                },
                _ => Err(self.bad("unexpected _load_from_bytes arguments".into())),
            },
            other => self.unknown(other, Py::Inert),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`.
    fn rebuild_tensor(&self, args: &[Py]) -> Result<Py> {
        if self.dry {
            return Ok(Py::None);
        }
        let (storage, offset, size, stride) = match args {
            [Py::Storage(s), Py::Int(o), size, stride, ..] => (s, *o, size, stride),
            _ => return Err(self.bad("unexpected arguments to _rebuild_tensor_v2".into())),
        };
        let dims = |v: &Py| -> Result<Vec<i64>> {
            let items = match v {
                Py::Tuple(t) => t.as_ref().clone(),
                Py::List(l) => l.borrow().clone(),
                _ => return Err(self.bad("bad tensor shape".into())),
            };
            items.iter().map(|v| if let Py::Int(i) = v { Ok(*i) } else { Err(self.bad("bad tensor shape".into())) }).collect()
        };
        let (size, stride) = (dims(size)?, dims(stride)?);
        if size.len() != stride.len() || size.iter().chain(&stride).any(|&d| d < 0) || offset < 0 {
            return Err(self.bad("bad tensor shape or stride".into()));
        }
        let item = storage.kind.elt_size_in_bytes();
        let available = (storage.data().len() / item) as i64;
        // Elements the strided view reaches from its offset (checked: the numbers come from the file).
        let reach = if size.contains(&0) {
            Some(0)
        } else {
            size.iter().zip(&stride).try_fold(1i64, |acc, (&n, &st)| acc.checked_add((n - 1).checked_mul(st)?))
        };
        let end = reach.and_then(|r| offset.checked_add(r)).filter(|&e| e <= available);
        let (Some(reach), Some(end)) = (reach, end) else {
            return Err(self.bad(format!("a tensor of shape {size:?} reaches past its storage ({available} elements)")));
        };
        // Only the elements the view reaches are copied out of the storage.
        let bytes = &storage.data()[offset as usize * item..end as usize * item];
        let flat = Tensor::f_from_data_size(bytes, &[reach], storage.kind)?;
        let t = flat.f_as_strided(size.as_slice(), stride.as_slice(), 0)?.f_contiguous()?;
        Ok(Py::Tensor(Rc::new(t)))
    }
}

#[derive(Clone)]
enum Slot {
    Mark,
    Value(Py),
}

fn push(stack: &mut Vec<Slot>, v: Py) {
    stack.push(Slot::Value(v));
}

fn pop(ctx: &Ctx, stack: &mut Vec<Slot>) -> Result<Py> {
    match stack.pop() {
        Some(Slot::Value(v)) => Ok(v),
        _ => Err(ctx.bad("corrupt pickle (stack underrun)".into())),
    }
}

fn top<'s>(ctx: &Ctx, stack: &'s [Slot]) -> Result<&'s Py> {
    match stack.last() {
        Some(Slot::Value(v)) => Ok(v),
        _ => Err(ctx.bad("corrupt pickle (no value on the stack)".into())),
    }
}

fn pop_mark(ctx: &Ctx, stack: &mut Vec<Slot>) -> Result<Vec<Py>> {
    let at = stack.iter().rposition(|s| matches!(s, Slot::Mark)).ok_or_else(|| ctx.bad("corrupt pickle (no MARK)".into()))?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items.into_iter().filter_map(|s| if let Slot::Value(v) = s { Some(v) } else { None }).collect())
}

fn pairs(ctx: &Ctx, items: Vec<Py>) -> Result<Vec<(Py, Py)>> {
    if !items.len().is_multiple_of(2) {
        return Err(ctx.bad("corrupt pickle (odd dict items)".into()));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn extend(ctx: &Ctx, target: &Py, items: Vec<Py>) -> Result<()> {
    match target {
        Py::List(l) => {
            l.borrow_mut().extend(items);
            Ok(())
        }
        _ => Err(ctx.bad("APPEND to a non-list".into())),
    }
}

fn set_items(ctx: &Ctx, target: &Py, items: Vec<(Py, Py)>) -> Result<()> {
    match target {
        Py::Dict(d) => {
            let mut d = d.borrow_mut();
            for (k, v) in items {
                let same_key = |existing: &Py| match (existing, &k) {
                    (Py::Str(a), Py::Str(b)) => a == b,
                    (Py::Int(a), Py::Int(b)) => a == b,
                    _ => false,
                };
                match d.iter_mut().find(|(ek, _)| same_key(ek)) {
                    Some(slot) => slot.1 = v,
                    None => d.push((k, v)),
                }
            }
            Ok(())
        }
        Py::Object { state, .. } => set_items(ctx, &state.borrow(), items),
        _ => Err(ctx.bad("SETITEM on a non-dict".into())),
    }
}

/// Little-endian two's-complement integer (LONG1/LONG4) that fits in i64.
fn long_le(b: &[u8]) -> Option<i64> {
    if b.is_empty() {
        return Some(0);
    }
    if b.len() > 8 {
        // The legacy magic number is 10 bytes; only its presence matters, not its value.
        let negative = b[b.len() - 1] & 0x80 != 0;
        let fits = b[8..].iter().all(|&x| x == if negative { 0xff } else { 0 });
        if !fits {
            return Some(i64::MAX);
        }
    }
    let mut buf = [if b[b.len() - 1] & 0x80 != 0 { 0xffu8 } else { 0 }; 8];
    for (i, &x) in b.iter().take(8).enumerate() {
        buf[i] = x;
    }
    Some(i64::from_le_bytes(buf))
}
