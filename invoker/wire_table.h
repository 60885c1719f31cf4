/* wire_table.h: the booster wire format for C, generated from common/wire.py
 * by invoker/gen_wire_table.py.  Do not edit: change common/wire.py and run
 * make -C invoker wire-table. */
#ifndef BOOSTER_WIRE_TABLE_H
#define BOOSTER_WIRE_TABLE_H

#define WIRE_MAGIC0 0x44
#define WIRE_MAGIC1 0x42
#define WIRE_VERSION 2
#define WIRE_HEADER_SIZE 8
#define WIRE_MAX_FRAME 65536
#define WIRE_MAX_PAYLOAD 65528
#define WIRE_MAX_ENV_ENTRIES 64
#define WIRE_ENV_KEY_LIMIT 255
#define WIRE_ENV_VALUE_LIMIT 4095

#define WIRE_MSG_HELLO 1
#define WIRE_MSG_OPEN_SESSION 2
#define WIRE_MSG_WAIT 3
#define WIRE_MSG_READY 4
#define WIRE_MSG_ERROR 5
#define WIRE_MSG_CLOSE_SESSION 6
#define WIRE_MSG_CLOSED 7
#define WIRE_MSG_ENDED 8
#define WIRE_MSG_STATUS_REQUEST 9
#define WIRE_MSG_STATUS_ENTRY 10
#define WIRE_MSG_STATUS_END 11
#define WIRE_MSG_PREWARM 12
#define WIRE_MSG_TERMINATE 13
#define WIRE_MSG_LINGER 14
#define WIRE_MSG_ACK 15
#define WIRE_MSG_SESSIONS_REQUEST 16
#define WIRE_MSG_SESSION_ENTRY 17
#define WIRE_MSG_SESSIONS_END 18
#define WIRE_MSG_LOG_REQUEST 19
#define WIRE_MSG_LOG_LINE 20
#define WIRE_MSG_LOG_END 21
#define WIRE_MSG_USAGE 22
#define WIRE_MSG_REEXEC 24

#define WIRE_ERR_MALFORMED 1
#define WIRE_ERR_UNSUPPORTED_VERSION 2
#define WIRE_ERR_UNEXPECTED_MESSAGE 3
#define WIRE_ERR_NOT_PERMITTED 4
#define WIRE_ERR_UNKNOWN_USER 5
#define WIRE_ERR_START_FAILED 6
#define WIRE_ERR_TIMEOUT 7
#define WIRE_ERR_NO_SUCH_SESSION 8
#define WIRE_ERR_SHUTTING_DOWN 9
#define WIRE_ERR_INTERNAL 10
#define WIRE_ERR_LIMIT_REACHED 11
#define WIRE_ERR_LEADER_UNKNOWN 12
#define WIRE_ERR_REEXEC_REFUSED 13

#define WIRE_END_CLOSED 1
#define WIRE_END_LEADER_EXITED 2
#define WIRE_END_INSTANCE_FAILED 3
#define WIRE_END_SHUTDOWN 4
#define WIRE_END_TERMINATED 5
#define WIRE_END_ACCOUNT_CHANGED 6

#define WIRE_OPEN_KEEP_CONNECTION 1
#define WIRE_OPEN_NO_RUNDIR 2
#define WIRE_OPEN_KEEP_IF_UNSEEN 4

#define WIRE_HELLO_PEER_VISIBLE 1
#define WIRE_HELLO_WANT_USAGE 2

#define WIRE_STATUS_LINGER 1
#define WIRE_STATUS_PREWARMED 2

#define WIRE_MAX_FIELDS 11

