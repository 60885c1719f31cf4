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

/* The tables, for the codec (booster_wire.c) alone.  They hold no pointers:
 * a name is its offset in wire_names, a message's fields a run of wire_fields,
 * so the tables are read-only data that loading the module does not relocate. */
#ifdef WIRE_TABLES

/* Every name, each ended by its NUL; offset 0 is the empty name: none. */
static const char wire_names[] =
    "\0"
    "pid\0"
    "pidns\0"
    "flags\0"
    "agent\0"
    "HELLO\0"
    "user\0"
    "service\0"
    "tty\0"
    "rhost\0"
    "ruser\0"
    "leader_pid\0"
    "runtime_dir\0"
    "OPEN_SESSION\0"
    "session_id\0"
    "timeout_ms\0"
    "WAIT\0"
    "env\0"
    "READY\0"
    "code\0"
    "text\0"
    "ERROR\0"
    "CLOSE_SESSION\0"
    "CLOSED\0"
    "reason\0"
    "exit_status\0"
    "signal\0"
    "ENDED\0"
    "STATUS_REQUEST\0"
    "uid\0"
    "state\0"
    "sessions\0"
    "restarts\0"
    "backend\0"
    "detail\0"
    "STATUS_ENTRY\0"
    "count\0"
    "pool\0"
    "STATUS_END\0"
    "PREWARM\0"
    "TERMINATE\0"
    "enable\0"
    "LINGER\0"
    "value\0"
    "ACK\0"
    "SESSIONS_REQUEST\0"
    "kind\0"
    "opened_ms\0"
    "SESSION_ENTRY\0"
    "SESSIONS_END\0"
    "lines\0"
    "LOG_REQUEST\0"
    "seq\0"
    "time_ms\0"
    "LOG_LINE\0"
    "LOG_END\0"
    "rss\0"
    "cpu_ms\0"
    "started_ms\0"
    "processes\0"
    "source\0"
    "USAGE\0"
    "REEXEC\0"
    "MALFORMED\0"
    "UNSUPPORTED_VERSION\0"
    "UNEXPECTED_MESSAGE\0"
    "NOT_PERMITTED\0"
    "UNKNOWN_USER\0"
    "START_FAILED\0"
    "TIMEOUT\0"
    "NO_SUCH_SESSION\0"
    "SHUTTING_DOWN\0"
    "INTERNAL\0"
    "LIMIT_REACHED\0"
    "LEADER_UNKNOWN\0"
    "REEXEC_REFUSED\0"
    "LEADER_EXITED\0"
    "INSTANCE_FAILED\0"
    "SHUTDOWN\0"
    "TERMINATED\0"
    "ACCOUNT_CHANGED";

