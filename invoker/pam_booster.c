/* pam_booster.so: the booster's native PAM module, the invoker in-process.
 *
 *   session optional pam_booster.so [socket=PATH] [timeout=SECONDS] [norundir]
 *                                   [required] [debug] [log=FILE]
 *   account optional pam_booster.so [socket=PATH] ...
 *
 * It speaks the booster's wire protocol (docs/protocol.md) over its Unix
 * socket, as the pam_exec hook and the pam_python module do
 * (invoker/hook.py, invoker/pam_hooks.py), and exports the login's
 * environment as only an in-process module can:
 *
 * - open_session: HELLO and OPEN_SESSION (KEEP_IF_UNSEEN) in one write, then
 *   the booster's HELLO, WAIT (which lets the login wait as long as the
 *   booster announces, within timeout=) and READY.  Where the booster can see
 *   this process (PEER_VISIBLE) it watches it itself: the module disconnects
 *   in order and keeps only the session's id.  Where it cannot, the
 *   connection carries the session and stays in the PAM handle
 *   (pam_set_data); its end-of-file ends the session.  Of READY's
 *   environment only XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS are
 *   exported, each checked; an XDG_RUNTIME_DIR set earlier in the stack stands.
 * - close_session: the orderly disconnect of the connection it kept, or
 *   CLOSE_SESSION naming the session the booster watches, and its CLOSED.
 * - account: pre-warm: PREWARM after the booster's HELLO, and return without
 *   waiting for the answer.
 *
 * It believes only a root booster (SO_PEERCRED, before anything is sent),
 * bounds every wait (poll before every read, EINTR retried against the same
 * deadline), writes with MSG_NOSIGNAL, opens every descriptor close-on-exec,
 * and forks nothing, starts no thread, touches no signal and keeps no state
 * outside the PAM handle.  Unless `required` is given, every failure is
 * logged (pam_syslog, or log=FILE) and the login goes on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <security/pam_modules.h>
#include <security/pam_ext.h>

#include "booster_wire.h"

/* The messages this module writes, as it fills them in below: a field added
 * in common/wire.py must be filled in here too before the module builds. */
_Static_assert(WIRE_FIELDS_HELLO == 4, "HELLO's fields changed in common/wire.py");
_Static_assert(WIRE_FIELDS_OPEN_SESSION == 8, "OPEN_SESSION's fields changed in common/wire.py");
_Static_assert(WIRE_FIELDS_CLOSE_SESSION == 3, "CLOSE_SESSION's fields changed in common/wire.py");
_Static_assert(WIRE_FIELDS_PREWARM == 1, "PREWARM's fields changed in common/wire.py");

#define PAM_BOOSTER_EXPORT __attribute__((visibility("default")))

#define DEFAULT_SOCKET "/run/booster/control.sock"
#define DEFAULT_TIMEOUT_MS 120000L     /* as the other modes: the most a login waits for its instance */
#define CONNECT_TIMEOUT_MS 100L        /* a booster that does not accept within this is absent */
#define ANSWER_TIMEOUT_MS 5000L        /* HELLO, and WAIT or READY, CLOSED: the booster answers at once */
#define WAIT_MARGIN_MS 2000L           /* beyond a WAIT's announced time, for READY to arrive */
#define DISCONNECT_TIMEOUT_MS 2000L    /* for the booster's end-of-file (docs/protocol.md) */
#define DRAIN_LIMIT (1L << 20)         /* a peer that keeps talking past this is not disconnecting */
#define RUNTIME_DIR_LIMIT 4095         /* PATH_MAX less its NUL */
#define BUS_ADDRESS_LIMIT 4095
#define LOG_VALUE_LIMIT 80             /* of a refused value, in the log line that says so */
#define DATA_NAME "pam_booster_session"

struct options {
    const char *socket;
    long timeout_ms;
    int required;
    int debug;
    int norundir;
    const char *log_path;
};

/* Where one call's lines go. */
struct logger {
    pam_handle_t *pamh;
    const char *call;       /* "open_session", "close_session", "account" */
    const char *user;
    const char *log_path;   /* NULL: pam_syslog */
    int debug;
};

/* What the module keeps in the PAM handle from open_session to close_session. */
struct session {
    int fd;                 /* the connection carrying the session, or -1: the booster watches us */
    uint64_t id;
    char *user;
    char *log_path;
    int debug;
};

/* One connection to the booster: received bytes not yet taken. */
struct conn {
    int fd;
    unsigned char *buf;     /* WIRE_MAX_FRAME bytes */
    size_t len;
    size_t taken;           /* the frame last returned ends here */
};

enum failure_kind { F_ABSENT, F_UNTRUSTED, F_TIMEOUT, F_REFUSED, F_BROKEN };

struct failure {
    enum failure_kind kind;
    unsigned code;          /* F_REFUSED: the ERROR frame's code */
    char text[600];
};

/* --- logging ------------------------------------------------------------------------- */

static void say(const struct logger *log, int priority, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Control characters from the booster, a user name or a path (C0, DEL, and
 * C1 as UTF-8 encodes it) become '?': one event, one line, no terminal codes. */
static void clean(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p != '\0'; p++) {
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
        else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            p[0] = p[1] = '?';
    }
}

