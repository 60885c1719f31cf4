/* answer_at_once: a stand-in booster that answers every connection at once
 * with fixed bytes, to time a PAM module without the booster's own work.
 *
 *   answer_at_once SOCKET HEX [TYPE HEX]...
 *
 * Listens on SOCKET; for each connection: one read (the client's HELLO and
 * its request, sent in one write), the bytes HEX stands for (the booster's
 * HELLO and READY, encoded by common.wire) or, where the request's message
 * type is a TYPE given, the bytes of the HEX after it (HELLO and CLOSED for
 * a CLOSE_SESSION, say), a shutdown of its write side, then reads until the
 * client's end-of-file.  One connection at a time; runs until killed.
 * bench/login_latency.py builds and runs it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_ANSWERS 4

struct answer {
    unsigned type;  /* the request's message type it answers; 0: any other */
    unsigned char bytes[4096];
    size_t len;
};

static int unhex(const char *hex, struct answer *a)
{
    a->len = 0;
    if (strlen(hex) / 2 > sizeof a->bytes)
        return -1;
    for (const char *p = hex; p[0] && p[1]; p += 2) {
        unsigned byte;
        if (sscanf(p, "%2x", &byte) != 1)
            return -1;
        a->bytes[a->len++] = (unsigned char)byte;
    }
    return 0;
}

/* The message type of the frame after the first (HELLO) in buf[0..n), or 0. */
static unsigned request_type(const unsigned char *buf, size_t n)
{
    size_t first;

    if (n < 8)
        return 0;
    first = 8 + ((size_t)buf[4] << 24 | (size_t)buf[5] << 16 | (size_t)buf[6] << 8 | buf[7]);
    return n >= first + 4 ? buf[first + 3] : 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    static struct answer answers[MAX_ANSWERS + 1];
    unsigned char buf[65536];
    int count = 1, listener;

    if (argc < 3 || argc % 2 == 0 || (argc - 3) / 2 > MAX_ANSWERS || strlen(argv[1]) >= sizeof addr.sun_path
        || unhex(argv[2], &answers[0]) < 0) {
        fprintf(stderr, "usage: answer_at_once SOCKET HEX [TYPE HEX]...\n");
        return 2;
    }
    for (int i = 3; i + 1 < argc; i += 2, count++) {
        answers[count].type = (unsigned)atoi(argv[i]);
        if (answers[count].type == 0 || unhex(argv[i + 1], &answers[count]) < 0) {
            fprintf(stderr, "usage: answer_at_once SOCKET HEX [TYPE HEX]...\n");
            return 2;
        }
    }
    strcpy(addr.sun_path, argv[1]);
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 64) < 0) {
        perror("answer_at_once");
        return 1;
    }
    for (;;) {
        int conn = accept(listener, NULL, NULL);
        ssize_t n;

        if (conn < 0)
            continue;
        n = read(conn, buf, sizeof buf);
        if (n > 0) {
            const struct answer *a = &answers[0];
            unsigned type = request_type(buf, (size_t)n);

            for (int i = 1; i < count; i++)
                if (answers[i].type == type)
                    a = &answers[i];
            if (write(conn, a->bytes, a->len) == (ssize_t)a->len) {
                shutdown(conn, SHUT_WR);
                while (read(conn, buf, sizeof buf) > 0)
                    ;
            }
        }
        close(conn);
    }
}