static const struct wire_field wire_fields[] = {
    { 1, WIRE_U32, 0 },  /* HELLO.pid */
    { 5, WIRE_U64, 0 },  /* HELLO.pidns */
    { 11, WIRE_U32, 0 },  /* HELLO.flags */
    { 17, WIRE_STR, 64 },  /* HELLO.agent */
    { 29, WIRE_STR, 256 },  /* OPEN_SESSION.user */
    { 34, WIRE_STR, 256 },  /* OPEN_SESSION.service */
    { 42, WIRE_STR, 256 },  /* OPEN_SESSION.tty */
    { 46, WIRE_STR, 1024 },  /* OPEN_SESSION.rhost */
    { 52, WIRE_STR, 256 },  /* OPEN_SESSION.ruser */
    { 58, WIRE_U32, 0 },  /* OPEN_SESSION.leader_pid */
    { 11, WIRE_U32, 0 },  /* OPEN_SESSION.flags */
    { 69, WIRE_STR, 4095 },  /* OPEN_SESSION.runtime_dir */
    { 94, WIRE_U64, 0 },  /* WAIT.session_id */
    { 105, WIRE_U32, 0 },  /* WAIT.timeout_ms */
    { 94, WIRE_U64, 0 },  /* READY.session_id */
    { 121, WIRE_ENV, 0 },  /* READY.env */
    { 131, WIRE_U16, 0 },  /* ERROR.code */
    { 136, WIRE_STR, 1024 },  /* ERROR.text */
    { 94, WIRE_U64, 0 },  /* CLOSE_SESSION.session_id */
    { 29, WIRE_STR, 256 },  /* CLOSE_SESSION.user */
    { 58, WIRE_U32, 0 },  /* CLOSE_SESSION.leader_pid */
    { 94, WIRE_U64, 0 },  /* CLOSED.session_id */
    { 94, WIRE_U64, 0 },  /* ENDED.session_id */
    { 168, WIRE_U16, 0 },  /* ENDED.reason */
    { 175, WIRE_I32, 0 },  /* ENDED.exit_status */
    { 187, WIRE_U8, 0 },  /* ENDED.signal */
    { 136, WIRE_STR, 1024 },  /* ENDED.text */
    { 29, WIRE_STR, 256 },  /* STATUS_REQUEST.user */
    { 215, WIRE_U32, 0 },  /* STATUS_ENTRY.uid */
    { 29, WIRE_STR, 256 },  /* STATUS_ENTRY.user */
    { 219, WIRE_STR, 32 },  /* STATUS_ENTRY.state */
    { 1, WIRE_U32, 0 },  /* STATUS_ENTRY.pid */
    { 225, WIRE_U32, 0 },  /* STATUS_ENTRY.sessions */
    { 234, WIRE_U32, 0 },  /* STATUS_ENTRY.restarts */
    { 243, WIRE_STR, 32 },  /* STATUS_ENTRY.backend */
    { 11, WIRE_U32, 0 },  /* STATUS_ENTRY.flags */
    { 175, WIRE_I32, 0 },  /* STATUS_ENTRY.exit_status */
    { 187, WIRE_U8, 0 },  /* STATUS_ENTRY.signal */
    { 251, WIRE_STR, 1024 },  /* STATUS_ENTRY.detail */
    { 271, WIRE_U32, 0 },  /* STATUS_END.count */
    { 277, WIRE_U32, 0 },  /* STATUS_END.pool */
    { 29, WIRE_STR, 256 },  /* PREWARM.user */
    { 29, WIRE_STR, 256 },  /* TERMINATE.user */
    { 29, WIRE_STR, 256 },  /* LINGER.user */
    { 311, WIRE_U8, 0 },  /* LINGER.enable */
    { 325, WIRE_U32, 0 },  /* ACK.value */
    { 136, WIRE_STR, 1024 },  /* ACK.text */
    { 29, WIRE_STR, 256 },  /* SESSIONS_REQUEST.user */
    { 94, WIRE_U64, 0 },  /* SESSION_ENTRY.session_id */
    { 215, WIRE_U32, 0 },  /* SESSION_ENTRY.uid */
    { 29, WIRE_STR, 256 },  /* SESSION_ENTRY.user */
    { 34, WIRE_STR, 256 },  /* SESSION_ENTRY.service */
    { 42, WIRE_STR, 256 },  /* SESSION_ENTRY.tty */
    { 46, WIRE_STR, 1024 },  /* SESSION_ENTRY.rhost */
    { 52, WIRE_STR, 256 },  /* SESSION_ENTRY.ruser */
    { 58, WIRE_U32, 0 },  /* SESSION_ENTRY.leader_pid */
    { 352, WIRE_STR, 32 },  /* SESSION_ENTRY.kind */
    { 357, WIRE_U64, 0 },  /* SESSION_ENTRY.opened_ms */
    { 11, WIRE_U32, 0 },  /* SESSION_ENTRY.flags */
    { 271, WIRE_U32, 0 },  /* SESSIONS_END.count */
    { 29, WIRE_STR, 256 },  /* LOG_REQUEST.user */
    { 394, WIRE_U32, 0 },  /* LOG_REQUEST.lines */
    { 11, WIRE_U32, 0 },  /* LOG_REQUEST.flags */
    { 412, WIRE_U64, 0 },  /* LOG_LINE.seq */
    { 416, WIRE_U64, 0 },  /* LOG_LINE.time_ms */
    { 11, WIRE_U32, 0 },  /* LOG_LINE.flags */
    { 136, WIRE_STR, 65000 },  /* LOG_LINE.text */
    { 271, WIRE_U32, 0 },  /* LOG_END.count */
    { 136, WIRE_STR, 1024 },  /* LOG_END.text */
    { 215, WIRE_U32, 0 },  /* USAGE.uid */
    { 441, WIRE_U64, 0 },  /* USAGE.rss */
    { 445, WIRE_U64, 0 },  /* USAGE.cpu_ms */
    { 452, WIRE_U64, 0 },  /* USAGE.started_ms */
    { 463, WIRE_U32, 0 },  /* USAGE.processes */
    { 473, WIRE_STR, 32 },  /* USAGE.source */
    { 11, WIRE_U32, 0 },  /* REEXEC.flags */
};

