/* pam_phases: time each phase of one PAM session from inside a C PAM
 * application, as bench/module_load.py needs them.
 *
 *   pam_phases SERVICE USER
 *
 * pam_start (which reads the service's file and loads its modules),
 * pam_open_session, then pam_end without a close (what pamtester
 * SERVICE USER open_session does: the end unloads the modules).  Prints the
 * microseconds of the three calls and the minor page faults taken in
 * pam_start, on one line.
 */
#include "pam_app.h"
#include <security/pam_appl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <time.h>

static long minor_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

int main(int argc, char **argv)
{
    struct pam_conv conv = { answer_nothing, NULL };
    pam_handle_t *pamh = NULL;
    int rc;

    if (argc != 3) {
        fprintf(stderr, "usage: pam_phases SERVICE USER\n");
        return 2;
    }
    long faults = minor_faults();
    long long t0 = now_us();
    if ((rc = pam_start(argv[1], argv[2], &conv, &pamh)) != PAM_SUCCESS) {
        fprintf(stderr, "pam_start: %d\n", rc);
        return 1;
    }
    long long t1 = now_us();
    faults = minor_faults() - faults;
    if ((rc = pam_open_session(pamh, 0)) != PAM_SUCCESS) {
        fprintf(stderr, "pam_open_session: %s\n", pam_strerror(pamh, rc));
        return 1;
    }
    long long t2 = now_us();
    pam_end(pamh, PAM_SUCCESS);
    long long t3 = now_us();
    printf("%lld %lld %lld %ld\n", t1 - t0, t2 - t1, t3 - t2, faults);
    return 0;
}
