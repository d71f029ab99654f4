//! Where a member runs: a GPU that the llama.cpp in use cannot give is refused at load, with an
//! error that names the file and says what to do.

use gac_llamacpp::{gpus, load_model, runtime_info, LlamaOptions};
use gac_tests::{asset, SMOLLM};

#[test]
fn a_gpu_llama_cpp_cannot_give_is_refused() {
    let info = runtime_info();
    let path = asset(SMOLLM);
    // Without GPU support, GPU 0; with it, the first index past the GPUs llama.cpp sees.
    let (gpu, reason) = match (info.gpu_offload, info.dynamic) {
        (true, _) => (gpus().len() as i32, "but llama.cpp sees"),
        (false, true) => (0, "have no GPU backend (put a llama.cpp built with CUDA"),
        (false, false) => (0, "has no GPU support (build with --features cuda)"),
    };
    let options = LlamaOptions {
        gpu: Some(gpu),
        ..LlamaOptions::default()
    };
    let err = load_model(&path, &options).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{} is pinned to GPU {gpu}", path.display())),
        "{err}"
    );
    assert!(err.contains(reason), "{err}");
}
