//! `torch.save` checkpoints (the zip format PyTorch has written since 1.6) read without running
//! any pickled code. The pickle program in `*/data.pkl` is interpreted by a small stack machine
//! that knows every opcode of protocols 0-5 but calls nothing: a global (`module.name`) is only a
//! name, and applying one gives an inert object, except for the few PyTorch and builtin functions
//! that rebuild tensors, ordered dicts and sets, which are recognised by name. Tensor bytes come
//! from the archive's uncompressed `data/<key>` members.
//!
//! Which tensors are the weights: the state dict at the top level (transformers'
//! `save_pretrained(safe_serialization=False)` writes a plain dict, `model.state_dict()` an
//! OrderedDict), or inside a training checkpoint, chosen as timm 1.0's `load_state_dict` does
//! (`state_dict_ema`, `model_ema`, `state_dict`, `model`), with timm's `clean_state_dict` prefixes
//! (`module.` from DDP, `_orig_mod.` from torch.compile) removed.

use crate::error::{PrismaError, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// Deeper nesting than any checkpoint has; a crafted file nested deeper would overflow the stack
/// when its values are dropped.
const MAX_DEPTH: u32 = 256;

#[derive(Debug)]
struct StorageRef {
    /// `FloatStorage` etc. without the suffix.
    dtype: String,
    key: String,
    /// Elements in the storage.
    numel: u64,
}

#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: u64,
    shape: Vec<i64>,
    stride: Vec<i64>,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    /// An integer too large for i64 (never a tensor argument).
    BigInt,
    Float,
    Str(String),
    Bytes,
    Global(String, String),
    Tuple(Vec<Value>, u32),
    List(Vec<Value>, u32),
    Dict(Vec<(Value, Value)>, u32),
    /// What applying a function or class we do not know gives: nothing of it is used.
    Object(u32),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) | Value::Object(d) => *d,
            _ => 0,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) | Value::BigInt => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Global(..) => "a class or function",
            Value::Tuple(..) => "a tuple",
            Value::List(..) => "a list",
            Value::Dict(..) => "a dict",
            Value::Object(_) => "an object",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

fn nested(children: &[Value]) -> Result<u32> {
    let d = 1 + children.iter().map(Value::depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        return Err(PrismaError::Internal(format!("values nested more than {MAX_DEPTH} deep")));
    }
    Ok(d)
}

fn tuple(items: Vec<Value>) -> Result<Value> {
    let d = nested(&items)?;
    Ok(Value::Tuple(items, d))
}

fn dict(pairs: Vec<(Value, Value)>) -> Result<Value> {
    let flat: Vec<Value> = pairs.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect();
    let d = nested(&flat)?;
    Ok(Value::Dict(pairs, d))
}

/// The pickle machine. Errors are plain strings here; the caller adds the file.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Positions in `stack` where MARKs were pushed (the marks are not kept on the stack itself).
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