/* Indexed by the header's type byte; name 0: not a message type. */
static const struct wire_message wire_messages[256] = {
    [1] = { 23, 4, 0 },  /* HELLO */
    [2] = { 81, 8, 4 },  /* OPEN_SESSION */
    [3] = { 116, 2, 12 },  /* WAIT */
    [4] = { 125, 2, 14 },  /* READY */
    [5] = { 141, 2, 16 },  /* ERROR */
    [6] = { 147, 3, 18 },  /* CLOSE_SESSION */
    [7] = { 161, 1, 21 },  /* CLOSED */
    [8] = { 194, 5, 22 },  /* ENDED */
    [9] = { 200, 1, 27 },  /* STATUS_REQUEST */
    [10] = { 258, 11, 28 },  /* STATUS_ENTRY */
    [11] = { 282, 2, 39 },  /* STATUS_END */
    [12] = { 293, 1, 41 },  /* PREWARM */
    [13] = { 301, 1, 42 },  /* TERMINATE */
    [14] = { 318, 2, 43 },  /* LINGER */
    [15] = { 331, 2, 45 },  /* ACK */
    [16] = { 335, 1, 47 },  /* SESSIONS_REQUEST */
    [17] = { 367, 11, 48 },  /* SESSION_ENTRY */
    [18] = { 381, 1, 59 },  /* SESSIONS_END */
    [19] = { 400, 3, 60 },  /* LOG_REQUEST */
    [20] = { 424, 4, 63 },  /* LOG_LINE */
    [21] = { 433, 2, 67 },  /* LOG_END */
    [22] = { 480, 6, 69 },  /* USAGE */
    [24] = { 486, 1, 75 },  /* REEXEC */
};

static const struct wire_code wire_message_names[] = {
    { 1, 23 },  /* HELLO */
    { 2, 81 },  /* OPEN_SESSION */
    { 3, 116 },  /* WAIT */
    { 4, 125 },  /* READY */
    { 5, 141 },  /* ERROR */
    { 6, 147 },  /* CLOSE_SESSION */
    { 7, 161 },  /* CLOSED */
    { 8, 194 },  /* ENDED */
    { 9, 200 },  /* STATUS_REQUEST */
    { 10, 258 },  /* STATUS_ENTRY */
    { 11, 282 },  /* STATUS_END */
    { 12, 293 },  /* PREWARM */
    { 13, 301 },  /* TERMINATE */
    { 14, 318 },  /* LINGER */
    { 15, 331 },  /* ACK */
    { 16, 335 },  /* SESSIONS_REQUEST */
    { 17, 367 },  /* SESSION_ENTRY */
    { 18, 381 },  /* SESSIONS_END */
    { 19, 400 },  /* LOG_REQUEST */
    { 20, 424 },  /* LOG_LINE */
    { 21, 433 },  /* LOG_END */
    { 22, 480 },  /* USAGE */
    { 24, 486 },  /* REEXEC */
    { 0, 0 },
};
static const struct wire_code wire_error_names[] = {
    { 1, 493 },  /* MALFORMED */
    { 2, 503 },  /* UNSUPPORTED_VERSION */
    { 3, 523 },  /* UNEXPECTED_MESSAGE */
    { 4, 542 },  /* NOT_PERMITTED */
    { 5, 556 },  /* UNKNOWN_USER */
    { 6, 569 },  /* START_FAILED */
    { 7, 582 },  /* TIMEOUT */
    { 8, 590 },  /* NO_SUCH_SESSION */
    { 9, 606 },  /* SHUTTING_DOWN */
    { 10, 620 },  /* INTERNAL */
    { 11, 629 },  /* LIMIT_REACHED */
    { 12, 643 },  /* LEADER_UNKNOWN */
    { 13, 658 },  /* REEXEC_REFUSED */
    { 0, 0 },
};
static const struct wire_code wire_end_names[] = {
    { 1, 161 },  /* CLOSED */
    { 2, 673 },  /* LEADER_EXITED */
    { 3, 687 },  /* INSTANCE_FAILED */
    { 4, 703 },  /* SHUTDOWN */
    { 5, 712 },  /* TERMINATED */
    { 6, 723 },  /* ACCOUNT_CHANGED */
    { 0, 0 },
};

#endif /* WIRE_TABLES */
#endif
