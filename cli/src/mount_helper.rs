//! The `mount.fuse.dynamicfs` helper: what `mount -t fuse.dynamicfs POOL DIR` and an
//! `/etc/fstab` line of type `fuse.dynamicfs` run. `dfs install-mount-helper` links the
//! name to this binary; invoked under it, `dfs` takes the helper's command line
//! (`mount(8)`: `SOURCE TARGET [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`) instead of its own.
//!
//! Mounting starts the daemon exactly as `dfs mount` does; `-o remount,ro` and
//! `-o remount,rw` change the live mount through the kernel; `-f` (fake) does nothing.
//! Exit codes are mount(8)'s: 0 mounted, 1 bad invocation, 32 the mount failed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::mount::MountSettings;

/// The names the helper answers to: `mount(8)` tries `mount.fuse.dynamicfs` for the
/// type `fuse.dynamicfs`, and `mount.dynamicfs` for a bare `dynamicfs`.
const HELPER_NAMES: [&str; 2] = ["mount.fuse.dynamicfs", "mount.dynamicfs"];

/// What mount(8) asked for.
#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    source: PathBuf,
    target: PathBuf,
    options: String,
    sloppy: bool,
    fake: bool,
}

/// Whether this binary was started as the mount helper.
pub fn is_helper_name(program: &Path) -> bool {
    program.file_name().and_then(|name| name.to_str()).is_some_and(|name| HELPER_NAMES.contains(&name))
}

fn parse(args: Vec<OsString>) -> Result<Invocation> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut sloppy, mut fake) = (false, false);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-o") => options.push(
                args.next()
                    .context("-o needs a list of options")?
                    .into_string()
                    .map_err(|_| anyhow::anyhow!("mount options must be text"))?,
            ),
            Some("-t" | "-N") => {
                args.next().context("-t and -N take a value")?;
            }
            Some(flags) if flags.starts_with('-') && flags.len() > 1 => {
                for flag in flags[1..].chars() {
                    match flag {
                        's' => sloppy = true,
                        'f' => fake = true,
                        'n' | 'v' => {}
                        other => bail!("unknown flag -{other} (the helper takes -s, -f, -n, -v, -o, -t, -N)"),
                    }
                }
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [source, target] = <[PathBuf; 2]>::try_from(positional)
        .map_err(|found| anyhow::anyhow!("expected POOL and MOUNTPOINT, got {} arguments", found.len()))?;
    Ok(Invocation { source, target, options: options.join(","), sloppy, fake })
}

/// Runs the helper with the arguments after the program name.
pub fn main(args: Vec<OsString>) -> ExitCode {
    const USAGE: u8 = 1;
    const FAILED: u8 = 32;
    let invocation = match parse(args) {
        Ok(invocation) => invocation,
        Err(error) => {
            eprintln!("mount.fuse.dynamicfs: {error:#}\nusage: mount.fuse.dynamicfs POOL MOUNTPOINT [-o OPTIONS]");
            return ExitCode::from(USAGE);
        }
    };
    let remount = invocation.options.split(',').any(|o| o.trim() == "remount");
    let options: Vec<&str> = invocation.options.split(',').filter(|o| o.trim() != "remount").collect();
    let mut settings = MountSettings::default();
    if let Err(error) = settings.apply(&options.join(","), invocation.sloppy) {
        eprintln!("mount.fuse.dynamicfs: {error:#}");
        return ExitCode::from(USAGE);
    }
    if invocation.fake {
        return ExitCode::SUCCESS;
    }
    let result = if remount {
        crate::kernel_mount::remount(&invocation.target, settings.flags.read_only)
            .with_context(|| format!("remounting {}", invocation.target.display()))
    } else {
        crate::mount::mount(&invocation.source, &invocation.target, &settings)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mount.fuse.dynamicfs: {error:#}");
            ExitCode::from(FAILED)
        }
    }
}

