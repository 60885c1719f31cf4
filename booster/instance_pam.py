"""The instance in a PAM session of its own (config ``instance_pam_service``).

With the key set, the warm child opens a PAM session for the user in that
service before it drops privileges (``booster.spawn.become_instance``), so
that what the session modules do to the process that opens the session
reaches the instance: ``pam_limits``' resource limits, ``pam_umask``'s umask,
``pam_keyinit``'s session keyring, ``pam_loginuid``'s audit login uid (as
turnstile does with its ``turnstiled`` service).  A failed open refuses the
start with the PAM error as its reason (exit 203, not retried).

Who closes the session.  A PAM handle lives in the memory of the process that
opened it, so the session is closed from that memory.  Right after
``pam_open_session`` the warm child forks: the child, the *closer* (root,
named ``booster-pam``), keeps the handle and waits; the warm child goes on
along its straight line (descriptors, privilege drop, check, exec) and
becomes the instance.  So the booster's supervision sees no difference: the
instance is still the booster's own child with the warm child's pid, which
the booster reaps, signals (its stop signal; KILL after ``stop_timeout``) and
shows in ``booster status``; its exit status, and the reserved codes 201 to
203, are the instance's own; its parent-death signal points at the booster.

The closer is in a session of its own and holds none of the instance's
descriptors except stderr (the instance's log pipe, so its own messages reach
the booster's log).  It watches the instance, its parent, through a pidfd (a
parent-death signal would not do: the instance runs as the user, and the
kernel does not let a user's process signal a root one, that one included).
When the instance has ended, whatever the reason (stopped, died, killed, or
the booster died and its parent-death signal stopped the instance), the
closer calls ``pam_close_session`` and ``pam_end`` and exits, within
``CLOSE_TIMEOUT`` (SIGALRM ends it otherwise); SIGTERM, SIGHUP and SIGINT do
not cut that short.  It lives in the instance's cgroup, so the booster's
cleanup after the instance waits for it; without cgroups it is re-parented
to the booster, which reaps it.  The user's instance is its parent but can do
no more than reap it: the closer is root, so the user can neither signal nor
trace it.  Cost: one small process per running instance (docs/benchmarks.md).

Turnstile does it the other way round: the process that opened the session
stays as the instance's parent, relays the stop signal and passes on the exit
status.  Here that would put a root process between the booster and its
instance and make every piece of supervision go through it.

Not done, on purpose: ``pam_setcred`` (the instance's credentials are the
ones the warm child sets and verifies), and the PAM environment (the
instance's environment is the booster's clean one).  When the instance has to
be killed (``stop_timeout``: the cgroup is killed, the closer with it) or the
closer is killed, ``pam_close_session`` does not run, as with a login whose
PAM application is killed.

``pam_python``: a PAM client that is itself a Python process crashes when the
stack loads ``pam_python.so``, and the warm child is one.  A service whose
stack (includes followed) names pam_python is refused: at startup (the
booster does not start) and before each open (a file changed since then: that
start is refused with the reason, not retried).

This module runs in the warm child, so it imports only built-in modules at
the top (and ``booster.prctl``, which the warm child has loaded already);
``ctypes`` is imported when libpam is loaded (during warm-up).
"""

from __future__ import annotations

import posix

import _signal

from booster.prctl import set_process_name

PAM_DIRS = ("/etc/pam.d", "/usr/lib/pam.d")  # where Linux-PAM 1.5 looks, in this order
CLOSE_TIMEOUT = 10  # seconds the closer may take to close the session
_INCLUDE_DEPTH = 8
# The closer outlives these (the booster's sweep of the instance's cgroup, a
# system shutdown): it ends once the session is closed.
_BLOCKED_IN_CLOSER = {_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT}

# Linux-PAM's values (security/_pam_types.h).
PAM_SUCCESS = 0
PAM_BUF_ERR = 5
PAM_CONV_ERR = 19
_PROMPTS = (1, 2)  # PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON


class PamError(Exception):
    """The instance's PAM session cannot be opened here; the text says why."""


def service_file(service: str) -> str:
    """The file libpam reads for ``service`` (it folds the name to lower case)."""
    name = service.lower()
    for directory in PAM_DIRS:
        path = f"{directory}/{name}"
        try:
            posix.stat(path)
            return path
        except FileNotFoundError:
            continue
    raise PamError(f"PAM service {service!r} has no file in {' or '.join(PAM_DIRS)} "
                   "(libpam would silently use 'other')")


def check_stack(service: str) -> None:
    """Refuse a service that is missing or whose stack loads pam_python."""
    for path, number, line in _stack_lines(service_file(service), 0):
        if "pam_python" in line:
            raise PamError(f"{path} line {number} loads pam_python ({line}): a PAM client written in "
                           "Python, as the booster's warm child is, crashes with it; remove it from this service")


