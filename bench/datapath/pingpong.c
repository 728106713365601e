/*
 * TCP request/response latency: the client sends a small message and waits for the
 * echo, COUNT times, and prints the median and 99th percentile round trip in
 * microseconds. A compiled loop keeps the measurement on the network path rather
 * than on an interpreter.
 *
 *   pingpong server ADDRESS PORT
 *   pingpong client ADDRESS PORT COUNT
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MESSAGE 64

static int full_io(int fd, char *buf, int len, int sending) {
    int done = 0;
    while (done < len) {
        ssize_t n = sending ? send(fd, buf + done, len - done, 0)
                            : recv(fd, buf + done, len - done, 0);
        if (n <= 0)
            return -1;
        done += (int)n;
    }
    return 0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s server|client ADDRESS PORT [COUNT]\n", argv[0]);
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[2]);
        return 2;
    }
    int one = 1;
    char buf[MESSAGE] = {0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (strcmp(argv[1], "server") == 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) || listen(fd, 8)) {
            perror("listen");
            return 1;
        }
        for (;;) {
            int conn = accept(fd, NULL, NULL);
            if (conn < 0)
                continue;
            setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            while (full_io(conn, buf, MESSAGE, 0) == 0 && full_io(conn, buf, MESSAGE, 1) == 0)
                ;
            close(conn);
        }
    }
    int count = argc > 4 ? atoi(argv[4]) : 10000;
    if (count < 1 || connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
        perror("connect");
        return 1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double *rtt = malloc(sizeof(double) * count);
    for (int i = 0; i < count; i++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (full_io(fd, buf, MESSAGE, 1) || full_io(fd, buf, MESSAGE, 0)) {
            perror("exchange");
            return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        rtt[i] = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
    }
    qsort(rtt, count, sizeof(double), cmp);
    printf("{\"p50_us\": %.3f, \"p99_us\": %.3f, \"count\": %d}\n", rtt[count / 2],
           rtt[(int)(count * 0.99)], count);
    return 0;
}
