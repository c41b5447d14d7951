/*
 * bootc-prestage-spawner: starts hook steps for bootc-prestaged.
 *
 * Why it exists: the daemon is a ~70 MB Node.js process. Forking it for
 * every step costs far more than the step (on a VM, fork copies page tables
 * and the daemon then takes a copy-on-write fault on every page it touches
 * until the child has exec'ed). This process is tiny, so its fork is cheap;
 * systemd splits systemd-executor out of PID 1 for the same reason. The
 * daemon starts it once, on the first step, and talks to it over a pipe.
 *
 * It runs nothing on its own: every program comes from the daemon, which
 * has already validated it. It keeps no state beyond the children it has
 * to reap. It exits when the daemon closes its end of the pipe (or dies:
 * PR_SET_PDEATHSIG); running steps are left alone, as when the daemon
 * itself stops (they are in their own sessions; recovery finds them).
 *
 * Protocol: frames on stdin (requests) and stdout (events), each a
 * little-endian u32 length followed by that many bytes; the first byte of a
 * frame is its type.
 *
 *   event   'H' hello:  u32 fd, sent once at start: the read end of a pipe
 *                       held here, for the daemon to check that it can open
 *                       our fds through /proc/<pid>/fd/ (and then 'C' it).
 *   request 'S' spawn:  u32 id, u32 argc, u32 envc, u32 npipes, u32 flags,
 *                       then argc + envc NUL-terminated strings: argv and
 *                       the "KEY=VALUE" environment, then one path per flag
 *                       set, in this order: SPAWN_SYNC, a file to fdatasync
 *                       first (the daemon's journal: the step's record is
 *                       durable before the exec); SPAWN_MKDIR, a directory to
 *                       create (mode 0700, parents too) if it is missing.
 *                       fds 1 .. npipes of the child are the write ends of
 *                       new pipes; fd 0 is /dev/null. With SPAWN_SHARE_STDERR
 *                       (no path) fd 2 is the same pipe as fd 1, and the
 *                       other pipes go to fds 3 .. npipes + 1, so that the
 *                       step's stdout and stderr lines arrive in the order
 *                       it wrote them (as a service's do in the journal).
 *   event   'S':        u32 id, i32 pid (> 0) or -errno when it could not start,
 *                       u64 the child's start time (field 22 of /proc/<pid>/stat,
 *                       read before it can be reaped; 0 if unknown) or, for
 *                       -errno, what failed (0 the exec or the pipes, 1 the
 *                       sync, 2 the directory), then for a started child
 *                       npipes u32: our fds of the pipes' read ends. The
 *                       daemon needs the start time to tell the step from a
 *                       later process that reuses its pid, and a fast step
 *                       is gone by the time the daemon could read it.
 *   request 'C' close:  u32 id (unused), u32 n, then n u32 fds: read ends the
 *                       daemon has opened through /proc/<pid>/fd/; we close
 *                       ours. Only fds we hold are closed. No event answers it.
 *   event   'X' exit:   i32 pid, i32 wait status (as from waitpid).
 *
 * Why pipes made here, reached through /proc: Node cannot call pipe(2),
 * and named FIFOs cost a create and an unlink on the file system for every
 * stream of every step (each a metadata update; at times hundreds of
 * microseconds on a VM's disk). A pipe's read end stays open here until the
 * daemon has its own, so nothing the step writes before then is lost.
 *
 * A child gets: its own session and process group (setsid), cwd /, the
 * given environment only, all signals at their defaults and unblocked, and
 * no fd other than 0-N (0-2 at least): every other is closed, even ones
 * the daemon inherited without close-on-exec. Whether the
 * exec succeeded is known before the 'S' event is sent (a close-on-exec
 * pipe, as libuv does), so a bad program is an error, not an exit status.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * vfork(): the child borrows this process's memory until it execs, so
 * nothing is copied and we resume exactly when exec has succeeded (or the
 * child gave up), with no pipe to wait on: about half the latency of
 * fork() here. The child only makes system calls and writes child_errno.
 * (posix_spawn would do the same, but glibc's leaves its two internal
 * signals ignored in the program it starts.) -DUSE_VFORK=0 builds the
 * fork() variant; the tests run both.
 */
#ifndef USE_VFORK
#define USE_VFORK 1
#endif
static volatile int child_errno;

/* Larger requests are a protocol error: the daemon never sends them. */
#define MAX_FRAME (64u * 1024 * 1024)
#define MAX_OUT_FDS 16
/* Our own fds live at or above this, clear of the child's 0..MAX_OUT_FDS. */
#define HIGH_FD 64

static int ctl_in = -1;
static int ctl_out = -1;

/* Read ends of pipes reported to the daemon and not yet closed by a 'C'. */
#define MAX_HELD 4096
static int held[MAX_HELD];
static size_t nheld;

