#define _GNU_SOURCE
#include "CIntercomShims.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <errno.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif
#if defined(__linux__) && defined(__GLIBC__)
#include <malloc.h>
#endif

int c_intercom_malloc_trim(size_t pad) {
#if defined(__linux__) && defined(__GLIBC__)
    return malloc_trim(pad);
#else
    (void)pad;
    return 0;
#endif
}

int c_intercom_accept_cloexec_nonblock(int fd) {
#if defined(__linux__)
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
#else
    int accepted = accept(fd, NULL, NULL);
    if (accepted >= 0) {
        fcntl(accepted, F_SETFD, FD_CLOEXEC);
        fcntl(accepted, F_SETFL, fcntl(accepted, F_GETFL) | O_NONBLOCK);
    }
    return accepted;
#endif
}

int c_intercom_pidfd_open(int pid) {
#if defined(__linux__) && defined(SYS_pidfd_open)
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

int c_intercom_set_parent_death_signal(int signal) {
#if defined(__linux__)
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0);
#else
    (void)signal;
    errno = ENOSYS;
    return -1;
#endif
}
