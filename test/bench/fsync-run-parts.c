/*
 * fsync-run-parts JOURNAL DIR: the floor of a crash-safe step runner, for
 * the prepare benchmark.
 *
 * Runs every executable regular file of DIR in name order, as run-parts
 * does, one after another with stdin/stdout/stderr inherited; before each
 * it appends one small record to JOURNAL and fdatasync()s it. That is the
 * one cost the daemon's crash-safety invariant cannot avoid (a step's
 * journal record is durable before the step is spawned; see
 * docs/design.md, "Transactions"), so "run-parts + fdatasync per step" is
 * the honest baseline for a transactional runner: anything the daemon
 * spends beyond it is orchestration overhead.
 *
 * Exits 0 when every program exited 0, 1 otherwise (after running all), 2
 * on a usage or system error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int runnable(const struct dirent *e)
{
    return e->d_name[0] != '.';
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: fsync-run-parts JOURNAL DIR\n");
        return 2;
    }
    int jfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (jfd < 0) {
        fprintf(stderr, "fsync-run-parts: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    struct dirent **names;
    int n = scandir(argv[2], &names, runnable, alphasort);
    if (n < 0) {
        fprintf(stderr, "fsync-run-parts: %s: %s\n", argv[2], strerror(errno));
        return 2;
    }
    int failed = 0;
    char path[4096];
    char record[4200];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", argv[2], names[i]->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || access(path, X_OK) != 0)
            continue;
        int len = snprintf(record, sizeof record, "{\"step\":\"%s\"}\n", names[i]->d_name);
        if (write(jfd, record, (size_t)len) != len || fdatasync(jfd) != 0) {
            fprintf(stderr, "fsync-run-parts: journal: %s\n", strerror(errno));
            return 2;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "fsync-run-parts: fork: %s\n", strerror(errno));
            return 2;
        }
        if (pid == 0) {
            char *args[] = { path, NULL };
            execv(path, args);
            _exit(127);
        }
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed = 1;
    }
    return failed;
}
