//! The one safe wrapper over libzfs_core: snapshots (several at once, atomically), batched
//! destroys, holds, bookmarks, rollback, send and resumable receive, and channel programs
//! (Lua run by the kernel; [`zcp`](super::zcp) has the ones stored uses). nvlists are built
//! and read only here, through [`NvList`], which owns its C allocation.
//!
//! libzfs_core keeps one descriptor of /dev/zfs with a reference count:
//! `libzfs_core_init` opens it on the first call, `libzfs_core_fini` closes it on the last.
//! [`Lzc::open`] and `Drop` pair them, so any number of handles may coexist.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::{self, NonNull};

use zfs_core_sys as sys;

/// Most snapshots per `lzc_destroy_snaps` call. The kernel runs a call as one channel
/// program in one txg, its Lua memory capped by `zfs_lua_max_memlimit` (100 MiB), and the
/// ioctl's nvlist by `zfs_max_nvlist_src_size` (128 MiB at most): 20,000 names take a few
/// MiB of either. Fewer, larger calls mean fewer txgs, each waited for; a prune of 10k
/// snapshots is one call.
pub const DESTROY_BATCH: usize = 20_000;

/// The most Lua instructions and bytes the kernel lets a channel program use by default
/// (`zfs_lua_max_instrlimit`, `zfs_lua_max_memlimit`). The memory limit also sizes the
/// buffer libzfs_core receives the program's result in, so a listing of a large tree needs
/// it: 10,000 snapshots come back in about 1.5 MB.
pub const PROGRAM_INSTRUCTIONS: u64 = 100_000_000;
pub const PROGRAM_MEMORY: u64 = 100 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LzcError {
    #[error(
        "cannot open /dev/zfs: {0}; is the zfs kernel module loaded (`modprobe zfs`) and are we root?"
    )]
    Init(io::Error),
    #[error("{0:?} contains a NUL byte and cannot name a ZFS object")]
    Nul(String),
    #[error("out of memory building an nvlist for libzfs_core")]
    NoMemory,
    #[error("channel program on pool {pool}: {source}{}", lua_message(.message))]
    Program {
        pool: String,
        #[source]
        source: io::Error,
        /// What the Lua interpreter reported (a runtime error and its traceback).
        message: Option<String>,
    },
    #[error("{op} {target}: {source}{}", details(.per_item))]
    Failed {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
        /// What libzfs_core reported per snapshot or hold (its `errlist`).
        per_item: Vec<(String, io::Error)>,
    },
}

fn details(items: &[(String, io::Error)]) -> String {
    items
        .iter()
        .map(|(name, e)| format!("; {name}: {e}"))
        .collect()
}

fn lua_message(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|m| format!(" ({})", m.trim_end()))
        .unwrap_or_default()
}

impl LzcError {
    /// The errno of the whole call, when it failed in libzfs_core.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Failed { source, .. } | Self::Init(source) | Self::Program { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

fn cstring(s: &str) -> Result<CString, LzcError> {
    CString::new(s).map_err(|_| LzcError::Nul(s.to_owned()))
}

/// A value read out of an nvlist, as far as the lzc results need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvValue {
    Boolean,
    Int32(i32),
    Uint64(u64),
    String(String),
    List(Vec<(String, NvValue)>),
    /// A type the wrapper does not read (its `data_type_t`).
    Other(i32),
}

/// An owned `nvlist_t` (unique names), freed on drop.
#[derive(Debug)]
pub struct NvList(NonNull<sys::nvlist_t>);

impl NvList {
    pub fn new() -> Result<Self, LzcError> {
        let mut p: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer; nvlist_alloc writes an allocated list to it
        // on success (return 0) and leaves it alone otherwise.
        let rc = unsafe { sys::nvlist_alloc(&mut p, sys::NV_UNIQUE_NAME, 0) };
        if rc != 0 {
            return Err(LzcError::NoMemory);
        }
        NonNull::new(p).map(Self).ok_or(LzcError::NoMemory)
    }

    /// Takes ownership of a list libzfs_core allocated for us (an `errlist` or the result
    /// of `lzc_get_holds`); `None` for a null pointer.
    ///
    /// # Safety
    /// `p` must be null or a list nobody else frees.
    unsafe fn from_raw(p: *mut sys::nvlist_t) -> Option<Self> {
        NonNull::new(p).map(Self)
    }

