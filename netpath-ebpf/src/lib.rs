//! Empty library target: lets netpath-userspace name this crate as a
//! build-dependency so that cargo rebuilds the BPF object when it changes.
#![no_std]
