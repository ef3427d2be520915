//! libnftables, the library the `nft` binary is a front end of, loaded at run time for the
//! small transactions of an incremental update.
//!
//! Why: a one-forward change is a three-command batch, and running `nft -j -f -` for it
//! costs a process, its dynamic linking and libnftables' start-up before nft even reads
//! the batch: most of the update's time (measured: about 3 ms in the library against
//! 8-23 ms through the binary on this machine). The library does the same parse, cache
//! fill and single netlink transaction as the binary: same input, same all-or-nothing
//! commit, same error text.
//!
//! It is loaded with `dlopen` (the `nftables` package depends on `libnftables1`, so it is
//! wherever `nft` is), not linked: where it cannot be loaded, netd runs the binary as
//! before. Large batches (a whole table with a 100k-address set) still go to the binary,
//! so that nft's peak memory for them stays in a process that exits instead of in the
//! daemon's heap. Every call gets a context of its own, freed after it: no nft cache
//! outlives a call, so nothing stale can be planned against.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::{Mutex, OnceLock, PoisonError};

use nix::libc;

/// Batches up to this many bytes of JSON go through the library; larger ones (a whole
/// table) through the `nft` binary.
pub const MAX_INPROCESS_BATCH: usize = 256 * 1024;

/// `NFT_CTX_DEFAULT`
const CTX_DEFAULT: u32 = 0;
/// `NFT_CTX_OUTPUT_JSON`: with it, `nft_run_cmd_from_buffer` reads its input as JSON
/// (as `nft -j` does).
const OUTPUT_JSON: c_uint = 1 << 4;

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type CtxSetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type RunFromBuffer = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

struct Lib {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxBuffer,
    buffer_error: CtxBuffer,
    error_buffer: CtxGetBuffer,
    output_set_flags: CtxSetFlags,
    run_cmd_from_buffer: RunFromBuffer,
}

static LIB: OnceLock<Option<Lib>> = OnceLock::new();
/// One call at a time: libnftables keeps some process-wide state (its GMP allocator
/// hooks, symbol tables) that is set up per context without locking.
static SERIAL: Mutex<()> = Mutex::new(());

fn lib() -> Option<&'static Lib> {
    LIB.get_or_init(|| {
        // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the
        // signature libnftables.h declares for it (stable since libnftables 0.9).
        let lib = unsafe { load() };
        if lib.is_none() {
            tracing::info!("firewall: libnftables.so.1 not loadable, running the nft binary");
        }
        lib
    })
    .as_ref()
}

unsafe fn load() -> Option<Lib> {
    // SAFETY: see `lib`. The handle is never closed: the functions live as long as netd.
    unsafe {
        let handle = libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW);
        if handle.is_null() {
            return None;
        }
        let sym = |name: &CStr| {
            let p = libc::dlsym(handle, name.as_ptr());
            (!p.is_null()).then_some(p)
        };
        Some(Lib {
            ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym(c"nft_ctx_new")?),
            ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(sym(c"nft_ctx_free")?),
            buffer_output: std::mem::transmute::<*mut c_void, CtxBuffer>(sym(
                c"nft_ctx_buffer_output",
            )?),
            buffer_error: std::mem::transmute::<*mut c_void, CtxBuffer>(sym(
                c"nft_ctx_buffer_error",
            )?),
            error_buffer: std::mem::transmute::<*mut c_void, CtxGetBuffer>(sym(
                c"nft_ctx_get_error_buffer",
            )?),
            output_set_flags: std::mem::transmute::<*mut c_void, CtxSetFlags>(sym(
                c"nft_ctx_output_set_flags",
            )?),
            run_cmd_from_buffer: std::mem::transmute::<*mut c_void, RunFromBuffer>(sym(
                c"nft_run_cmd_from_buffer",
            )?),
        })
    }
}

/// Whether the library can be used here.
pub fn available() -> bool {
    lib().is_some()
}

/// Runs one JSON batch (what `nft -j -f -` reads) as one transaction in the calling
/// thread's network namespace. `None`: the library is not there (or the batch cannot be
/// handed to it), run the binary; `Some(Err(text))`: nft refused it, with the error text
/// the binary would print.
pub fn run_json(input: &str) -> Option<Result<(), String>> {
    let lib = lib()?;
    let text = CString::new(input).ok()?;
    let _one = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: the context is made, used and freed here, by this thread only, under the
    // lock; the error buffer is copied out before the context is freed.
    unsafe {
        let ctx = (lib.ctx_new)(CTX_DEFAULT);
        if ctx.is_null() {
            return None;
        }
        // Buffered: nothing reaches netd's own stdout or stderr.
        (lib.buffer_output)(ctx);
        (lib.buffer_error)(ctx);
        (lib.output_set_flags)(ctx, OUTPUT_JSON);
        let rc = (lib.run_cmd_from_buffer)(ctx, text.as_ptr());
        let result = if rc == 0 {
            Ok(())
        } else {
            let err = (lib.error_buffer)(ctx);
            Err(if err.is_null() {
                String::new()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            })
        };
        (lib.ctx_free)(ctx);
        Some(result)
    }
}
