//! The process-wide llama.cpp backend and what this process runs on: version, link mode,
//! devices.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

/// The process-wide llama.cpp backend (initialized once, on first use); llama.cpp's own log
/// lines become `tracing` events.
pub fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        // llama.cpp's log goes to `tracing`: silent unless the program installs a subscriber
        // that wants it (`gac -v` does).
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().expect("gac initializes the llama.cpp backend once")
    })
}

/// The llama.cpp that gac runs on: its version string, how it is linked, and the devices its
/// backends see.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// `llama_version()` of the loaded library.
    pub version: String,
    /// Whether llama.cpp is linked as shared libraries (the `dynamic-link` feature), so that the
    /// libraries found at run time are used.
    pub dynamic: bool,
    /// Whether layers can be offloaded to a GPU.
    pub gpu_offload: bool,
    /// Each device: backend, name, description and total memory in bytes.
    pub devices: Vec<(String, String, String, usize)>,
}

/// The GPUs a model's `main_gpu` indexes, in llama.cpp's order ("CUDA0 (NVIDIA H200)"): the
/// discrete ones, or the integrated ones when there is none. (llama.cpp also drops a GPU that a
/// second backend sees again, so this can list more than it uses, never fewer.)
pub fn gpus() -> Vec<String> {
    use llama_cpp_2::LlamaBackendDeviceType as Kind;
    let devices = llama_cpp_2::list_llama_ggml_backend_devices();
    let of = |kind: Kind| -> Vec<String> {
        devices
            .iter()
            .filter(|d| d.device_type == kind)
            .map(|d| format!("{} ({})", d.name, d.description))
            .collect()
    };
    let discrete = of(Kind::Gpu);
    if discrete.is_empty() {
        of(Kind::IntegratedGpu)
    } else {
        discrete
    }
}

/// The llama.cpp version gac is built against (the source llama-cpp-sys-2 0.1.161 vendors). A
/// llama.cpp loaded as shared libraries (the `dynamic-link` feature) must report it; llama.cpp
/// does not bump it on every change of its C API, so build exactly that source.
pub const LLAMA_CPP_VERSION: &str = "0.6.0";

/// `llama_version()` of the llama.cpp this process runs on.
pub fn llama_version() -> String {
    // SAFETY: llama_version returns a pointer to a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_version()) }
        .to_string_lossy()
        .into_owned()
}

/// Describes the llama.cpp that this process runs on.
pub fn runtime_info() -> RuntimeInfo {
    let backend = backend();
    RuntimeInfo {
        version: llama_version(),
        dynamic: cfg!(feature = "dynamic-link"),
        gpu_offload: backend.supports_gpu_offload(),
        devices: llama_cpp_2::list_llama_ggml_backend_devices()
            .into_iter()
            .map(|d| (d.backend, d.name, d.description, d.memory_total))
            .collect(),
    }
}
