//! The component's global allocator: a batch arena in front of Talc.
//!
//! A rule allocates per record — the records the host lowers into the instance, parsed JSON, row cells, the
//! packed buffer — and frees all of it by the end of the batch. The arena serves those allocations by
//! bumping a pointer through 64 KiB chunks and counts the ones still live; when the count drops to zero
//! (every batch allocation freed, which happens once the host has copied the packed buffer out), it starts
//! over at its first chunk. So a small allocation costs a comparison and a free costs a decrement.
//!
//! Everything else goes to Talc, a general allocator much faster than the dlmalloc of wasi-libc that Rust
//! uses on wasm32-wasip2 by default:
//! - whatever `init` allocates (the rule's own state, which lives as long as the instance);
//! - allocations over [`LARGEST_BYTES`];
//! - everything past [`MOST_CHUNKS`] chunks (16 MiB).
//!
//! Chunks are taken from Talc one at a time, when the current one is full, and kept for the next batch: the
//! arena holds at most one chunk more than the largest batch needed, so it never makes an instance reach its
//! memory cap sooner than the same allocations made one by one would.
//!
//! Starting over only at a live count of zero keeps this sound whatever a rule does: memory a rule keeps
//! past a batch (a cache filled lazily in `process`, say) is never reused; it only keeps the arena from
//! starting over, so later allocations go to Talc — slower, never wrong. Build long-lived state in `init`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

/// The size (and alignment) of one arena chunk.
pub const CHUNK_BYTES: usize = 64 << 10;
/// The most chunks the arena takes.
pub const MOST_CHUNKS: usize = 256;
/// Larger allocations go straight to the general allocator.
pub const LARGEST_BYTES: usize = CHUNK_BYTES / 4;
const ALIGN: usize = 16;
/// Slots of the table that tells whether an address is in a chunk: indexed by the chunk number modulo this.
const SLOTS: usize = 1024;

struct State {
    /// Serve allocations from the arena (off during `init`).
    enabled: bool,
    /// The chunks, in the order they were taken.
    chunks: [usize; MOST_CHUNKS],
    taken: usize,
    /// The chunk being filled, and the free part of it.
    current: usize,
    top: usize,
    end: usize,
    /// Arena allocations not yet freed.
    live: usize,
    /// No chunk could be had since the arena last started over.
    exhausted: bool,
    /// For each slot, the base of the chunk whose number falls on it (0: none).
    slots: [usize; SLOTS],
}

/// A bump arena for batch allocations in front of a general allocator.
pub struct BatchArena<A> {
    general: A,
    state: UnsafeCell<State>,
}

// SAFETY: components are single-threaded (the global allocator is only built without the `atomics` target
// feature), so the state is never touched by two threads.
unsafe impl<A: Sync> Sync for BatchArena<A> {}

impl<A> BatchArena<A> {
    /// An arena in front of `general`, serving nothing until [`BatchArena::enable`].
    pub const fn new(general: A) -> Self {
        BatchArena {
            general,
            state: UnsafeCell::new(State {
                enabled: false,
                chunks: [0; MOST_CHUNKS],
                taken: 0,
                current: 0,
                top: 0,
                end: 0,
                live: 0,
                exhausted: false,
                slots: [0; SLOTS],
            }),
        }
    }

    /// Serves batch allocations from now on (after `init`).
    pub fn enable(&self) {
        // SAFETY: single-threaded, and no reference into the state outlives this call.
        unsafe { (*self.state.get()).enabled = true }
    }

    fn slot(base: usize) -> usize {
        (base / CHUNK_BYTES) % SLOTS
    }

    /// Whether `ptr` is in one of the arena's chunks.
    fn contains(state: &State, ptr: *mut u8) -> bool {
        let base = ptr as usize & !(CHUNK_BYTES - 1);
        base != 0 && state.slots[Self::slot(base)] == base
    }
}

impl<A: GlobalAlloc> BatchArena<A> {
    /// Moves to the next chunk, taking a new one when all are in use; false when none can be had (until the
    /// arena starts over).
    ///
    /// # Safety
    /// Single-threaded, with `s` the arena's own state.
    unsafe fn next_chunk(&self, s: &mut State) -> bool {
        if s.exhausted {
            return false;
        }
        if s.current + 1 < s.taken {
            s.current += 1;
        } else {
            let chunk = if s.taken < MOST_CHUNKS {
                // SAFETY: a valid, non-zero layout.
                unsafe { self.general.alloc(Self::chunk_layout()) as usize }
            } else {
                0
            };
            if chunk == 0 {
                s.exhausted = true;
                return false;
            }
            let slot = Self::slot(chunk);
            if s.slots[slot] != 0 {
                // Another chunk falls on this slot (they are a multiple of 64 MiB apart): do without.
                // SAFETY: just allocated with this layout.
                unsafe { self.general.dealloc(chunk as *mut u8, Self::chunk_layout()) };
                s.exhausted = true;
                return false;
            }
            s.slots[slot] = chunk;
            s.chunks[s.taken] = chunk;
            s.current = s.taken;
            s.taken += 1;
        }
        s.top = s.chunks[s.current];
        s.end = s.top + CHUNK_BYTES;
        true
    }