static const char *level_name(int priority)
{
    switch (priority) {
    case LOG_ERR:
        return "error";
    case LOG_WARNING:
        return "warning";
    case LOG_INFO:
        return "info";
    default:
        return "debug";
    }
}

static int write_log_file(const struct logger *log, int priority, const char *text)
{
    char line[1400], stamp[32], service[64];
    struct timespec now;
    struct tm tm;
    const void *item = NULL;
    int fd, n;

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    if (pam_get_item(log->pamh, PAM_SERVICE, &item) != PAM_SUCCESS || item == NULL)
        item = "?";
    snprintf(service, sizeof service, "%s", (const char *)item);
    clean(service);
    n = snprintf(line, sizeof line, "%s.%03ldZ pam_booster[%ld]: %s: %s %s\n", stamp, now.tv_nsec / 1000000,
                 (long)getpid(), level_name(priority), service, text);
    if (n < 0)
        return -1;
    if ((size_t)n >= sizeof line) {  /* cut, still one line */
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    fd = open(log->log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (fd < 0)
        return -1;
    /* One write: lines of concurrent logins do not interleave (O_APPEND). */
    n = write(fd, line, (size_t)n) == n ? 0 : -1;
    close(fd);
    return n;
}

/* "CALL for USER: TEXT", to log=FILE, else (or if that fails) to pam_syslog. */
static void say(const struct logger *log, int priority, const char *fmt, ...)
{
    char text[1200];
    va_list ap;
    int n;

    if (priority == LOG_DEBUG && !log->debug)
        return;
    n = snprintf(text, sizeof text, "%s for %s: ", log->call, log->user);
    if (n < 0 || (size_t)n >= sizeof text / 2)
        n = 0;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof text - (size_t)n, fmt, ap);
    va_end(ap);
    clean(text);
    if (log->log_path != NULL && write_log_file(log, priority, text) == 0)
        return;
    pam_syslog(log->pamh, priority, "%s", text);
}

/* A value for a log line: at most LOG_VALUE_LIMIT bytes, no control characters. */
static const char *shown(const char *s, size_t len, char out[LOG_VALUE_LIMIT + 4])
{
    size_t n = len > LOG_VALUE_LIMIT ? LOG_VALUE_LIMIT : len;

    memcpy(out, s, n);
    strcpy(out + n, len > n ? "..." : "");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f || out[i] == '\0')
            out[i] = '?';
    return out;
}

/* --- options ------------------------------------------------------------------------- */

/* "SECONDS" with up to three decimals, whatever the application's locale. */
static int parse_seconds(const char *s, long *ms)
{
    long whole = 0, frac = 0, scale = 1000;
    const char *p = s;

    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        whole = whole * 10 + (*p - '0');
        if (whole > 1000000)
            return -1;
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++)
            if (scale > 1) {
                scale /= 10;
                frac += (*p - '0') * scale;
            }
    }
    if (*p != '\0')
        return -1;
    *ms = whole * 1000 + frac;
    return *ms > 0 && *ms <= 1000000L * 1000 ? 0 : -1;
}

/* Parse the line's arguments; on a bad one say why in why and return -1. */
static int parse_options(int argc, const char **argv, struct options *opt, char *why, size_t why_size)
{
    struct sockaddr_un sun;

    opt->socket = DEFAULT_SOCKET;
    opt->timeout_ms = DEFAULT_TIMEOUT_MS;
    opt->required = opt->debug = opt->norundir = 0;
    opt->log_path = NULL;
    /* `required` first: a bad line that says it must still refuse the login. */
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "required") == 0)
            opt->required = 1;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "socket=", 7) == 0) {
            opt->socket = arg + 7;
            if (opt->socket[0] != '/' || strlen(opt->socket) >= sizeof sun.sun_path) {
                snprintf(why, why_size, "socket=%s: must be an absolute path of at most %zu bytes",
                         opt->socket, sizeof sun.sun_path - 1);
                return -1;
            }
        } else if (strncmp(arg, "timeout=", 8) == 0) {
            if (parse_seconds(arg + 8, &opt->timeout_ms) < 0) {
                snprintf(why, why_size, "%s: not a number of seconds in (0, 1000000]", arg);
                return -1;
            }
        } else if (strncmp(arg, "log=", 4) == 0) {
            opt->log_path = arg + 4;
            if (opt->log_path[0] != '/') {
                snprintf(why, why_size, "%s: must be an absolute path", arg);
                return -1;
            }
        } else if (strcmp(arg, "debug") == 0)
            opt->debug = 1;
        else if (strcmp(arg, "norundir") == 0)
            opt->norundir = 1;
        else if (strcmp(arg, "required") != 0) {
            snprintf(why, why_size, "unknown argument '%s' (socket=PATH timeout=SECONDS norundir required "
                     "debug log=FILE)", arg);
            return -1;
        }
    }
    return 0;
}

/* --- time and failures --------------------------------------------------------------- */

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long earliest(long long a, long long b)
{
    return a < b ? a : b;
}

