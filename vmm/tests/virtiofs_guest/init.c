/* The init of tests/virtiofs_linux.rs's guest: no libc, raw system calls.
 * Two shares: tag "rw" (virtio0) and tag "ro" (virtio1, read-only on the
 * host side). It reports each step on the console as "T: <what> <value>"
 * lines, which the host reads while the guest runs:
 *   - rw: mounts it on /rw, reads hello.txt (the host wrote it), prints
 *     its mode, writes from-guest.txt (mode 0604), makes dir/ (0750),
 *     chmods hello.txt to 0600;
 *   - ro: mounts it read-only on /ro, remounts it read-write (the guest
 *     may), and tries to create, truncate, unlink, chmod, mkdir, rename
 *     and write: each result is printed (the host wants -30, EROFS);
 *     reading still works;
 *   - prints "T: killme", and waits (up to 60 s) for virtio1's status
 *     in sysfs to show NEEDS_RESET (0x40) once the host killed the ro
 *     share's server; prints both devices' status;
 *   - writes after.txt on rw (the other device still works), prints
 *     "T: done" and ends the VM with status 0 (port 0x501, through
 *     /dev/port). */

#define O_RDONLY 0
#define O_WRONLY 1
#define O_RDWR 2
#define O_CREAT 0100
#define O_TRUNC 01000
#define MS_RDONLY 1
#define MS_REMOUNT 32