/* Each message's field count, and each field's place in it. */
#define WIRE_FIELDS_HELLO 4
#define WIRE_FIELD_HELLO_PID 0
#define WIRE_FIELD_HELLO_PIDNS 1
#define WIRE_FIELD_HELLO_FLAGS 2
#define WIRE_FIELD_HELLO_AGENT 3
#define WIRE_FIELDS_OPEN_SESSION 8
#define WIRE_FIELD_OPEN_SESSION_USER 0
#define WIRE_FIELD_OPEN_SESSION_SERVICE 1
#define WIRE_FIELD_OPEN_SESSION_TTY 2
#define WIRE_FIELD_OPEN_SESSION_RHOST 3
#define WIRE_FIELD_OPEN_SESSION_RUSER 4
#define WIRE_FIELD_OPEN_SESSION_LEADER_PID 5
#define WIRE_FIELD_OPEN_SESSION_FLAGS 6
#define WIRE_FIELD_OPEN_SESSION_RUNTIME_DIR 7
#define WIRE_FIELDS_WAIT 2
#define WIRE_FIELD_WAIT_SESSION_ID 0
#define WIRE_FIELD_WAIT_TIMEOUT_MS 1
#define WIRE_FIELDS_READY 2
#define WIRE_FIELD_READY_SESSION_ID 0
#define WIRE_FIELD_READY_ENV 1
#define WIRE_FIELDS_ERROR 2
#define WIRE_FIELD_ERROR_CODE 0
#define WIRE_FIELD_ERROR_TEXT 1
#define WIRE_FIELDS_CLOSE_SESSION 3
#define WIRE_FIELD_CLOSE_SESSION_SESSION_ID 0
#define WIRE_FIELD_CLOSE_SESSION_USER 1
#define WIRE_FIELD_CLOSE_SESSION_LEADER_PID 2
#define WIRE_FIELDS_CLOSED 1
#define WIRE_FIELD_CLOSED_SESSION_ID 0
#define WIRE_FIELDS_ENDED 5
#define WIRE_FIELD_ENDED_SESSION_ID 0
#define WIRE_FIELD_ENDED_REASON 1
#define WIRE_FIELD_ENDED_EXIT_STATUS 2
#define WIRE_FIELD_ENDED_SIGNAL 3
#define WIRE_FIELD_ENDED_TEXT 4
#define WIRE_FIELDS_STATUS_REQUEST 1
#define WIRE_FIELD_STATUS_REQUEST_USER 0
#define WIRE_FIELDS_STATUS_ENTRY 11
#define WIRE_FIELD_STATUS_ENTRY_UID 0
#define WIRE_FIELD_STATUS_ENTRY_USER 1
#define WIRE_FIELD_STATUS_ENTRY_STATE 2
#define WIRE_FIELD_STATUS_ENTRY_PID 3
#define WIRE_FIELD_STATUS_ENTRY_SESSIONS 4
#define WIRE_FIELD_STATUS_ENTRY_RESTARTS 5
#define WIRE_FIELD_STATUS_ENTRY_BACKEND 6
#define WIRE_FIELD_STATUS_ENTRY_FLAGS 7
#define WIRE_FIELD_STATUS_ENTRY_EXIT_STATUS 8
#define WIRE_FIELD_STATUS_ENTRY_SIGNAL 9
#define WIRE_FIELD_STATUS_ENTRY_DETAIL 10
#define WIRE_FIELDS_STATUS_END 2
#define WIRE_FIELD_STATUS_END_COUNT 0
#define WIRE_FIELD_STATUS_END_POOL 1
#define WIRE_FIELDS_PREWARM 1
#define WIRE_FIELD_PREWARM_USER 0
#define WIRE_FIELDS_TERMINATE 1
#define WIRE_FIELD_TERMINATE_USER 0
#define WIRE_FIELDS_LINGER 2
#define WIRE_FIELD_LINGER_USER 0
#define WIRE_FIELD_LINGER_ENABLE 1
#define WIRE_FIELDS_ACK 2
#define WIRE_FIELD_ACK_VALUE 0
#define WIRE_FIELD_ACK_TEXT 1
#define WIRE_FIELDS_SESSIONS_REQUEST 1
#define WIRE_FIELD_SESSIONS_REQUEST_USER 0
#define WIRE_FIELDS_SESSION_ENTRY 11
#define WIRE_FIELD_SESSION_ENTRY_SESSION_ID 0
#define WIRE_FIELD_SESSION_ENTRY_UID 1
#define WIRE_FIELD_SESSION_ENTRY_USER 2
#define WIRE_FIELD_SESSION_ENTRY_SERVICE 3
#define WIRE_FIELD_SESSION_ENTRY_TTY 4
#define WIRE_FIELD_SESSION_ENTRY_RHOST 5
#define WIRE_FIELD_SESSION_ENTRY_RUSER 6
#define WIRE_FIELD_SESSION_ENTRY_LEADER_PID 7
#define WIRE_FIELD_SESSION_ENTRY_KIND 8
#define WIRE_FIELD_SESSION_ENTRY_OPENED_MS 9
#define WIRE_FIELD_SESSION_ENTRY_FLAGS 10
#define WIRE_FIELDS_SESSIONS_END 1
#define WIRE_FIELD_SESSIONS_END_COUNT 0
#define WIRE_FIELDS_LOG_REQUEST 3
#define WIRE_FIELD_LOG_REQUEST_USER 0
#define WIRE_FIELD_LOG_REQUEST_LINES 1
#define WIRE_FIELD_LOG_REQUEST_FLAGS 2
#define WIRE_FIELDS_LOG_LINE 4
#define WIRE_FIELD_LOG_LINE_SEQ 0
#define WIRE_FIELD_LOG_LINE_TIME_MS 1
#define WIRE_FIELD_LOG_LINE_FLAGS 2
#define WIRE_FIELD_LOG_LINE_TEXT 3
#define WIRE_FIELDS_LOG_END 2
#define WIRE_FIELD_LOG_END_COUNT 0
#define WIRE_FIELD_LOG_END_TEXT 1
#define WIRE_FIELDS_USAGE 6
#define WIRE_FIELD_USAGE_UID 0
#define WIRE_FIELD_USAGE_RSS 1
#define WIRE_FIELD_USAGE_CPU_MS 2
#define WIRE_FIELD_USAGE_STARTED_MS 3
#define WIRE_FIELD_USAGE_PROCESSES 4
#define WIRE_FIELD_USAGE_SOURCE 5
#define WIRE_FIELDS_REEXEC 1
#define WIRE_FIELD_REEXEC_FLAGS 0