type R<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("the pickle ends early")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> R<u64> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("the pickle ends early")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a text argument is not UTF-8")?;
        self.pos += n + 1;
        Ok(s.trim_end_matches('\r'))
    }

    fn sized(&mut self, len: u64) -> R<&'a [u8]> {
        let n = usize::try_from(len).map_err(|_| "a length does not fit in memory")?;
        self.take(n)
    }

    fn text(&mut self, len: u64) -> R<Value> {
        let b = self.sized(len)?;
        Ok(Value::Str(std::str::from_utf8(b).map_err(|_| "a string is not UTF-8")?.to_string()))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> R<Value> {
        if self.marks.last().is_some_and(|&m| m == self.stack.len()) {
            return Err("a value was taken across a mark".into());
        }
        self.stack.pop().ok_or_else(|| "the stack is empty".into())
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self.marks.pop().ok_or("no mark on the stack")?;
        Ok(self.stack.split_off(m))
    }

    fn top(&mut self) -> R<&mut Value> {
        if self.marks.last().is_some_and(|&m| m == self.stack.len()) {
            return Err("a value was taken across a mark".into());
        }
        self.stack.last_mut().ok_or_else(|| "the stack is empty".into())
    }

    fn extend_list(&mut self, items: Vec<Value>) -> R<()> {
        let add = nested(&items).map_err(|e| e.to_string())?;
        match self.top()? {
            Value::List(list, d) => {
                list.extend(items);
                *d = (*d).max(add);
                Ok(())
            }
            // a set (EMPTY_SET / ADDITEMS) is kept as a list
            other => Err(format!("items appended to {}", other.describe())),
        }
    }

    fn extend_dict(&mut self, items: Vec<Value>) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let add = nested(&items).map_err(|e| e.to_string())?;
        match self.top()? {
            Value::Dict(pairs, d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                *d = (*d).max(add);
                Ok(())
            }
            other => Err(format!("items set on {}", other.describe())),
        }
    }

    fn persistent_load(&self, pid: Value) -> R<Value> {
        let Value::Tuple(items, _) = &pid else { return Err(format!("a persistent id is {}", pid.describe())) };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(module, class), Value::Str(key), _location, Value::Int(numel), ..]
                if tag == "storage" && module == "torch" =>
            {
                let dtype = class.strip_suffix("Storage").ok_or_else(|| format!("storage class torch.{class}"))?;
                let numel = u64::try_from(*numel).map_err(|_| "a storage has a negative size")?;
                Ok(Value::Storage(Rc::new(StorageRef { dtype: dtype.to_string(), key: key.clone(), numel })))
            }
            _ => Err("a persistent id that is not a torch storage".into()),
        }
    }

    /// `callable(*args)` for the functions that build what a state dict holds; anything else is inert.
    fn call(&self, callable: Value, args: Value) -> R<Value> {
        let Value::Global(module, name) = &callable else {
            return Ok(Value::Object(1 + args.depth()));
        };
        let items = match &args {
            Value::Tuple(items, _) => items.as_slice(),
            _ => &[],
        };
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => rebuild_tensor(items),
            ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
                items.first().cloned().ok_or_else(|| "_rebuild_parameter without arguments".into())
            }
            // (func, new_type, args, state): a tensor subclass; the data is func(*args).
            ("torch._tensor", "_rebuild_from_type_v2") => match items {
                [func, _, inner, ..] => self.call(func.clone(), inner.clone()),
                _ => Err("_rebuild_from_type_v2 with too few arguments".into()),
            },
            ("collections", "OrderedDict") => {
                let mut pairs = Vec::new();
                if let Some(Value::List(list, _) | Value::Tuple(list, _)) = items.first() {
                    for item in list {
                        match item {
                            Value::Tuple(kv, _) | Value::List(kv, _) if kv.len() == 2 => pairs.push((kv[0].clone(), kv[1].clone())),
                            _ => return Err("OrderedDict built from something other than pairs".into()),
                        }
                    }
                }
                dict(pairs).map_err(|e| e.to_string())
            }
            ("torch", "Size") => Ok(items.first().cloned().unwrap_or(Value::Tuple(Vec::new(), 1))),
            _ => Ok(Value::Object(1 + args.depth())),
        }
    }

    fn run(mut self) -> R<Value> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return Err(format!("pickle protocol {proto} (this reader knows 0..5)"));
                    }
                }
                0x95 => {
                    self.le(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 | 0x89 => self.push(Value::Bool),
                b'I' => {
                    let s = self.line()?;
                    let v = match s {
                        "00" | "01" => Value::Bool,
                        _ => s.parse::<i64>().map(Value::Int).unwrap_or(Value::BigInt),
                    };
                    self.push(v);
                }
                b'J' => {
                    let v = self.le(4)? as u32 as i32;
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.le(2)?;
                    self.push(Value::Int(v as i64));
                }
                b'L' => {
                    let s = self.line()?;
                    let v = s.trim_end_matches('L').parse::<i64>().map(Value::Int).unwrap_or(Value::BigInt);
                    self.push(v);
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.byte()? as u64 } else { self.le(4)? };
                    let bytes = self.sized(n)?;
                    let v = if bytes.len() <= 8 {
                        let mut x: i64 = 0;
                        for (i, &b) in bytes.iter().enumerate() {
                            x |= (b as i64) << (8 * i);
                        }
                        if let Some(&last) = bytes.last() {
                            if bytes.len() < 8 && last & 0x80 != 0 {
                                x -= 1i64 << (8 * bytes.len());
                            }
                        }
                        Value::Int(x)
                    } else {
                        Value::BigInt
                    };
                    self.push(v);
                }
                b'F' => {
                    self.line()?;
                    self.push(Value::Float);
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float);
                }
                b'S' => {
                    let s = self.line()?.to_string();
                    self.push(Value::Str(s.trim_matches(|c| c == '\'' || c == '"').to_string()));
                }
                b'T' | b'U' => {
                    let n = if op == b'T' { self.le(4)? } else { self.byte()? as u64 };
                    self.sized(n)?;
                    self.push(Value::Bytes);
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.le(4)?,
                        b'C' => self.byte()? as u64,
                        _ => self.le(8)?,
                    };
                    self.sized(n)?;
                    self.push(Value::Bytes);
                }
                b'V' => {
                    let s = self.line()?.to_string();
                    self.push(Value::Str(s));
                }
                b'X' => {
                    let n = self.le(4)?;
                    let v = self.text(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.byte()? as u64;
                    let v = self.text(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.le(8)?;
                    let v = self.text(n)?;
                    self.push(v);
                }
                b')' => self.push(Value::Tuple(Vec::new(), 1)),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(tuple(items).map_err(|e| e.to_string())?);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(tuple(items).map_err(|e| e.to_string())?);
                }
                b']' | 0x8f => self.push(Value::List(Vec::new(), 1)),
                b'l' | 0x91 => {
                    // LIST, FROZENSET: both kept as lists
                    let items = self.pop_mark()?;
                    let d = nested(&items).map_err(|e| e.to_string())?;
                    self.push(Value::List(items, d));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'}' => self.push(Value::Dict(Vec::new(), 1)),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new(), 1));
                    self.extend_dict(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL without two strings".into()),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err("OBJ without a class".into());
                    }
                    let class = items.remove(0);
                    let args = tuple(items).map_err(|e| e.to_string())?;
                    let v = self.call(class, args)?;
                    self.push(v);
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let items = self.pop_mark()?;
                    let args = tuple(items).map_err(|e| e.to_string())?;
                    let v = self.call(Value::Global(module, name), args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (`_metadata`), a tensor or an object is not needed.
                    self.pop()?;
                    self.top()?;
                }
                b'p' => {
                    let key = self.line()?.parse::<u64>().map_err(|_| "PUT with a bad index")?;
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => self.byte()? as u64,
                        b'r' => self.le(4)?,
                        _ => self.memo.len() as u64,
                    };
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'g' | b'h' | b'j' => {
                    let key = match op {
                        b'g' => self.line()?.parse::<u64>().map_err(|_| "GET with a bad index")?,
                        b'h' => self.byte()? as u64,
                        _ => self.le(4)?,
                    };
                    let v = self.memo.get(&key).cloned().ok_or_else(|| format!("memo entry {key} is missing"))?;
                    self.push(v);
                }
                b'P' => {
                    let id = self.line()?.to_string();
                    return Err(format!("a text persistent id ({id}) that is not a torch storage"));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                0x82..=0x84 => return Err("pickle extension codes (copyreg) are not used by torch.save".into()),
                0x97 | 0x98 => return Err("out-of-band buffers are not used by torch.save".into()),
                other => return Err(format!("unknown pickle opcode 0x{other:02x} at byte {}", self.pos - 1)),
            }
        }
    }
}

