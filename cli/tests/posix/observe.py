"""Runs one POSIX workload in a directory and prints what the system answered, as JSON.

`cli/tests/posix.rs` runs it on a DynamicFS mount and on a plain directory of the host
(ext4) and requires the same answers: where they differ, DynamicFS has a bug. Nothing
here depends on absolute times, inode numbers or listing order. Run as root: parts of it
switch to the user `nobody` in a child process.

usage: observe.py DIR SECTION
"""

import ctypes
import ctypes.util
import errno
import json
import os
import socket
import stat
import subprocess
import sys
import time

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.getxattr.restype = ctypes.c_ssize_t
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.listxattr.restype = ctypes.c_ssize_t

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
NOBODY = 65534
# Longer than the timestamp granularity of either filesystem.
NAP = 0.03

root = sys.argv[1]
out = {}


def p(name):
    return os.path.join(root, name)


def rec(name, fn):
    """Records what `fn` returned, or the errno name it failed with."""
    try:
        value = fn()
        out[name] = True if value is None else value
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))


def check(result):
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return result


def describe(name):
    st = os.lstat(p(name))
    return {
        "type": stat.S_IFMT(st.st_mode),
        "perm": stat.S_IMODE(st.st_mode),
        "nlink": st.st_nlink,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
        # A directory's size is each filesystem's own measure (ext4: blocks; btrfs:
        # name bytes; tmpfs: entries); a file's is not.
        "size": None if stat.S_ISDIR(st.st_mode) else st.st_size,
    }