    fn as_ptr(&self) -> *mut sys::nvlist_t {
        self.0.as_ptr()
    }

    fn check(rc: c_int) -> Result<(), LzcError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(LzcError::NoMemory)
        }
    }

    pub fn add_boolean(&mut self, name: &str) -> Result<(), LzcError> {
        let name = cstring(name)?;
        // SAFETY: the list is live and owned by self; nvlist_add_* copy the name.
        Self::check(unsafe { sys::nvlist_add_boolean(self.as_ptr(), name.as_ptr()) })
    }

    pub fn add_string(&mut self, name: &str, value: &str) -> Result<(), LzcError> {
        let (name, value) = (cstring(name)?, cstring(value)?);
        // SAFETY: as in add_boolean; the value string is copied too.
        Self::check(unsafe { sys::nvlist_add_string(self.as_ptr(), name.as_ptr(), value.as_ptr()) })
    }

    pub fn add_u64(&mut self, name: &str, value: u64) -> Result<(), LzcError> {
        let name = cstring(name)?;
        // SAFETY: as in add_boolean.
        Self::check(unsafe { sys::nvlist_add_uint64(self.as_ptr(), name.as_ptr(), value) })
    }

    /// Adds a copy of `value` under `name`.
    pub fn add_list(&mut self, name: &str, value: &NvList) -> Result<(), LzcError> {
        let name = cstring(name)?;
        // SAFETY: both lists are live; nvlist_add_nvlist deep-copies `value`.
        Self::check(unsafe { sys::nvlist_add_nvlist(self.as_ptr(), name.as_ptr(), value.as_ptr()) })
    }

    /// Unpacks an nvlist from its packed form (any encoding), as found in a
    /// `receive_resume_token`.
    pub fn unpack(packed: &[u8]) -> Result<Self, LzcError> {
        let mut p: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: the buffer is valid for `len` bytes and only read; nvlist_unpack copies
        // what it needs into a new list written to `p` on success.
        let rc = unsafe {
            sys::nvlist_unpack(
                packed.as_ptr().cast_mut().cast::<c_char>(),
                packed.len(),
                &mut p,
                0,
            )
        };
        if rc != 0 {
            return Err(LzcError::Failed {
                op: "unpack nvlist",
                target: format!("{} bytes", packed.len()),
                source: io::Error::from_raw_os_error(rc),
                per_item: Vec::new(),
            });
        }
        NonNull::new(p).map(Self).ok_or(LzcError::NoMemory)
    }

    /// The packed native encoding, as the kernel packs the lists it hands out.
    pub fn pack(&self) -> Result<Vec<u8>, LzcError> {
        let encoding = sys::NV_ENCODE_NATIVE as c_int;
        let mut size = 0usize;
        // SAFETY: the list is live; `size` is a valid out-pointer.
        Self::check(unsafe { sys::nvlist_size(self.as_ptr(), &mut size, encoding) })?;
        let mut buf = vec![0u8; size];
        let mut bufp = buf.as_mut_ptr().cast::<c_char>();
        let mut len = size;
        // SAFETY: `bufp` points to `len` writable bytes that outlive the call; with a
        // non-null buffer nvlist_pack writes into it and allocates nothing.
        Self::check(unsafe { sys::nvlist_pack(self.as_ptr(), &mut bufp, &mut len, encoding, 0) })?;
        buf.truncate(len);
        Ok(buf)
    }

    /// The pairs in insertion order, read into owned values.
    pub fn pairs(&self) -> Vec<(String, NvValue)> {
        // SAFETY: reads a live list that self owns.
        unsafe { read_pairs(self.as_ptr()) }
    }
}

