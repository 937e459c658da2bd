/* echod: the Linux baseline guest's echo server (UDP and TCP port 7), and a minimal HTTP/1.1
 * responder on TCP port 80 (for `qemu-smp bench tcp`'s wrk runs).
 *
 * One thread per CPU, pinned to it, each with its own SO_REUSEPORT UDP socket and TCP listeners
 * on ports 7 and 80 (the kernel spreads flows over the sockets by hash) and its own epoll loop.
 * UDP datagrams are read with recvmmsg and answered with sendmmsg in batches of up to 32; TCP
 * bytes are written back as they arrive, and what the peer's window has no room for is kept (one
 * read's worth) while the connection is not read (backpressure, as Flotilla's echo does). On port 80 every request head (up to its blank line)
 * gets one keep-alive response: a fixed page about the size of Flotilla's `/`. Built with
 * `gcc -static` by qemu-smp (linux_guest.rs) into the initramfs; no library beyond the C library.
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
#define HTTP_PORT 80
#define BATCH 32
#define SLOT 2048
#define MAX_FD 65536

/* How many bytes of "\r\n\r\n" each HTTP connection has matched so far (indexed by fd: each fd
 * belongs to one thread's epoll at a time). */
static unsigned char http_matched[MAX_FD];
/* Whether an fd is an HTTP connection. */
static unsigned char http_connection[MAX_FD];

static const char HTTP_PAGE[] =
    "<!DOCTYPE html>\n<html><head><title>linux</title></head><body>\n<h1>linux</h1>\n"
    "<p>The Linux baseline guest of Flotilla's benchmarks: a fixed page of about the size of "
    "Flotilla's front page, served by echod over epoll.</p>\n<p>Nothing else here.</p>\n"
    "</body></html>\n";

static int reuse_port_socket_on(int type, int port);

static int reuse_port_socket(int type)
{
    return reuse_port_socket_on(type, PORT);
}

static int reuse_port_socket_on(int type, int port)
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
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
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

/* Echo bytes the peer's receive window has no room for yet: kept (at most one read's worth per
 * connection), and the connection is not read again until they are written (backpressure). */
static char *tcp_pending[MAX_FD];
static unsigned int tcp_pending_length[MAX_FD];
static unsigned int tcp_pending_sent[MAX_FD];

static void close_connection(int epoll, int fd);

/* Writes what is pending on `fd`; returns 1 when nothing is left, 0 when it must wait, -1 when
 * the connection failed. */
static int flush_pending(int fd)
{
    while (tcp_pending_sent[fd] < tcp_pending_length[fd]) {
        ssize_t w = write(fd, tcp_pending[fd] + tcp_pending_sent[fd],
                          tcp_pending_length[fd] - tcp_pending_sent[fd]);
        if (w > 0)
            tcp_pending_sent[fd] += w;
        else if (w < 0 && errno == EAGAIN)
            return 0;
        else
            return -1;
    }
    tcp_pending_length[fd] = tcp_pending_sent[fd] = 0;
    return 1;
}

static void serve_tcp(int epoll, int fd)
{
    char buffer[16384];
    if (fd >= MAX_FD) {
        close_connection(epoll, fd);
        return;
    }
    if (tcp_pending_length[fd] > 0) {
        int flushed = flush_pending(fd);
        if (flushed < 0) {
            close_connection(epoll, fd);
            return;
        }
        if (flushed == 0)
            return;
        struct epoll_event readable = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &readable);
    }
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n > 0) {
            ssize_t done = 0;
            while (done < n) {
                ssize_t w = write(fd, buffer + done, n - done);
                if (w > 0) {
                    done += w;
                } else if (w < 0 && errno == EAGAIN) {
                    /* Keep the rest and wait until the peer's window opens; read nothing
                     * meanwhile. */
                    if (!tcp_pending[fd] && !(tcp_pending[fd] = malloc(sizeof buffer))) {
                        close_connection(epoll, fd);
                        return;
                    }
                    memcpy(tcp_pending[fd], buffer + done, n - done);
                    tcp_pending_length[fd] = n - done;
                    tcp_pending_sent[fd] = 0;
                    struct epoll_event writable = {.events = EPOLLOUT, .data.fd = fd};
                    epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &writable);
                    return;
                } else {
                    close_connection(epoll, fd);
                    return;
                }
            }
            continue;
        }
        if (n < 0 && errno == EAGAIN)
            return;
        close_connection(epoll, fd);
        return;
    }
}

static void close_connection(int epoll, int fd)
{
    epoll_ctl(epoll, EPOLL_CTL_DEL, fd, NULL);
    if (fd < MAX_FD) {
        http_connection[fd] = 0;
        http_matched[fd] = 0;
        free(tcp_pending[fd]);
        tcp_pending[fd] = NULL;
        tcp_pending_length[fd] = tcp_pending_sent[fd] = 0;
    }
    close(fd);
}

static void serve_http(int epoll, int fd)
{
    static __thread char response[1024];
    static __thread int response_length;
    if (response_length == 0)
        response_length = snprintf(response, sizeof response,
                                   "HTTP/1.1 200 OK\r\nServer: echod\r\nContent-Type: text/html\r\n"
                                   "Content-Length: %zu\r\nConnection: keep-alive\r\n\r\n%s",
                                   sizeof HTTP_PAGE - 1, HTTP_PAGE);
    char buffer[16384];
    static const char end[] = "\r\n\r\n";
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n > 0) {
            int answers = 0;
            unsigned char matched = http_matched[fd];
            for (ssize_t i = 0; i < n; i++) {
                if (buffer[i] == end[matched])
                    matched++;
                else
                    matched = buffer[i] == '\r' ? 1 : 0;
                if (matched == 4) {
                    answers++;
                    matched = 0;
                }
            }
            http_matched[fd] = matched;
            for (int a = 0; a < answers; a++) {
                ssize_t w = write(fd, response, response_length);
                if (w < 0 && errno != EAGAIN) {
                    close_connection(epoll, fd);
                    return;
                }
                if (w < response_length)
                    break; /* The peer does not read: drop the rest (bounded). */
            }
            continue;
        }
        if (n < 0 && errno == EAGAIN)
            return;
        close_connection(epoll, fd);
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
    int http = reuse_port_socket_on(SOCK_STREAM, HTTP_PORT);
    int epoll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = udp};
    epoll_ctl(epoll, EPOLL_CTL_ADD, udp, &event);
    event.data.fd = listener;
    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
    event.data.fd = http;
    epoll_ctl(epoll, EPOLL_CTL_ADD, http, &event);
    struct epoll_event ready[64];
    for (;;) {
        int count = epoll_wait(epoll, ready, 64, -1);
        for (int i = 0; i < count; i++) {
            int fd = ready[i].data.fd;
            if (fd == udp) {
                serve_udp(udp);
            } else if (fd == listener || fd == http) {
                int connection;
                while ((connection = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (connection >= MAX_FD) {
                        close(connection);
                        continue;
                    }
                    int one = 1;
                    setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    http_connection[connection] = fd == http;
                    http_matched[connection] = 0;
                    struct epoll_event added = {.events = EPOLLIN, .data.fd = connection};
                    epoll_ctl(epoll, EPOLL_CTL_ADD, connection, &added);
                }
            } else if (fd < MAX_FD && http_connection[fd]) {
                serve_http(epoll, fd);
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
    printf("echod: serving UDP and TCP port %d, HTTP on %d, on %ld CPUs\n", PORT, HTTP_PORT, cpus);
    fflush(stdout);
    for (long cpu = 0; cpu < cpus; cpu++)
        pthread_join(threads[cpu], NULL);
    return 0;
}