fn int_list(v: &Value, what: &str) -> R<Vec<i64>> {
    match v {
        Value::Tuple(items, _) | Value::List(items, _) => items
            .iter()
            .map(|x| match x {
                Value::Int(n) if *n >= 0 => Ok(*n),
                _ => Err(format!("a tensor {what} holds something other than sizes")),
            })
            .collect(),
        _ => Err(format!("a tensor {what} is {}", v.describe())),
    }
}

fn rebuild_tensor(args: &[Value]) -> R<Value> {
    match args {
        [Value::Storage(storage), Value::Int(offset), size, stride, ..] => {
            let shape = int_list(size, "size")?;
            let stride = int_list(stride, "stride")?;
            if shape.len() != stride.len() {
                return Err("a tensor's size and stride differ in length".into());
            }
            let offset = u64::try_from(*offset).map_err(|_| "a tensor has a negative offset")?;
            Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), offset, shape, stride })))
        }
        _ => Err("_rebuild_tensor_v2 called with arguments that are not (storage, offset, size, stride, ...)".into()),
    }
}

fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "Float" => Kind::Float,
        "Double" => Kind::Double,
        "Half" => Kind::Half,
        "BFloat16" => Kind::BFloat16,
        "Long" => Kind::Int64,
        "Int" => Kind::Int,
        "Short" => Kind::Int16,
        "Char" => Kind::Int8,
        "Byte" => Kind::Uint8,
        "Bool" => Kind::Bool,
        _ => return None,
    })
}

