//! How the process's C allocator treats the large, short-lived buffers of a gradient step.
//!
//! Every step allocates activations, column matrices and gradients of up to hundreds of MB
//! (VGG11's classifier gradient alone is 411 MB) and frees them at its end. glibc serves
//! blocks over 32 MiB with fresh `mmap`s and unmaps them on free, so each step page-faults
//! its way through every large buffer again: on VGG11 that was a third of the step. Keeping
//! freed memory in the heap makes later steps reuse it (`bench/README.md`, step 4).

/// Makes glibc's allocator keep freed memory for reuse instead of returning it to the
/// operating system: large blocks come from the heap (no `mmap` per block) and the heap is
/// not trimmed. The process's resident memory then stays at its peak, which for a training
/// process is the working set of every step anyway. Call it first thing in `main`, before
/// any thread starts; elsewhere (musl, macOS) it does nothing.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; callers run it before threads
    // exist, and glibc takes its own locks anyway.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