static int fail(struct failure *f, enum failure_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct failure *f, enum failure_kind kind, const char *fmt, ...)
{
    va_list ap;

    f->kind = kind;
    f->code = 0;
    va_start(ap, fmt);
    vsnprintf(f->text, sizeof f->text, fmt, ap);
    va_end(ap);
    return -1;
}

/* Wait until fd is ready for events or the deadline passes: 1 ready, 0 timed out. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = events };
        long long left = deadline - now_ms();
        int rc;
        if (left <= 0)
            return 0;
        rc = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return 1;  /* the next read or write says what is wrong */
    }
}

/* --- the connection ------------------------------------------------------------------ */

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
}

/* Connect, and believe only a root booster: nothing is sent before that.
 * The socket stays in blocking mode (see the connect below); every send and
 * recv after the connect says MSG_DONTWAIT, and every wait is a poll bounded
 * by the deadline, so no call blocks, and the request follows the check by
 * no more than its own send. */
static int conn_open(struct conn *c, const char *path, long long deadline, struct failure *f)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct ucred cred;
    socklen_t cred_len = sizeof cred;
    long long limit = earliest(deadline, now_ms() + CONNECT_TIMEOUT_MS);

    c->fd = -1;
    c->len = c->taken = 0;
    c->buf = malloc(WIRE_MAX_FRAME);
    if (c->buf == NULL)
        return fail(f, F_BROKEN, "out of memory");
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return fail(f, F_BROKEN, "socket: %m");
    /* A blocking connect bounded by the kernel (SO_SNDTIMEO): in a login storm
     * it waits for room in the booster's backlog, where a non-blocking one
     * would fail at once. */
    for (;;) {
        long long left = limit - now_ms();
        struct timeval tv = { .tv_sec = left > 0 ? left / 1000 : 0,
                              .tv_usec = left > 0 ? (left % 1000) * 1000 : 1 };
        if (setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
            return fail(f, F_BROKEN, "setsockopt: %m");
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) == 0 || errno == EISCONN)
            break;
        if (errno == EINTR && now_ms() < limit)
            continue;
        if (errno == EAGAIN || errno == EINPROGRESS || errno == EINTR)
            return fail(f, F_ABSENT, "%s: not accepting connections (timed out)", path);
        return fail(f, F_ABSENT, "%s: %m", path);
    }
    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) < 0)
        return fail(f, F_BROKEN, "%s: SO_PEERCRED: %m", path);
    if (cred.uid != 0)
        return fail(f, F_UNTRUSTED, "%s is served by uid %u (pid %ld), not by root: not a booster, "
                    "nothing sent", path, (unsigned)cred.uid, (long)cred.pid);
    return 0;
}

static int conn_send(struct conn *c, const unsigned char *data, size_t len, long long deadline,
                     struct failure *f)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(c->fd, POLLOUT, deadline))
                return fail(f, F_TIMEOUT, "timed out sending to the booster");
        } else
            return fail(f, F_BROKEN, "sending to the booster: %m");
    }
    return 0;
}

static int send_message(struct conn *c, unsigned type, const struct wire_value *values, size_t count,
                        long long deadline, struct failure *f)
{
    unsigned char frame[WIRE_HEADER_SIZE + 64 + 1024];  /* HELLO, CLOSE_SESSION, PREWARM */
    struct wire_error err;
    size_t len = wire_encode(type, values, count, frame, sizeof frame, &err);

    if (len == 0)
        return fail(f, F_BROKEN, "cannot send %s: %s", wire_message_name(type), err.text);
    return conn_send(c, frame, len, deadline, f);
}

/* The next frame, before deadline.  ERROR frames are failures (F_REFUSED). */
static int conn_next(struct conn *c, long long deadline, unsigned *type, struct wire_value *values,
                     struct failure *f)
{
    if (c->taken > 0) {
        memmove(c->buf, c->buf + c->taken, c->len - c->taken);
        c->len -= c->taken;
        c->taken = 0;
    }
    for (;;) {
        struct wire_error err;
        size_t used;
        ssize_t n;
        int rc = wire_next_frame(c->buf, c->len, &used, type, values, &err);
        if (rc < 0)
            return fail(f, F_BROKEN, "bad frame from the booster: %s: %s", err.kind, err.text);
        if (rc > 0) {
            c->taken = used;
            if (*type != WIRE_MSG_ERROR)
                return 0;
            const struct wire_value *text = &values[WIRE_FIELD_ERROR_TEXT];
            unsigned code = (unsigned)values[WIRE_FIELD_ERROR_CODE].num;
            fail(f, F_REFUSED, "%s: %.*s", wire_error_name(code) ? wire_error_name(code) : "unknown error",
                 (int)text->len, text->str);
            f->code = code;
            return -1;
        }
        if (!wait_fd(c->fd, POLLIN, deadline))
            return fail(f, F_TIMEOUT, "timed out waiting for the booster");
        n = recv(c->fd, c->buf + c->len, WIRE_MAX_FRAME - c->len, MSG_DONTWAIT);
        if (n > 0)
            c->len += (size_t)n;
        else if (n == 0)
            return c->len > 0 ? fail(f, F_BROKEN, "the booster closed the connection inside a frame "
                                     "(%zu bytes left)", c->len)
                              : fail(f, F_BROKEN, "the booster closed the connection");
        else if (errno != EAGAIN && errno != EINTR)
            return fail(f, F_BROKEN, "connection broken: %m");
    }
}

