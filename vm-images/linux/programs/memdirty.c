/* memdirty MIB PAGES_PER_SEC: dirty guest memory at a steady rate, for the live-migration lab.
 *
 * Allocates MIB mebibytes, then writes one byte into PAGES_PER_SEC distinct 4 KiB pages each second (spread over
 * ten ticks), cycling through the buffer. Every second it prints "memdirty <seconds> <pages written>" so the lab
 * can see that the guest kept running across a migration: the counter never goes backwards.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE 4096L

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: memdirty MIB PAGES_PER_SEC\n");
        return 2;
    }
    long mib = atol(argv[1]), rate = atol(argv[2]);
    if (mib <= 0 || rate < 0) {
        fprintf(stderr, "memdirty: MIB must be > 0 and PAGES_PER_SEC >= 0\n");
        return 2;
    }
    long pages = mib * 1024 * 1024 / PAGE;
    volatile unsigned char *buf = malloc(pages * PAGE);
    if (!buf) {
        perror("memdirty: malloc");
        return 1;
    }
    memset((void *)buf, 1, pages * PAGE); /* touch everything once so the pages exist */
    long next = 0, written = 0, per_tick = rate / 10, seconds = 0;
    double start = now(), tick = start;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        for (long i = 0; i < per_tick; i++) {
            buf[next * PAGE] += 1;
            next = (next + 1) % pages;
            written++;
        }
        tick += 0.1;
        double wait = tick - now();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
        if (now() - start >= seconds + 1) {
            seconds++;
            printf("memdirty %ld %ld\n", seconds, written);
        }
    }
}