def as_nobody(fn):
    """Runs `fn` as uid/gid nobody in a child; returns its result or errno name."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            value = fn()
            answer = True if value is None else value
        except OSError as e:
            answer = errno.errorcode.get(e.errno, str(e.errno))
        os.write(write_end, json.dumps(answer).encode())
        os._exit(0)
    os.close(write_end)
    data = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)


def times(name):
    st = os.lstat(p(name))
    return (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)


def changed(name, action):
    """Which of atime, mtime, ctime `action` changed."""
    before = times(name)
    time.sleep(NAP)
    action()
    time.sleep(NAP)
    after = times(name)
    return [after[i] != before[i] for i in range(3)]


def read_fresh(name):
    with open(p(name), "rb") as f:
        return f.read()


def special_files():
    os.umask(0o022)
    rec("mkfifo", lambda: os.mkfifo(p("fifo"), 0o666))
    rec("mknod_chr", lambda: os.mknod(p("chr"), 0o666 | stat.S_IFCHR, os.makedev(1, 3)))
    rec("mknod_blk", lambda: os.mknod(p("blk"), 0o600 | stat.S_IFBLK, os.makedev(7, 129)))
    rec("mknod_fifo", lambda: os.mknod(p("fifo_by_mknod"), 0o644 | stat.S_IFIFO))
    rec("mknod_reg", lambda: os.mknod(p("regular_by_mknod"), 0o644 | stat.S_IFREG))

    def bind():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(p("sock"))
        s.listen(1)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(p("sock"))
        conn, _ = s.accept()
        c.sendall(b"through the socket")
        data = conn.recv(100).decode()
        for x in (c, conn, s):
            x.close()
        return data

    rec("socket", bind)
    rec("mknod_dir", lambda: os.mknod(p("dir_by_mknod"), 0o755 | stat.S_IFDIR))
    rec("mkfifo_exists", lambda: os.mkfifo(p("fifo")))
    for name in ["fifo", "chr", "blk", "fifo_by_mknod", "regular_by_mknod", "sock"]:
        rec("stat_" + name, lambda name=name: describe(name))

    def fifo_round_trip():
        reader = os.open(p("fifo"), os.O_RDONLY | os.O_NONBLOCK)
        writer = os.open(p("fifo"), os.O_WRONLY)
        os.write(writer, b"through the fifo")
        data = os.read(reader, 100).decode()
        os.close(writer)
        os.close(reader)
        return data

    rec("fifo_io", fifo_round_trip)
    rec("fifo_size_after_io", lambda: os.lstat(p("fifo")).st_size)
    rec("link_fifo", lambda: os.link(p("fifo"), p("fifo_link")))
    rec("link_sock", lambda: os.link(p("sock"), p("sock_link")))
    rec("nlink_fifo", lambda: os.lstat(p("fifo")).st_nlink)
    rec("chmod_chr", lambda: os.chmod(p("chr"), 0o640))
    rec("chown_blk", lambda: os.chown(p("blk"), 1234, 5678))
    rec("lchown_sock", lambda: os.lchown(p("sock"), 4321, 8765))
    rec("utime_fifo", lambda: os.utime(p("fifo"), ns=(1_000_000_000_123, 1_200_000_000_456)))
    rec("times_fifo", lambda: [os.lstat(p("fifo")).st_atime_ns, os.lstat(p("fifo")).st_mtime_ns])
    rec("rename_fifo", lambda: os.rename(p("fifo_link"), p("fifo_renamed")))
    rec("rename_over_chr", lambda: os.rename(p("fifo_by_mknod"), p("chr")))
    rec("truncate_fifo", lambda: os.truncate(p("fifo"), 0))
    rec("open_sock", lambda: os.open(p("sock"), os.O_RDONLY))
    rec("setxattr_user_on_fifo", lambda: os.setxattr(p("fifo"), "user.a", b"1"))
    rec("setxattr_trusted_on_fifo", lambda: os.setxattr(p("fifo"), "trusted.a", b"1"))
    rec("getxattr_trusted_on_fifo", lambda: os.getxattr(p("fifo"), "trusted.a").decode())
    for name in ["fifo", "chr", "blk", "sock", "fifo_renamed", "sock_link"]:
        rec("after_" + name, lambda name=name: describe(name))
    rec("unlink_blk", lambda: os.unlink(p("blk")))
    rec("unlink_sock", lambda: os.unlink(p("sock")))
    rec("rmdir_fifo", lambda: os.rmdir(p("fifo")))
    rec("listing", lambda: sorted(os.listdir(root)))


def xattrs():
    with open(p("f"), "w") as f:
        f.write("x")
    os.mkdir(p("d"))
    os.symlink("f", p("link"))
    rec("set", lambda: os.setxattr(p("f"), "user.colour", b"blue"))
    rec("get", lambda: os.getxattr(p("f"), "user.colour").decode())
    rec("create_existing", lambda: os.setxattr(p("f"), "user.colour", b"red", os.XATTR_CREATE))
    rec("replace_missing", lambda: os.setxattr(p("f"), "user.shape", b"round", os.XATTR_REPLACE))
    rec("replace", lambda: os.setxattr(p("f"), "user.colour", b"green", os.XATTR_REPLACE))
    rec("get_replaced", lambda: os.getxattr(p("f"), "user.colour").decode())
    rec("get_missing", lambda: os.getxattr(p("f"), "user.missing"))
    rec("empty_value", lambda: os.setxattr(p("f"), "user.empty", b""))
    rec("get_empty", lambda: os.getxattr(p("f"), "user.empty").decode())
    rec("binary_value", lambda: os.setxattr(p("f"), "user.binary", bytes(range(256))))
    rec("get_binary", lambda: list(os.getxattr(p("f"), "user.binary")))

    def small_buffer():
        buffer = ctypes.create_string_buffer(2)
        return check(libc.getxattr(p("f").encode(), b"user.colour", buffer, 2))

    rec("get_into_small_buffer", small_buffer)
    rec("get_size_only", lambda: check(libc.getxattr(p("f").encode(), b"user.colour", None, 0)))

    def list_small_buffer():
        buffer = ctypes.create_string_buffer(3)
        return check(libc.listxattr(p("f").encode(), buffer, 3))

    rec("list_into_small_buffer", list_small_buffer)
    rec("name_too_long", lambda: os.setxattr(p("f"), "user." + "n" * 251, b"v"))
    rec("name_at_limit", lambda: os.setxattr(p("f"), "user." + "n" * 250, b"v"))
    rec("value_too_large", lambda: os.setxattr(p("f"), "user.huge", b"v" * 65537))
    rec("unknown_namespace", lambda: os.setxattr(p("f"), "other.thing", b"v"))
    rec("empty_user_name", lambda: os.setxattr(p("f"), "user.", b"v"))
    rec("trusted", lambda: os.setxattr(p("f"), "trusted.secret", b"root only"))
    rec("security", lambda: os.setxattr(p("f"), "security.label", b"lbl"))
    # A file capability: VFS_CAP_REVISION_2, CAP_NET_RAW (13) permitted and effective.
    capability = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
    rec("capability", lambda: os.setxattr(p("f"), "security.capability", capability))
    rec("get_capability", lambda: list(os.getxattr(p("f"), "security.capability")))
    rec("dir_xattr", lambda: os.setxattr(p("d"), "user.dir", b"d"))
    rec("symlink_user_xattr", lambda: os.setxattr(p("link"), "user.x", b"1", follow_symlinks=False))
    rec("symlink_trusted_xattr", lambda: os.setxattr(p("link"), "trusted.x", b"1", follow_symlinks=False))
    rec("list_f", lambda: sorted(os.listxattr(p("f"))))
    rec("list_d", lambda: sorted(os.listxattr(p("d"))))
    rec("list_link", lambda: sorted(os.listxattr(p("link"), follow_symlinks=False)))
    rec("list_as_nobody", lambda: as_nobody(lambda: sorted(os.listxattr(p("f")))))
    rec("get_trusted_as_nobody", lambda: as_nobody(lambda: os.getxattr(p("f"), "trusted.secret").decode()))
    rec("set_on_others_file_as_nobody", lambda: as_nobody(lambda: os.setxattr(p("f"), "user.mine", b"1")))
    rec("remove", lambda: os.removexattr(p("f"), "user.colour"))
    rec("remove_missing", lambda: os.removexattr(p("f"), "user.colour"))
    rec("ctime_on_set", lambda: changed("f", lambda: os.setxattr(p("f"), "user.t", b"1")))
    rec("ctime_on_remove", lambda: changed("f", lambda: os.removexattr(p("f"), "user.t")))
    rec("list_after", lambda: sorted(os.listxattr(p("f"))))
    # The attributes move with the file and go with it.
    rec("rename_keeps", lambda: (os.rename(p("f"), p("g")), os.getxattr(p("g"), "user.binary") == bytes(range(256)))[1])
    rec("link_shares", lambda: (os.link(p("g"), p("h")), os.getxattr(p("h"), "user.empty") == b"")[1])


def run(command):
    done = subprocess.run(command, capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        return "exit %d: %s" % (done.returncode, done.stderr.strip())
    return [line for line in done.stdout.splitlines() if not line.startswith("# file:")]


def acls():
    os.umask(0o022)
    with open(p("f"), "w") as f:
        f.write("secret")
    os.chmod(p("f"), 0o600)
    rec("nobody_reads_600", lambda: as_nobody(lambda: read_fresh("f").decode()))
    rec("setfacl_user", lambda: run(["setfacl", "-m", "u:%d:r" % NOBODY, "f"]))
    rec("getfacl", lambda: run(["getfacl", "-n", "f"]))
    rec("mode_shows_mask", lambda: describe("f")["perm"])
    rec("nobody_reads_with_acl", lambda: as_nobody(lambda: read_fresh("f").decode()))
    rec("chmod_sets_mask", lambda: (os.chmod(p("f"), 0o600), run(["getfacl", "-n", "f"]))[1])
    rec("nobody_masked_out", lambda: as_nobody(lambda: read_fresh("f").decode()))
    rec("chmod_back", lambda: os.chmod(p("f"), 0o640))
    rec("setfacl_group_deny", lambda: run(["setfacl", "-m", "g:%d:---" % NOBODY, "f"]))
    rec("getfacl_two", lambda: run(["getfacl", "-n", "f"]))
    rec("remove_all", lambda: run(["setfacl", "-b", "f"]))
    rec("getfacl_removed", lambda: run(["getfacl", "-n", "f"]))
    rec("mode_after_remove", lambda: describe("f")["perm"])
    rec("minimal_acl_is_mode", lambda: run(["setfacl", "-m", "u::rw,g::r,o::r", "f"]))
    rec("mode_after_minimal", lambda: describe("f")["perm"])
    rec("list_after_minimal", lambda: sorted(os.listxattr(p("f"))))
    os.mkdir(p("d"))
    rec("default_acl", lambda: run(["setfacl", "-d", "-m", "u:%d:rwx,g::rx,o::---" % NOBODY, "d"]))
    rec("getfacl_default", lambda: run(["getfacl", "-n", "d"]))
    rec("default_on_file", lambda: run(["setfacl", "-d", "-m", "u::rwx", "f"]))

    def create_children():
        with open(p("d/new"), "w") as f:
            f.write("n")
        os.mkdir(p("d/sub"))
        os.mkfifo(p("d/pipe"), 0o666)
        fd = os.open(p("d/exec"), os.O_CREAT | os.O_WRONLY, 0o777)
        os.close(fd)

    rec("children", create_children)
    for name in ["d/new", "d/sub", "d/pipe", "d/exec"]:
        rec("child_mode_" + name, lambda name=name: describe(name)["perm"])
        rec("child_acl_" + name, lambda name=name: run(["getfacl", "-n", name]))
    rec("nested", lambda: (os.mkdir(p("d/sub/deeper")), run(["getfacl", "-n", "d/sub/deeper"]))[1])
    rec("nobody_in_default_dir", lambda: as_nobody(lambda: read_fresh("d/new").decode()))
    rec("remove_default", lambda: run(["setfacl", "-k", "d"]))
    rec("after_remove_default", lambda: (os.mkdir(p("d/plain")), describe("d/plain")["perm"])[1])


def edges():
    os.umask(0o022)
    # Names and paths.
    rec("name_255", lambda: os.close(os.open(p("n" * 255), os.O_CREAT | os.O_WRONLY, 0o644)))
    rec("name_256", lambda: os.close(os.open(p("n" * 256), os.O_CREAT | os.O_WRONLY, 0o644)))
    rec("lookup_256", lambda: os.stat(p("m" * 256)))
    rec("rename_to_256", lambda: os.rename(p("n" * 255), p("m" * 256)))
    deep = "/".join(["d" * 200] * 21)
    rec("path_too_long", lambda: os.makedirs(p(deep)))
    # setgid directories and sticky bits.
    os.mkdir(p("g"))
    os.chown(p("g"), 0, 5678)
    os.chmod(p("g"), 0o2775)
    rec("setgid_dir", lambda: describe("g")["perm"])
    rec("setgid_file", lambda: (open(p("g/f"), "w").close(), describe("g/f"))[1])
    rec("setgid_subdir", lambda: (os.mkdir(p("g/sub")), describe("g/sub"))[1])
    rec("setgid_fifo", lambda: (os.mkfifo(p("g/fifo")), describe("g/fifo"))[1])
    os.mkdir(p("s"))
    os.chmod(p("s"), 0o1777)
    open(p("s/roots"), "w").close()
    rec("sticky_unlink_others", lambda: as_nobody(lambda: os.unlink(p("s/roots"))))
    rec("sticky_rename_others", lambda: as_nobody(lambda: os.rename(p("s/roots"), p("s/mine"))))
    rec("sticky_own", lambda: as_nobody(lambda: (open(p("s/nobodys"), "w").close(), os.unlink(p("s/nobodys")))[1]))
    rec("sticky_mode", lambda: describe("s")["perm"])
    # Blocks, sparse files, SEEK_DATA/SEEK_HOLE.
    mib = 1 << 20
    with open(p("dense"), "wb") as f:
        f.write(b"d" * mib)
    rec("blocks_dense", lambda: os.lstat(p("dense")).st_blocks)
    with open(p("sparse"), "wb") as f:
        f.truncate(10 * mib)
        f.seek(5 * mib)
        f.write(b"s" * 4096)
    rec("blocks_sparse", lambda: os.lstat(p("sparse")).st_blocks)
    rec("blocks_empty", lambda: (open(p("empty"), "w").close(), os.lstat(p("empty")).st_blocks)[1])

    def seeks(name, points):
        fd = os.open(p(name), os.O_RDONLY)
        answers = []
        for whence, offset in points:
            try:
                answers.append(os.lseek(fd, offset, whence))
            except OSError as e:
                answers.append(errno.errorcode[e.errno])
        os.close(fd)
        return answers

    points = [(os.SEEK_DATA, 0), (os.SEEK_HOLE, 0), (os.SEEK_HOLE, 5 * mib), (os.SEEK_DATA, 5 * mib + 100),
              (os.SEEK_DATA, 6 * mib), (os.SEEK_HOLE, 10 * mib - 1), (os.SEEK_DATA, 10 * mib), (os.SEEK_HOLE, 11 * mib)]
    rec("seek_sparse", lambda: seeks("sparse", points))
    rec("seek_dense", lambda: seeks("dense", [(os.SEEK_DATA, 0), (os.SEEK_HOLE, 0), (os.SEEK_HOLE, mib - 1)]))
    # fallocate: reserve (extends), punch, zero, keep-size, unsupported modes.
    with open(p("alloc"), "wb") as f:
        f.write(b"a" * (3 * mib))

    def fallocate(name, mode, offset, length):
        fd = os.open(p(name), os.O_RDWR)
        try:
            check(libc.fallocate(fd, mode, offset, length))
        finally:
            os.close(fd)

    rec("posix_fallocate", lambda: (fallocate("alloc", 0, 0, 4 * mib), os.lstat(p("alloc")).st_size)[1])
    rec("keep_size", lambda: (fallocate("alloc", FALLOC_FL_KEEP_SIZE, 0, 8 * mib), os.lstat(p("alloc")).st_size)[1])
    rec("punch", lambda: fallocate("alloc", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, mib, mib + 100))
    rec("punch_without_keep_size", lambda: fallocate("alloc", FALLOC_FL_PUNCH_HOLE, 0, 10))
    rec("zero_range", lambda: fallocate("alloc", FALLOC_FL_ZERO_RANGE, 100, 50))
    rec("zero_range_extends", lambda: (fallocate("alloc", FALLOC_FL_ZERO_RANGE, 4 * mib, mib), os.lstat(p("alloc")).st_size)[1])
    data = read_fresh("alloc")
    rec("alloc_content", lambda: [len(data), data[:100] == b"a" * 100, data[100:150] == bytes(50),
                                  data[150:mib] == b"a" * (mib - 150), data[mib:2 * mib + 100] == bytes(mib + 100),
                                  data[2 * mib + 100:3 * mib] == b"a" * (mib - 100), data[3 * mib:] == bytes(2 * mib)])
    rec("seek_alloc", lambda: seeks("alloc", [(os.SEEK_HOLE, 0), (os.SEEK_DATA, mib)]))
    # copy_file_range.
    source = bytes(range(256)) * 8192
    with open(p("source"), "wb") as f:
        f.write(source)

    def copy_range():
        src = os.open(p("source"), os.O_RDONLY)
        dst = os.open(p("target"), os.O_CREAT | os.O_WRONLY, 0o644)
        copied = 0
        while copied < len(source) - 1000:
            n = os.copy_file_range(src, dst, len(source) - 1000 - copied, 1000 + copied, 3 + copied)
            if n == 0:
                break
            copied += n
        past_end = os.copy_file_range(src, dst, 10, len(source) + 5, 0)
        os.close(src)
        os.close(dst)
        return [copied, past_end, read_fresh("target") == bytes(3) + source[1000:]]

    rec("copy_file_range", copy_range)
    # utimensat with UTIME_NOW and UTIME_OMIT.
    open(p("t"), "w").close()
    os.utime(p("t"), ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))

    def utimens(atime_nsec, mtime_nsec):
        spec = (ctypes.c_long * 4)(0, atime_nsec, 0, mtime_nsec)
        check(libc.utimensat(-100, p("t").encode(), spec, 0x100))
        st = os.lstat(p("t"))
        return [st.st_atime_ns == 1_000_000_000_000_000_000, st.st_mtime_ns == 1_100_000_000_000_000_000]

    rec("utime_omit_both", lambda: utimens(UTIME_OMIT, UTIME_OMIT))
    rec("utime_now_mtime", lambda: utimens(UTIME_OMIT, UTIME_NOW))
    rec("utime_now_atime", lambda: utimens(UTIME_NOW, UTIME_OMIT))
    # Within ext4's range (1901-12-14 to 2446-05-10); DynamicFS keeps any 64-bit time.
    rec("utime_old_dates", lambda: (os.utime(p("t"), ns=(-2_000_000_000_000_000_000, 14_000_000_000_123_456_789)),
                                    [os.lstat(p("t")).st_atime_ns, os.lstat(p("t")).st_mtime_ns])[1])
    # Which times each operation changes (atime, mtime, ctime), as relatime keeps them.
    with open(p("w"), "wb") as f:
        f.write(b"w" * 10000)
    os.mkdir(p("dir"))
    rec("t_read_after_write", lambda: changed("w", lambda: read_fresh("w")))
    rec("t_second_read", lambda: changed("w", lambda: read_fresh("w")))
    rec("t_write", lambda: changed("w", lambda: open(p("w"), "r+b").write(b"x")))
    rec("t_append", lambda: changed("w", lambda: open(p("w"), "ab").write(b"y")))
    rec("t_truncate", lambda: changed("w", lambda: os.truncate(p("w"), 100)))
    rec("t_open_trunc", lambda: changed("w", lambda: open(p("w"), "wb").close()))
    rec("t_chmod", lambda: changed("w", lambda: os.chmod(p("w"), 0o600)))
    rec("t_chown", lambda: changed("w", lambda: os.chown(p("w"), 1, 1)))
    rec("t_link", lambda: changed("w", lambda: os.link(p("w"), p("w2"))))
    rec("t_rename", lambda: changed("w", lambda: os.rename(p("w2"), p("w3"))))
    rec("t_unlink_other_name", lambda: changed("w", lambda: os.unlink(p("w3"))))
    rec("t_dir_create", lambda: changed("dir", lambda: open(p("dir/x"), "w").close()))
    rec("t_dir_list", lambda: changed("dir", lambda: os.listdir(p("dir"))))
    rec("t_dir_unlink", lambda: changed("dir", lambda: os.unlink(p("dir/x"))))
    rec("t_dir_mkdir", lambda: changed("dir", lambda: os.mkdir(p("dir/sub"))))
    rec("t_dir_rename_in", lambda: changed("dir", lambda: os.rename(p("t"), p("dir/t"))))
    rec("t_fallocate_extend", lambda: changed("dense", lambda: fallocate("dense", 0, 0, 2 * mib)))
    rec("t_punch", lambda: changed("dense", lambda: fallocate("dense", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)))
    # statfs.
    st = os.statvfs(root)
    out["statfs_namemax"] = st.f_namemax
    out["statfs_sane"] = [st.f_files >= st.f_ffree, st.f_ffree > 0, st.f_blocks >= st.f_bfree, st.f_bsize == 4096]


def privileges():
    """When the set-user-ID and set-group-ID bits are cleared: by whom, by which call.

    The kernel asks the filesystem to clear them (`FUSE_HANDLE_KILLPRIV_V2`), so each
    way of changing a file's data or owner is tried as `nobody` and as root, on a file
    with both bits and group execute, and on one whose set-group-ID bit has no group
    execute (the old mandatory-locking mark, which a write leaves alone)."""
    os.umask(0)
    mmap_module = __import__("mmap")

    def write(name):
        with open(p(name), "r+b") as f:
            f.write(b"w")

    def write_only(name):
        fd = os.open(p(name), os.O_WRONLY)
        try:
            os.pwrite(fd, b"o", 0)
        finally:
            os.close(fd)

    def fallocate(name):
        fd = os.open(p(name), os.O_RDWR)
        try:
            check(libc.fallocate(fd, 0, 0, 3 << 20))
        finally:
            os.close(fd)

    def copy_into(name):
        with open(p("source"), "rb") as src, open(p(name), "r+b") as dst:
            os.copy_file_range(src.fileno(), dst.fileno(), 100, 0, 0)

    def mapped_write(name):
        with open(p(name), "r+b") as f:
            m = mmap_module.mmap(f.fileno(), 4096)
            m[0:1] = b"m"
            m.flush()
            m.close()

    ways = {
        "write": write,
        "append": lambda n: open(p(n), "ab").write(b"a"),
        "write_only": write_only,
        "truncate": lambda n: os.truncate(p(n), 100),
        "open_trunc": lambda n: open(p(n), "wb").close(),
        "fallocate": fallocate,
        "copy_file_range": copy_into,
        "mmap_write": mapped_write,
        "chown_unchanged": lambda n: os.chown(p(n), -1, -1),
    }
    with open(p("source"), "wb") as f:
        f.write(b"s" * 8192)
    for mode in (0o6777, 0o2767):
        for way, action in ways.items():
            for who in ("nobody", "root"):
                name = f"{way}_{who}_{mode:o}"
                with open(p(name), "wb") as f:
                    f.write(b"x" * 8192)
                if who == "nobody" and way == "chown_unchanged":
                    os.chown(p(name), NOBODY, NOBODY)
                os.chmod(p(name), mode)
                run_as = as_nobody if who == "nobody" else (lambda fn: fn())
                rec(name, lambda: (run_as(lambda: action(name)), oct(stat.S_IMODE(os.lstat(p(name)).st_mode)))[1])
                # After the kernel's attribute cache has expired: what the file holds.
                time.sleep(1.1) if name == "write_nobody_6777" else None
                out[name + "_fresh"] = oct(stat.S_IMODE(os.lstat(p(name)).st_mode))
    # Root changing the owner clears set-user-ID, and set-group-ID with group execute.
    for mode in (0o6777, 0o2767, 0o6755):
        name = f"chown_root_{mode:o}"
        with open(p(name), "wb") as f:
            f.write(b"x")
        os.chmod(p(name), mode)
        rec(name, lambda: (os.chown(p(name), 1234, 5678), oct(stat.S_IMODE(os.lstat(p(name)).st_mode)))[1])
    os.mkdir(p("dir"))
    os.chmod(p("dir"), 0o6777)
    rec("chown_dir", lambda: (os.chown(p("dir"), 1234, 5678), oct(stat.S_IMODE(os.lstat(p("dir")).st_mode)))[1])


def cached_file(leaf):
    """Writes 16 KiB of `a` to `leaf` and opens a reader that caches every page of it
    (recorded as `reader_cached`); returns the path and the reader."""
    name = p(leaf)
    with open(name, "wb") as f:
        f.write(b"a" * 16384)
    reader = os.open(name, os.O_RDONLY)
    rec("reader_cached", lambda: len(os.pread(reader, 16384, 0)))
    return name, reader


def coherence():
    """What the file's other users see of writes through a write-only descriptor (which
    a mount serves with direct I/O, past the page cache): a reader that has every page
    cached, a shared mapping holding a dirty page the write overlaps, an append, and a
    fresh open once all is closed. Each must see the file as it is at that moment."""
    mmap_module = __import__("mmap")
    name, reader = cached_file("shared")
    mapped_fd = os.open(name, os.O_RDWR)
    mapped = mmap_module.mmap(mapped_fd, 16384)
    mapped[100:104] = b"mmmm"
    writer = os.open(name, os.O_WRONLY)
    os.pwrite(writer, b"dddd", 102)
    os.pwrite(writer, b"WXYZ", 4094)
    rec("mapped_after_write", lambda: (mapped[98:108] + mapped[4092:4100]).decode())
    rec("reader_after_write", lambda: (os.pread(reader, 10, 98) + os.pread(reader, 8, 4092)).decode())
    appender = os.open(name, os.O_WRONLY | os.O_APPEND)
    os.write(appender, b"tail")
    os.close(appender)
    rec("reader_size_after_append", lambda: os.fstat(reader).st_size)
    rec("reader_tail", lambda: os.pread(reader, 8, 16380).decode())
    mapped.flush()
    mapped.close()
    for fd in (mapped_fd, writer, reader):
        os.close(fd)
    fresh = read_fresh("shared")
    rec("fresh", lambda: (fresh[98:108] + fresh[4092:4100] + fresh[16380:]).decode())
    rec("fresh_len", lambda: len(fresh))


def read_write():
    """What a read-write descriptor (which a mount serves with direct I/O, as a
    database's) sees and shows: its own writes at unaligned offsets across page
    boundaries (a rollback journal's), a read past the end, a shared mapping of itself
    (dirty pages its reads must see, writes its mapping must see), a reader holding the
    file's pages, an append, a truncate, the times a write changes, and a fresh open once
    all is closed. Each must see the file as it is at that moment."""
    mmap_module = __import__("mmap")
    name, reader = cached_file("db")
    rw = os.open(name, os.O_RDWR)
    os.pwrite(rw, b"h" * 512, 0)
    os.pwrite(rw, b"b" * 4096, 516)
    rec("own_write", lambda: os.pread(rw, 8, 4092).decode())
    rec("reader_sees_write", lambda: os.pread(reader, 8, 4092).decode())
    rec("read_past_end", lambda: len(os.pread(rw, 8, 20000)))
    os.pwrite(rw, b"grow", 16384)
    rec("size_after_growing_write", lambda: (os.fstat(rw).st_size, os.fstat(reader).st_size))
    mapped = mmap_module.mmap(rw, 16388)
    mapped[8190:8194] = b"MAPD"
    rec("own_read_sees_mapping", lambda: os.pread(rw, 8, 8188).decode())
    os.pwrite(rw, b"WRTE", 8192)
    rec("mapping_sees_own_write", lambda: mapped[8188:8196].decode())
    rec("reader_sees_both", lambda: os.pread(reader, 8, 8188).decode())
    rec("write_times", lambda: changed("db", lambda: os.pwrite(rw, b"t", 100)))
    mapped.flush()
    mapped.close()
    appender = os.open(name, os.O_RDWR | os.O_APPEND)
    os.write(appender, b"tail")
    rec("append_read_back", lambda: os.pread(appender, 8, 16384).decode())
    os.close(appender)
    os.ftruncate(rw, 12000)
    rec("after_truncate", lambda: (os.fstat(reader).st_size, len(os.pread(rw, 8192, 8192))))
    for fd in (rw, reader):
        os.close(fd)
    fresh = read_fresh("db")
    rec("fresh", lambda: (len(fresh), fresh[96:104].decode(), fresh[508:520].decode(), fresh[8188:8196].decode()))


def direct_reads():
    """What a read-only descriptor on a file of several extents (which a mount serves
    past the page cache) sees of the file's other users: a dirty page of a shared
    mapping not yet written back, a write through a read-write descriptor, a shrinking
    truncate and a growing write; and that such a descriptor can be mapped shared and
    read a few bytes at a time. Each must see the file as it is at that moment."""
    mmap_module = __import__("mmap")
    size = 4 << 20
    name = p("large")
    with open(name, "wb") as f:
        f.write(bytes(range(256)) * (size // 256))
    mapped_fd = os.open(name, os.O_RDWR)
    mapped = mmap_module.mmap(mapped_fd, size)
    mapped[(1 << 20) + 10:(1 << 20) + 14] = b"mmap"
    reader = os.open(name, os.O_RDONLY)
    rec("reader_sees_dirty_mapping", lambda: os.pread(reader, 4, (1 << 20) + 10).decode())
    rec("reader_small_reads", lambda: sum(len(os.pread(reader, 4096, k * 4096)) for k in range(64)))
    rec("reader_checksum", lambda: sum(os.pread(reader, size, 0)) % 1000003)
    writer = os.open(name, os.O_RDWR)
    os.pwrite(writer, b"rdwr", (3 << 20) - 2)
    rec("reader_after_write", lambda: os.pread(reader, 8, (3 << 20) - 4).hex())
    read_only_map = mmap_module.mmap(reader, size, mmap_module.MAP_SHARED, mmap_module.PROT_READ)
    rec("read_only_map", lambda: read_only_map[(3 << 20) - 2:(3 << 20) + 2].decode())
    mapped[5:9] = b"MAPD"
    rec("read_only_map_sees_mapping", lambda: read_only_map[5:9].decode())
    os.ftruncate(writer, 2 << 20)
    rec("reader_after_truncate", lambda: (os.fstat(reader).st_size, len(os.pread(reader, 1 << 20, (2 << 20) - 100))))
    os.pwrite(writer, b"grow", (5 << 20) - 4)
    rec("reader_after_grow", lambda: (os.fstat(reader).st_size, os.pread(reader, 8, (5 << 20) - 8).hex()))
    read_only_map.close()
    mapped.close()
    for fd in (mapped_fd, writer, reader):
        os.close(fd)
    fresh = read_fresh("large")
    rec("fresh", lambda: (len(fresh), fresh[5:9].decode(), fresh[(1 << 20) + 10:(1 << 20) + 14].decode()))


SECTIONS = {
    "special_files": special_files,
    "xattrs": xattrs,
    "acls": acls,
    "edges": edges,
    "privileges": privileges,
    "coherence": coherence,
    "read_write": read_write,
    "direct_reads": direct_reads,
}
SECTIONS[sys.argv[2]]()
print(json.dumps(out, sort_keys=True))
