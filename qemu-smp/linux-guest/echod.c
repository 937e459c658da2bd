/* echod: the Linux baseline guest's echo server (UDP and TCP port 7).
 *
 * One thread per CPU, pinned to it, each with its own SO_REUSEPORT UDP socket and TCP listener
 * on port 7 (the kernel spreads flows over the sockets by hash) and its own epoll loop. UDP
 * datagrams are read with recvmmsg and answered with sendmmsg in batches of up to 32; TCP bytes
 * are written back as they arrive. Built with `gcc -static` by qemu-smp (linux_guest.rs) into
 * the initramfs; no library beyond the C library.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define PORT 7
#define BATCH 32
#define SLOT 2048

static int reuse_port_socket(int type)
{
    int fd = socket(AF_INET, type | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        perror("echod: socket");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        perror("echod: SO_REUSEPORT");
        exit(1);
    }
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("echod: bind");
        exit(1);
    }
    if (type == SOCK_STREAM && listen(fd, 1024) != 0) {
        perror("echod: listen");
        exit(1);
    }
    return fd;
}

static void serve_udp(int fd)
{
    static __thread char buffers[BATCH][SLOT];
    static __thread struct sockaddr_in sources[BATCH];
    struct mmsghdr messages[BATCH];
    struct iovec iovecs[BATCH];
    for (;;) {
        memset(messages, 0, sizeof messages);
        for (int i = 0; i < BATCH; i++) {
            iovecs[i].iov_base = buffers[i];
            iovecs[i].iov_len = SLOT;
            messages[i].msg_hdr.msg_iov = &iovecs[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = &sources[i];
            messages[i].msg_hdr.msg_namelen = sizeof sources[i];
        }
        int count = recvmmsg(fd, messages, BATCH, MSG_DONTWAIT, NULL);
        if (count <= 0)
            return;
        for (int i = 0; i < count; i++)
            iovecs[i].iov_len = messages[i].msg_len;
        sendmmsg(fd, messages, count, MSG_DONTWAIT);
        if (count < BATCH)
            return;
    }
}

static void serve_tcp(int epoll, int fd)
{
    char buffer[16384];
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n > 0) {
            ssize_t done = 0;
            while (done < n) {
                ssize_t w = write(fd, buffer + done, n - done);
                if (w > 0) {
                    done += w;
                } else if (w < 0 && errno == EAGAIN) {
                    /* The peer does not read: drop the rest rather than wait (bounded). */
                    break;
                } else {
                    epoll_ctl(epoll, EPOLL_CTL_DEL, fd, NULL);
                    close(fd);
                    return;
                }
            }
            continue;
        }
        if (n < 0 && errno == EAGAIN)
            return;
        epoll_ctl(epoll, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        return;
    }
}

static void *worker(void *argument)
{
    long cpu = (long)argument;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    int udp = reuse_port_socket(SOCK_DGRAM);
    int listener = reuse_port_socket(SOCK_STREAM);
    int epoll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = udp};
    epoll_ctl(epoll, EPOLL_CTL_ADD, udp, &event);
    event.data.fd = listener;
    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
    struct epoll_event ready[64];
    for (;;) {
        int count = epoll_wait(epoll, ready, 64, -1);
        for (int i = 0; i < count; i++) {
            int fd = ready[i].data.fd;
            if (fd == udp) {
                serve_udp(udp);
            } else if (fd == listener) {
                int connection;
                while ((connection = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event added = {.events = EPOLLIN, .data.fd = connection};
                    epoll_ctl(epoll, EPOLL_CTL_ADD, connection, &added);
                }
            } else {
                serve_tcp(epoll, fd);
            }
        }
    }
    return NULL;
}

int main(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1)
        cpus = 1;
    pthread_t threads[256];
    if (cpus > 256)
        cpus = 256;
    for (long cpu = 0; cpu < cpus; cpu++)
        pthread_create(&threads[cpu], NULL, worker, (void *)cpu);
    printf("echod: serving UDP and TCP port %d on %ld CPUs\n", PORT, cpus);
    fflush(stdout);
    for (long cpu = 0; cpu < cpus; cpu++)
        pthread_join(threads[cpu], NULL);
    return 0;
}
