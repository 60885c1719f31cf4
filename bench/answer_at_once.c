/* answer_at_once: a stand-in booster that answers every connection at once
 * with the same bytes, to time a PAM module without the booster's own work.
 *
 *   answer_at_once SOCKET HEX
 *
 * Listens on SOCKET; for each connection: one read (the client's HELLO and
 * OPEN_SESSION, sent in one write), the bytes HEX stands for (the
 * booster's HELLO and READY, encoded by common.wire), a shutdown of its
 * write side, then reads until the client's end-of-file.  One connection at
 * a time; runs until killed.  bench/login_latency.py builds and runs it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    unsigned char answer[4096], buf[65536];
    size_t len = 0;
    int listener;

    if (argc != 3 || strlen(argv[1]) >= sizeof addr.sun_path || strlen(argv[2]) / 2 > sizeof answer) {
        fprintf(stderr, "usage: answer_at_once SOCKET HEX\n");
        return 2;
    }
    for (const char *p = argv[2]; p[0] && p[1]; p += 2) {
        unsigned byte;
        if (sscanf(p, "%2x", &byte) != 1)
            return 2;
        answer[len++] = (unsigned char)byte;
    }
    strcpy(addr.sun_path, argv[1]);
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 64) < 0) {
        perror("answer_at_once");
        return 1;
    }
    for (;;) {
        int conn = accept(listener, NULL, NULL);
        if (conn < 0)
            continue;
        if (read(conn, buf, sizeof buf) > 0 && write(conn, answer, len) == (ssize_t)len) {
            shutdown(conn, SHUT_WR);
            while (read(conn, buf, sizeof buf) > 0)
                ;
        }
        close(conn);
    }
}
