//! Device and dtype names as users type them (`--device cuda:1`, `--dtype bf16`).

use crate::error::{PrismaError, Result};
use tch::{Device, Kind};

pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    let device = match name.as_str() {
        "" | "cpu" => return Ok(Device::Cpu),
        "mps" => Device::Mps,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => Device::Cuda(i),
            None => return Err(PrismaError::Device(format!("unknown device '{name}' (use cpu, cuda, cuda:N or mps)"))),
        },
    };
    if let Device::Cuda(i) = device {
        load_cuda_runtime();
        no_tf32();
        let count = tch::Cuda::device_count() as usize;
        if count == 0 {
            return Err(PrismaError::Device(format!(
                "device '{name}' requested but CUDA is not available (libtorch {}: {})",
                libtorch_lib_dir().map(|d| d.display().to_string()).unwrap_or_else(|| "unknown location".into()),
                if libtorch_has_cuda() { "a CUDA build, but no usable GPU/driver" } else { "a CPU-only build" }
            )));
        }
        if i >= count {
            return Err(PrismaError::Device(format!("device '{name}' requested but only {count} CUDA device(s) exist")));
        }
    }
    if device == Device::Mps && !tch::utils::has_mps() {
        return Err(PrismaError::Device("device 'mps' requested but MPS is not available".into()));
    }
    Ok(device)
}

extern "C" {
    fn prisma_cuda_no_tf32();
    fn prisma_cuda_tf32_state(conv: *mut std::ffi::c_int, matmul: *mut std::ffi::c_int, consistent: *mut std::ffi::c_int);
}

/// fp32 on a GPU means IEEE fp32: libtorch lets cuDNN convolutions use TF32 by default, which
/// moves a patch embedding ~1e-3 away from the CPU's fp32. Set when CUDA is first asked for.
fn no_tf32() {
    // SAFETY: sets fields of libtorch's global context; no arguments.
    unsafe { prisma_cuda_no_tf32() };
}

/// Whether CUDA may compute fp32 with TF32: convolutions, matmuls, and whether libtorch's legacy
/// and per-operator settings agree (it refuses queries when they do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tf32 {
    pub conv: bool,
    pub matmul: bool,
    pub consistent: bool,
}

pub fn tf32_state() -> Tf32 {
    let (mut conv, mut matmul, mut consistent) = (0, 0, 0);
    // SAFETY: three valid out-pointers; the shim only reads libtorch's global context.
    unsafe { prisma_cuda_tf32_state(&mut conv, &mut matmul, &mut consistent) };
    Tf32 { conv: conv != 0, matmul: matmul != 0, consistent: consistent != 0 }
}

/// The linker drops libtorch_cuda when no symbol of it is referenced (--as-needed), which leaves
/// CUDA invisible to libtorch. Loading it by path before the first CUDA query restores it.
fn load_cuda_runtime() {
    #[cfg(target_os = "linux")]
    if let Some(dir) = libtorch_lib_dir() {
        let path = dir.join("libtorch_cuda.so");
        if path.exists() {
            if let Ok(c) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) {
                // SAFETY: dlopen with a valid NUL-terminated path; the handle is deliberately leaked.
                unsafe {
                    libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                }
            }
        }
    }
}

pub fn parse_dtype(name: &str) -> Result<Kind> {
    match name.trim().to_ascii_lowercase().as_str() {
        "" | "f32" | "fp32" | "float32" | "float" => Ok(Kind::Float),
        "f16" | "fp16" | "float16" | "half" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => Err(PrismaError::Dtype(format!("unknown dtype '{other}' (use f32, f16 or bf16)"))),
    }
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// libtorch's library folder, read at run time from PRISMA_LIBTORCH_LIB (set by the Node loader,
/// src/setup/load.ts, and by scripts/cargo-test.mjs). Not a build-time constant: a prebuilt addon
/// runs against the libtorch of the machine it is installed on.
pub fn libtorch_lib_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("PRISMA_LIBTORCH_LIB").filter(|d| !d.is_empty()).map(std::path::PathBuf::from)
}

pub fn libtorch_has_cuda() -> bool {
    libtorch_lib_dir().map(|d| d.join("libtorch_cuda.so").exists()).unwrap_or(false)
}

pub fn cuda_available() -> bool {
    parse_device("cuda").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's default lets convolutions use TF32; asking for CUDA turns that off, consistently
    /// (a GPU is not needed: these are libtorch's global settings).
    #[test]
    fn fp32_on_cuda_is_ieee() {
        assert!(tf32_state().conv, "libtorch's default: TF32 convolutions");
        no_tf32();
        assert_eq!(tf32_state(), Tf32 { conv: false, matmul: false, consistent: true });
    }
}
