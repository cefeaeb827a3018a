#define _GNU_SOURCE
#include "CIntercomShims.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
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
