//! Integration tests live in tests/; this library will hold the shared harness
//! (temporary data directories, network namespaces, QEMU VMs).