def _stack_lines(path: str, depth: int):
    """(file, line number, line) of every non-comment line of ``path`` and of
    what it includes."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise PamError(f"cannot read {path}: {exc.strerror}") from None
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        yield path, number, line
        words = line.split()
        if words[0] == "@include" and len(words) > 1:
            target = words[1]
        elif len(words) > 2 and words[1] in ("include", "substack"):
            target = words[2]
        else:
            continue
        if depth < _INCLUDE_DEPTH:
            try:
                included = target if target.startswith("/") else service_file(target)
            except PamError:
                continue  # libpam reports a missing include itself, when it opens the stack
            yield from _stack_lines(included, depth + 1)


class PamSession:
    """The instance's PAM session.  Made in a warm child during warm-up (libpam
    loaded ahead of the login); ``open`` starts the session, ``hold`` forks the
    closer."""

    def __init__(self, service: str) -> None:
        import ctypes

        self.service = service
        self.user = ""
        try:
            pam = ctypes.CDLL("libpam.so.0")
        except OSError as exc:
            raise PamError(f"cannot load libpam.so.0: {exc}") from None
        libc = ctypes.CDLL(None)
        libc.calloc.restype = ctypes.c_void_p
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]

        class Message(ctypes.Structure):
            _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]

        class Response(ctypes.Structure):
            _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]

        conv_func = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(Message)),
                                     ctypes.POINTER(ctypes.POINTER(Response)), ctypes.c_void_p)

        class Conversation(ctypes.Structure):
            _fields_ = [("conv", conv_func), ("appdata_ptr", ctypes.c_void_p)]

        def converse(count, messages, responses, _data):
            """Answers nothing: a prompt fails the call; other messages are logged."""
            prompted = False
            for i in range(count):
                message = messages[i].contents
                prompted = prompted or message.msg_style in _PROMPTS
                text = message.msg.decode(errors="replace") if message.msg else ""
                _say(f"PAM message for {self.user} in service {self.service}: {text}")
            if prompted:
                return PAM_CONV_ERR
            array = libc.calloc(max(count, 1), ctypes.sizeof(Response))  # libpam frees it: malloc's
            if not array:
                return PAM_BUF_ERR
            responses[0] = ctypes.cast(array, ctypes.POINTER(Response))
            return PAM_SUCCESS

        pam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Conversation),
                                  ctypes.POINTER(ctypes.c_void_p)]
        pam.pam_strerror.restype = ctypes.c_char_p
        pam.pam_strerror.argtypes = [ctypes.c_void_p, ctypes.c_int]
        for name in ("pam_open_session", "pam_close_session", "pam_end"):
            getattr(pam, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._ctypes = ctypes
        self._pam = pam
        self._converse = conv_func(converse)  # kept alive for as long as libpam may call it
        self._conversation = Conversation(self._converse, None)
        self._handle = ctypes.c_void_p()

    def _error(self, rc: int) -> str:
        text = self._pam.pam_strerror(self._handle, rc)
        return text.decode(errors="replace") if text else f"PAM error {rc}"

    def open(self, user: str) -> None:
        """pam_start and pam_open_session for ``user``; PamError if either fails."""
        self.user = user
        check_stack(self.service)
        byref = self._ctypes.byref
        rc = self._pam.pam_start(self.service.encode(), user.encode(), byref(self._conversation),
                                 byref(self._handle))
        if rc != PAM_SUCCESS:
            raise PamError(f"pam_start for {user} in service {self.service!r} failed: {self._error(rc)}")
        rc = self._pam.pam_open_session(self._handle, 0)
        if rc != PAM_SUCCESS:
            text = self._error(rc)
            self._pam.pam_end(self._handle, rc)
            raise PamError(f"pam_open_session for {user} in service {self.service!r} failed: {text}")

    def hold(self, instance_fds: set[int]) -> None:
        """Fork the closer, which closes the session once this process (about to
        become the instance) has ended.  ``instance_fds``: what the closer must
        not keep open (it keeps stderr)."""
        instance_pid = posix.getpid()
        # Blocked before the fork, so that none of them can end the closer early.
        _signal.pthread_sigmask(_signal.SIG_BLOCK, _BLOCKED_IN_CLOSER)
        try:
            pid = posix.fork()
        except OSError as exc:
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _BLOCKED_IN_CLOSER)
            self._close()
            raise PamError(f"cannot fork the process that closes the PAM session: {exc.strerror}") from None
        if pid == 0:
            self._closer(instance_pid, instance_fds)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _BLOCKED_IN_CLOSER)

    def _closer(self, instance_pid: int, instance_fds: set[int]):
        code = 1
        try:
            posix.setsid()
            set_process_name(b"booster-pam")
            _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)  # a message to a gone booster must not end us
            posix.dup2(0, 1)  # fd 0 is the instance's /dev/null; 2 stays for our messages
            for fd in instance_fds:
                if fd > 2:
                    try:
                        posix.close(fd)
                    except OSError:
                        pass
            _wait_for_exit(instance_pid)
            _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)  # whatever a module made of it
            _signal.alarm(CLOSE_TIMEOUT)  # the default action ends this process
            code = self._close()
        finally:
            posix._exit(code)

    def _close(self) -> int:
        rc = self._pam.pam_close_session(self._handle, 0)
        if rc != PAM_SUCCESS:
            _say(f"pam_close_session for {self.user} in service {self.service!r} failed: {self._error(rc)}")
        self._pam.pam_end(self._handle, rc)
        return 0 if rc == PAM_SUCCESS else 1


def _wait_for_exit(pid: int) -> None:
    """Until ``pid``, this process's parent, has exited.  Through a pidfd: the
    parent becomes the instance and runs as the user, and a user's process may
    not signal a root one, so a parent-death signal would never arrive."""
    import select

    try:
        fd = posix.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if posix.getppid() != pid:
            return  # it exited before the pidfd was open, which may then be another's
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()
    finally:
        posix.close(fd)


def _say(text: str) -> None:
    """A line on stderr: the instance's log pipe, which the booster logs."""
    try:
        posix.write(2, f"booster-pam: {text}\n".encode(errors="replace"))
    except OSError:
        pass
