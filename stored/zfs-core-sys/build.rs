//! Finds libzfs_core with pkg-config (Debian: libzfslinux-dev, in contrib) and generates
//! the bindings for the lzc_* calls and the nvlist functions the safe wrapper uses.

use std::env;
use std::path::PathBuf;

const HINT: &str = "stored needs libzfs_core's headers and pkg-config file: on Debian enable \
the contrib component and `apt-get install libzfslinux-dev libclang-dev pkg-config` \
(`cargo xtask test` does this)";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let lib = match pkg_config::Config::new()
        .atleast_version("2.1")
        .probe("libzfs_core")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!("cannot find libzfs_core with pkg-config: {e}\n{HINT}");
            std::process::exit(1);
        }
    };
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(
            lib.include_paths
                .iter()
                .map(|p| format!("-I{}", p.display())),
        )
        .allowlist_function("libzfs_core_(init|fini)")
        .allowlist_function("lzc_.*")
        .allowlist_function("nvlist_(alloc|free|add_boolean|add_int32|add_string|add_uint64|add_nvlist|next_nvpair|lookup_uint64|lookup_string|lookup_nvlist|pack|unpack|size)")
        .allowlist_function("nvpair_(name|type|value_int32|value_uint64|value_string|value_nvlist)")
        .allowlist_var("NV_UNIQUE_NAME")
        .allowlist_var("NV_ENCODE_NATIVE")
        .allowlist_type("data_type_t")
        // Values that come back from C must not be Rust enums (an unknown value would be
        // undefined behaviour): constants for the nvpair types, a bitfield for send flags,
        // which callers OR together.
        .constified_enum_module("data_type_t")
        .bitfield_enum("lzc_send_flags")
        .rustified_enum("lzc_dataset_type")
        .rust_edition(bindgen::RustEdition::Edition2024)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    if let Ok(target) = env::var("TARGET") {
        builder = builder.clang_arg(format!("--target={target}"));
    }
    let bindings = match builder.generate() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bindgen failed on libzfs_core.h: {e}\n{HINT}");
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("bindings.rs");
    if let Err(e) = bindings.write_to_file(&out) {
        eprintln!("cannot write {}: {e}", out.display());
        std::process::exit(1);
    }
}
