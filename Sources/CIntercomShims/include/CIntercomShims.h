// What Swift cannot call directly from the Glibc module (declarations hidden
// behind _GNU_SOURCE or in headers the module does not export). Each function is
// a thin wrapper; Intercom's Swift code calls these instead of dlsym.
#ifndef C_INTERCOM_SHIMS_H
#define C_INTERCOM_SHIMS_H

#include <stddef.h>

/// malloc_trim(3) where it exists (glibc); 0 elsewhere.
int c_intercom_malloc_trim(size_t pad);

/// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK where it exists, so a child
/// spawned meanwhile never inherits the descriptor; accept + fcntl elsewhere.
int c_intercom_accept_cloexec_nonblock(int fd);

/// pipe2(fds, O_CLOEXEC) where it exists, so a child spawned meanwhile never
/// inherits either end; pipe + fcntl elsewhere.
int c_intercom_pipe_cloexec(int fds[2]);

/// pidfd_open(2): a descriptor that becomes readable when process `pid` exits;
/// -1 with errno ENOSYS where the kernel (or platform) has none.
int c_intercom_pidfd_open(int pid);

/// prctl(PR_SET_PDEATHSIG, signal) on Linux; -1 with errno ENOSYS elsewhere.
int c_intercom_set_parent_death_signal(int signal);

/// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING); -1 with errno ENOSYS
/// where there is none.
int c_intercom_memfd_create_sealable(const char *name);

/// futex(word, FUTEX_WAIT, expected, timeout) on a shared (not private) word:
/// sleeps while *word == expected, at most the timeout. Returns 0 or -1/errno.
int c_intercom_futex_wait(unsigned int *word, unsigned int expected, long seconds, long nanoseconds);

/// futex(word, FUTEX_WAKE, INT_MAX): wakes every process sleeping on `word`.
int c_intercom_futex_wake_all(unsigned int *word);

/// An eventfd(2) counter, close-on-exec and non-blocking: a descriptor that
/// select/poll/epoll see readable while it is set. -1 with errno ENOSYS where
/// there is none.
int c_intercom_readiness_create(void);

/// Makes the eventfd `fd` readable (adds 1 to its counter).
void c_intercom_readiness_set(int fd);

/// Makes the eventfd `fd` not readable (reads its counter to 0).
void c_intercom_readiness_clear(int fd);

/// posix_spawn(3) of `path` in a session of its own (POSIX_SPAWN_SETSID where
/// the platform has it: a terminal's Ctrl-C does not reach it), stdin from
/// /dev/null, stdout and stderr appended to `output` (or /dev/null if NULL),
/// signal mask empty and the usual signals at their defaults. Returns 0 and
/// sets *pid, or an errno value.
int c_intercom_spawn_session(const char *path, char *const argv[], char *const envp[], const char *output, int *pid);

/// Names the calling thread for the kernel (ps, top, /proc/PID/task/TID/comm).
void c_intercom_name_this_thread(const char *name);

/// A hint to the CPU that the caller is spinning (PAUSE on x86, YIELD on Arm):
/// it saves power and lets the other hardware thread of the core run.
static inline void c_intercom_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

#endif