static int unexpected(struct failure *f, unsigned type, const char *when)
{
    return fail(f, F_BROKEN, "unexpected %s %s", wire_message_name(type), when);
}

/* The orderly disconnect (docs/protocol.md): shut our side down, read what
 * the booster still sends until its end-of-file, close.  Reports an ENDED
 * frame among what it reads.  Returns the outcome's name. */
static const char *conn_disconnect(struct conn *c, long long deadline, const struct logger *log)
{
    const char *outcome = NULL;
    long drained = 0;
    int parsing = c->buf != NULL;

    if (shutdown(c->fd, SHUT_WR) < 0 && errno != ENOTCONN)
        outcome = "reset";
    while (outcome == NULL) {
        unsigned char scratch[4096];
        unsigned char *into = scratch;
        size_t room = sizeof scratch;
        ssize_t n;
        if (parsing) {
            if (c->taken > 0) {
                memmove(c->buf, c->buf + c->taken, c->len - c->taken);
                c->len -= c->taken;
                c->taken = 0;
            }
            into = c->buf + c->len;
            room = WIRE_MAX_FRAME - c->len;
        }
        n = recv(c->fd, into, room, MSG_DONTWAIT);
        if (n == 0)
            outcome = "clean";
        else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(c->fd, POLLIN, deadline))
                outcome = "timeout";
        } else if (n < 0)
            outcome = "reset";
        else if ((drained += n) > DRAIN_LIMIT)
            outcome = "flood";
        else if (parsing) {
            struct wire_value values[WIRE_MAX_FIELDS];
            struct wire_error err;
            unsigned type;
            size_t used;
            int rc;
            c->len += (size_t)n;
            while ((rc = wire_next_frame(c->buf + c->taken, c->len - c->taken, &used, &type, values, &err)) > 0) {
                c->taken += used;
                if (type == WIRE_MSG_ENDED) {
                    const char *why = wire_end_name((unsigned)values[WIRE_FIELD_ENDED_REASON].num);
                    const struct wire_value *text = &values[WIRE_FIELD_ENDED_TEXT];
                    say(log, LOG_INFO, "the booster had ended session %llu: %s%s%.*s",
                        (unsigned long long)values[WIRE_FIELD_ENDED_SESSION_ID].num, why ? why : "unknown reason",
                        text->len ? ": " : "", (int)text->len, text->str);
                }
            }
            if (rc < 0 || c->len == WIRE_MAX_FRAME)
                parsing = 0;  /* not frames: read on, without looking */
        }
    }
    close(c->fd);
    c->fd = -1;
    return outcome;
}

/* --- the PAM side -------------------------------------------------------------------- */

static const char *item(pam_handle_t *pamh, int type)
{
    const void *value = NULL;

    if (pam_get_item(pamh, type, &value) != PAM_SUCCESS || value == NULL)
        return "";
    return value;
}

static uint64_t own_pidns(void)
{
    struct stat st;

    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static struct wire_value str_value(const char *s)
{
    struct wire_value v = { .str = s, .len = strlen(s) };
    return v;
}

static struct wire_value num_value(uint64_t n)
{
    struct wire_value v = { .num = n };
    return v;
}

static size_t hello_frame(const char *agent, unsigned char *out, size_t cap, struct wire_error *err)
{
    struct wire_value hello[WIRE_FIELDS_HELLO] = {
        [WIRE_FIELD_HELLO_PID] = num_value((uint64_t)getpid()),
        [WIRE_FIELD_HELLO_PIDNS] = num_value(own_pidns()),
        [WIRE_FIELD_HELLO_FLAGS] = num_value(0),
        [WIRE_FIELD_HELLO_AGENT] = str_value(agent),
    };

    return wire_encode(WIRE_MSG_HELLO, hello, WIRE_FIELDS_HELLO, out, cap, err);
}

/* Connect, say HELLO (with request right behind it, if any: OPEN_SESSION and
 * CLOSE_SESSION may be sent so) and read the booster's HELLO; its flags in *flags.
 * The frames are made before the connect, so that they follow it at once: the
 * booster, woken by the connect, then usually finds them there. */
static int handshake(struct conn *c, const struct options *opt, const char *agent, const unsigned char *request,
                     size_t request_len, long long deadline, uint32_t *flags, struct failure *f)
{
    unsigned char frame[WIRE_HEADER_SIZE + 82 + WIRE_HEADER_SIZE + 6200];
    struct wire_value values[WIRE_MAX_FIELDS];
    struct wire_error err;
    size_t len;
    unsigned type;

    len = hello_frame(agent, frame, sizeof frame, &err);
    if (len == 0)
        return fail(f, F_BROKEN, "cannot send HELLO: %s", err.text);
    if (request_len > sizeof frame - len)
        return fail(f, F_BROKEN, "request of %zu bytes too large", request_len);
    if (request_len > 0)
        memcpy(frame + len, request, request_len);
    if (conn_open(c, opt->socket, deadline, f) < 0)
        return -1;
    if (conn_send(c, frame, len + request_len, deadline, f) < 0
        || conn_next(c, earliest(deadline, now_ms() + ANSWER_TIMEOUT_MS), &type, values, f) < 0)
        return -1;
    if (type != WIRE_MSG_HELLO)
        return unexpected(f, type, "in the handshake");
    *flags = (uint32_t)values[WIRE_FIELD_HELLO_FLAGS].num;
    return 0;
}

static int has_control(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;

    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f)
            return 1;
        if (p[i] == 0xc2 && i + 1 < len && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f)
            return 1;  /* U+0080..U+009F, the C1 controls */
    }
    return 0;
}

