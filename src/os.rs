//! What pgkeep needs of the operating system beyond `std`: user names and home
//! directories, durable directory entries, free space.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

/// The name of the OS user `uid` (the number if it has none).
pub fn user_name(uid: u32) -> String {
    with_passwd(uid, |pwd| pwd.pw_name).unwrap_or_else(|| uid.to_string())
}

/// The home directory of the user this process runs as, from the user database (not
/// `$HOME`, which `sudo -u` may leave pointing at the caller's).
pub fn home_dir() -> Option<std::path::PathBuf> {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    with_passwd(uid, |pwd| pwd.pw_dir).map(std::path::PathBuf::from)
}

/// A string field (`field` picks it) of user `uid`'s entry in the user database.
fn with_passwd(uid: u32, field: impl Fn(&libc::passwd) -> *mut libc::c_char) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into the buffers we own and sets `found` to `pwd` or null.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    let value = field(&pwd);
    if rc != 0 || found.is_null() || value.is_null() {
        return None;
    }
    // SAFETY: the field points into `buf`, NUL-terminated.
    Some(
        unsafe { std::ffi::CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// fsyncs a directory so that a rename or link inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

/// Writes `data` to `path` through a temporary name, so a reader sees all or nothing;
/// fsynced first if `durable`.
pub fn write_renamed(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, data)?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(&temp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    if durable {
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Sets the returned flag on SIGINT and SIGTERM (without SA_RESTART, so a blocked read
/// returns and the caller's loop sees the flag).
pub fn stop_on_signals() -> &'static AtomicBool {
    extern "C" fn on_signal(_: libc::c_int) {
        STOPPING.store(true, Ordering::Relaxed);
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    &STOPPING
}

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Makes every thread allocate from one glibc arena: a long-running process whose
/// threads come and go (serve) would otherwise keep an arena per thread, each at its
/// peak, many times the memory it uses.
pub fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a tunable of the allocator; called before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives memory that the allocator holds free back to the system. glibc keeps what a
/// finished thread freed in that thread's arena; a long-running process that does
/// large short-lived work (serve's status refreshes) would otherwise stay at its peak.
pub fn return_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// This machine's host name, for lease holders (`unknown` if it has none).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The file system a path is on, or would be once created: its device and the bytes
/// free to this user there. A path that does not exist yet is judged by its nearest
/// existing ancestor.
pub fn free_space(path: &Path) -> Result<(u64, u64)> {
    let space = space(path)?;
    Ok((space.device, space.free))
}

/// A file system's device, bytes free to this user, and size.
pub struct Space {
    pub device: u64,
    pub free: u64,
    pub total: u64,
}

/// The space of the file system `path` is on (or its nearest existing ancestor).
pub fn space(path: &Path) -> Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .with_context(|| format!("no part of {} exists", path.display()))?;
    let device = std::fs::metadata(existing)?.dev();
    let name = std::ffi::CString::new(existing.as_os_str().as_bytes())?;
    // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(name.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read the free space of {}", existing.display()));
    }
    Ok(Space {
        device,
        free: stat.f_bavail as u64 * stat.f_frsize as u64,
        total: stat.f_blocks as u64 * stat.f_frsize as u64,
    })
}
