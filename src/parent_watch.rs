//! Servers started by `shoal playground` and `shoal chaos` die with the process that
//! started them, even when it is killed with SIGKILL and cannot stop them itself: the
//! parent names itself in an environment variable, and the server asks the kernel to
//! kill it when its parent goes (Linux's parent-death signal; elsewhere nothing).

/// Set to the parent's process id on the servers a Shoal command starts.
pub const ENV: &str = "SHOAL_EXIT_WITH_PARENT";

/// The environment entry a parent gives each server it starts.
pub fn child_env() -> (&'static str, String) {
    (ENV, std::process::id().to_string())
}

/// In a server: when started by a Shoal command, be killed when that command dies. The
/// kernel ties the signal to the thread that spawned us; Shoal spawns servers from
/// threads that live as long as the command.
#[cfg(target_os = "linux")]
pub fn arm() -> std::io::Result<()> {
    let Some(parent) = std::env::var(ENV).ok().and_then(|pid| pid.parse::<i32>().ok()) else {
        return Ok(());
    };
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    // The parent may have died before the signal was armed: then we were re-parented.
    if rustix::process::Pid::as_raw(rustix::process::getppid()) != parent {
        return Err(std::io::Error::other(format!("parent process {parent} is gone")));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn arm() -> std::io::Result<()> {
    Ok(())
}
