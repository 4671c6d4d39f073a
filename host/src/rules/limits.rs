//! The memory cap of a rule instance: growing linear memory past it traps with a message naming the cap.

use super::*;

/// Caps linear memory; growing past the cap traps with a clear message instead of returning -1 to the guest.
pub(super) struct MemoryCap {
    pub(super) max_bytes: usize,
    /// Largest linear memory any instance of the plugin reached (bytes), for `weir plugin bench`.
    pub(super) peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Linear memory of this instance, bytes.
    pub(super) size: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.peak
            .fetch_max(desired, std::sync::atomic::Ordering::Relaxed);
        self.size = self.size.max(desired);
        if desired > self.max_bytes {
            wasmtime::bail!(
                "memory limit exceeded: the rule asked for {} MiB, the limit is {} MiB",
                desired.div_ceil(1 << 20),
                self.max_bytes >> 20
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