static int is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hex_value(unsigned char c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* The one session bus address a login may get (docs/protocol.md, READY;
 * common/loginenv.py is the same rule): "unix:path=" and a path escaped as
 * the D-Bus specification says (the bytes [-0-9A-Za-z_/.\*] as themselves,
 * every other byte as %XX), which decodes to an absolute path with no control
 * character.  Decoded a byte at a time: no buffer. */
static const char *bus_address_error(const char *s, size_t len)
{
    static const char prefix[] = "unix:path=";
    const size_t prefix_len = sizeof(prefix) - 1;
    size_t decoded = 0;
    unsigned char previous = 0;

    if (len < prefix_len || memcmp(s, prefix, prefix_len) != 0)
        return "not a unix:path= address";
    for (size_t i = prefix_len; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '%') {
            if (i + 2 >= len || !is_hex((unsigned char)s[i + 1]) || !is_hex((unsigned char)s[i + 2]))
                return "not one address escaped as D-Bus requires (a '%' without two hex digits)";
            c = (unsigned char)(hex_value((unsigned char)s[i + 1]) << 4 | hex_value((unsigned char)s[i + 2]));
            i += 2;
        } else if (c == '\0' || (!is_alnum(c) && !strchr("-_/.\\*", c))) {
            return "not one address escaped as D-Bus requires (a byte that must be escaped)";
        }
        if (decoded == 0 && c != '/')
            return "its path: not an absolute path";
        if (c < 0x20 || c == 0x7f || (previous == 0xc2 && c >= 0x80 && c <= 0x9f))
            return "its path: holds a control character";
        previous = c;
        decoded++;
    }
    if (decoded == 0)
        return "its path: not an absolute path";
    return NULL;
}

/* Why the value of key must not reach the login's environment, or NULL. */
static const char *env_refusal(const struct wire_pair *e)
{
    if (e->key_len == 15 && memcmp(e->key, "XDG_RUNTIME_DIR", 15) == 0) {
        if (e->value_len == 0 || e->value[0] != '/')
            return "not an absolute path";
        if (e->value_len > RUNTIME_DIR_LIMIT)
            return "longer than 4095 bytes";
        if (has_control(e->value, e->value_len))
            return "holds a control character";
        return NULL;
    }
    if (e->key_len == 24 && memcmp(e->key, "DBUS_SESSION_BUS_ADDRESS", 24) == 0) {
        if (e->value_len > BUS_ADDRESS_LIMIT)
            return "longer than 4095 bytes";
        if (has_control(e->value, e->value_len))
            return "holds a control character";
        return bus_address_error(e->value, e->value_len);
    }
    return "not a variable the module exports (XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS)";
}

/* READY's environment into the login's, what passes the checks. */
static void export_env(pam_handle_t *pamh, const struct wire_value *env, int keep_runtime_dir,
                       const struct logger *log)
{
    const char *cursor = env->str;

    for (size_t i = 0; i < env->len; i++) {
        struct wire_pair e;
        const char *why;
        char shown_key[LOG_VALUE_LIMIT + 4], shown_value[LOG_VALUE_LIMIT + 4], *assignment;
        int rc;
        wire_env_next(&cursor, &e);
        if ((why = env_refusal(&e)) != NULL) {
            say(log, LOG_WARNING, "not exported: %s=%s from the booster: %s", shown(e.key, e.key_len, shown_key),
                shown(e.value, e.value_len, shown_value), why);
            continue;
        }
        if (keep_runtime_dir && e.key_len == 15 && memcmp(e.key, "XDG_RUNTIME_DIR", 15) == 0) {
            say(log, LOG_DEBUG, "XDG_RUNTIME_DIR set earlier in the stack stands");
            continue;
        }
        assignment = malloc(e.key_len + e.value_len + 2);
        if (assignment == NULL) {
            say(log, LOG_ERR, "out of memory exporting the environment");
            return;
        }
        memcpy(assignment, e.key, e.key_len);
        assignment[e.key_len] = '=';
        memcpy(assignment + e.key_len + 1, e.value, e.value_len);
        assignment[e.key_len + 1 + e.value_len] = '\0';
        rc = pam_putenv(pamh, assignment);  /* it keeps a copy */
        if (rc != PAM_SUCCESS)
            say(log, LOG_ERR, "pam_putenv %s: %s", shown(e.key, e.key_len, shown_key), pam_strerror(pamh, rc));
        else
            say(log, LOG_DEBUG, "exported %s", assignment);
        free(assignment);
    }
}

