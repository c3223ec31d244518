/*
 * A slower disk than the machine's, for benchmarks: LD_PRELOADed into a process, it
 * sleeps SLOW_SYNC_US microseconds after every fdatasync and fsync returns, in the
 * thread that called it. scripts/ab-bench.sh builds and loads it when FSYNC_DELAY_US
 * is set:
 *
 *   cc -shared -fPIC -O2 -o slow-sync.so scripts/slow-sync.c -ldl
 *   LD_PRELOAD=$PWD/slow-sync.so SLOW_SYNC_US=2000 bank node ...
 *
 * (An strace-injected delay, used before, also stops the process at every other
 * syscall it traces and serializes them through the tracer: it slowed a driver that
 * handles inputs while a write is in flight far more than the delay itself would.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
#include <time.h>
static long delay_us(void) {
    const char *s = getenv("SLOW_SYNC_US");
    return s ? atol(s) : 0;
}
static void pause_us(long us) {
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) != 0) {}
}
int fdatasync(int fd) {
    static int (*real)(int) = 0;
    if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    pause_us(delay_us());
    return r;
}
int fsync(int fd) {
    static int (*real)(int) = 0;
    if (!real) real = dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    pause_us(delay_us());
    return r;
}