/* The tables, for the codec (booster_wire.c) alone. */
#ifdef WIRE_TABLES

static const struct wire_field wire_fields_hello[] = {
    { "pid", WIRE_U32, 0 },
    { "pidns", WIRE_U64, 0 },
    { "flags", WIRE_U32, 0 },
    { "agent", WIRE_STR, 64 },
};
static const struct wire_field wire_fields_open_session[] = {
    { "user", WIRE_STR, 256 },
    { "service", WIRE_STR, 256 },
    { "tty", WIRE_STR, 256 },
    { "rhost", WIRE_STR, 1024 },
    { "ruser", WIRE_STR, 256 },
    { "leader_pid", WIRE_U32, 0 },
    { "flags", WIRE_U32, 0 },
    { "runtime_dir", WIRE_STR, 4095 },
};
static const struct wire_field wire_fields_wait[] = {
    { "session_id", WIRE_U64, 0 },
    { "timeout_ms", WIRE_U32, 0 },
};
static const struct wire_field wire_fields_ready[] = {
    { "session_id", WIRE_U64, 0 },
    { "env", WIRE_ENV, 0 },
};
static const struct wire_field wire_fields_error[] = {
    { "code", WIRE_U16, 0 },
    { "text", WIRE_STR, 1024 },
};
static const struct wire_field wire_fields_close_session[] = {
    { "session_id", WIRE_U64, 0 },
    { "user", WIRE_STR, 256 },
    { "leader_pid", WIRE_U32, 0 },
};
static const struct wire_field wire_fields_closed[] = {
    { "session_id", WIRE_U64, 0 },
};
static const struct wire_field wire_fields_ended[] = {
    { "session_id", WIRE_U64, 0 },
    { "reason", WIRE_U16, 0 },
    { "exit_status", WIRE_I32, 0 },
    { "signal", WIRE_U8, 0 },
    { "text", WIRE_STR, 1024 },
};
static const struct wire_field wire_fields_status_request[] = {
    { "user", WIRE_STR, 256 },
};
static const struct wire_field wire_fields_status_entry[] = {
    { "uid", WIRE_U32, 0 },
    { "user", WIRE_STR, 256 },
    { "state", WIRE_STR, 32 },
    { "pid", WIRE_U32, 0 },
    { "sessions", WIRE_U32, 0 },
    { "restarts", WIRE_U32, 0 },
    { "backend", WIRE_STR, 32 },
    { "flags", WIRE_U32, 0 },
    { "exit_status", WIRE_I32, 0 },
    { "signal", WIRE_U8, 0 },
    { "detail", WIRE_STR, 1024 },
};
static const struct wire_field wire_fields_status_end[] = {
    { "count", WIRE_U32, 0 },
    { "pool", WIRE_U32, 0 },
};
static const struct wire_field wire_fields_prewarm[] = {
    { "user", WIRE_STR, 256 },
};
static const struct wire_field wire_fields_terminate[] = {
    { "user", WIRE_STR, 256 },
};
static const struct wire_field wire_fields_linger[] = {
    { "user", WIRE_STR, 256 },
    { "enable", WIRE_U8, 0 },
};
static const struct wire_field wire_fields_ack[] = {
    { "value", WIRE_U32, 0 },
    { "text", WIRE_STR, 1024 },
};
static const struct wire_field wire_fields_sessions_request[] = {
    { "user", WIRE_STR, 256 },
};
static const struct wire_field wire_fields_session_entry[] = {
    { "session_id", WIRE_U64, 0 },
    { "uid", WIRE_U32, 0 },
    { "user", WIRE_STR, 256 },
    { "service", WIRE_STR, 256 },
    { "tty", WIRE_STR, 256 },
    { "rhost", WIRE_STR, 1024 },
    { "ruser", WIRE_STR, 256 },
    { "leader_pid", WIRE_U32, 0 },
    { "kind", WIRE_STR, 32 },
    { "opened_ms", WIRE_U64, 0 },
    { "flags", WIRE_U32, 0 },
};
static const struct wire_field wire_fields_sessions_end[] = {
    { "count", WIRE_U32, 0 },
};
static const struct wire_field wire_fields_log_request[] = {
    { "user", WIRE_STR, 256 },
    { "lines", WIRE_U32, 0 },
    { "flags", WIRE_U32, 0 },
};
static const struct wire_field wire_fields_log_line[] = {
    { "seq", WIRE_U64, 0 },
    { "time_ms", WIRE_U64, 0 },
    { "flags", WIRE_U32, 0 },
    { "text", WIRE_STR, 65000 },
};
static const struct wire_field wire_fields_log_end[] = {
    { "count", WIRE_U32, 0 },
    { "text", WIRE_STR, 1024 },
};
static const struct wire_field wire_fields_usage[] = {
    { "uid", WIRE_U32, 0 },
    { "rss", WIRE_U64, 0 },
    { "cpu_ms", WIRE_U64, 0 },
    { "started_ms", WIRE_U64, 0 },
    { "processes", WIRE_U32, 0 },
    { "source", WIRE_STR, 32 },
};
static const struct wire_field wire_fields_reexec[] = {
    { "flags", WIRE_U32, 0 },
};

