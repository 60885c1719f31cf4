/* booster_wire.h: the booster wire format in C, for the native PAM module.
 *
 * Bytes in, values out; values in, bytes out; no I/O.  Every constant and
 * every message's fields come from wire_table.h, generated from
 * common/wire.py (invoker/gen_wire_table.py, make -C invoker wire-table):
 * the format is written once, there.  The decoder refuses what common.wire
 * refuses, with the same kind of error (the Python class names: "BadMagic",
 * "FieldTooLong", ...), and the encoder writes the same bytes;
 * tests/test_native.py holds both to it through the test program
 * wire_check.c.
 */
#ifndef BOOSTER_WIRE_H
#define BOOSTER_WIRE_H

#include <stddef.h>
#include <stdint.h>

enum wire_kind { WIRE_U8, WIRE_U16, WIRE_U32, WIRE_U64, WIRE_I32, WIRE_STR, WIRE_ENV };

/* The tables (wire_table.h) hold offsets, not pointers: a name is an offset
 * in the string of names (wire_name), a message's fields are a run of the
 * table of fields (wire_fields_of).  Read-only data with nothing to relocate:
 * the module's pages stay the file's when a PAM application loads it. */
struct wire_field {
    unsigned short name;    /* wire_name */
    unsigned char kind;     /* enum wire_kind */
    unsigned short limit;   /* WIRE_STR: the most bytes it may hold */
};

struct wire_message {
    unsigned short name;    /* wire_name; 0: no message has this type */
    unsigned char count;
    unsigned short first;   /* its first field's place in the table of fields */
};

struct wire_code {
    unsigned value;
    unsigned short name;    /* wire_name; 0 ends a table */
};

#include "wire_table.h"

/* One environment entry: bytes and lengths, not NUL-terminated. */
struct wire_pair {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
};

/* One field's value.  Decoded strings and environments point into the
 * frame they came from. */
struct wire_value {
    uint64_t num;                   /* WIRE_U8 .. WIRE_U64 */
    int32_t i32;                    /* WIRE_I32 */
    const char *str;                /* WIRE_STR: its bytes; WIRE_ENV (decoded): the first entry's encoding */
    size_t len;                     /* WIRE_STR: its byte count; WIRE_ENV: its entry count */
    const struct wire_pair *pairs;  /* WIRE_ENV, to encode: len entries */
};

struct wire_error {
    const char *kind;   /* the common.protocol error class: "BadMagic", "LocalProtocolError", ... */
    char text[200];
};

/* The first frame of buf[0..len): 1 when one is complete (its type, its
 * values, *used its size), 0 while more bytes are needed, -1 when the bytes
 * cannot be a frame (err says why; the stream is beyond repair).  The header
 * is checked as soon as its 8 bytes are there. */
int wire_next_frame(const unsigned char *buf, size_t len, size_t *used, unsigned *type,
                    struct wire_value values[WIRE_MAX_FIELDS], struct wire_error *err);

/* One complete frame of message type with its fields' values in order,
 * each checked as common.wire.encode checks them: its size, or 0 (err says why). */
size_t wire_encode(unsigned type, const struct wire_value *values, size_t count,
                   unsigned char *out, size_t cap, struct wire_error *err);

/* The next entry of a decoded environment, from *cursor (start: the field's str). */
void wire_env_next(const char **cursor, struct wire_pair *pair);

/* Is s[0..len) UTF-8 as Python's strict decoder takes it (no overlong forms,
 * no surrogates, nothing past U+10FFFF, nothing cut off)? */
int wire_utf8_valid(const char *s, size_t len);

/* invoker.client.fit: src cut to at most limit bytes, then every byte that is
 * not part of a valid UTF-8 sequence dropped; writes dst (limit + 1 bytes at
 * least), NUL-terminated, and returns its length. */
size_t wire_fit(const char *src, size_t limit, char *dst);

/* A message type's name and fields; NULL if there is no such type. */
const struct wire_message *wire_message_of(unsigned type);

/* A message's fields, msg->count of them. */
const struct wire_field *wire_fields_of(const struct wire_message *msg);

/* The name at an offset that a table gives. */
const char *wire_name(unsigned short name);

/* The name of a message type, error code or end reason; NULL if it has none. */
const char *wire_message_name(unsigned type);
const char *wire_error_name(unsigned code);
const char *wire_end_name(unsigned reason);

#endif
