//! "Decoders of untrusted bytes never allocate more than the limits"
//! (`crvs_schema::wire`): every committed input of the wire targets is
//! replayed under an allocator that records the largest single
//! allocation, which must stay within the largest decode limit. (zstd
//! allocates in C, outside Rust's allocator; its output is bounded by
//! `read_limited`.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[test]
fn no_committed_input_makes_a_wire_decoder_allocate_beyond_the_decode_limit() {
    let limit = crvs_schema::wire::MAX_SYNC_RESPONSE_DECODED;
    let mut replayed = 0;
    for target in ["change_set", "sync_request", "sync_response"] {
        for kind in ["corpus", "regressions"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a readable folder").path();
                let data = std::fs::read(&path).expect("a readable input");
                LARGEST.store(0, Ordering::Relaxed);
                assert!(crvs_fuzz::run(target, &data));
                let largest = LARGEST.load(Ordering::Relaxed);
                if largest > 1 << 20 {
                    eprintln!(
                        "{}: {} bytes in, largest allocation {largest} bytes",
                        path.display(),
                        data.len()
                    );
                }
                assert!(
                    largest <= limit,
                    "{}: an allocation of {largest} bytes, above the limit of {limit}",
                    path.display()
                );
                replayed += 1;
            }
        }
    }
    assert!(replayed > 0, "inputs were replayed");
}