/// `dfs install-mount-helper`: links `DIR/mount.fuse.dynamicfs` to this binary
/// (replacing an earlier link atomically, never another file).
pub fn install(dir: &Path) -> Result<()> {
    let binary = std::env::current_exe().context("locating the dfs binary")?;
    let binary = std::fs::canonicalize(&binary).unwrap_or(binary);
    let link = dir.join(HELPER_NAMES[0]);
    if std::fs::symlink_metadata(&link).is_ok_and(|meta| !meta.file_type().is_symlink()) {
        bail!("{} exists and is not a link; remove it first (EEXIST)", link.display());
    }
    // A new link beside it, renamed over the old one: a concurrent mount never finds
    // the helper missing.
    let staged = dir.join(format!(".{}.{}", HELPER_NAMES[0], std::process::id()));
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(&binary, &staged).with_context(|| {
        format!("linking {} to {} (writing there usually needs root)", link.display(), binary.display())
    })?;
    std::fs::rename(&staged, &link).with_context(|| format!("installing {}", link.display()))?;
    println!("installed {} -> {}", link.display(), binary.display());
    println!("now `mount -t fuse.dynamicfs POOL DIR` and fstab lines of type fuse.dynamicfs work");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_helper_takes_what_mount_passes() {
        let parsed = parse(args(&["/srv/pool", "/mnt/pool", "-n", "-o", "rw,allow_other,_netdev"])).unwrap();
        assert_eq!(parsed.source, PathBuf::from("/srv/pool"));
        assert_eq!(parsed.target, PathBuf::from("/mnt/pool"));
        assert_eq!(parsed.options, "rw,allow_other,_netdev");
        assert!(!parsed.sloppy && !parsed.fake);
        let parsed = parse(args(&["-sfv", "-t", "fuse.dynamicfs", "a", "b"])).unwrap();
        assert!(parsed.sloppy && parsed.fake);
        assert!(parse(args(&["only-one"])).is_err());
        assert!(parse(args(&["a", "b", "c"])).is_err());
        assert!(parse(args(&["a", "b", "-o"])).is_err());
        assert!(parse(args(&["a", "b", "-x"])).is_err());
    }

    #[test]
    fn helper_names_are_recognised_by_file_name() {
        assert!(is_helper_name(Path::new("/sbin/mount.fuse.dynamicfs")));
        assert!(is_helper_name(Path::new("mount.dynamicfs")));
        assert!(!is_helper_name(Path::new("/usr/bin/dfs")));
    }

    #[test]
    fn fstab_options_set_the_mount_and_others_are_refused() {
        let mut settings = MountSettings::default();
        settings
            .apply(
                "defaults,allow_other,ro,noatime,metrics=127.0.0.1:9100,_netdev,nofail,x-systemd.requires-mounts-for=/srv/d1",
                false,
            )
            .unwrap();
        assert!(settings.flags.allow_other && settings.flags.read_only && !settings.atime);
        assert_eq!(settings.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(settings.to_options(), "allow_other,ro,noatime,metrics=127.0.0.1:9100");
        let mut again = MountSettings::default();
        again.apply(&settings.to_options(), false).unwrap();
        assert_eq!(again, settings, "the daemon's command line carries the same settings");
        let mut bad = MountSettings::default();
        let error = bad.apply("allow_other,frobnicate", false).unwrap_err().to_string();
        assert!(error.contains("frobnicate") && error.contains("EINVAL"), "{error}");
        assert!(bad.apply("frobnicate", true).is_ok(), "sloppy (-s) ignores unknown options");
        let mut remount = MountSettings::default();
        remount.apply("ro,nosuid,nodev,relatime,user_id=0,group_id=0,default_permissions,allow_other", false).unwrap();
        assert!(remount.flags.read_only, "what mount -o remount repeats from the mount table is understood");
        assert!(MountSettings::default().apply("metrics=nowhere", false).is_err());
        let mut threads = MountSettings::default();
        threads.apply("threads=3", false).unwrap();
        assert_eq!(threads.threads, Some(3));
        assert_eq!(threads.to_options(), "threads=3");
        let mut writeback = MountSettings::default();
        assert!(!writeback.writeback_cache, "the writeback cache is asked for, not assumed");
        writeback.apply("noatime,writeback_cache", false).unwrap();
        assert!(writeback.writeback_cache);
        assert_eq!(writeback.to_options(), "noatime,writeback_cache");
        for bad in ["threads=0", "threads=65", "threads=many"] {
            let error = MountSettings::default().apply(bad, false).unwrap_err().to_string();
            assert!(error.contains(bad) && error.contains("EINVAL"), "{error}");
        }
    }
}