static void die(const char *what) {
    fprintf(stderr, "bootc-prestage-spawner: %s: %s\n", what, strerror(errno));
    _exit(2);
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; p[2] = (v >> 16) & 0xff; p[3] = (v >> 24) & 0xff;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            /* The daemon is gone: nothing left to report to. */
            _exit(errno == EPIPE ? 0 : 2);
        }
        p += w;
        n -= (size_t)w;
    }
}

/* One event frame: type, two 32-bit values, for 'S' a 64-bit one and `nfds` fds. */
static void send_event(char type, uint32_t a, int32_t b, uint64_t c, const int *fds, uint32_t nfds) {
    unsigned char f[4 + 17 + 4 * MAX_OUT_FDS];
    size_t len = type == 'S' ? 17 + 4 * (size_t)nfds : type == 'H' ? 5 : 9;
    put_u32(f, (uint32_t)len);
    f[4] = (unsigned char)type;
    put_u32(f + 5, a);
    if (type != 'H') put_u32(f + 9, (uint32_t)b);
    if (type == 'S') {
        put_u32(f + 13, (uint32_t)(c & 0xffffffffu));
        put_u32(f + 17, (uint32_t)(c >> 32));
        for (uint32_t i = 0; i < nfds; i++) put_u32(f + 21 + 4 * i, (uint32_t)fds[i]);
    }
    write_all(ctl_out, f, 4 + len);
}

static void hold(int fd) {
    if (nheld == MAX_HELD) {
        /* The daemon stopped sending 'C' (a bug): refuse to grow without bound. */
        fprintf(stderr, "bootc-prestage-spawner: more than %d pipe ends held\n", MAX_HELD);
        _exit(2);
    }
    held[nheld++] = fd;
}

/* Close fd if it is one we hold for the daemon; anything else is ignored. */
static void release(int fd) {
    for (size_t i = 0; i < nheld; i++) {
        if (held[i] != fd) continue;
        close(fd);
        held[i] = held[--nheld];
        return;
    }
}

/* Field 22 (starttime) of /proc/<pid>/stat; 0 when it cannot be read. */
static uint64_t start_time(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    /* comm (field 2) may hold spaces and ')': count from the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    for (int field = 2; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p) return 0;
    }
    return strtoull(p + 1, NULL, 10);
}

/* Move an fd to HIGH_FD or above, close-on-exec. */
static int high_cloexec(int fd) {
    int h = fcntl(fd, F_DUPFD_CLOEXEC, HIGH_FD);
    if (h < 0) die("fcntl(F_DUPFD_CLOEXEC)");
    close(fd);
    return h;
}

static void reap(void) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) return; /* 0: none exited yet; -1 ECHILD: no children */
        send_event('X', (uint32_t)pid, status, 0, NULL, 0);
    }
}

/* Close every fd >= first except keep. */
static void close_others(int first, int keep) {
    if (keep >= first) {
        if (keep > first && syscall(SYS_close_range, (unsigned)first, (unsigned)keep - 1, 0u) < 0) goto slow;
        if (syscall(SYS_close_range, (unsigned)keep + 1, ~0u, 0u) < 0) goto slow;
        return;
    }
    if (syscall(SYS_close_range, (unsigned)first, ~0u, 0u) == 0) return;
slow: ;
    /* Kernels before 5.9: the slow way. */
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (int fd = first; fd < max; fd++) {
        if (fd != keep) close(fd);
    }
}

/* The child side of a spawn; never returns. Only async-signal-safe calls. */
static void child(char **argv, char **envp, const int *out, uint32_t nout, int share, int errfd) {
    sigset_t all;
    int e;
    sigemptyset(&all);
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        signal(s, SIG_DFL);
    }
    sigprocmask(SIG_SETMASK, &all, NULL);
    if (setsid() < 0) goto fail;
    if (chdir("/") < 0) goto fail;
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0) goto fail;
    if (dup2(null, 0) < 0) goto fail;
    /*
     * Pipe i on fd i + 1, or with `share` on fd 1 and 2 for the first and
     * i + 2 for the others. out[] are all >= HIGH_FD, so dup2 onto 1..top
     * cannot clobber a source.
     */
    int top = 0;
    for (uint32_t i = 0; i < nout; i++) {
        top = (int)i + 1 + (share && i > 0);
        if (dup2(out[i], top) < 0) goto fail;
    }
    if (share && nout > 0) {
        if (dup2(out[0], 2) < 0) goto fail;
        if (top < 2) top = 2;
    }
    /* Without pipes, stdout and stderr are /dev/null too, never ours. */
    for (int fd = top + 1; fd <= 2; fd++) {
        if (dup2(null, fd) < 0) goto fail;
    }
    /*
     * Descriptors the daemon itself inherited without close-on-exec (from a
     * careless parent) must not reach the step either. Keep only errfd,
     * which closes at exec.
     */
    int first = (top < 2 ? 2 : top) + 1;
    close_others(first, errfd);
    execve(argv[0], argv, envp);
