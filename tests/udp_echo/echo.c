/* A UDP echo server for the published-port tests (tests/ports.rs, and the
 * VM box in tests/vm_linux.rs): busybox has no UDP server to test with.
 * No libc, raw system calls, so the static binary is a few KiB and goes
 * into a box by a bind volume or, in a VM, through exec's stdin.
 *
 * `echo PORT` binds 0.0.0.0:PORT and sends every datagram back to its
 * sender, except "whoami", answered with the sender's address as the
 * box sees it ("127.0.0.1:40000"), so a test can tell flows apart. */
struct sockaddr_in {
    unsigned short family, port;
    unsigned int addr;
    unsigned char zero[8];
};

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long r;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return r;
}

static void quit(long code)
{
    for (;;)
        sys6(60, code, 0, 0, 0, 0, 0); /* exit */
}

/* Writes `v` in decimal at `p`; the end. */
static char *decimal(char *p, unsigned v)
{
    char t[10];
    int n = 0;
    do {
        t[n++] = '0' + v % 10;
        v /= 10;
    } while (v);
    while (n)
        *p++ = t[--n];
    return p;
}

static char buf[65536];

__attribute__((used)) void cmain(long *sp)
{
    char **argv = (char **)(sp + 1);
    unsigned port = 0;
    if (sp[0] < 2)
        quit(2);
    for (char *c = argv[1]; *c; c++) {
        if (*c < '0' || *c > '9')
            quit(2);
        port = port * 10 + (*c - '0');
    }
    struct sockaddr_in any = {2, (unsigned short)((port >> 8) | (port << 8)), 0, {0}};
    long s = sys6(41, 2, 2, 0, 0, 0, 0); /* socket(AF_INET, SOCK_DGRAM) */
    if (s < 0 || sys6(49, s, (long)&any, sizeof any, 0, 0, 0) != 0) /* bind */
        quit(1);
    for (;;) {
        struct sockaddr_in from;
        unsigned len = sizeof from;
        long n = sys6(45, s, (long)buf, sizeof buf, 0, (long)&from, (long)&len); /* recvfrom */
        if (n < 0)
            continue;
        const char *who = "whoami";
        int is_who = n == 6;
        for (int i = 0; is_who && i < 6; i++)
            is_who = buf[i] == who[i];
        if (is_who) {
            unsigned char *a = (unsigned char *)&from.addr;
            char *p = buf;
            for (int i = 0; i < 4; i++) {
                p = decimal(p, a[i]);
                *p++ = i < 3 ? '.' : ':';
            }
            p = decimal(p, (unsigned)((from.port >> 8) | ((from.port & 0xff) << 8)));
            n = p - buf;
        }
        sys6(44, s, (long)buf, n, 0, (long)&from, len); /* sendto */
    }
}

__asm__(".globl _start\n"
        "_start:\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call cmain\n"
        "  hlt\n");