static long sys(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

static long sys6(long n, long a, long b, long c, long d, long e)
{
    long r;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return r;
}

static long port, console;

static void outb(unsigned char v, unsigned short at)
{
    sys6(18, port, (long)&v, 1, at, 0);     /* pwrite64 */
}

static long len(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    return n;
}

static void put(const char *s)
{
    sys(1, console, (long)s, len(s));       /* write */
}

/* "T: what value\n", value in decimal (negative for an errno) or octal. */
static void report(const char *what, long v, int base)
{
    char b[32];
    int i = sizeof b;
    int neg = v < 0;
    unsigned long u = neg ? -v : v;
    b[--i] = 0;
    b[--i] = '\n';
    do {
        b[--i] = "0123456789"[u % base];
        u /= base;
    } while (u);
    if (neg)
        b[--i] = '-';
    put("T: ");
    put(what);
    put(" ");
    put(b + i);
}

static void report_text(const char *what, const char *text)
{
    put("T: ");
    put(what);
    put(" ");
    put(text);
    put("\n");
}

/* Reads up to n-1 bytes of a file into b, without its last newline. */
static long slurp(const char *path, char *b, long n)
{
    long fd = sys(2, (long)path, O_RDONLY, 0);
    if (fd < 0)
        return fd;
    long got = sys(0, fd, (long)b, n - 1);
    sys(3, fd, 0, 0);
    if (got < 0)
        return got;
    if (got > 0 && b[got - 1] == '\n')
        got--;
    b[got] = 0;
    return got;
}

struct stat_buf {
    unsigned long dev, ino, nlink;
    unsigned int mode, uid, gid, pad;
    unsigned long rest[15];
};

static void sleep_ms(long ms)
{
    struct { long s, ns; } t = {ms / 1000, (ms % 1000) * 1000000};
    sys(35, (long)&t, 0, 0);                /* nanosleep */
}

static long write_file(const char *path, const char *text, long mode)
{
    long fd = sys(2, (long)path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0)
        return fd;
    long w = sys(1, fd, (long)text, len(text));
    sys(74, fd, 0, 0);                      /* fsync */
    long c = sys(3, fd, 0, 0);
    return w < 0 ? w : c;
}

__attribute__((force_align_arg_pointer)) void _start(void)
{
    char buf[256];
    struct stat_buf st;
    sys(83, (long)"/dev", 0755, 0);         /* mkdir */
    sys6(165, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0);
    port = sys(2, (long)"/dev/port", O_WRONLY, 0);
    console = sys(2, (long)"/dev/console", O_WRONLY, 0);
    sys(83, (long)"/sys", 0755, 0);
    sys6(165, (long)"sysfs", (long)"/sys", (long)"sysfs", 0, 0);
    sys(95, 022, 0, 0);                     /* umask */

    /* The read-write share. */
    sys(83, (long)"/rw", 0755, 0);
    report("mount-rw", sys6(165, (long)"rw", (long)"/rw", (long)"virtiofs", 0, 0), 10);
    if (slurp("/rw/hello.txt", buf, sizeof buf) >= 0)
        report_text("read", buf);
    report("stat", sys(4, (long)"/rw/hello.txt", (long)&st, 0), 10);
    report("mode", st.mode, 8);
    report("write", write_file("/rw/from-guest.txt", "written by the guest\n", 0604), 10);
    report("mkdir", sys(83, (long)"/rw/dir", 0750, 0), 10);
    report("chmod", sys(90, (long)"/rw/hello.txt", 0600, 0), 10);

    /* The read-only share, remounted read-write by the guest. */
    sys(83, (long)"/ro", 0755, 0);
    report("mount-ro", sys6(165, (long)"ro", (long)"/ro", (long)"virtiofs", MS_RDONLY, 0), 10);
    report("remount-rw", sys6(165, (long)"ro", (long)"/ro", (long)"virtiofs", MS_REMOUNT, 0), 10);
    if (slurp("/ro/keep.txt", buf, sizeof buf) >= 0)
        report_text("ro-read", buf);
    report("ro-create", sys(2, (long)"/ro/new.txt", O_WRONLY | O_CREAT, 0644), 10);
    report("ro-truncate", sys(2, (long)"/ro/keep.txt", O_WRONLY | O_TRUNC, 0), 10);
    long fd = sys(2, (long)"/ro/keep.txt", O_RDWR, 0);
    report("ro-open-rw", fd, 10);
    if (fd >= 0) {
        report("ro-write", sys(1, fd, (long)"X", 1), 10);
        report("ro-fsync", sys(74, fd, 0, 0), 10);
        sys(3, fd, 0, 0);
    }
    report("ro-unlink", sys(87, (long)"/ro/keep.txt", 0, 0), 10);
    report("ro-chmod", sys(90, (long)"/ro/keep.txt", 0777, 0), 10);
    report("ro-mkdir", sys(83, (long)"/ro/d", 0755, 0), 10);
    report("ro-rename", sys(82, (long)"/ro/keep.txt", (long)"/ro/moved.txt", 0), 10);
    if (slurp("/ro/keep.txt", buf, sizeof buf) >= 0)
        report_text("ro-read-again", buf);

    /* The host kills the ro share's server now. */
    put("T: killme\n");
    int seen = 0;
    for (int i = 0; i < 600 && !seen; i++) {
        long n = slurp("/sys/bus/virtio/devices/virtio1/status", buf, sizeof buf);
        /* "0x000000XX": NEEDS_RESET is 0x40. */
        if (n == 10 && (buf[8] == '4' || buf[8] == '5' || buf[8] == '6' || buf[8] == '7' ||
                        buf[8] == 'c' || buf[8] == 'd' || buf[8] == 'e' || buf[8] == 'f'))
            seen = 1;
        else
            sleep_ms(100);
    }
    long n0 = sys(89, (long)"/sys/bus/virtio/devices/virtio0", (long)buf, sizeof buf - 1);
    buf[n0 > 0 ? n0 : 0] = 0;
    report_text("where0", buf);
    long n1 = sys(89, (long)"/sys/bus/virtio/devices/virtio1", (long)buf, sizeof buf - 1);
    buf[n1 > 0 ? n1 : 0] = 0;
    report_text("where1", buf);
    if (slurp("/sys/bus/virtio/devices/virtio0/status", buf, sizeof buf) >= 0)
        report_text("status0", buf);
    if (slurp("/sys/bus/virtio/devices/virtio1/status", buf, sizeof buf) >= 0)
        report_text("status1", buf);
    report("after", write_file("/rw/after.txt", "after\n", 0644), 10);
    put("T: done\n");
    outb(0, 0x501);                         /* exit status 0 */
    for (;;)
        sleep_ms(1000);
}