fn has_tensors(pairs: &[(Value, Value)]) -> bool {
    pairs.iter().any(|(_, v)| matches!(v, Value::Tensor(_)))
}

/// The state dict in a checkpoint's top-level value, as timm's `load_state_dict(use_ema=True)` picks it.
fn state_dict(top: Value) -> R<Vec<(String, Rc<TensorRef>)>> {
    let Value::Dict(pairs, _) = top else {
        return Err(format!("the checkpoint holds {}, not a dict of tensors", top.describe()));
    };
    let chosen = if has_tensors(&pairs) {
        pairs
    } else {
        let mut found = None;
        let mut pairs = pairs;
        for key in ["state_dict_ema", "model_ema", "state_dict", "model"] {
            if let Some(i) =
                pairs.iter().position(|(k, v)| matches!(k, Value::Str(s) if s == key) && matches!(v, Value::Dict(p, _) if has_tensors(p)))
            {
                if let (_, Value::Dict(inner, _)) = pairs.swap_remove(i) {
                    found = Some(inner);
                }
                break;
            }
        }
        found.ok_or("the checkpoint holds no tensors at its top level nor under 'state_dict_ema', 'model_ema', 'state_dict' or 'model'")?
    };
    let mut out = Vec::new();
    for (k, v) in chosen {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else { continue };
        out.push((clean_name(&name).to_string(), t));
    }
    Ok(out)
}

/// timm's `clean_state_dict`: DDP's `module.` and torch.compile's `_orig_mod.` wrappers, in either order.
fn clean_name(name: &str) -> &str {
    let mut k = name;
    if k.starts_with("_orig_mod.") || k.starts_with("module.") {
        for prefix in ["_orig_mod.", "module.", "_orig_mod."] {
            k = k.strip_prefix(prefix).unwrap_or(k);
        }
    }
    k
}

