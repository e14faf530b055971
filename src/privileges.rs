//! Giving up the power to change the firewall before the workload runs.
//!
//! `egressc exec` applies the policy, then calls [`confine`] and execs the
//! command. The order matters:
//!
//! 1. drop the capabilities from the bounding set (needs CAP_SETPCAP, which the
//!    process still has): no later execve — setuid binaries included — can gain
//!    them back;
//! 2. clear the ambient set, so nothing is passed on implicitly;
//! 3. set no_new_privs: setuid/setgid bits and file capabilities are ignored by
//!    every later execve;
//! 4. switch user if asked (setgroups, setgid, setuid — needs CAP_SETUID/SETGID,
//!    which is why it comes before the last step for `--drop-all-caps`);
//! 5. remove the capabilities from the effective, permitted and inheritable sets;
//! 6. read everything back ([`verify`]): a step that silently did nothing must
//!    stop the workload from running, not let it run with the power to undo the
//!    firewall.

use std::ffi::CString;

use caps::{CapSet, Capability, CapsHashSet};

/// Which capabilities to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// CAP_NET_ADMIN (change the firewall, interfaces, routes) and CAP_NET_RAW
    /// (raw sockets, which bypass nothing in netfilter but need no keeping).
    Network,
    /// Every capability.
    All,
}

impl Drop {
    fn capabilities(self) -> CapsHashSet {
        match self {
            Drop::Network => [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW]
                .into_iter()
                .collect(),
            Drop::All => caps::all(),
        }
    }
}

/// Which step failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot drop capabilities ({step}): {why}")]
    Capabilities { step: &'static str, why: String },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot switch to user {user}: {why}")]
    User { user: String, why: String },
    #[error("capabilities are still held after dropping them: {0}")]
    Verify(String),
}

impl PrivilegeError {
    /// Whether the failure is the user switch (it has its own exit code).
    pub fn is_user_switch(&self) -> bool {
        matches!(self, PrivilegeError::User { .. })
    }
}

/// A user to run the workload as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
}

/// Finds a user by name or number (a number without a passwd entry runs with
/// the same number as its group).
pub fn lookup_user(spec: &str) -> Result<User, PrivilegeError> {
    let fail = |why: String| PrivilegeError::User {
        user: spec.to_string(),
        why,
    };
    let c_name = CString::new(spec).map_err(|_| fail("the name contains NUL".into()))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let by_number = spec.parse::<u32>().ok();
    // SAFETY: getpwnam_r/getpwuid_r write into `pwd` and `buf`, which outlive the
    // call, and set `found` to `&pwd` or null.
    let rc = unsafe {
        match by_number {
            Some(uid) => libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found),
            None => libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            ),
        }
    };
    if rc != 0 {
        return Err(fail(std::io::Error::from_raw_os_error(rc).to_string()));
    }
    if found.is_null() {
        return match by_number {
            Some(uid) => Ok(User {
                uid,
                gid: uid,
                name: spec.to_string(),
            }),
            None => Err(fail("no such user".into())),
        };
    }
    Ok(User {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        name: unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned(),
    })
}

fn caps_error(step: &'static str) -> impl Fn(caps::errors::CapsError) -> PrivilegeError {
    move |e| PrivilegeError::Capabilities {
        step,
        why: e.to_string(),
    }
}

/// Gives up `drop` for this process and everything it will exec, and switches
/// to `user` if given. See the module docs for the order.
pub fn confine(drop: Drop, user: Option<&User>) -> Result<(), PrivilegeError> {
    let dropped = drop.capabilities();
    for cap in &dropped {
        caps::drop(None, CapSet::Bounding, *cap).map_err(caps_error("bounding set"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_error("ambient set"))?;
    // SAFETY: prctl with these arguments only sets a flag on this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    if let Some(user) = user {
        switch_user(user)?;
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let held = caps::read(None, set).map_err(caps_error("read"))?;
        let keep: CapsHashSet = held.difference(&dropped).copied().collect();
        caps::set(None, set, &keep).map_err(caps_error("process sets"))?;
    }
    verify(drop, user)
}

fn switch_user(user: &User) -> Result<(), PrivilegeError> {
    let fail = |what: &str| PrivilegeError::User {
        user: user.name.clone(),
        why: format!("{what}: {}", std::io::Error::last_os_error()),
    };
    // SAFETY: plain syscalls on this process's credentials.
    unsafe {
        if libc::setgroups(1, &user.gid) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setgid(user.gid) != 0 {
            return Err(fail("setgid"));
        }
        if libc::setuid(user.uid) != 0 {
            return Err(fail("setuid"));
        }
        // setuid must not be undoable: a process that can get root back has not
        // given anything up.
        if user.uid != 0 && libc::setuid(0) == 0 {
            return Err(PrivilegeError::User {
                user: user.name.clone(),
                why: "root could be regained after switching".into(),
            });
        }
    }
    Ok(())
}

/// Reads the result back: none of `drop` in any set, no_new_privs set, and the
/// right user.
pub fn verify(drop: Drop, user: Option<&User>) -> Result<(), PrivilegeError> {
    let dropped = drop.capabilities();
    for (set, name) in [
        (CapSet::Bounding, "bounding"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Ambient, "ambient"),
    ] {
        let held = caps::read(None, set).map_err(caps_error("read back"))?;
        let left: Vec<String> = held.intersection(&dropped).map(|c| c.to_string()).collect();
        if !left.is_empty() {
            return Err(PrivilegeError::Verify(format!(
                "{name} set: {}",
                left.join(", ")
            )));
        }
    }
    // SAFETY: prctl PR_GET_NO_NEW_PRIVS only reads a flag.
    if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
        return Err(PrivilegeError::Verify("no_new_privs is not set".into()));
    }
    if let Some(user) = user {
        // SAFETY: getuid/geteuid/getgid read credentials.
        let (uid, euid, gid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid()) };
        if (uid, euid, gid) != (user.uid, user.uid, user.gid) {
            return Err(PrivilegeError::User {
                user: user.name.clone(),
                why: format!("running as uid {uid}/{euid} gid {gid} after the switch"),
            });
        }
    }
    Ok(())
}
