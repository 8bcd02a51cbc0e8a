//! The process's memory allocator, chosen by role. The webhook (and the other control-plane
//! servers) allocate per request from several threads: mimalloc does that several times cheaper
//! than glibc's malloc, and far cheaper than musl's, which the release image links. The agent runs
//! in every target pod, where resident memory matters more than allocation speed and mimalloc's
//! arenas would double its idle footprint: it keeps the system allocator.
//!
//! The choice is made at the first allocation, from `/proc/self/cmdline` read without allocating,
//! and never changes afterwards, so every block is freed by the allocator that gave it out.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU8, Ordering},
};

use mimalloc::MiMalloc;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// `#[global_allocator]` of the `mirrord-operator` binary.
pub struct ByRole;

impl ByRole {
    #[inline]
    fn system() -> bool {
        match CHOICE.load(Ordering::Relaxed) {
            SYSTEM => true,
            MIMALLOC => false,
            _ => decide(),
        }
    }
}

/// Threads racing here all read the same command line, so they agree.
#[cold]
fn decide() -> bool {
    let system = runs_as_agent();
    CHOICE.store(if system { SYSTEM } else { MIMALLOC }, Ordering::Relaxed);
    system
}

/// Whether the first argument is the `agent` subcommand (the CLI has no options before it).
fn runs_as_agent() -> bool {
    let mut buf = [0u8; 256];
    // SAFETY: a NUL-terminated path; the descriptor is closed before returning; `read` writes at
    // most `buf.len()` bytes into `buf`.
    let read = unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let read = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        read
    };
    let Ok(len) = usize::try_from(read) else {
        return false;
    };
    is_agent_cmdline(&buf[..len])
}

fn is_agent_cmdline(cmdline: &[u8]) -> bool {
    cmdline.split(|b| *b == 0).nth(1) == Some(b"agent")
}

// SAFETY: every call goes to the allocator chosen once for the whole process, which upholds the
// `GlobalAlloc` contract itself.
unsafe impl GlobalAlloc for ByRole {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::system() {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::system() {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::system() {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Self::system() {
            unsafe { System.realloc(ptr, layout, new_size) }
        } else {
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agent_subcommand_keeps_the_system_allocator() {
        assert!(is_agent_cmdline(
            b"/usr/local/bin/mirrord-operator\0agent\0--listen\0x\0"
        ));
        assert!(is_agent_cmdline(b"mirrord-operator\0agent"));
        assert!(!is_agent_cmdline(
            b"mirrord-operator\0webhook\0--tls-mode\0files\0"
        ));
        assert!(!is_agent_cmdline(b"mirrord-operator\0certs\0agent\0"));
        assert!(!is_agent_cmdline(b"mirrord-operator\0"));
        assert!(!is_agent_cmdline(b""));
    }

    #[test]
    fn allocates_reallocates_and_frees_through_the_choice() {
        // This test process is not an agent (its first argument is a test filter or nothing).
        let layout = Layout::from_size_align(64, 16).unwrap();
        // SAFETY: the layout is non-zero; the block is used within its size and freed once, with
        // the layout it has at that moment.
        unsafe {
            let ptr = ByRole.alloc_zeroed(layout);
            assert!(!ptr.is_null());
            assert_eq!(*ptr.add(63), 0);
            ptr.write_bytes(7, 64);
            let grown = ByRole.realloc(ptr, layout, 4096);
            assert!(!grown.is_null());
            assert_eq!(*grown.add(63), 7);
            ByRole.dealloc(grown, Layout::from_size_align(4096, 16).unwrap());
        }
        assert_eq!(CHOICE.load(Ordering::Relaxed), MIMALLOC);
    }
}