/// The legacy (pre-1.6) `torch.save` format starts with this pickled integer.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Every tensor of a `torch.save` checkpoint's state dict, in the file's dtypes, on the CPU.
pub fn read_checkpoint(file: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |reason: String| PrismaError::WeightsFormat { file: file.into(), reason };
    let handle = std::fs::File::open(file).map_err(|e| PrismaError::Io { path: file.into(), reason: e.to_string() })?;
    // SAFETY: a read-only map, dropped before returning; tensors copy their bytes out of it.
    let bytes = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| PrismaError::Io { path: file.into(), reason: e.to_string() })?;
    if !bytes.starts_with(b"PK") {
        let legacy = bytes.len() > 16 && bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) && bytes[4..14] == LEGACY_MAGIC;
        return Err(bad(if legacy {
            "a legacy torch.save file (PyTorch < 1.6 format); load and save it again with a current PyTorch, or convert it to safetensors"
                .into()
        } else {
            "not a torch.save checkpoint (not a zip archive)".into()
        }));
    }
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).map_err(|e| bad(format!("not a readable torch.save checkpoint ({e})")))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names.iter().find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1).cloned().ok_or_else(|| {
        bad(if names.iter().any(|n| n.ends_with("/constants.pkl")) {
            "a TorchScript archive (torch.jit.save), not a torch.save state dict; save model.state_dict() with torch.save or safetensors"
                .into()
        } else {
            "no data.pkl in the archive: not a torch.save checkpoint".into()
        })
    })?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut program = Vec::new();
    zip.by_name(&pkl)
        .and_then(|mut f| f.read_to_end(&mut program).map_err(Into::into))
        .map_err(|e| bad(format!("cannot read {pkl} ({e})")))?;
    let machine = Machine { data: &program, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    let top = machine.run().map_err(|e| bad(format!("cannot read its pickle: {e}")))?;
    let tensors = state_dict(top).map_err(bad)?;

    // Where each storage's bytes are: uncompressed zip members, read in place.
    let mut members: HashMap<String, (usize, usize)> = HashMap::new();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let s = &t.storage;
        let kind = kind_of(&s.dtype).ok_or_else(|| bad(format!("tensor '{name}' has unsupported dtype {}", s.dtype)))?;
        let item = kind.elt_size_in_bytes() as u64;
        let (start, len) = match members.get(&s.key) {
            Some(&m) => m,
            None => {
                let member = format!("{prefix}data/{}", s.key);
                let f = zip.by_name(&member).map_err(|e| bad(format!("tensor '{name}': storage {member} ({e})")))?;
                if f.compression() != zip::CompressionMethod::Stored {
                    return Err(bad(format!("tensor '{name}': storage {member} is compressed (torch.save never compresses)")));
                }
                let m = (f.data_start() as usize, f.size() as usize);
                members.insert(s.key.clone(), m);
                m
            }
        };
        // Elements the strided view can reach from its offset.
        let reach: u64 = if t.shape.contains(&0) {
            0
        } else {
            1 + t.shape.iter().zip(&t.stride).map(|(&n, &st)| (n as u64 - 1) * st as u64).sum::<u64>()
        };
        let end_elems = t.offset + reach;
        if end_elems > s.numel || end_elems * item > len as u64 || start + len > bytes.len() {
            return Err(bad(format!("tensor '{name}' reaches past its storage")));
        }
        let from = start + (t.offset * item) as usize;
        let to = start + (end_elems * item) as usize;
        let flat = Tensor::f_from_data_size(&bytes[from..to], &[reach as i64], kind)?;
        let tensor = flat.f_as_strided(t.shape.as_slice(), t.stride.as_slice(), 0)?.f_contiguous()?;
        out.push((name, tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &[u8]) -> R<Value> {
        Machine { data: program, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }.run()
    }

    #[test]
    fn a_global_is_never_called() {
        // pickle.dumps of os.system('touch /tmp/x') via __reduce__, protocol 2
        let program = b"\x80\x02cposix\nsystem\nq\x00X\x0c\x00\x00\x00touch /tmp/xq\x01\x85q\x02Rq\x03.";
        assert!(matches!(run(program), Ok(Value::Object(_))));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut program = b"\x80\x02)".to_vec();
        program.extend(std::iter::repeat_n(0x85u8, 100_000)); // TUPLE1 around the last value
        program.push(b'.');
        assert!(run(&program).unwrap_err().contains("nested more than"));
    }

    #[test]
    fn truncated_programs_are_errors() {
        assert!(run(b"\x80\x02X\xff\x00\x00\x00ab").unwrap_err().contains("ends early"));
        assert!(run(b"\x80\x02").is_err());
    }

    #[test]
    fn clean_name_drops_wrapper_prefixes() {
        assert_eq!(clean_name("module.visual.proj"), "visual.proj");
        assert_eq!(clean_name("_orig_mod.module.a"), "a");
        assert_eq!(clean_name("blocks.module.a"), "blocks.module.a");
    }
}