static void free_session(struct session *s)
{
    free(s->user);
    free(s->log_path);
    free(s);
}

/* pam_end (or a replacement of the data): end a connection that still
 * carries the session.  In a forked child (PAM_DATA_SILENT), close our
 * copy only: a shutdown would end the parent's connection too. */
static void cleanup_session(pam_handle_t *pamh, void *data, int error_status)
{
    struct session *s = data;

    if (s == NULL)
        return;
    if (s->fd >= 0) {
        if (error_status & PAM_DATA_SILENT)
            close(s->fd);
        else {
            struct conn c = { .fd = s->fd };
            struct logger log = { pamh, "pam_end", s->user, s->log_path, s->debug };
            const char *outcome = conn_disconnect(&c, now_ms() + DISCONNECT_TIMEOUT_MS, &log);
            say(&log, LOG_DEBUG, "session %llu ended with the handle (disconnect %s)", (unsigned long long)s->id,
                outcome);
        }
    }
    free_session(s);
}

static int keep_session(pam_handle_t *pamh, int fd, uint64_t id, const char *user, const struct options *opt,
                        const struct logger *log)
{
    struct session *s = calloc(1, sizeof *s);
    int rc;

    if (s == NULL || (s->user = strdup(user)) == NULL
        || (opt->log_path != NULL && (s->log_path = strdup(opt->log_path)) == NULL)) {
        say(log, LOG_ERR, "out of memory keeping session %llu", (unsigned long long)id);
        if (s != NULL)
            free_session(s);
        return -1;
    }
    s->fd = fd;
    s->id = id;
    s->debug = opt->debug;
    rc = pam_set_data(pamh, DATA_NAME, s, cleanup_session);
    if (rc != PAM_SUCCESS) {
        say(log, LOG_ERR, "pam_set_data: %s", pam_strerror(pamh, rc));
        free_session(s);
        return -1;
    }
    return 0;
}

static int fail_result(const struct options *opt, int refusal)
{
    return opt->required ? refusal : PAM_SUCCESS;
}

/* One line for a failure to open: a booster that is not there is a
 * warning, anything else an error. */
static void report(const struct logger *log, const struct options *opt, const struct failure *f)
{
    const char *then = opt->required ? "login refused (required)" : "login goes on without a user instance";

    if (f->kind == F_ABSENT)
        say(log, LOG_WARNING, "booster not running (%s); %s", f->text, then);
    else
        say(log, LOG_ERR, "%s; %s", f->text, then);
}

/* Options, user and logger for one call; -1 (and a line) when unusable. */
static int begin(pam_handle_t *pamh, const char *call, int argc, const char **argv, struct options *opt,
                 struct logger *log)
{
    char why[400];

    log->pamh = pamh;
    log->call = call;
    log->user = item(pamh, PAM_USER);
    log->log_path = NULL;
    log->debug = 0;
    if (parse_options(argc, argv, opt, why, sizeof why) < 0) {
        for (int i = 0; i < argc; i++)  /* a bad line still logs where it was asked to */
            if (strncmp(argv[i], "log=/", 5) == 0)
                log->log_path = argv[i] + 4;
        say(log, LOG_ERR, "bad PAM line: %s", why);
        return -1;
    }
    log->log_path = opt->log_path;
    log->debug = opt->debug;
    if (log->user[0] == '\0') {
        say(log, LOG_ERR, "no PAM user");
        return -1;
    }
    return 0;
}

