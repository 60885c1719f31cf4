/* pam_app.h: what the benchmarks' C PAM applications (pam_timer.c,
 * pam_phases.c) share: a conversation that answers nothing (their stacks
 * never ask), and a microsecond clock. */
#ifndef BENCH_PAM_APP_H
#define BENCH_PAM_APP_H

#include <security/pam_appl.h>
#include <time.h>

static int answer_nothing(int n, const struct pam_message **msg, struct pam_response **resp, void *data)
{
    (void)n; (void)msg; (void)data;
    *resp = NULL;
    return PAM_CONV_ERR;
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

#endif