fail:
    e = errno;
    if (errfd >= 0) (void)!write(errfd, &e, sizeof e);
    else child_errno = e;
    _exit(127);
}

#if USE_VFORK
/* Its own frame, so that no variable of the caller lives across vfork(). */
static __attribute__((noinline)) pid_t vfork_child(char **argv, char **envp, const int *out, uint32_t nout, int share) {
    child_errno = 0;
    pid_t pid = vfork();
    if (pid == 0) child(argv, envp, out, nout, share, -1);
    return pid;
}
#endif

/*
 * Start argv with fds 1..nout on new pipes; on success rd[] holds the read
 * ends (kept, for the daemon to open) and the pid is returned, else -errno.
 */
static int32_t do_spawn(char **argv, char **envp, uint32_t nout, int share, int *rd, uint64_t *start) {
    int out[MAX_OUT_FDS];
    uint32_t made = 0;
    int32_t result;
    int ep[2] = { -1, -1 };
    *start = 0;

    for (; made < nout; made++) {
        /* Blocking, as a program expects its stdout to be; both ends above HIGH_FD. */
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) { result = -errno; goto fail; }
        rd[made] = high_cloexec(p[0]);
        out[made] = high_cloexec(p[1]);
    }
#if USE_VFORK
    pid_t pid = vfork_child(argv, envp, out, nout, share);
    if (pid < 0) { result = -errno; goto fail; }
    /* Here the child has exec'ed or _exit'ed. */
    if (child_errno != 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        result = -child_errno;
        goto fail;
    }
#else
    if (pipe2(ep, O_CLOEXEC) < 0) { result = -errno; goto fail; }
    pid_t pid = fork();
    if (pid < 0) { result = -errno; goto fail; }
    if (pid == 0) child(argv, envp, out, nout, share, ep[1]);
    close(ep[1]);
    ep[1] = -1;
    int e;
    ssize_t n;
    do n = read(ep[0], &e, sizeof e); while (n < 0 && errno == EINTR);
    close(ep[0]);
    ep[0] = -1;
    if (n == (ssize_t)sizeof e) {
        /* exec failed: the child has exited with 127; reap it quietly. */
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        result = -e;
        goto fail;
    }
#endif
    /* Not reaped yet: SIGCHLD is only handled back in the main loop. */
    *start = start_time(pid);
    for (uint32_t i = 0; i < made; i++) {
        close(out[i]);
        hold(rd[i]);
    }
    return pid;
fail:
    for (uint32_t i = 0; i < made; i++) {
        close(out[i]);
        close(rd[i]);
    }
    if (ep[0] >= 0) close(ep[0]);
    if (ep[1] >= 0) close(ep[1]);
    return result;
}

#define SPAWN_SYNC 1u
#define SPAWN_MKDIR 2u
/* Not an action: fd 2 shares fd 1's pipe (see the protocol above). */
#define SPAWN_SHARE_STDERR 4u
/* What failed, in the 'S' event of a spawn that did not start. */
#define FAILED_SYNC 1
#define FAILED_MKDIR 2

static int sync_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return -errno;
    int r = fdatasync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

/* mkdir -p with mode 0700; the path must end up a directory. */
static int make_directory(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf || path[0] != '/') return -EINVAL;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; ; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, 0700) < 0 && errno != EEXIST) return -errno;
        *p = c;
        if (c == '\0') break;
    }
    struct stat st;
    if (stat(path, &st) < 0) return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* What a spawn request's flags ask for before the exec, in this order. */
static const struct {
    uint32_t flag;
    int (*run)(const char *path);
    uint64_t failed;
} before_exec[] = {
    { SPAWN_SYNC, sync_file, FAILED_SYNC },
    { SPAWN_MKDIR, make_directory, FAILED_MKDIR },
};

/* Split `n` NUL-terminated strings out of p[0, len); NULL when malformed. */
static char **strings(char *p, size_t len, uint32_t n, size_t *used) {
    char **v = calloc((size_t)n + 1, sizeof *v);
    if (!v) die("calloc");
    size_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        char *nul = off < len ? memchr(p + off, '\0', len - off) : NULL;
        if (!nul) { free(v); return NULL; }
        v[i] = p + off;
        off = (size_t)(nul - p) + 1;
    }
    *used = off;
    return v;
}

static void protocol_error(const char *what) {
    fprintf(stderr, "bootc-prestage-spawner: protocol error: %s\n", what);
    _exit(2);
}