/// # Safety
/// `list` must point to a live nvlist that stays unchanged during the call.
unsafe fn read_pairs(list: *mut sys::nvlist_t) -> Vec<(String, NvValue)> {
    use sys::data_type_t as t;
    let mut out = Vec::new();
    let mut pair: *mut sys::nvpair_t = ptr::null_mut();
    loop {
        // SAFETY: `list` is live (caller); `pair` is null or the previous pair of it.
        pair = unsafe { sys::nvlist_next_nvpair(list, pair) };
        if pair.is_null() {
            break;
        }
        // SAFETY: `pair` is a live pair of `list`; its name is a NUL-terminated string
        // owned by the list, copied out before the list can change.
        let name = unsafe { cstr_lossy(sys::nvpair_name(pair)) };
        // SAFETY: `pair` is live.
        let ty = unsafe { sys::nvpair_type(pair) };
        let value = match ty {
            t::DATA_TYPE_BOOLEAN => NvValue::Boolean,
            t::DATA_TYPE_INT32 => {
                let mut v = 0i32;
                // SAFETY: the type is int32 and `v` a valid out-pointer.
                match unsafe { sys::nvpair_value_int32(pair, &mut v) } {
                    0 => NvValue::Int32(v),
                    _ => NvValue::Other(ty),
                }
            }
            t::DATA_TYPE_UINT64 => {
                let mut v = 0u64;
                // SAFETY: the type is uint64 and `v` a valid out-pointer.
                match unsafe { sys::nvpair_value_uint64(pair, &mut v) } {
                    0 => NvValue::Uint64(v),
                    _ => NvValue::Other(ty),
                }
            }
            t::DATA_TYPE_STRING => {
                let mut v: *mut c_char = ptr::null_mut();
                // SAFETY: the type is string; on success `v` points into the list, and
                // it is copied out at once.
                match unsafe { sys::nvpair_value_string(pair, &mut v) } {
                    // SAFETY: `v` is a NUL-terminated string owned by the live list.
                    0 => NvValue::String(unsafe { cstr_lossy(v) }),
                    _ => NvValue::Other(ty),
                }
            }
            t::DATA_TYPE_NVLIST => {
                let mut v: *mut sys::nvlist_t = ptr::null_mut();
                // SAFETY: the type is nvlist; `v` then points to a list embedded in (and
                // owned by) `list`, read at once.
                match unsafe { sys::nvpair_value_nvlist(pair, &mut v) } {
                    // SAFETY: `v` is a live embedded list.
                    0 if !v.is_null() => NvValue::List(unsafe { read_pairs(v) }),
                    _ => NvValue::Other(ty),
                }
            }
            other => NvValue::Other(other),
        };
        out.push((name, value));
    }
    out
}

/// # Safety
/// `p` must be null or a NUL-terminated string that lives for the call.
unsafe fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated (caller).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Drop for NvList {
    fn drop(&mut self) {
        // SAFETY: self owns the list; it is freed exactly once, here.
        unsafe { sys::nvlist_free(self.as_ptr()) }
    }
}

/// Turns an lzc return code and its errlist into a result.
fn outcome(
    op: &'static str,
    target: impl FnOnce() -> String,
    rc: c_int,
    errlist: *mut sys::nvlist_t,
) -> Result<(), LzcError> {
    // SAFETY: libzfs_core hands the errlist to the caller, who must free it; we own it now.
    let errlist = unsafe { NvList::from_raw(errlist) };
    let per_item: Vec<(String, io::Error)> = errlist
        .map(|l| {
            l.pairs()
                .into_iter()
                .map(|(name, v)| {
                    let errno = match v {
                        NvValue::Int32(e) => e,
                        _ => 0,
                    };
                    (name, io::Error::from_raw_os_error(errno))
                })
                .collect()
        })
        .unwrap_or_default();
    // lzc_hold and lzc_release skip snapshots that do not exist and still return 0, with
    // ENOENT in the errlist: a hold that was not placed must not pass for one that was.
    let errno = match (rc, per_item.first()) {
        (0, None) => return Ok(()),
        (0, Some((_, e))) => e.raw_os_error().unwrap_or(0),
        (rc, _) => rc,
    };
    Err(LzcError::Failed {
        op,
        target: target(),
        source: io::Error::from_raw_os_error(errno),
        per_item,
    })
}

/// What `lzc_send` may put in the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendFlags {
    /// WRITE_EMBEDDED records (`zfs send -e`).
    pub embed_data: bool,
    /// Blocks over 128 KiB as they are (`-L`).
    pub large_block: bool,
    /// Compressed blocks as stored (`-c`).
    pub compress: bool,
    /// Encrypted datasets as ciphertext (`-w`): the target never sees the key.
    pub raw: bool,
}

