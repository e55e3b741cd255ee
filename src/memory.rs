//! Memory accounting for runs: how many bytes the current thread holds, so that a run's
//! memory can be bounded (`[limits] max_run_bytes`) whatever the script does with it.
//!
//! Rhai checks the size of a value (entries, characters) when it passes through an operator
//! or a function, not the bytes a script accumulates across values, and nothing bounds the
//! bytes of log lines or pending writes a run piles up. [`CountingAllocator`] wraps the
//! system allocator and keeps, per thread, the net bytes allocated (allocations minus frees
//! on that thread). A run notes the count when it starts on its thread; the script engine's
//! progress callback compares it with the budget before every operation, and host calls
//! check it too, so a run over its budget stops at once with an error naming the limit.
//!
//! The `tripline` binary installs the allocator. A program that embeds tripline installs it
//! with `#[global_allocator] static A: tripline::memory::CountingAllocator =
//! tripline::memory::CountingAllocator;`; without it, [`thread_bytes`] stays 0 and only the
//! explicit accounting of log lines and writes in the run context bounds a run.
//!
//! Bytes freed on another thread than the one that allocated them make that thread's count
//! drift; only differences within one run on one thread are ever read, so the drift does not
//! matter.
//!
//! This module imports nothing of the crate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Net bytes allocated by this thread. `const` initialisation: reading it never allocates,
    /// which an allocator must not do.
    static NET: Cell<i64> = const { Cell::new(0) };
}

/// The system allocator, counting each thread's net bytes.
pub struct CountingAllocator;

fn add(bytes: i64) {
    // `try_with`: during thread teardown the slot may be gone; such bytes are not a run's.
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(bytes)));
}

// SAFETY: every method forwards to `System` unchanged and only updates a thread-local counter,
// which neither allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// The net bytes the current thread allocated so far (0 when the counting allocator is not
/// installed). Only the difference between two readings on the same thread means something.
pub fn thread_bytes() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

/// Whether the counting allocator is the global allocator of this program.
pub fn is_counting() -> bool {
    let before = thread_bytes();
    let probe = std::hint::black_box(vec![0u8; 4096]);
    let counted = thread_bytes() - before >= 4096;
    drop(probe);
    counted
}

/// The stack size of threads that run scripts. A script can build values nested as deep as
/// its memory budget allows (closures capturing closures cost a few hundred bytes a level,
/// checked by nothing else), and dropping, printing or comparing such a value recurses once
/// per level. Stacks are reserved, not committed: a thread uses only the pages it touches.
/// `benches/depth.rs` measures how deep each kind of value gets within the budget and how
/// much stack the deepest one needs.
pub fn script_stack_bytes(max_run_bytes: usize) -> usize {
    max_run_bytes.saturating_mul(STACK_PER_BUDGET_BYTE).clamp(MIN_SCRIPT_STACK, MAX_SCRIPT_STACK)
}

/// Bytes of stack reserved per byte of a run's memory budget (see [`script_stack_bytes`]).
const STACK_PER_BUDGET_BYTE: usize = 8;
const MIN_SCRIPT_STACK: usize = 64 << 20;
const MAX_SCRIPT_STACK: usize = 4 << 30;

/// The largest `[limits] max_run_bytes`: the budget whose stack is [`MAX_SCRIPT_STACK`]. A
/// larger budget would get a stack smaller than its values need (a chain of closures built
/// within 1 GiB overflows 4 GiB of stack when it is dropped), and the process would abort.
pub const MAX_RUN_BYTES: usize = MAX_SCRIPT_STACK / STACK_PER_BUDGET_BYTE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_budget_the_configuration_accepts_gets_its_full_stack() {
        for budget in [1024, 64 << 20, 100 << 20, MAX_RUN_BYTES - 1, MAX_RUN_BYTES] {
            assert!(script_stack_bytes(budget) >= budget * STACK_PER_BUDGET_BYTE, "{budget}");
        }
        assert_eq!(script_stack_bytes(MAX_RUN_BYTES), MAX_SCRIPT_STACK);
    }
}
