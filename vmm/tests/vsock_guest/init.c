/* The init of tests/vsock_linux.rs's guest: no libc, raw system calls.
 * Listens on vsock port 1234, writes the boot timer's ready mark (a
 * snapshot is taken there), tells the host it is up by connecting to
 * host port 5000 and writing "up\n", then echoes one connection and ends
 * the VM with exit status 0 (port 0x501). The ports are written through
 * /dev/port (the guest kernel has no ioperm), on a devtmpfs at /dev.
 * The echo ends with a half-close, and the VM only once the host has
 * closed too, so nothing written is lost to the VM's end. */
struct sockaddr_vm {
    unsigned short family, reserved;
    unsigned int port, cid;
    unsigned char zero[4];
};

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

static long port;

static void outb(unsigned char v, unsigned short at)
{
    sys6(18, port, (long)&v, 1, at, 0);     /* pwrite64 */
}

__attribute__((force_align_arg_pointer)) void _start(void)
{
    struct sockaddr_vm any = {40, 0, 1234, 0xffffffffu, {0}};
    struct sockaddr_vm host = {40, 0, 5000, 2, {0}};
    char buf[512];
    sys(83, (long)"/dev", 0755, 0);         /* mkdir */
    sys6(165, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0); /* mount */
    port = sys(2, (long)"/dev/port", 1, 0); /* open, O_WRONLY */
    long s = sys(41, 40, 1, 0);             /* socket(AF_VSOCK, SOCK_STREAM) */
    sys(49, s, (long)&any, sizeof any);     /* bind */
    sys(50, s, 8, 0);                       /* listen */
    outb(3, 0x502);                         /* ready */
    for (int i = 0; i < 50; i++) {
        long c = sys(41, 40, 1, 0);
        long r = sys(42, c, (long)&host, sizeof host); /* connect */
        if (r == 0) {
            sys(1, c, (long)"up\n", 3);
            sys(3, c, 0, 0);
            break;
        }
        sys(3, c, 0, 0);
        struct { long s, ns; } t = {0, 100000000};
        sys(35, (long)&t, 0, 0);            /* nanosleep */
    }
    for (;;) {
        long k = sys(43, s, 0, 0);          /* accept */
        if (k < 0)
            continue;
        long n;
        while ((n = sys(0, k, (long)buf, sizeof buf)) > 0)
            sys(1, k, (long)buf, n);
        /* Linux sends vsock packets from a workqueue: a write that has
         * returned may not be in the virtqueue yet, and ending the VM now
         * would lose it. Half-close instead (the SHUTDOWN is queued behind
         * the data) and end only once the host, having read to the end,
         * closes its side. */
        sys(48, k, 1, 0);                   /* shutdown(SHUT_WR) */
        while (sys(0, k, (long)buf, sizeof buf) > 0)
            ;
        sys(3, k, 0, 0);
        outb(0, 0x501);                     /* exit status 0 */
    }
}
