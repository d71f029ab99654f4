//! A member's top-k on its own device, through llama.cpp's backend sampling: a sampler whose
//! operations join the model's graph (on the GPU, or the CPU backend) and hand back only the
//! k most probable tokens, with their probabilities over the whole vocabulary, instead of every
//! logit.
//!
//! llama.cpp's own top-k sampler gives the k logits without their normalizer, so gac adds its
//! own backend sampler: a full softmax and a top-k in the graph, the k probabilities gathered
//! from the softmax. The results come back through `llama_sampler_sample` with a second,
//! host-side sampler that copies them out.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_sys_2 as sys;

/// The (id, probability) pairs a step handed back, shared with the host-side sampler.
type Captured = Arc<Mutex<Vec<(u32, f32)>>>;

/// Device-side top-k for one context sequence: attach [`DeviceTopK::sampler`] to the context
/// when creating it, then [`DeviceTopK::read`] after each decode.
#[derive(Debug)]
pub(crate) struct DeviceTopK {
    reader: LlamaSampler,
    captured: Captured,
}

impl DeviceTopK {
    /// A top-k of `k` tokens (at least 1) and the sampler chain to attach to the sequence.
    pub(crate) fn new(k: u32) -> (Self, LlamaSampler) {
        let captured = Captured::default();
        let top_k = Box::into_raw(Box::new(i64::from(k.max(1))));
        // SAFETY: the interfaces are statics; each context pointer is freed by its `free`.
        let (top_k, capture) = unsafe {
            (
                sys::llama_sampler_init(&TOP_K as *const _ as *mut _, top_k.cast()),
                sys::llama_sampler_init(
                    &CAPTURE as *const _ as *mut _,
                    Arc::into_raw(captured.clone()) as *mut c_void,
                ),
            )
        };
        let reader = LlamaSampler::chain_simple([wrap(capture)]);
        (
            Self { reader, captured },
            LlamaSampler::chain_simple([wrap(top_k)]),
        )
    }

    /// The head of output row `row` of the last decode into `head`: true when it came from the
    /// device sampler, false when llama.cpp gave the whole vocabulary instead (this row's
    /// sequence had no backend sampler), whose logits the caller then reads itself.
    pub(crate) fn read(
        &mut self,
        ctx: &LlamaContext,
        row: i32,
        head: &mut Vec<(u32, f32)>,
    ) -> bool {
        // The "selected" token is the capture's placeholder, not a choice.
        let _ = self.reader.sample(ctx, row);
        let mut captured = self
            .captured
            .lock()
            .expect("the capture sampler never panics");
        // Trade buffers instead of copying: the capture clears the one it gets next time.
        std::mem::swap(&mut *captured, head);
        head.iter().any(|&(_, p)| p > 0.0)
    }
}

/// A `LlamaSampler` owning a sampler made here. llama-cpp-2 has no public constructor from a
/// raw sampler; its `LlamaSampler` is one non-null pointer and nothing else (the assertion
/// below fails the build if that changes), so the pointer is its whole representation.
fn wrap(raw: *mut sys::llama_sampler) -> LlamaSampler {
    const _: () = assert!(size_of::<LlamaSampler>() == size_of::<*mut sys::llama_sampler>());
    assert!(!raw.is_null(), "llama_sampler_init returned null");
    // SAFETY: same size, and the only field is the non-null pointer (see above); the
    // `LlamaSampler` takes ownership and frees it with `llama_sampler_free`.
    unsafe { std::mem::transmute::<*mut sys::llama_sampler, LlamaSampler>(raw) }
}

static TOP_K: sys::llama_sampler_i = sys::llama_sampler_i {
    name: Some(top_k_name),
    accept: None,
    // Never asked for on the host: `backend_init` always accepts, so the chain runs it in the
    // graph (ggml's scheduler moves an operation a device lacks to the CPU).
    apply: None,
    reset: None,
    clone: Some(top_k_clone),
    free: Some(top_k_free),
    backend_init: Some(top_k_backend_init),
    backend_accept: None,
    backend_apply: Some(top_k_backend_apply),
    backend_set_input: None,
    backend_reset: None,
    copy_state: None,
};