impl SendFlags {
    fn to_sys(self) -> sys::lzc_send_flags {
        let mut f = sys::lzc_send_flags(0);
        for (on, flag) in [
            (
                self.embed_data,
                sys::lzc_send_flags::LZC_SEND_FLAG_EMBED_DATA,
            ),
            (
                self.large_block,
                sys::lzc_send_flags::LZC_SEND_FLAG_LARGE_BLOCK,
            ),
            (self.compress, sys::lzc_send_flags::LZC_SEND_FLAG_COMPRESS),
            (self.raw, sys::lzc_send_flags::LZC_SEND_FLAG_RAW),
        ] {
            if on {
                f |= flag;
            }
        }
        f
    }
}

/// A reference on libzfs_core's /dev/zfs descriptor.
#[derive(Debug)]
pub struct Lzc {
    _private: (),
}

impl Lzc {
    pub fn open() -> Result<Self, LzcError> {
        // SAFETY: no arguments; libzfs_core_init is reference-counted under its own lock.
        let rc = unsafe { sys::libzfs_core_init() };
        if rc != 0 {
            return Err(LzcError::Init(io::Error::from_raw_os_error(rc)));
        }
        Ok(Self { _private: () })
    }

    /// Takes the snapshots (full names, all in one pool) in one transaction: all or none.
    /// `props` are user properties (`module:name`) set on every one of them.
    pub fn snapshot(
        &self,
        snapshots: &[String],
        props: &[(String, String)],
    ) -> Result<(), LzcError> {
        let mut snaps = NvList::new()?;
        for s in snapshots {
            snaps.add_boolean(s)?;
        }
        let mut p = NvList::new()?;
        for (k, v) in props {
            p.add_string(k, v)?;
        }
        let mut errlist: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: both lists are live for the call; `errlist` is a valid out-pointer.
        let rc = unsafe { sys::lzc_snapshot(snaps.as_ptr(), p.as_ptr(), &mut errlist) };
        outcome("snapshot", || snapshots.join(", "), rc, errlist)
    }

    /// Destroys snapshots of one pool, [`DESTROY_BATCH`] per call. With `defer`, held
    /// snapshots are marked for destruction when their last hold goes, instead of failing.
    pub fn destroy_snaps(&self, snapshots: &[String], defer: bool) -> Result<(), LzcError> {
        for chunk in snapshots.chunks(DESTROY_BATCH) {
            let mut snaps = NvList::new()?;
            for s in chunk {
                snaps.add_boolean(s)?;
            }
            let mut errlist: *mut sys::nvlist_t = ptr::null_mut();
            let defer = if defer {
                sys::boolean_t_B_TRUE
            } else {
                sys::boolean_t_B_FALSE
            };
            // SAFETY: the list is live; `errlist` is a valid out-pointer.
            let rc = unsafe { sys::lzc_destroy_snaps(snaps.as_ptr(), defer, &mut errlist) };
            outcome(
                "destroy snapshots",
                || {
                    format!(
                        "{} snapshots from {}",
                        chunk.len(),
                        chunk.first().map_or("", |s| s)
                    )
                },
                rc,
                errlist,
            )?;
        }
        Ok(())
    }

    /// Places user holds, `(snapshot, tag)`, all in one pool. A held snapshot cannot be
    /// destroyed: replication holds its incremental base this way.
    pub fn hold(&self, holds: &[(String, String)]) -> Result<(), LzcError> {
        let mut list = NvList::new()?;
        for (snap, tag) in holds {
            list.add_string(snap, tag)?;
        }
        let mut errlist: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: the list is live; -1 means no cleanup descriptor (the holds persist).
        let rc = unsafe { sys::lzc_hold(list.as_ptr(), -1, &mut errlist) };
        outcome("hold", || describe_holds(holds), rc, errlist)
    }