/* Indexed by the header's type byte; count 0: not a message type. */
static const struct wire_message wire_messages[256] = {
    [1] = { "HELLO", 4, wire_fields_hello },
    [2] = { "OPEN_SESSION", 8, wire_fields_open_session },
    [3] = { "WAIT", 2, wire_fields_wait },
    [4] = { "READY", 2, wire_fields_ready },
    [5] = { "ERROR", 2, wire_fields_error },
    [6] = { "CLOSE_SESSION", 3, wire_fields_close_session },
    [7] = { "CLOSED", 1, wire_fields_closed },
    [8] = { "ENDED", 5, wire_fields_ended },
    [9] = { "STATUS_REQUEST", 1, wire_fields_status_request },
    [10] = { "STATUS_ENTRY", 11, wire_fields_status_entry },
    [11] = { "STATUS_END", 2, wire_fields_status_end },
    [12] = { "PREWARM", 1, wire_fields_prewarm },
    [13] = { "TERMINATE", 1, wire_fields_terminate },
    [14] = { "LINGER", 2, wire_fields_linger },
    [15] = { "ACK", 2, wire_fields_ack },
    [16] = { "SESSIONS_REQUEST", 1, wire_fields_sessions_request },
    [17] = { "SESSION_ENTRY", 11, wire_fields_session_entry },
    [18] = { "SESSIONS_END", 1, wire_fields_sessions_end },
    [19] = { "LOG_REQUEST", 3, wire_fields_log_request },
    [20] = { "LOG_LINE", 4, wire_fields_log_line },
    [21] = { "LOG_END", 2, wire_fields_log_end },
    [22] = { "USAGE", 6, wire_fields_usage },
    [24] = { "REEXEC", 1, wire_fields_reexec },
};

static const struct wire_code wire_message_names[] = {
    { 1, "HELLO" },
    { 2, "OPEN_SESSION" },
    { 3, "WAIT" },
    { 4, "READY" },
    { 5, "ERROR" },
    { 6, "CLOSE_SESSION" },
    { 7, "CLOSED" },
    { 8, "ENDED" },
    { 9, "STATUS_REQUEST" },
    { 10, "STATUS_ENTRY" },
    { 11, "STATUS_END" },
    { 12, "PREWARM" },
    { 13, "TERMINATE" },
    { 14, "LINGER" },
    { 15, "ACK" },
    { 16, "SESSIONS_REQUEST" },
    { 17, "SESSION_ENTRY" },
    { 18, "SESSIONS_END" },
    { 19, "LOG_REQUEST" },
    { 20, "LOG_LINE" },
    { 21, "LOG_END" },
    { 22, "USAGE" },
    { 24, "REEXEC" },
    { 0, NULL },
};
static const struct wire_code wire_error_names[] = {
    { 1, "MALFORMED" },
    { 2, "UNSUPPORTED_VERSION" },
    { 3, "UNEXPECTED_MESSAGE" },
    { 4, "NOT_PERMITTED" },
    { 5, "UNKNOWN_USER" },
    { 6, "START_FAILED" },
    { 7, "TIMEOUT" },
    { 8, "NO_SUCH_SESSION" },
    { 9, "SHUTTING_DOWN" },
    { 10, "INTERNAL" },
    { 11, "LIMIT_REACHED" },
    { 12, "LEADER_UNKNOWN" },
    { 13, "REEXEC_REFUSED" },
    { 0, NULL },
};
static const struct wire_code wire_end_names[] = {
    { 1, "CLOSED" },
    { 2, "LEADER_EXITED" },
    { 3, "INSTANCE_FAILED" },
    { 4, "SHUTDOWN" },
    { 5, "TERMINATED" },
    { 6, "ACCOUNT_CHANGED" },
    { 0, NULL },
};

#endif /* WIRE_TABLES */
#endif