PAM_BOOSTER_EXPORT int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct options opt;
    struct logger log;
    struct failure f;
    struct conn c = { .fd = -1 };
    struct wire_value values[WIRE_MAX_FIELDS];
    struct wire_error err;
    char service[257], tty[257], rhost[1025], ruser[257], runtime_dir[RUNTIME_DIR_LIMIT + 1];
    unsigned char request[WIRE_HEADER_SIZE + 6200];
    const char *earlier;
    const void *kept = NULL;
    long long start = now_ms(), deadline, answer;
    size_t request_len;
    uint32_t hello_flags = 0;
    uint64_t id;
    unsigned type;

    (void)flags;
    if (begin(pamh, "open_session", argc, argv, &opt, &log) < 0)
        return fail_result(&opt, PAM_SESSION_ERR);
    if (pam_get_data(pamh, DATA_NAME, &kept) == PAM_SUCCESS && kept != NULL) {
        say(&log, LOG_WARNING, "a session is open in this PAM handle already; not opening another");
        return PAM_SUCCESS;
    }
    deadline = start + opt.timeout_ms;
    /* An XDG_RUNTIME_DIR that an earlier module set goes to the booster as a
     * hint (if the wire can carry it unchanged) and stays the login's. */
    earlier = pam_getenv(pamh, "XDG_RUNTIME_DIR");
    if (earlier != NULL && earlier[0] == '\0')
        earlier = NULL;
    if (earlier == NULL || wire_fit(earlier, RUNTIME_DIR_LIMIT, runtime_dir) != strlen(earlier))
        runtime_dir[0] = '\0';
    wire_fit(item(pamh, PAM_SERVICE), 256, service);
    wire_fit(item(pamh, PAM_TTY), 256, tty);
    wire_fit(item(pamh, PAM_RHOST), 1024, rhost);
    wire_fit(item(pamh, PAM_RUSER), 256, ruser);
    values[WIRE_FIELD_OPEN_SESSION_USER] = str_value(log.user);
    values[WIRE_FIELD_OPEN_SESSION_SERVICE] = str_value(service);
    values[WIRE_FIELD_OPEN_SESSION_TTY] = str_value(tty);
    values[WIRE_FIELD_OPEN_SESSION_RHOST] = str_value(rhost);
    values[WIRE_FIELD_OPEN_SESSION_RUSER] = str_value(ruser);
    values[WIRE_FIELD_OPEN_SESSION_LEADER_PID] = num_value((uint64_t)getpid());
    values[WIRE_FIELD_OPEN_SESSION_FLAGS] = num_value(WIRE_OPEN_KEEP_IF_UNSEEN
                                                      | (opt.norundir ? WIRE_OPEN_NO_RUNDIR : 0));
    values[WIRE_FIELD_OPEN_SESSION_RUNTIME_DIR] = str_value(runtime_dir);
    request_len = wire_encode(WIRE_MSG_OPEN_SESSION, values, WIRE_FIELDS_OPEN_SESSION, request, sizeof request,
                              &err);
    if (request_len == 0) {
        say(&log, LOG_ERR, "cannot ask for this user's session: %s", err.text);
        return fail_result(&opt, PAM_SESSION_ERR);
    }
    if (handshake(&c, &opt, "pam_booster open_session", request, request_len, deadline, &hello_flags, &f) < 0)
        goto failed;
    /* WAIT says how long the booster will take at most: the login waits
     * that long (and a margin), within timeout=. */
    answer = earliest(deadline, now_ms() + ANSWER_TIMEOUT_MS);
    for (;;) {
        if (conn_next(&c, answer, &type, values, &f) < 0)
            goto failed;
        if (type == WIRE_MSG_READY)
            break;
        if (type != WIRE_MSG_WAIT) {
            unexpected(&f, type, "while opening");
            goto failed;
        }
        answer = earliest(deadline, now_ms() + (long long)values[WIRE_FIELD_WAIT_TIMEOUT_MS].num + WAIT_MARGIN_MS);
        say(&log, LOG_DEBUG, "session %llu: the instance is starting (the booster waits up to %llu ms)",
            (unsigned long long)values[WIRE_FIELD_WAIT_SESSION_ID].num,
            (unsigned long long)values[WIRE_FIELD_WAIT_TIMEOUT_MS].num);
    }
    id = values[WIRE_FIELD_READY_SESSION_ID].num;
    export_env(pamh, &values[WIRE_FIELD_READY_ENV], earlier != NULL, &log);
    if (hello_flags & WIRE_HELLO_PEER_VISIBLE) {
        /* The booster watches this process: nothing to keep open. */
        const char *outcome = conn_disconnect(&c, earliest(deadline, now_ms() + DISCONNECT_TIMEOUT_MS), &log);
        conn_close(&c);
        if (keep_session(pamh, -1, id, log.user, &opt, &log) < 0)
            return fail_result(&opt, PAM_SESSION_ERR);
        say(&log, LOG_DEBUG, "session %llu open, bound to pid %ld (disconnect %s) in %lld ms",
            (unsigned long long)id, (long)getpid(), outcome, now_ms() - start);
        return PAM_SUCCESS;
    }
    /* It cannot see us: this connection carries the session until close_session. */
    if (keep_session(pamh, c.fd, id, log.user, &opt, &log) < 0) {
        conn_disconnect(&c, earliest(deadline, now_ms() + DISCONNECT_TIMEOUT_MS), &log);
        conn_close(&c);
        return fail_result(&opt, PAM_SESSION_ERR);
    }
    c.fd = -1;  /* the handle's now */
    conn_close(&c);
    say(&log, LOG_DEBUG, "session %llu open, carried by its connection in %lld ms", (unsigned long long)id,
        now_ms() - start);
    return PAM_SUCCESS;

failed:
    report(&log, &opt, &f);
    conn_close(&c);
    return fail_result(&opt, PAM_SESSION_ERR);
}