    /// Releases user holds, `(snapshot, tag)`.
    pub fn release(&self, holds: &[(String, String)]) -> Result<(), LzcError> {
        let mut tags: BTreeMap<&str, NvList> = BTreeMap::new();
        for (snap, tag) in holds {
            let l = match tags.entry(snap) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(NvList::new()?),
            };
            l.add_boolean(tag)?;
        }
        let mut list = NvList::new()?;
        for (snap, l) in &tags {
            list.add_list(snap, l)?;
        }
        let mut errlist: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: the list is live; `errlist` is a valid out-pointer.
        let rc = unsafe { sys::lzc_release(list.as_ptr(), &mut errlist) };
        outcome("release", || describe_holds(holds), rc, errlist)
    }

    /// The holds on a snapshot: tag → when it was placed (seconds since the epoch).
    pub fn get_holds(&self, snapshot: &str) -> Result<BTreeMap<String, u64>, LzcError> {
        let name = cstring(snapshot)?;
        let mut out: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `out` is a valid out-pointer whose list we own.
        let rc = unsafe { sys::lzc_get_holds(name.as_ptr(), &mut out) };
        // SAFETY: on success the caller owns the returned list.
        let list = unsafe { NvList::from_raw(out) };
        outcome("get holds", || snapshot.to_owned(), rc, ptr::null_mut())?;
        Ok(list
            .map(|l| l.pairs())
            .unwrap_or_default()
            .into_iter()
            .map(|(tag, v)| match v {
                NvValue::Uint64(t) => (tag, t),
                _ => (tag, 0),
            })
            .collect())
    }

    /// Creates bookmarks, `(pool/fs#bookmark, pool/fs@snapshot)`, all in one pool.
    pub fn bookmark(&self, bookmarks: &[(String, String)]) -> Result<(), LzcError> {
        let mut list = NvList::new()?;
        for (bm, snap) in bookmarks {
            list.add_string(bm, snap)?;
        }
        let mut errlist: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: the list is live; `errlist` is a valid out-pointer.
        let rc = unsafe { sys::lzc_bookmark(list.as_ptr(), &mut errlist) };
        outcome(
            "bookmark",
            || {
                bookmarks
                    .iter()
                    .map(|(b, s)| format!("{s} as {b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            rc,
            errlist,
        )
    }

    /// Destroys bookmarks (`pool/fs#bookmark`), all in one pool, in one ioctl.
    pub fn destroy_bookmarks(&self, bookmarks: &[String]) -> Result<(), LzcError> {
        let mut list = NvList::new()?;
        for b in bookmarks {
            list.add_boolean(b)?;
        }
        let mut errlist: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: the list is live; `errlist` is a valid out-pointer.
        let rc = unsafe { sys::lzc_destroy_bookmarks(list.as_ptr(), &mut errlist) };
        outcome("destroy bookmarks", || bookmarks.join(", "), rc, errlist)
    }

    /// Whether a dataset, snapshot or bookmark exists.
    pub fn exists(&self, name: &str) -> Result<bool, LzcError> {
        let name = cstring(name)?;
        // SAFETY: `name` is NUL-terminated for the call.
        Ok(unsafe { sys::lzc_exists(name.as_ptr()) } != sys::boolean_t_B_FALSE)
    }

    /// Rolls `fs` back to `snapshot` (full name), which must be its newest snapshot.
    pub fn rollback_to(&self, fs: &str, snapshot: &str) -> Result<(), LzcError> {
        let (f, s) = (cstring(fs)?, cstring(snapshot)?);
        // SAFETY: both strings are NUL-terminated for the call.
        let rc = unsafe { sys::lzc_rollback_to(f.as_ptr(), s.as_ptr()) };
        outcome(
            "rollback",
            || format!("{fs} to {snapshot}"),
            rc,
            ptr::null_mut(),
        )
    }

    /// Writes a send stream of `snapshot` to `fd`: full, or incremental from `from` (a
    /// snapshot or bookmark of the same dataset). Blocks until the stream is written.
    pub fn send(
        &self,
        snapshot: &str,
        from: Option<&str>,
        fd: BorrowedFd<'_>,
        flags: SendFlags,
    ) -> Result<(), LzcError> {
        self.send_resume(snapshot, from, fd, flags, 0, 0)
    }

    /// Resumes an interrupted send at `(object, offset)`, the position a receive-resume
    /// token records (`zfs send -t` decodes the same token).
    pub fn send_resume(
        &self,
        snapshot: &str,
        from: Option<&str>,
        fd: BorrowedFd<'_>,
        flags: SendFlags,
        resume_object: u64,
        resume_offset: u64,
    ) -> Result<(), LzcError> {
        let snap = cstring(snapshot)?;
        let from_c = from.map(cstring).transpose()?;
        let from_ptr = from_c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: strings are NUL-terminated (or null for a full send) for the call; the
        // descriptor is borrowed, so it stays open until lzc_send_resume returns.
        let rc = unsafe {
            sys::lzc_send_resume(
                snap.as_ptr(),
                from_ptr,
                fd.as_raw_fd(),
                flags.to_sys(),
                resume_object,
                resume_offset,
            )
        };
        outcome(
            "send",
            || match from {
                Some(f) => format!("{snapshot} from {f}"),
                None => snapshot.to_owned(),
            },
            rc,
            ptr::null_mut(),
        )
    }

    /// Receives a stream from `fd` as `snapshot` (full name); an interrupted receive leaves
    /// a `receive_resume_token` on the dataset instead of discarding what arrived. `force`
    /// rolls the target back to its newest snapshot first; `raw` expects a raw stream.
    pub fn receive_resumable(
        &self,
        snapshot: &str,
        origin: Option<&str>,
        force: bool,
        raw: bool,
        fd: BorrowedFd<'_>,
    ) -> Result<(), LzcError> {
        let snap = cstring(snapshot)?;
        let origin_c = origin.map(cstring).transpose()?;
        let origin_ptr = origin_c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        let b = |v: bool| {
            if v {
                sys::boolean_t_B_TRUE
            } else {
                sys::boolean_t_B_FALSE
            }
        };
        // SAFETY: strings are NUL-terminated (or null) for the call; no props list (null
        // is allowed); the descriptor is borrowed for the call.
        let rc = unsafe {
            sys::lzc_receive_resumable(
                snap.as_ptr(),
                ptr::null_mut(),
                origin_ptr,
                b(force),
                b(raw),
                fd.as_raw_fd(),
            )
        };
        outcome("receive", || snapshot.to_owned(), rc, ptr::null_mut())
    }
}

impl Lzc {
    /// Runs a Lua channel program on `pool` in the kernel. `args` is the program's argument
    /// (`...`); an nvlist of booleans arrives as an array of its names, in order. With
    /// `sync`, the program runs in syncing context, all of it in one txg, and may change
    /// the pool (`zfs.sync.*`); without, it only reads, in open context. Returns what the
    /// program returned (`None` for nothing); a table arrives as a list of pairs.
    pub fn channel_program(
        &self,
        pool: &str,
        program: &str,
        args: &NvList,
        sync: bool,
    ) -> Result<Option<NvValue>, LzcError> {
        let (p, text) = (cstring(pool)?, cstring(program)?);
        let mut out: *mut sys::nvlist_t = ptr::null_mut();
        let run = if sync {
            sys::lzc_channel_program
        } else {
            sys::lzc_channel_program_nosync
        };
        // SAFETY: both strings are NUL-terminated and `args` is live for the call;
        // libzfs_core copies what it sends. `out` is a valid out-pointer whose list (the
        // result, or the Lua error) we own afterwards.
        let rc = unsafe {
            run(
                p.as_ptr(),
                text.as_ptr(),
                PROGRAM_INSTRUCTIONS,
                PROGRAM_MEMORY,
                args.as_ptr(),
                &mut out,
            )
        };
        // SAFETY: the list, when there is one, is ours to free.
        let out = unsafe { NvList::from_raw(out) };
        let mut pairs = out.map(|l| l.pairs()).unwrap_or_default();
        let mut take = |key: &str| {
            pairs
                .iter()
                .position(|(k, _)| k == key)
                .map(|i| pairs.swap_remove(i).1)
        };
        if rc != 0 {
            let message = match take("error") {
                Some(NvValue::String(m)) => Some(m),
                Some(other) => Some(format!("{other:?}")),
                None => None,
            };
            return Err(LzcError::Program {
                pool: pool.to_owned(),
                source: io::Error::from_raw_os_error(rc),
                message,
            });
        }
        Ok(take("return"))
    }
}

impl Drop for Lzc {
    fn drop(&mut self) {
        // SAFETY: pairs the libzfs_core_init of `open`; the library counts references.
        unsafe { sys::libzfs_core_fini() }
    }
}

fn describe_holds(holds: &[(String, String)]) -> String {
    holds
        .iter()
        .map(|(s, t)| format!("{s} ({t})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvlists_round_trip_through_libnvpair() {
        let mut inner = NvList::new().unwrap();
        inner.add_boolean("tag").unwrap();
        let mut l = NvList::new().unwrap();
        l.add_boolean("tank/a@s1").unwrap();
        l.add_string("user:x", "y").unwrap();
        l.add_u64("n", 42).unwrap();
        l.add_list("tank/a@s2", &inner).unwrap();
        // Unique names: a second add replaces the first.
        l.add_u64("n", 43).unwrap();
        let pairs = l.pairs();
        assert_eq!(pairs.len(), 4);
        assert!(pairs.contains(&("tank/a@s1".into(), NvValue::Boolean)));
        assert!(pairs.contains(&("user:x".into(), NvValue::String("y".into()))));
        assert!(pairs.contains(&("n".into(), NvValue::Uint64(43))));
        assert!(pairs.contains(&(
            "tank/a@s2".into(),
            NvValue::List(vec![("tag".into(), NvValue::Boolean)])
        )));
    }

    #[test]
    fn nul_bytes_are_refused_before_reaching_c() {
        let mut l = NvList::new().unwrap();
        assert!(matches!(l.add_boolean("a\0b"), Err(LzcError::Nul(_))));
    }

    #[test]
    fn send_flags_map_to_the_lzc_bits() {
        let f = SendFlags {
            embed_data: true,
            large_block: true,
            compress: true,
            raw: true,
        };
        assert_eq!(f.to_sys().0, 0b1111);
        assert_eq!(SendFlags::default().to_sys().0, 0);
    }

    #[test]
    fn failures_name_the_call_and_each_item() {
        let e = outcome(
            "destroy snapshots",
            || "tank/a@s1".into(),
            libc_ebusy(),
            ptr::null_mut(),
        )
        .unwrap_err();
        assert_eq!(e.errno(), Some(16));
        assert!(e.to_string().starts_with("destroy snapshots tank/a@s1: "));
    }

    /// The test binary must resolve every libzfs_core call the wrapper makes, so that a
    /// symbol missing from the installed library fails here rather than on the box.
    #[test]
    fn every_lzc_call_links() {
        let calls: [*const (); 16] = [
            sys::libzfs_core_init as *const (),
            sys::libzfs_core_fini as *const (),
            sys::lzc_snapshot as *const (),
            sys::lzc_destroy_snaps as *const (),
            sys::lzc_hold as *const (),
            sys::lzc_release as *const (),
            sys::lzc_get_holds as *const (),
            sys::lzc_bookmark as *const (),
            sys::lzc_exists as *const (),
            sys::lzc_rollback_to as *const (),
            sys::lzc_send_resume as *const (),
            sys::lzc_receive_resumable as *const (),
            sys::lzc_channel_program as *const (),
            sys::lzc_channel_program_nosync as *const (),
            sys::nvlist_next_nvpair as *const (),
            sys::nvpair_value_nvlist as *const (),
        ];
        assert!(std::hint::black_box(calls).iter().all(|p| !p.is_null()));
    }

    /// /dev/zfs decides: with it, open succeeds; without it (no zfs module, as on the CI
    /// host), the error says what to do.
    #[test]
    fn open_matches_the_presence_of_dev_zfs() {
        let dev = std::path::Path::new("/dev/zfs").exists();
        match Lzc::open() {
            Ok(_) => assert!(dev, "libzfs_core_init succeeded without /dev/zfs"),
            Err(e) => {
                assert!(!dev, "libzfs_core_init failed with /dev/zfs present: {e}");
                assert!(e.to_string().contains("modprobe zfs"), "{e}");
            }
        }
    }

    #[test]
    fn an_errlist_entry_fails_the_call_even_when_lzc_returned_0() {
        let errlist = NvList::new().unwrap();
        // An int32 errno per snapshot, as lzc_hold reports a missing one.
        let raw = errlist.as_ptr();
        std::mem::forget(errlist);
        let name = CString::new("tank/a@gone").unwrap();
        // SAFETY: `raw` is a live list we own (forgotten above, freed by outcome).
        assert_eq!(unsafe { sys::nvlist_add_int32(raw, name.as_ptr(), 2) }, 0);
        let e = outcome("hold", || "tank/a@gone".into(), 0, raw).unwrap_err();
        assert_eq!(e.errno(), Some(2));
        assert!(
            e.to_string()
                .contains("tank/a@gone: No such file or directory"),
            "{e}"
        );
        assert!(outcome("hold", String::new, 0, ptr::null_mut()).is_ok());
    }

    fn libc_ebusy() -> c_int {
        16
    }
}