unsafe extern "C" fn top_k_name(_: *const sys::llama_sampler) -> *const c_char {
    c"gac-top-k".as_ptr()
}

unsafe extern "C" fn top_k_clone(smpl: *const sys::llama_sampler) -> *mut sys::llama_sampler {
    let k = *(*smpl).ctx.cast::<i64>();
    sys::llama_sampler_init(
        &TOP_K as *const _ as *mut _,
        Box::into_raw(Box::new(k)).cast(),
    )
}

unsafe extern "C" fn top_k_free(smpl: *mut sys::llama_sampler) {
    drop(Box::from_raw((*smpl).ctx.cast::<i64>()));
}

unsafe extern "C" fn top_k_backend_init(
    _: *mut sys::llama_sampler,
    _: sys::ggml_backend_buffer_type_t,
    _: u32,
) -> bool {
    true
}

/// In the graph: the softmax of the row's logits, its k largest entries, and their
/// probabilities, logits and ids as the sampler's outputs.
unsafe extern "C" fn top_k_backend_apply(
    smpl: *mut sys::llama_sampler,
    ctx: *mut sys::ggml_context,
    _: *mut sys::ggml_cgraph,
    data: *mut sys::llama_sampler_data,
) {
    let data = &mut *data;
    let n = sys::ggml_nelements(data.logits);
    let k = (*(*smpl).ctx.cast::<i64>()).min(n);
    let logits = sys::ggml_reshape_1d(ctx, data.logits, n);
    let top = sys::ggml_top_k(ctx, logits, k as i32);
    let probs = sys::ggml_soft_max(ctx, logits);
    let gather = |t: *mut sys::ggml_tensor| {
        sys::ggml_get_rows(
            ctx,
            sys::ggml_reshape_2d(ctx, t, 1, sys::ggml_nelements(t)),
            top,
        )
    };
    data.probs = gather(probs);
    data.logits = gather(logits);
    data.candidates = match data.candidates.is_null() {
        true => top,
        false => gather(data.candidates),
    };
}

static CAPTURE: sys::llama_sampler_i = sys::llama_sampler_i {
    name: Some(capture_name),
    accept: None,
    apply: Some(capture_apply),
    reset: None,
    clone: Some(capture_clone),
    free: Some(capture_free),
    backend_init: None,
    backend_accept: None,
    backend_apply: None,
    backend_set_input: None,
    backend_reset: None,
    copy_state: None,
};

unsafe extern "C" fn capture_name(_: *const sys::llama_sampler) -> *const c_char {
    c"gac-capture".as_ptr()
}

/// Copies what `llama_sampler_sample` gathered (the device's head, or the whole vocabulary)
/// and selects the first entry, as a sampler must.
unsafe extern "C" fn capture_apply(
    smpl: *mut sys::llama_sampler,
    cur_p: *mut sys::llama_token_data_array,
) {
    let captured = &*(*smpl).ctx.cast::<Mutex<Vec<(u32, f32)>>>();
    let cur = &mut *cur_p;
    if let Ok(mut out) = captured.lock() {
        out.clear();
        if !cur.data.is_null() {
            let entries = std::slice::from_raw_parts(cur.data, cur.size);
            out.extend(entries.iter().map(|d| (d.id as u32, d.p)));
        }
    }
    cur.selected = 0;
}

unsafe extern "C" fn capture_clone(smpl: *const sys::llama_sampler) -> *mut sys::llama_sampler {
    let captured = (*smpl).ctx.cast::<Mutex<Vec<(u32, f32)>>>();
    Arc::increment_strong_count(captured);
    sys::llama_sampler_init(&CAPTURE as *const _ as *mut _, (*smpl).ctx)
}

unsafe extern "C" fn capture_free(smpl: *mut sys::llama_sampler) {
    drop(Arc::from_raw((*smpl).ctx.cast::<Mutex<Vec<(u32, f32)>>>()));
}
