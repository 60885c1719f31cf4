/* pam_timer: time one PAM session's calls from inside a C PAM application.
 *
 *   pam_timer SERVICE USER [GAP_MS]
 *
 * pam_start; with GAP_MS, pam_acct_mgmt and a pause of GAP_MS milliseconds
 * (sshd spends time between its account and session phases); then
 * pam_open_session, and pam_close_session followed by pam_end (what a logout
 * costs the application before it exits).  Prints the microseconds of the
 * open, of the close with the end, and of pam_acct_mgmt (0 without GAP_MS),
 * on one line.  bench/login_latency.py
 * builds and runs it: a Python PAM client cannot host pam_python.
 */
#include "pam_app.h"
#include <security/pam_appl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    struct pam_conv conv = { answer_nothing, NULL };
    pam_handle_t *pamh = NULL;
    int rc;
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: pam_timer SERVICE USER [GAP_MS]\n");
        return 2;
    }
    if ((rc = pam_start(argv[1], argv[2], &conv, &pamh)) != PAM_SUCCESS) {
        fprintf(stderr, "pam_start: %d\n", rc);
        return 1;
    }
    long long acct = 0;
    if (argc == 4) {
        struct timespec gap = { 0, atol(argv[3]) * 1000000L };
        long long ta = now_us();
        if ((rc = pam_acct_mgmt(pamh, 0)) != PAM_SUCCESS) {
            fprintf(stderr, "pam_acct_mgmt: %s\n", pam_strerror(pamh, rc));
            return 1;
        }
        acct = now_us() - ta;
        nanosleep(&gap, NULL);
    }
    long long t0 = now_us();
    if ((rc = pam_open_session(pamh, 0)) != PAM_SUCCESS) {
        fprintf(stderr, "pam_open_session: %s\n", pam_strerror(pamh, rc));
        return 1;
    }
    long long t1 = now_us();
    rc = pam_close_session(pamh, 0);
    pam_end(pamh, rc);
    long long t2 = now_us();
    if (rc != PAM_SUCCESS) {
        fprintf(stderr, "pam_close_session: %d\n", rc);
        return 1;
    }
    printf("%lld %lld %lld\n", t1 - t0, t2 - t1, acct);
    return 0;
}