PAM_BOOSTER_EXPORT int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct options opt;
    struct logger log;
    struct failure f;
    struct conn c = { .fd = -1 };
    struct wire_value values[WIRE_MAX_FIELDS];
    struct session *s;
    const void *data = NULL;
    long long deadline;
    uint32_t hello_flags;
    unsigned type;
    int rc;

    (void)flags;
    if (begin(pamh, "close_session", argc, argv, &opt, &log) < 0)
        return fail_result(&opt, PAM_SESSION_ERR);
    if (pam_get_data(pamh, DATA_NAME, &data) != PAM_SUCCESS || data == NULL) {
        say(&log, LOG_DEBUG, "no session of ours in this PAM handle");
        return PAM_SUCCESS;
    }
    s = (struct session *)data;
    log.user = s->user;
    deadline = now_ms() + opt.timeout_ms;
    if (s->fd >= 0) {
        /* The connection is the session: its end-of-file ends it.  What the
         * booster sent meanwhile (ENDED) is read and reported on the way. */
        c.fd = s->fd;
        c.buf = malloc(WIRE_MAX_FRAME);
        s->fd = -1;
        const char *outcome = conn_disconnect(&c, earliest(deadline, now_ms() + DISCONNECT_TIMEOUT_MS), &log);
        say(&log, strcmp(outcome, "clean") == 0 ? LOG_DEBUG : LOG_WARNING, "session %llu closed (disconnect %s)",
            (unsigned long long)s->id, outcome);
        rc = PAM_SUCCESS;
    } else {
        /* CLOSE_SESSION by the id READY gave, right behind the HELLO (one
         * round trip), and its answer: the session has ended before the
         * application goes on (and exits, which would end it too, crossing
         * our request). */
        unsigned char request[WIRE_HEADER_SIZE + 8 + 2 + 256 + 4];
        struct wire_error err;
        size_t len;

        values[WIRE_FIELD_CLOSE_SESSION_SESSION_ID] = num_value(s->id);
        values[WIRE_FIELD_CLOSE_SESSION_USER] = str_value(s->user);
        values[WIRE_FIELD_CLOSE_SESSION_LEADER_PID] = num_value((uint64_t)getpid());
        len = wire_encode(WIRE_MSG_CLOSE_SESSION, values, WIRE_FIELDS_CLOSE_SESSION, request, sizeof request, &err);
        if (len == 0)
            rc = fail(&f, F_BROKEN, "cannot send CLOSE_SESSION: %s", err.text);
        else if (handshake(&c, &opt, "pam_booster close_session", request, len, deadline, &hello_flags, &f) < 0
                 || conn_next(&c, earliest(deadline, now_ms() + ANSWER_TIMEOUT_MS), &type, values, &f) < 0)
            rc = -1;
        else if (type != WIRE_MSG_CLOSED && type != WIRE_MSG_ENDED)  /* ENDED: it crossed our close */
            rc = unexpected(&f, type, "while closing");
        else {
            const char *outcome = conn_disconnect(&c, earliest(deadline, now_ms() + DISCONNECT_TIMEOUT_MS), &log);
            say(&log, LOG_DEBUG, "session %llu closed (disconnect %s)", (unsigned long long)s->id, outcome);
            rc = PAM_SUCCESS;
        }
    }
    if (rc < 0) {
        if (f.kind == F_REFUSED && f.code == WIRE_ERR_NO_SUCH_SESSION) {
            say(&log, LOG_INFO, "session %llu had ended already (%s)", (unsigned long long)s->id, f.text);
            rc = PAM_SUCCESS;
        } else {
            say(&log, f.kind == F_ABSENT ? LOG_WARNING : LOG_ERR, "closing session %llu: %s%s",
                (unsigned long long)s->id, f.kind == F_ABSENT ? "booster not running: " : "", f.text);
            rc = fail_result(&opt, PAM_SESSION_ERR);
        }
    }
    if (c.fd >= 0)
        close(c.fd);
    c.fd = -1;
    conn_close(&c);
    pam_set_data(pamh, DATA_NAME, NULL, NULL);  /* frees s (PAM_DATA_REPLACE) */
    return rc;
}

PAM_BOOSTER_EXPORT int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct options opt;
    struct logger log;
    struct failure f;
    struct conn c = { .fd = -1 };
    struct wire_value user;
    long long deadline;
    uint32_t hello_flags;

    (void)flags;
    /* A pre-warm never decides a login: the session phase says what failed. */
    if (begin(pamh, "account", argc, argv, &opt, &log) < 0)
        return PAM_SUCCESS;
    deadline = now_ms() + (opt.timeout_ms < ANSWER_TIMEOUT_MS ? opt.timeout_ms : ANSWER_TIMEOUT_MS);
    user = str_value(log.user);
    /* PREWARM waits for the booster's HELLO (only OPEN_SESSION may be sent
     * ahead of it); the answer is not waited for: the booster acts on the
     * request whether or not its ACK is read. */
    if (handshake(&c, &opt, "pam_booster account", NULL, 0, deadline, &hello_flags, &f) < 0
        || send_message(&c, WIRE_MSG_PREWARM, &user, WIRE_FIELDS_PREWARM, deadline, &f) < 0)
        say(&log, f.kind == F_ABSENT ? LOG_WARNING : LOG_ERR, "no pre-warm: %s%s",
            f.kind == F_ABSENT ? "booster not running: " : "", f.text);
    else
        say(&log, LOG_DEBUG, "pre-warm sent");
    conn_close(&c);
    return PAM_SUCCESS;
}
