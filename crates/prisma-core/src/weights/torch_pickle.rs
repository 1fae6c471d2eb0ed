//! Which tensors of a pickled checkpoint (`torch.save`, zip or legacy, or a plain pickle) are the
//! model's weights. The file is read by `pickle.rs` with `Globals::Inert`: no pickled code runs, a
//! class or function in it is only a name, and applying one gives an inert value (training
//! checkpoints hold `argparse.Namespace` arguments and optimizer state beside the tensors).
//!
//! The state dict is the top level (transformers' `save_pretrained(safe_serialization=False)` writes
//! a plain dict, `model.state_dict()` an OrderedDict), or inside a training checkpoint, chosen as
//! timm 1.0's `load_state_dict` does (`state_dict_ema`, `model_ema`, `state_dict`, `model`), with
//! timm's `clean_state_dict` prefixes (`module.` from DDP, `_orig_mod.` from torch.compile) removed.

use super::pickle::{load_file_with, Globals, Py};
use crate::error::{PrismaError, Result};
use std::path::Path;
use tch::Tensor;

fn describe(v: &Py) -> &'static str {
    match v {
        Py::None => "None",
        Py::Bool(_) => "a bool",
        Py::Int(_) => "an int",
        Py::Float(_) => "a float",
        Py::Str(_) => "a string",
        Py::Bytes(_) => "bytes",
        Py::Name(_) | Py::Global(_) => "a class or function",
        Py::Tuple(_) => "a tuple",
        Py::List(_) => "a list",
        Py::Dict(_) => "a dict",
        Py::Object { .. } | Py::Inert => "an object",
        Py::Storage(_) => "a storage",
        Py::Tensor(_) => "a tensor",
    }
}

fn has_tensors(pairs: &[(Py, Py)]) -> bool {
    pairs.iter().any(|(_, v)| matches!(v, Py::Tensor(_)))
}

/// The state dict in a checkpoint's top-level value, as timm's `load_state_dict(use_ema=True)` picks it.
fn state_dict(top: &Py) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let Py::Dict(pairs) = top else {
        return Err(format!("the checkpoint holds {}, not a dict of tensors", describe(top)));
    };
    let pairs = pairs.borrow();
    let chosen = if has_tensors(&pairs) {
        pairs.clone()
    } else {
        ["state_dict_ema", "model_ema", "state_dict", "model"]
            .iter()
            .find_map(|key| {
                pairs.iter().find_map(|(k, v)| match (k, v) {
                    (Py::Str(s), Py::Dict(inner)) if s == key && has_tensors(&inner.borrow()) => Some(inner.borrow().clone()),
                    _ => None,
                })
            })
            .ok_or("the checkpoint holds no tensors at its top level nor under 'state_dict_ema', 'model_ema', 'state_dict' or 'model'")?
    };
    Ok(chosen
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Py::Str(name), Py::Tensor(t)) => Some((clean_name(name).to_string(), t.shallow_clone())),
            _ => None,
        })
        .collect())
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

/// Every tensor of a pickled checkpoint's state dict, in the file's dtypes, on the CPU.
pub fn read_checkpoint(file: &Path) -> Result<Vec<(String, Tensor)>> {
    let top = load_file_with(file, Globals::Inert)?;
    state_dict(&top).map_err(|reason| PrismaError::WeightsFormat { file: file.into(), reason })
}

#[cfg(test)]
mod tests {
    use super::super::pickle::load_bytes_with;
    use super::*;

    fn run(program: &[u8]) -> Result<Py> {
        load_bytes_with(program, Path::new("test.pkl"), Globals::Inert)
    }

    #[test]
    fn a_global_is_never_called() {
        // pickle.dumps of os.system('touch /tmp/x') via __reduce__, protocol 2
        let program = b"\x80\x02cposix\nsystem\nq\x00X\x0c\x00\x00\x00touch /tmp/xq\x01\x85q\x02Rq\x03.";
        assert!(matches!(run(program), Ok(Py::Inert)));
        let refused = load_bytes_with(program, Path::new("test.pkl"), Globals::Refuse).unwrap_err();
        assert_eq!(refused.code(), "E_UNSAFE_PICKLE", "{refused}");
    }

    #[test]
    fn deep_nesting_is_read_and_dropped_without_a_stack_overflow() {
        let mut program = b"\x80\x02)".to_vec();
        program.extend(std::iter::repeat_n(0x85u8, 1_000_000)); // TUPLE1 around the last value
        program.push(b'.');
        let value = run(&program).unwrap();
        assert_eq!(describe(&value), "a tuple");
        assert!(value.to_json().is_array());
        drop(value);
    }

    #[test]
    fn truncated_programs_are_errors() {
        assert_eq!(run(b"\x80\x02X\xff\x00\x00\x00ab").unwrap_err().code(), "E_WEIGHTS_FORMAT");
        assert!(run(b"\x80\x02").is_err());
    }

    #[test]
    fn clean_name_drops_wrapper_prefixes() {
        assert_eq!(clean_name("module.visual.proj"), "visual.proj");
        assert_eq!(clean_name("_orig_mod.module.a"), "a");
        assert_eq!(clean_name("blocks.module.a"), "blocks.module.a");
    }
}