    fn chunk_layout() -> Layout {
        // SAFETY: a power-of-two alignment and a size that is a multiple of it.
        unsafe { Layout::from_size_align_unchecked(CHUNK_BYTES, CHUNK_BYTES) }
    }
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for BatchArena<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded; the general allocator never calls back into this one.
        let s = unsafe { &mut *self.state.get() };
        if s.enabled
            && layout.size() > 0
            && layout.size() <= LARGEST_BYTES
            && layout.align() <= ALIGN
        {
            loop {
                let start = (s.top + layout.align() - 1) & !(layout.align() - 1);
                if s.top != 0 && start + layout.size() <= s.end {
                    s.top = start + layout.size();
                    s.live += 1;
                    return start as *mut u8;
                }
                // SAFETY: single-threaded, our own state.
                if !unsafe { self.next_chunk(s) } {
                    break;
                }
            }
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.general.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        let s = unsafe { &mut *self.state.get() };
        if !Self::contains(s, ptr) {
            // SAFETY: `ptr` came from the general allocator with this layout.
            return unsafe { self.general.dealloc(ptr, layout) };
        }
        s.live -= 1;
        if s.live == 0 {
            // Nothing points into the arena: start over at the first chunk.
            s.exhausted = false;
            s.current = 0;
            s.top = s.chunks[0];
            s.end = s.top + CHUNK_BYTES;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let s = unsafe { &mut *self.state.get() };
        if !Self::contains(s, ptr) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.general.realloc(ptr, layout, new_size) };
        }
        // The latest arena allocation grows or shrinks in place (a `Vec` being filled, usually).
        if ptr as usize + layout.size() == s.top && ptr as usize + new_size <= s.end {
            s.top = ptr as usize + new_size;
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: a valid layout (the caller guarantees `new_size` fits `layout.align()`).
        let moved =
            unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if moved.is_null() {
            return null_mut();
        }
        // SAFETY: both blocks are valid for `layout.size()` bytes and distinct.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr, moved, layout.size());
            self.dealloc(ptr, layout);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    /// Batch allocations come from the arena, which starts over once every one of them is freed.
    #[test]
    fn resets_when_the_batch_is_freed() {
        let arena = BatchArena::new(System);
        unsafe {
            let before = arena.alloc(layout(64)); // init: not from the arena
            arena.enable();
            let a = arena.alloc(layout(100));
            let b = arena.alloc(layout(100));
            assert_eq!(b as usize, a as usize + 104, "bumped, aligned to 8");
            assert!(!BatchArena::<System>::contains(&*arena.state.get(), before));
            arena.dealloc(a, layout(100));
            let c = arena.alloc(layout(8));
            assert_eq!(c as usize, b as usize + 104, "not reset while b lives");
            arena.dealloc(b, layout(100));
            arena.dealloc(c, layout(8));
            assert_eq!(arena.alloc(layout(16)), a, "reset once nothing lives");
            arena.dealloc(before, layout(64));
        }
    }

    /// The latest allocation grows in place; another one moves, its bytes kept.
    #[test]
    fn realloc_in_place_or_moved() {
        let arena = BatchArena::new(System);
        arena.enable();
        unsafe {
            let a = arena.alloc(layout(16));
            a.write_bytes(7, 16);
            let grown = arena.realloc(a, layout(16), 4096);
            assert_eq!(grown, a);
            let b = arena.alloc(layout(8));
            let moved = arena.realloc(a, layout(4096), 8192);
            assert_ne!(moved, a);
            assert_eq!(std::slice::from_raw_parts(moved, 16), &[7; 16]);
            arena.dealloc(b, layout(8));
            arena.dealloc(moved, layout(8192));
            assert_eq!((*arena.state.get()).live, 0);
        }
    }

    /// Large allocations go to the general allocator; a full chunk moves on to a new one, and the chunks are
    /// kept for the next batch.
    #[test]
    fn large_ones_bypass_and_chunks_are_kept() {
        let arena = BatchArena::new(System);
        arena.enable();
        let state = || unsafe { &*arena.state.get() };
        unsafe {
            let big = arena.alloc(layout(LARGEST_BYTES + 1));
            assert!(!BatchArena::<System>::contains(state(), big));
            let batch = |arena: &BatchArena<System>| -> Vec<*mut u8> {
                (0..5).map(|_| arena.alloc(layout(15 << 10))).collect()
            };
            let first = batch(&arena);
            assert!(
                first
                    .iter()
                    .all(|&p| BatchArena::<System>::contains(state(), p))
            );
            assert_eq!(state().taken, 2, "75 KiB in 64 KiB chunks");
            for &p in &first {
                arena.dealloc(p, layout(15 << 10));
            }
            let second = batch(&arena);
            assert_eq!(first, second, "the same chunks, from the start");
            assert_eq!(state().taken, 2);
            for &p in &second {
                arena.dealloc(p, layout(15 << 10));
            }
            arena.dealloc(big, layout(LARGEST_BYTES + 1));
            assert_eq!(state().live, 0);
        }
    }

    /// Memory kept past a batch is never handed out again: the arena stops resetting instead.
    #[test]
    fn kept_memory_is_never_reused() {
        let arena = BatchArena::new(System);
        arena.enable();
        unsafe {
            let kept = arena.alloc(layout(32));
            kept.write_bytes(1, 32);
            for _ in 0..1000 {
                let p = arena.alloc(layout(64));
                assert_ne!(p, kept);
                p.write_bytes(2, 64);
                arena.dealloc(p, layout(64));
            }
            assert_eq!(std::slice::from_raw_parts(kept, 32), &[1; 32]);
        }
    }
}