static void handle(unsigned char *f, uint32_t len) {
    if (len < 5) protocol_error("short frame");
    char type = (char)f[0];
    uint32_t id = get_u32(f + 1);
    if (type == 'S') {
        if (len < 21) protocol_error("short spawn request");
        uint32_t argc = get_u32(f + 5), envc = get_u32(f + 9), nout = get_u32(f + 13), flags = get_u32(f + 17);
        if (argc == 0 || nout > MAX_OUT_FDS || argc > len || envc > len) protocol_error("bad spawn counts");
        uint32_t known = SPAWN_SHARE_STDERR, nextra = 0;
        for (size_t i = 0; i < sizeof before_exec / sizeof *before_exec; i++) {
            known |= before_exec[i].flag;
            nextra += (flags & before_exec[i].flag) != 0;
        }
        if (flags & ~known) protocol_error("unknown spawn flags");
        size_t used;
        char **all = strings((char *)f + 21, len - 21, argc + envc + nextra, &used);
        if (!all) protocol_error("unterminated string in spawn request");
        /* The actions' paths follow the environment, in the table's order. */
        char **extra = all + argc + envc;
        for (size_t i = 0; i < sizeof before_exec / sizeof *before_exec; i++) {
            if (!(flags & before_exec[i].flag)) continue;
            int r = before_exec[i].run(*extra++);
            if (r < 0) {
                free(all);
                send_event('S', id, r, before_exec[i].failed, NULL, 0);
                return;
            }
        }
        /* argv and envp must each end in NULL: copy them apart. */
        char **argv = calloc((size_t)argc + 1, sizeof *argv);
        char **envp = calloc((size_t)envc + 1, sizeof *envp);
        if (!argv || !envp) die("calloc");
        memcpy(argv, all, argc * sizeof *argv);
        memcpy(envp, all + argc, envc * sizeof *envp);
        uint64_t start;
        int rd[MAX_OUT_FDS];
        int32_t r = do_spawn(argv, envp, nout, (flags & SPAWN_SHARE_STDERR) != 0, rd, &start);
        free(argv);
        free(envp);
        free(all);
        send_event('S', id, r, start, rd, r > 0 ? nout : 0);
    } else if (type == 'C') {
        if (len < 9) protocol_error("short close request");
        uint32_t n = get_u32(f + 5);
        if (n > (len - 9) / 4) protocol_error("bad close count");
        for (uint32_t i = 0; i < n; i++) release((int)get_u32(f + 9 + 4 * i));
    } else {
        protocol_error("unknown request type");
    }
}

int main(void) {
    /* Die with the daemon, even if it is killed before it can close the pipe. */
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("prctl(PR_SET_PDEATHSIG)");
    if (getppid() != parent) return 0;
    /* A write to a dead daemon's pipe must be EPIPE, not death by signal. */
    signal(SIGPIPE, SIG_IGN);

    ctl_in = high_cloexec(dup(0));
    ctl_out = high_cloexec(dup(1));
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) die("open /dev/null");
    dup2(null, 0);
    dup2(null, 1);
    close(null);

    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) < 0) die("sigprocmask");
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) die("signalfd");
    sfd = high_cloexec(sfd);

    int hello[2];
    if (pipe2(hello, O_CLOEXEC) < 0) die("pipe2");
    close(hello[1]);
    int probe = high_cloexec(hello[0]);
    hold(probe);
    send_event('H', (uint32_t)probe, 0, 0, NULL, 0);

    size_t cap = 64 * 1024, have = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) die("malloc");
    for (;;) {
        struct pollfd p[2] = { { .fd = ctl_in, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {}
            reap();
        }
        if (p[0].revents) {
            if (have == cap) {
                cap *= 2;
                unsigned char *nb = realloc(buf, cap);
                if (!nb) die("realloc");
                buf = nb;
            }
            ssize_t n = read(ctl_in, buf + have, cap - have);
            if (n < 0) {
                if (errno == EINTR || errno == EAGAIN) continue;
                die("read");
            }
            if (n == 0) return 0; /* the daemon closed the pipe: done */
            have += (size_t)n;
            size_t off = 0;
            while (have - off >= 4) {
                uint32_t len = get_u32(buf + off);
                if (len > MAX_FRAME) protocol_error("frame too large");
                if (have - off - 4 < len) {
                    /* Incomplete: make room for the whole frame. */
                    while (cap < (size_t)len + 4) cap *= 2;
                    break;
                }
                handle(buf + off + 4, len);
                off += 4 + (size_t)len;
            }
            memmove(buf, buf + off, have - off);
            have -= off;
            if (have == 0 && cap > 64 * 1024) cap = 64 * 1024; /* a large request passed: give it back */
            unsigned char *nb = realloc(buf, cap);
            if (!nb) die("realloc");
            buf = nb;
        }
    }
}
