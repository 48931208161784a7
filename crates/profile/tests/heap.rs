//! The sampling allocator records stacks of large and many allocations, and
//! the heap profile names the allocating function.

use std::io::Read;

#[global_allocator]
static A: stevedore_profile::heap::Sampling<std::alloc::System> =
    stevedore_profile::heap::Sampling::new(std::alloc::System);

#[inline(never)]
fn allocate_marker_buffers() -> Vec<Vec<u8>> {
    (0..64).map(|_| vec![1u8; 1 << 20]).collect()
}

#[test]
fn heap_profile_names_the_allocating_function() {
    let kept = allocate_marker_buffers();
    let gz = stevedore_profile::heap::profile();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("allocate_marker_buffers"),
        "profile of {} bytes lacks the allocating function",
        raw.len()
    );
    drop(kept);
}

#[test]
fn heap_profile_leaves_out_the_allocators_own_frames() {
    let kept = allocate_marker_buffers();
    let gz = stevedore_profile::heap::profile();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("maybe_sample"),
        "allocator frames in the profile"
    );
    drop(kept);
}
