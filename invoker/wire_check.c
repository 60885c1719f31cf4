/* wire_check: the native module's codec (booster_wire.c) on standard input,
 * so that tests can hold it to common/wire.py byte for byte.  A test
 * program, never installed; the build compiles it with AddressSanitizer and
 * UBSan.  One command per line, one answer per line:
 *
 *   D HEX            decode the bytes as one stream, frame after frame:
 *                    "F<type> VALUE..." per frame, then "END" (all taken),
 *                    "MORE <n>" (n bytes wait for the rest of a frame) or
 *                    "ERR <kind>" (the error's kind, then its text)
 *   E TYPE VALUE...  encode: "H HEX", or "ERR <kind> <text>"
 *   T LIMIT HEX      wire_fit: the HEX of what is left
 *
 * A VALUE is a decimal integer, "s:HEX" for a string, or "e:" followed by
 * "KEYHEX=VALUEHEX" entries joined by ","; an empty hex string is empty.
 */
#include "booster_wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int nibble(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Hex digits s[0..n) to bytes in out (n / 2 of them); -1 if they are not hex. */
static long unhex(const char *s, size_t n, unsigned char *out)
{
    if (n % 2 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        int hi = nibble(s[i]), lo = nibble(s[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    return (long)(n / 2);
}

static void put_hex(const void *data, size_t n)
{
    const unsigned char *p = data;

    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
}

static void print_frame(unsigned type, const struct wire_value *values)
{
    const struct wire_message *msg = wire_message_of(type);

    printf(" F%u", type);
    for (unsigned i = 0; i < msg->count; i++) {
        const struct wire_value *v = &values[i];
        switch (wire_fields_of(msg)[i].kind) {
        case WIRE_STR:
            printf(" s:");
            put_hex(v->str, v->len);
            break;
        case WIRE_ENV: {
            const char *cursor = v->str;
            printf(" e:");
            for (size_t j = 0; j < v->len; j++) {
                struct wire_pair pair;
                wire_env_next(&cursor, &pair);
                printf(j ? "," : "");
                put_hex(pair.key, pair.key_len);
                printf("=");
                put_hex(pair.value, pair.value_len);
            }
            break;
        }
        case WIRE_I32:
            printf(" %d", (int)v->i32);
            break;
        default:
            printf(" %llu", (unsigned long long)v->num);
        }
    }
}

static void decode(const char *hex)
{
    size_t n = strlen(hex), len, pos = 0;
    unsigned char *buf = malloc(n / 2 + 1);
    long got;

    if (buf == NULL || (got = unhex(hex, n, buf)) < 0) {
        printf("BAD input\n");
        free(buf);
        return;
    }
    len = (size_t)got;
    printf("D");
    for (;;) {
        struct wire_value values[WIRE_MAX_FIELDS];
        struct wire_error err;
        unsigned type;
        size_t used;
        int rc = wire_next_frame(buf + pos, len - pos, &used, &type, values, &err);
        if (rc < 0) {
            printf(" ERR %s %s\n", err.kind, err.text);
            break;
        }
        if (rc == 0) {
            if (pos == len)
                printf(" END\n");
            else
                printf(" MORE %zu\n", len - pos);
            break;
        }
        print_frame(type, values);
        pos += used;
    }
    free(buf);
}

/* Parse one VALUE token into v; strings and pairs go to the arena. */
static int parse_value(char *tok, struct wire_value *v, unsigned char **arena, struct wire_pair **pairs)
{
    memset(v, 0, sizeof *v);
    if (strncmp(tok, "s:", 2) == 0) {
        long n = unhex(tok + 2, strlen(tok + 2), *arena);
        if (n < 0)
            return -1;
        v->str = (const char *)*arena;
        v->len = (size_t)n;
        *arena += n;
        return 0;
    }
    if (strncmp(tok, "e:", 2) == 0) {
        char *entry, *save = NULL;
        v->pairs = *pairs;
        for (entry = strtok_r(tok + 2, ",", &save); entry != NULL; entry = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(entry, '=');
            struct wire_pair *pair = (*pairs)++;
            long kn, vn;
            if (eq == NULL || (kn = unhex(entry, (size_t)(eq - entry), *arena)) < 0)
                return -1;
            pair->key = (const char *)*arena;
            pair->key_len = (size_t)kn;
            *arena += kn;
            if ((vn = unhex(eq + 1, strlen(eq + 1), *arena)) < 0)
                return -1;
            pair->value = (const char *)*arena;
            pair->value_len = (size_t)vn;
            *arena += vn;
            v->len++;
        }
        return 0;
    }
    char *end;
    errno = 0;
    if (tok[0] == '-') {
        v->i32 = (int32_t)strtol(tok, &end, 10);
    } else {
        v->num = strtoull(tok, &end, 10);
        v->i32 = (int32_t)v->num;
    }
    return *end == '\0' && end != tok && errno == 0 ? 0 : -1;
}

static void encode(char *args)
{
    size_t n = strlen(args);
    unsigned char *arena = malloc(n + 1), *cursor = arena;
    struct wire_pair *pairs = calloc(n + 1, sizeof *pairs), *pair_cursor = pairs;
    unsigned char *frame = malloc(WIRE_MAX_FRAME);
    struct wire_value values[WIRE_MAX_FIELDS + 1];
    struct wire_error err;
    size_t count = 0, size;
    char *tok, *save = NULL;
    unsigned type;

    if (arena == NULL || pairs == NULL || frame == NULL || (tok = strtok_r(args, " ", &save)) == NULL) {
        printf("BAD input\n");
        goto out;
    }
    type = (unsigned)strtoul(tok, NULL, 10);
    while ((tok = strtok_r(NULL, " ", &save)) != NULL) {
        if (count == WIRE_MAX_FIELDS + 1 || parse_value(tok, &values[count], &cursor, &pair_cursor) < 0) {
            printf("BAD input\n");
            goto out;
        }
        count++;
    }
    size = wire_encode(type, values, count, frame, WIRE_MAX_FRAME, &err);
    if (size == 0)
        printf("ERR %s %s\n", err.kind, err.text);
    else {
        printf("H ");
        put_hex(frame, size);
        printf("\n");
    }
out:
    free(arena);
    free(pairs);
    free(frame);
}

static void fit(char *args)
{
    char *end, *src, *dst;
    unsigned long limit = strtoul(args, &end, 10);
    size_t n = strlen(end + (*end == ' '));
    long got;

    src = calloc(n / 2 + 1, 1);
    dst = malloc(limit + 1);
    if (src == NULL || dst == NULL || (got = unhex(end + (*end == ' '), n, (unsigned char *)src)) < 0
        || memchr(src, '\0', (size_t)got) != NULL) {
        printf("BAD input\n");
    } else {
        size_t len = wire_fit(src, limit, dst);
        printf("T ");
        put_hex(dst, len);
        printf("\n");
    }
    free(src);
    free(dst);
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;

    while ((len = getline(&line, &cap, stdin)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = '\0';
        if (len >= 1 && line[0] == 'D')
            decode(len > 2 ? line + 2 : "");
        else if (len >= 2 && line[0] == 'E')
            encode(line + 2);
        else if (len >= 2 && line[0] == 'T')
            fit(line + 2);
        else
            printf("BAD command\n");
        fflush(stdout);
    }
    free(line);
    return 0;
}
