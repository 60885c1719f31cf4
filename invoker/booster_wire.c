/* booster_wire.c: decode and encode booster frames (see booster_wire.h).
 *
 * The checks follow common/wire.py step for step, in its order, so that a
 * bad frame gets the same kind of error on both sides: the header (magic,
 * version, type, length), then each field in turn (a string's count against
 * its limit before its bytes are looked at; NUL, then UTF-8; an environment
 * entry's key and value before the key's own rules), then bytes left over.
 */
#define WIRE_TABLES
#include "booster_wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int fail(struct wire_error *err, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct wire_error *err, const char *kind, const char *fmt, ...)
{
    va_list ap;

    err->kind = kind;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof err->text, fmt, ap);
    va_end(ap);
    return -1;
}

static uint64_t get_be(const unsigned char *p, size_t size)
{
    uint64_t v = 0;

    for (size_t i = 0; i < size; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_be(unsigned char *p, uint64_t v, size_t size)
{
    for (size_t i = size; i-- > 0; v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}

static size_t int_size(unsigned kind)
{
    switch (kind) {
    case WIRE_U8:
        return 1;
    case WIRE_U16:
        return 2;
    case WIRE_U32:
    case WIRE_I32:
        return 4;
    default:
        return 8;
    }
}

/* The length of the valid UTF-8 sequence at s[0..len), or 0 if there is none
 * (Unicode's table of well-formed byte sequences, as Python decodes). */
static size_t utf8_sequence(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        need = 1;
    else if (c >= 0xe0 && c <= 0xef) {
        need = 2;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;  /* U+D800..U+DFFF are surrogates, not characters */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (len < need + 1 || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i <= need; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return need + 1;
}

int wire_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;

    while (len > 0) {
        size_t n = utf8_sequence(p, len);
        if (n == 0)
            return 0;
        p += n;
        len -= n;
    }
    return 1;
}

size_t wire_fit(const char *src, size_t limit, char *dst)
{
    const unsigned char *p = (const unsigned char *)src;
    size_t len = strnlen(src, limit), out = 0;

    while (len > 0) {
        size_t n = utf8_sequence(p, len);
        if (n == 0) {
            p++;
            len--;
            continue;
        }
        memcpy(dst + out, p, n);
        out += n;
        p += n;
        len -= n;
    }
    dst[out] = '\0';
    return out;
}

const char *wire_name(unsigned short name)
{
    return name < sizeof wire_names ? wire_names + name : "";
}

static const char *code_name(const struct wire_code *table, unsigned value)
{
    for (; table->name != 0; table++)
        if (table->value == value)
            return wire_name(table->name);
    return NULL;
}

const struct wire_message *wire_message_of(unsigned type)
{
    return type < 256 && wire_messages[type].name != 0 ? &wire_messages[type] : NULL;
}

const struct wire_field *wire_fields_of(const struct wire_message *msg)
{
    return &wire_fields[msg->first];
}

const char *wire_message_name(unsigned type)
{
    return type < 256 && wire_messages[type].name != 0 ? wire_name(wire_messages[type].name) : NULL;
}

const char *wire_error_name(unsigned code)
{
    return code_name(wire_error_names, code);
}

const char *wire_end_name(unsigned reason)
{
    return code_name(wire_end_names, reason);
}

/* --- decoding ------------------------------------------------------------------------ */

static int short_payload(struct wire_error *err, const char *name, const char *sub)
{
    return fail(err, "MalformedPayload", "payload too short for field '%s%s'", name, sub);
}

/* A str field at *pos: its bytes and count in *v, *pos past it. */
static int decode_str(const unsigned char *buf, size_t len, size_t *pos, const char *name,
                      const char *sub, unsigned limit, struct wire_value *v, struct wire_error *err)
{
    size_t count;

    if (len - *pos < 2)
        return short_payload(err, name, sub);
    count = (size_t)get_be(buf + *pos, 2);
    if (count > limit)
        return fail(err, "FieldTooLong", "field '%s%s': %zu bytes, limit %u", name, sub, count, limit);
    if (len - *pos - 2 < count)
        return short_payload(err, name, sub);
    v->str = (const char *)buf + *pos + 2;
    v->len = count;
    if (memchr(v->str, '\0', count) != NULL)
        return fail(err, "InvalidString", "field '%s%s': NUL in string", name, sub);
    if (!wire_utf8_valid(v->str, count))
        return fail(err, "InvalidString", "field '%s%s': invalid UTF-8", name, sub);
    *pos += 2 + count;
    return 0;
}

static int decode_env(const unsigned char *buf, size_t len, size_t *pos, const char *name,
                      struct wire_value *v, struct wire_error *err)
{
    size_t count;

    if (len - *pos < 2)
        return short_payload(err, name, "");
    count = (size_t)get_be(buf + *pos, 2);
    if (count > WIRE_MAX_ENV_ENTRIES)
        return fail(err, "FieldTooLong", "field '%s': %zu entries, limit %d", name, count, WIRE_MAX_ENV_ENTRIES);
    *pos += 2;
    v->str = (const char *)buf + *pos;
    v->len = count;
    for (size_t i = 0; i < count; i++) {
        struct wire_value key, value;
        if (decode_str(buf, len, pos, name, ".key", WIRE_ENV_KEY_LIMIT, &key, err) < 0
            || decode_str(buf, len, pos, name, ".value", WIRE_ENV_VALUE_LIMIT, &value, err) < 0)
            return -1;
        if (key.len == 0 || memchr(key.str, '=', key.len) != NULL)
            return fail(err, "MalformedPayload", "field '%s': bad key (empty, or with '=')", name);
    }
    return 0;
}

static int check_header(const unsigned char *h, unsigned *type, size_t *length, struct wire_error *err)
{
    uint64_t n;

    if (h[0] != WIRE_MAGIC0 || h[1] != WIRE_MAGIC1)
        return fail(err, "BadMagic", "bad magic 0x%02x%02x, expected \"DB\"", h[0], h[1]);
    if (h[2] != WIRE_VERSION)
        return fail(err, "UnsupportedVersion", "protocol version %u, this side speaks %d", h[2], WIRE_VERSION);
    if (wire_messages[h[3]].name == 0)
        return fail(err, "UnknownMessageType", "unknown message type %u", h[3]);
    n = get_be(h + 4, 4);
    if (n > WIRE_MAX_PAYLOAD)
        return fail(err, "FrameTooLarge", "payload of %llu bytes exceeds %d", (unsigned long long)n,
                    WIRE_MAX_PAYLOAD);
    *type = h[3];
    *length = (size_t)n;
    return 0;
}

static int decode_payload(unsigned type, const unsigned char *buf, size_t len, struct wire_value *values,
                          struct wire_error *err)
{
    const struct wire_message *msg = &wire_messages[type];
    const struct wire_field *fields = wire_fields_of(msg);
    size_t pos = 0;

    for (unsigned i = 0; i < msg->count; i++) {
        const struct wire_field *f = &fields[i];
        struct wire_value *v = &values[i];
        memset(v, 0, sizeof *v);
        if (f->kind == WIRE_STR) {
            if (decode_str(buf, len, &pos, wire_name(f->name), "", f->limit, v, err) < 0)
                return -1;
        } else if (f->kind == WIRE_ENV) {
            if (decode_env(buf, len, &pos, wire_name(f->name), v, err) < 0)
                return -1;
        } else {
            size_t size = int_size(f->kind);
            if (len - pos < size)
                return short_payload(err, wire_name(f->name), "");
            v->num = get_be(buf + pos, size);
            v->i32 = (int32_t)(uint32_t)v->num;
            pos += size;
        }
    }
    if (pos != len)
        return fail(err, "MalformedPayload", "%s: %zu trailing bytes", wire_name(msg->name), len - pos);
    return 0;
}

int wire_next_frame(const unsigned char *buf, size_t len, size_t *used, unsigned *type,
                    struct wire_value values[WIRE_MAX_FIELDS], struct wire_error *err)
{
    size_t length = 0;

    if (len < WIRE_HEADER_SIZE)
        return 0;
    if (check_header(buf, type, &length, err) < 0)
        return -1;
    if (len - WIRE_HEADER_SIZE < length)
        return 0;
    if (decode_payload(*type, buf + WIRE_HEADER_SIZE, length, values, err) < 0)
        return -1;
    *used = WIRE_HEADER_SIZE + length;
    return 1;
}

void wire_env_next(const char **cursor, struct wire_pair *pair)
{
    const unsigned char *p = (const unsigned char *)*cursor;

    pair->key_len = (size_t)get_be(p, 2);
    pair->key = (const char *)p + 2;
    p += 2 + pair->key_len;
    pair->value_len = (size_t)get_be(p, 2);
    pair->value = (const char *)p + 2;
    *cursor = pair->value + pair->value_len;
}

/* --- encoding ------------------------------------------------------------------------ */

static int check_str(const char *name, const char *s, size_t len, unsigned limit, struct wire_error *err)
{
    if (len > 0 && memchr(s, '\0', len) != NULL)
        return fail(err, "LocalProtocolError", "field '%s': NUL in string", name);
    if (!wire_utf8_valid(s, len))
        return fail(err, "LocalProtocolError", "field '%s': not UTF-8", name);
    if (len > limit)
        return fail(err, "LocalProtocolError", "field '%s': %zu bytes, limit %u", name, len, limit);
    return 0;
}

/* Check one value against its field (common.wire.check); the bytes it takes, or -1. */
static long checked_size(const struct wire_field *f, const struct wire_value *v, struct wire_error *err)
{
    static const uint64_t top[] = { [WIRE_U8] = 0xff, [WIRE_U16] = 0xffff, [WIRE_U32] = 0xffffffff,
                                    [WIRE_U64] = UINT64_MAX };
    long size;

    switch (f->kind) {
    case WIRE_STR:
        if (check_str(wire_name(f->name), v->str, v->len, f->limit, err) < 0)
            return -1;
        return 2 + (long)v->len;
    case WIRE_ENV:
        if (v->len > WIRE_MAX_ENV_ENTRIES)
            return fail(err, "LocalProtocolError", "field '%s': %zu entries, limit %d", wire_name(f->name),
                        v->len, WIRE_MAX_ENV_ENTRIES);
        size = 2;
        for (size_t i = 0; i < v->len; i++) {
            const struct wire_pair *e = &v->pairs[i];
            if (check_str("env.key", e->key, e->key_len, WIRE_ENV_KEY_LIMIT, err) < 0
                || check_str("env.value", e->value, e->value_len, WIRE_ENV_VALUE_LIMIT, err) < 0)
                return -1;
            if (e->key_len == 0 || memchr(e->key, '=', e->key_len) != NULL)
                return fail(err, "LocalProtocolError", "field '%s': bad key (empty, or with '=')",
                            wire_name(f->name));
            size += 4 + (long)(e->key_len + e->value_len);
        }
        return size;
    case WIRE_I32:
        return 4;
    default:
        if (v->num > top[f->kind])
            return fail(err, "LocalProtocolError", "field '%s': %llu out of range", wire_name(f->name),
                        (unsigned long long)v->num);
        return (long)int_size(f->kind);
    }
}

static unsigned char *put_str(unsigned char *p, const char *s, size_t len)
{
    put_be(p, len, 2);
    if (len > 0)
        memcpy(p + 2, s, len);
    return p + 2 + len;
}

size_t wire_encode(unsigned type, const struct wire_value *values, size_t count,
                   unsigned char *out, size_t cap, struct wire_error *err)
{
    const struct wire_message *msg = wire_message_of(type);
    const struct wire_field *fields;
    unsigned char *p;
    long payload = 0;

    if (msg == NULL) {
        fail(err, "LocalProtocolError", "unknown message type %u", type);
        return 0;
    }
    if (count != msg->count) {
        fail(err, "LocalProtocolError", "%s: %zu values for %u fields", wire_name(msg->name), count, msg->count);
        return 0;
    }
    fields = wire_fields_of(msg);
    for (unsigned i = 0; i < msg->count; i++) {
        long size = checked_size(&fields[i], &values[i], err);
        if (size < 0)
            return 0;
        payload += size;
    }
    if (payload > WIRE_MAX_PAYLOAD) {
        fail(err, "LocalProtocolError", "%s: payload of %ld bytes exceeds %d", wire_name(msg->name), payload,
             WIRE_MAX_PAYLOAD);
        return 0;
    }
    if ((size_t)payload + WIRE_HEADER_SIZE > cap) {
        fail(err, "LocalProtocolError", "%s: %ld bytes do not fit the buffer", wire_name(msg->name),
             payload + WIRE_HEADER_SIZE);
        return 0;
    }
    out[0] = WIRE_MAGIC0;
    out[1] = WIRE_MAGIC1;
    out[2] = WIRE_VERSION;
    out[3] = (unsigned char)type;
    put_be(out + 4, (uint64_t)payload, 4);
    p = out + WIRE_HEADER_SIZE;
    for (unsigned i = 0; i < msg->count; i++) {
        const struct wire_field *f = &fields[i];
        const struct wire_value *v = &values[i];
        if (f->kind == WIRE_STR)
            p = put_str(p, v->str, v->len);
        else if (f->kind == WIRE_ENV) {
            put_be(p, v->len, 2);
            p += 2;
            for (size_t j = 0; j < v->len; j++) {
                p = put_str(p, v->pairs[j].key, v->pairs[j].key_len);
                p = put_str(p, v->pairs[j].value, v->pairs[j].value_len);
            }
        } else if (f->kind == WIRE_I32) {
            put_be(p, (uint32_t)v->i32, 4);
            p += 4;
        } else {
            put_be(p, v->num, int_size(f->kind));
            p += int_size(f->kind);
        }
    }
    return (size_t)(p - out);
}
