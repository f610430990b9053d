/*
 * mock-broker: a Kafka-protocol broker for tests, backed by librdkafka's
 * built-in mock cluster (rdkafka_mock.h). Listens on 127.0.0.1.
 *
 *   mock-broker [--brokers N] [--port P] [--topic name:partitions]...
 *               [--default-partitions N] [--controller ID]
 *               [--debug CONTEXTS]   (librdkafka debug contexts, e.g. mock)
 *               [--no-sync-fix]      (disable the SyncGroup ordering fix)
 *               [--no-stdin]         (ignore stdin; run until SIGTERM/SIGINT)
 *
 * Prints exactly one line "READY host:port,host:port,..." on stdout once the
 * cluster accepts connections, then reads commands from stdin, one per line:
 *
 *   DOWN <id>         rd_kafka_mock_broker_set_down (closes connections,
 *                     refuses new ones; the listen port stays bound)
 *   UP <id>           rd_kafka_mock_broker_set_up
 *   CONTROLLER <id>   change the controller id reported in Metadata
 *   TOPIC <name> <n>  create a topic with n partitions
 *   RTT <id> <ms>     rd_kafka_mock_broker_set_rtt
 *
 * Each command is answered with "OK <cmd...>" or "ERR <message>" on stdout.
 * The process exits 0 on SIGTERM/SIGINT or when stdin reaches EOF (so a dead
 * parent never leaves it orphaned; use --no-stdin to run it by hand with
 * stdin closed).
 *
 * --port P makes broker i listen on P+i-1 (librdkafka 2.0.2 only binds to
 * port 0, so bind() is interposed below while the cluster is created).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* ---- fixed ports: bind() interposition ------------------------------- */

static volatile int fixed_port_next = 0; /* 0 = pass through */

/* Exported from the executable (-rdynamic), so librdkafka's bind@plt
 * resolves here. Only rewrites 127.0.0.1:0 binds while fixed_port_next!=0. */
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
        if (fixed_port_next && addr && addr->sa_family == AF_INET &&
            len >= (socklen_t)sizeof(struct sockaddr_in)) {
                struct sockaddr_in sin;
                memcpy(&sin, addr, sizeof(sin));
                if (sin.sin_port == 0 &&
                    sin.sin_addr.s_addr == htonl(INADDR_LOOPBACK)) {
                        int one = 1;
                        sin.sin_port = htons((uint16_t)fixed_port_next++);
                        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
                                   sizeof(one));
                        return (int)syscall(SYS_bind, fd, &sin, sizeof(sin));
                }
        }
        return (int)syscall(SYS_bind, fd, addr, len);
}

/* ---- SyncGroup ordering fix: recvmsg()/poll()/accept()/close() ------- */

/*
 * librdkafka 2.0.2's mock group coordinator completes a SyncGroup round as
 * soon as the leader's SyncGroup (carrying every member's assignment)
 * arrives. A follower whose SyncGroup arrives after that finds the group in
 * state Up and gets INVALID_REQUEST (42), which kafkajs treats as fatal: the
 * consumer crashes and stops. With kafkajs the leader is usually first.
 *
 * Fix, at the wire level (Kafka protocol only, no librdkafka internals): all
 * bytes the mock reads from client connections pass through the recvmsg()
 * below. A leader SyncGroup request is held back until the SyncGroup of every
 * other member it assigns has been handed to the mock (or SYNC_HOLD_MS
 * passed, e.g. a member died), so the mock always sees followers first, as a
 * real broker tolerates. poll() is wrapped to report buffered data as
 * readable. Disable with --no-sync-fix.
 */
#define SYNC_HOLD_MS 3000
#define KAFKA_SYNCGROUP 14
#define MAX_CONNS 1024
#define SEEN_CNT 512
#define PEND_CNT 16

static int sync_fix = 1;
static pthread_mutex_t io_lock = PTHREAD_MUTEX_INITIALIZER;

struct seen_sync {
        char key[300]; /* group \0 member, gen */
        int32_t gen;
        int used;
};
static struct seen_sync seen[SEEN_CNT];
static int seen_next = 0;

struct conn {
        int used;
        unsigned char *buf;
        size_t len, cap;
        size_t scanned;     /* head bytes split into complete frames */
        size_t deliverable; /* head bytes the mock may read now */
        int eof, err;
        int64_t hold_since; /* ms; frame at .scanned is a held leader sync */
        struct {
                size_t end;
                char key[300];
                int32_t gen;
        } pend[PEND_CNT]; /* follower syncs, committed to seen[] once read */
        int pend_cnt;
};
static struct conn conns[MAX_CONNS];

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct conn *conn_get(int fd) {
        if (fd < 0 || fd >= MAX_CONNS || !conns[fd].used)
                return NULL;
        return &conns[fd];
}

static void conn_reset(int fd, int used) {
        if (fd < 0 || fd >= MAX_CONNS)
                return;
        free(conns[fd].buf);
        memset(&conns[fd], 0, sizeof(conns[fd]));
        conns[fd].used = used;
}

static int make_key(char *key, size_t size, const char *g, size_t glen,
                    const char *m, size_t mlen) {
        if (glen + mlen + 2 > size)
                return -1;
        memcpy(key, g, glen);
        key[glen] = '\0';
        memcpy(key + glen + 1, m, mlen);
        key[glen + 1 + mlen] = '\0';
        return 0;
}

static int key_eq(const char *a, const char *b) {
        return !strcmp(a, b) && !strcmp(a + strlen(a) + 1, b + strlen(b) + 1);
}

static void seen_add(const char *key, int32_t gen) {
        struct seen_sync *e = &seen[seen_next];
        seen_next           = (seen_next + 1) % SEEN_CNT;
        memcpy(e->key, key, sizeof(e->key));
        e->gen  = gen;
        e->used = 1;
}

static int seen_has(const char *key, int32_t gen) {
        int i;
        for (i = 0; i < SEEN_CNT; i++)
                if (seen[i].used && seen[i].gen == gen &&
                    key_eq(seen[i].key, key))
                        return 1;
        return 0;
}

/* Minimal big-endian reader over one request frame. */
struct rd {
        const unsigned char *p;
        size_t len, off;
        int bad;
};
static int32_t rd_i32(struct rd *r) {
        uint32_t v;
        if (r->off + 4 > r->len) {
                r->bad = 1;
                return 0;
        }
        v = ((uint32_t)r->p[r->off] << 24) | ((uint32_t)r->p[r->off + 1] << 16) |
            ((uint32_t)r->p[r->off + 2] << 8) | r->p[r->off + 3];
        r->off += 4;
        return (int32_t)v;
}
static int16_t rd_i16(struct rd *r) {
        uint16_t v;
        if (r->off + 2 > r->len) {
                r->bad = 1;
                return 0;
        }
        v = (uint16_t)((r->p[r->off] << 8) | r->p[r->off + 1]);
        r->off += 2;
        return (int16_t)v;
}
/* STRING / NULLABLE_STRING; returns pointer, *lenp = length (0 if null). */
static const char *rd_str(struct rd *r, size_t *lenp) {
        int16_t l = rd_i16(r);
        const char *s;
        *lenp = 0;
        if (r->bad || l < 0)
                return "";
        if (r->off + (size_t)l > r->len) {
                r->bad = 1;
                return "";
        }
        s = (const char *)r->p + r->off;
        r->off += (size_t)l;
        *lenp = (size_t)l;
        return s;
}

/*
 * Classify the complete frame at c->scanned.
 * Returns 1 if it must be held (a leader SyncGroup whose followers' SyncGroup
 * requests have not all been read by the mock yet), else 0.
 */
static int classify_frame(struct conn *c, size_t flen, int64_t now) {
        struct rd r = {c->buf + c->scanned + 4, flen, 0, 0};
        int16_t api_key, api_ver;
        size_t glen, mlen, l;
        const char *group, *member;
        int32_t gen, cnt, i;
        char key[300];
        int missing = 0;

        api_key = rd_i16(&r);
        api_ver = rd_i16(&r);
        if (r.bad || api_key != KAFKA_SYNCGROUP || api_ver < 0 || api_ver > 3)
                return 0; /* flexible versions (4+) are not offered by 2.0.2 */
        (void)rd_i32(&r);           /* CorrelationId */
        (void)rd_str(&r, &l);       /* ClientId */
        group  = rd_str(&r, &glen); /* GroupId */
        gen    = rd_i32(&r);        /* GenerationId */
        member = rd_str(&r, &mlen); /* MemberId */
        if (api_ver >= 3)
                (void)rd_str(&r, &l); /* GroupInstanceId */
        cnt = rd_i32(&r);
        if (r.bad)
                return 0;

        if (cnt <= 0) { /* follower: remember once the mock has read it */
                if (make_key(key, sizeof(key), group, glen, member, mlen))
                        return 0;
                if (c->pend_cnt < PEND_CNT) {
                        c->pend[c->pend_cnt].end = c->scanned + 4 + flen;
                        memcpy(c->pend[c->pend_cnt].key, key, sizeof(key));
                        c->pend[c->pend_cnt].gen = gen;
                        c->pend_cnt++;
                } else
                        seen_add(key, gen);
                return 0;
        }

        /* leader: are all other members' SyncGroups in? */
        for (i = 0; i < cnt && !r.bad; i++) {
                size_t olen;
                const char *other = rd_str(&r, &olen);
                int32_t blen      = rd_i32(&r); /* assignment BYTES */
                if (blen > 0) {
                        if (r.off + (size_t)blen > r.len)
                                r.bad = 1;
                        else
                                r.off += (size_t)blen;
                }
                if (r.bad)
                        break;
                if (olen == mlen && !memcmp(other, member, mlen))
                        continue; /* the leader itself */
                if (make_key(key, sizeof(key), group, glen, other, olen))
                        continue;
                if (!seen_has(key, gen))
                        missing++;
        }
        if (r.bad || !missing) {
                c->hold_since = 0;
                return 0;
        }
        if (!c->hold_since)
                c->hold_since = now;
        if (now - c->hold_since >= SYNC_HOLD_MS) {
                c->hold_since = 0;
                return 0;
        }
        return 1;
}

/* Split buffered bytes into frames, extending .deliverable up to a hold. */
static void conn_advance(struct conn *c, int64_t now) {
        while (c->scanned + 4 <= c->len) {
                const unsigned char *p = c->buf + c->scanned;
                uint32_t flen = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                                ((uint32_t)p[2] << 8) | p[3];
                if (flen > 0x7fffffff) { /* garbage: pass through */
                        c->scanned = c->deliverable = c->len;
                        return;
                }
                if (c->scanned + 4 + flen > c->len)
                        return; /* incomplete */
                if (sync_fix && classify_frame(c, flen, now))
                        return; /* held */
                c->scanned += 4 + flen;
                c->deliverable = c->scanned;
        }
}

static int conn_ready(const struct conn *c) {
        return c->deliverable > 0 || c->eof || c->err;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
        int r = (int)syscall(SYS_accept, fd, addr, len);
        if (r >= 0) {
                pthread_mutex_lock(&io_lock);
                conn_reset(r, r < MAX_CONNS);
                pthread_mutex_unlock(&io_lock);
        }
        return r;
}

int close(int fd) {
        if (fd >= 0 && fd < MAX_CONNS) {
                pthread_mutex_lock(&io_lock);
                if (conns[fd].used)
                        conn_reset(fd, 0);
                pthread_mutex_unlock(&io_lock);
        }
        return (int)syscall(SYS_close, fd);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
        struct conn *c;
        unsigned char tmp[65536];
        ssize_t n;
        size_t want, done = 0, i;
        int64_t now;

        pthread_mutex_lock(&io_lock);
        c = conn_get(fd);
        if (!c) {
                pthread_mutex_unlock(&io_lock);
                return (ssize_t)syscall(SYS_recvmsg, fd, msg, flags);
        }
        /* Drain the kernel buffer into ours. */
        while (!c->eof && !c->err) {
                n = (ssize_t)syscall(SYS_recvfrom, fd, tmp, sizeof(tmp),
                                     MSG_DONTWAIT, NULL, NULL);
                if (n > 0) {
                        if (c->len + (size_t)n > c->cap) {
                                size_t cap = c->cap ? c->cap : 65536;
                                unsigned char *nb;
                                while (cap < c->len + (size_t)n)
                                        cap *= 2;
                                nb = realloc(c->buf, cap);
                                if (!nb) {
                                        c->err = ENOMEM;
                                        break;
                                }
                                c->buf = nb;
                                c->cap = cap;
                        }
                        memcpy(c->buf + c->len, tmp, (size_t)n);
                        c->len += (size_t)n;
                } else if (n == 0)
                        c->eof = 1;
                else if (errno == EINTR)
                        continue;
                else {
                        if (errno != EAGAIN && errno != EWOULDBLOCK)
                                c->err = errno;
                        break;
                }
        }
        now = now_ms();
        conn_advance(c, now);

        if (c->deliverable == 0) {
                int eof = c->eof, err = c->err;
                pthread_mutex_unlock(&io_lock);
                if (err) {
                        errno = err;
                        return -1;
                }
                if (eof)
                        return 0;
                errno = EAGAIN;
                return -1;
        }

        /* Copy deliverable bytes into the caller's iovecs. */
        for (i = 0; i < msg->msg_iovlen && done < c->deliverable; i++) {
                want = msg->msg_iov[i].iov_len;
                if (want > c->deliverable - done)
                        want = c->deliverable - done;
                memcpy(msg->msg_iov[i].iov_base, c->buf + done, want);
                done += want;
        }
        memmove(c->buf, c->buf + done, c->len - done);
        c->len -= done;
        c->scanned -= done;
        c->deliverable -= done;
        /* Commit follower syncs the mock has now read completely. */
        {
                int j, k = 0;
                for (j = 0; j < c->pend_cnt; j++) {
                        if (c->pend[j].end <= done)
                                seen_add(c->pend[j].key, c->pend[j].gen);
                        else {
                                c->pend[k] = c->pend[j];
                                c->pend[k].end -= done;
                                k++;
                        }
                }
                c->pend_cnt = k;
        }
        msg->msg_flags = 0;
        pthread_mutex_unlock(&io_lock);
        return (ssize_t)done;
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout) {
        nfds_t i;
        int marked = 0, held = 0, r;
        unsigned char mark[1024];
        int64_t now = now_ms();

        pthread_mutex_lock(&io_lock);
        for (i = 0; i < nfds && i < sizeof(mark); i++) {
                struct conn *c = conn_get(fds[i].fd);
                mark[i]        = 0;
                if (!c)
                        continue;
                conn_advance(c, now); /* re-evaluates holds */
                if ((fds[i].events & POLLIN) && conn_ready(c)) {
                        mark[i] = 1;
                        marked++;
                }
                if (c->len > c->deliverable)
                        held++;
        }
        pthread_mutex_unlock(&io_lock);

        if (marked)
                timeout = 0;
        else if (held && (timeout < 0 || timeout > 20))
                timeout = 20;
        r = (int)syscall(SYS_poll, fds, nfds, timeout);
        if (r < 0 || !marked)
                return r;
        r = 0;
        for (i = 0; i < nfds; i++) {
                if (i < sizeof(mark) && mark[i])
                        fds[i].revents |= POLLIN;
                if (fds[i].revents)
                        r++;
        }
        return r;
}

/* ---- private struct access (controller id, auto-create defaults) ----- */

/*
 * librdkafka's struct rd_kafka_mock_cluster_s (src/rdkafka_mock_int.h) is
 * not installed. Its head has been stable since the mock was added (1.3):
 *
 *   char id[32]; rd_kafka_t *rk; int32_t controller_id; ...
 *   char *bootstraps; thrd_t thread; rd_kafka_q_t *ops;
 *   rd_socket_t wakeup_fds[2]; rd_bool_t run; int fd_cnt; int fd_size;
 *   struct pollfd *fds; rd_kafka_broker_t *dummy_rkb;
 *   struct { int partition_cnt; int replication_factor; } defaults; ...
 *
 * 2.0.2 never assigns controller_id, so Metadata reports controller 0, a
 * broker that does not exist; kafkajs sends InitProducerId (idempotent
 * producer) and admin requests to the controller and fails with
 * "Broker 0 not found". We patch the field, after checking the layout
 * against values we can observe through the public API.
 */
struct mock_head {
        char id[32];
        rd_kafka_t *rk;
        int32_t controller_id;
};

static int layout_ok(rd_kafka_mock_cluster_t *mc) {
        struct mock_head *h = (struct mock_head *)mc;
        return h->rk == rd_kafka_mock_cluster_handle(mc) &&
               memchr(h->id, '\0', sizeof(h->id)) != NULL &&
               (h->controller_id == 0 || h->controller_id == -1 ||
                h->controller_id == 1);
}

static void set_controller(rd_kafka_mock_cluster_t *mc, int32_t id) {
        __atomic_store_n(&((struct mock_head *)mc)->controller_id, id,
                         __ATOMIC_SEQ_CST);
}

/* Returns a pointer to defaults.partition_cnt or NULL if not found. */
static int *find_defaults(rd_kafka_mock_cluster_t *mc, int broker_cnt) {
        const char *bs = rd_kafka_mock_cluster_bootstraps(mc);
        char **p       = (char **)mc;
        int i;
        int rf = broker_cnt < 3 ? broker_cnt : 3;
        /* Find .bootstraps within the first 512 bytes. */
        for (i = 6; i < 64; i++) {
                if (p[i] == bs) {
                        int *d = (int *)((char *)&p[i] + 64);
                        if (d[0] == 4 && d[1] == rf)
                                return d;
                        return NULL;
                }
        }
        return NULL;
}

/* ---- main ------------------------------------------------------------- */

static volatile sig_atomic_t stop_flag = 0;
static void on_signal(int sig) {
        (void)sig;
        stop_flag = 1;
}

static void usage(void) {
        fprintf(stderr,
                "usage: mock-broker [--brokers N] [--port P] "
                "[--topic name:partitions]... [--default-partitions N] "
                "[--controller ID] [--debug mock,protocol] [--no-sync-fix] "
                "[--no-stdin]\n");
        exit(2);
}

static void reply(const char *fmt, const char *a, const char *b) {
        printf(fmt, a, b);
        fflush(stdout);
}

static void handle_cmd(rd_kafka_mock_cluster_t *mc, int broker_cnt,
                       char *line) {
        char cmd[32], arg[256];
        long n = 0;
        int cnt;
        rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;

        while (*line == ' ' || *line == '\t')
                line++;
        if (!*line)
                return;
        cnt = sscanf(line, "%31s %255s %ld", cmd, arg, &n);
        if (cnt < 2) {
                reply("ERR bad command: %s%s\n", line, "");
                return;
        }
        if (!strcmp(cmd, "DOWN"))
                err = rd_kafka_mock_broker_set_down(mc, atoi(arg));
        else if (!strcmp(cmd, "UP"))
                err = rd_kafka_mock_broker_set_up(mc, atoi(arg));
        else if (!strcmp(cmd, "RTT") && cnt == 3)
                err = rd_kafka_mock_broker_set_rtt(mc, atoi(arg), (int)n);
        else if (!strcmp(cmd, "TOPIC") && cnt == 3)
                err = rd_kafka_mock_topic_create(
                    mc, arg, (int)n, broker_cnt < 3 ? broker_cnt : 3);
        else if (!strcmp(cmd, "CONTROLLER")) {
                int id = atoi(arg);
                if (id < 1 || id > broker_cnt) {
                        reply("ERR no such broker: %s%s\n", arg, "");
                        return;
                }
                set_controller(mc, id);
        } else {
                reply("ERR unknown command: %s%s\n", line, "");
                return;
        }
        if (err)
                reply("ERR %s: %s\n", line, rd_kafka_err2str(err));
        else
                reply("OK %s%s\n", line, "");
}

int main(int argc, char **argv) {
        int broker_cnt = 1, port = 0, default_parts = 0, controller = 1;
        int use_stdin = 1;
        const char *debug = NULL;
        const char *topics[256];
        int topic_cnt = 0, i;
        char errstr[512];
        rd_kafka_conf_t *conf;
        rd_kafka_t *rk;
        rd_kafka_mock_cluster_t *mc;
        struct sigaction sa;
        char buf[4096];
        size_t buflen = 0;

        for (i = 1; i < argc; i++) {
                const char *a = argv[i];
                const char *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (!strcmp(a, "-h") || !strcmp(a, "--help"))
                        usage();
                if (!strcmp(a, "--no-sync-fix")) {
                        sync_fix = 0;
                        continue;
                }
                if (!strcmp(a, "--no-stdin")) {
                        use_stdin = 0;
                        continue;
                }
                if (!v)
                        usage();
                if (!strcmp(a, "--brokers"))
                        broker_cnt = atoi(v);
                else if (!strcmp(a, "--port"))
                        port = atoi(v);
                else if (!strcmp(a, "--default-partitions"))
                        default_parts = atoi(v);
                else if (!strcmp(a, "--controller"))
                        controller = atoi(v);
                else if (!strcmp(a, "--debug"))
                        debug = v;
                else if (!strcmp(a, "--topic") && topic_cnt < 256)
                        topics[topic_cnt++] = v;
                else
                        usage();
                i++;
        }
        if (broker_cnt < 1 || broker_cnt > 64 || port < 0 ||
            port + broker_cnt > 65536 || controller < 1 ||
            controller > broker_cnt)
                usage();

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal; /* no SA_RESTART: poll() gets EINTR */
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        conf = rd_kafka_conf_new();
        rd_kafka_conf_set(conf, "log_level", debug ? "7" : "3", NULL, 0);
        if (debug &&
            rd_kafka_conf_set(conf, "debug", debug, errstr, sizeof(errstr))) {
                fprintf(stderr, "mock-broker: --debug: %s\n", errstr);
                return 2;
        }
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk) {
                fprintf(stderr, "mock-broker: rd_kafka_new: %s\n", errstr);
                return 1;
        }

        /* librdkafka 2.0.2 asserts (abort) when a mock broker cannot bind,
         * so check the fixed ports first. */
        for (i = 0; port && i < broker_cnt; i++) {
                struct sockaddr_in sin;
                int one = 1, s = socket(AF_INET, SOCK_STREAM, 0), r;
                memset(&sin, 0, sizeof(sin));
                sin.sin_family      = AF_INET;
                sin.sin_port        = htons((uint16_t)(port + i));
                sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                r = (int)syscall(SYS_bind, s, &sin, sizeof(sin));
                close(s);
                if (r) {
                        fprintf(stderr,
                                "mock-broker: cannot listen on "
                                "127.0.0.1:%d: %s\n",
                                port + i, strerror(errno));
                        return 1;
                }
        }

        fixed_port_next = port;
        mc              = rd_kafka_mock_cluster_new(rk, broker_cnt);
        fixed_port_next = 0;
        if (!mc) {
                fprintf(stderr,
                        "mock-broker: rd_kafka_mock_cluster_new failed%s\n",
                        port ? " (ports in use?)" : "");
                return 1;
        }

        if (!layout_ok(mc)) {
                fprintf(stderr,
                        "mock-broker: unexpected rd_kafka_mock_cluster_t "
                        "layout (librdkafka %s); cannot set controller id\n",
                        rd_kafka_version_str());
                return 1;
        }
        set_controller(mc, controller);

        if (default_parts > 0) {
                int *d = find_defaults(mc, broker_cnt);
                if (!d) {
                        fprintf(stderr,
                                "mock-broker: cannot locate auto-create "
                                "defaults (librdkafka %s); "
                                "--default-partitions unsupported\n",
                                rd_kafka_version_str());
                        return 1;
                }
                __atomic_store_n(d, default_parts, __ATOMIC_SEQ_CST);
        }

        for (i = 0; i < topic_cnt; i++) {
                char name[256];
                const char *colon = strrchr(topics[i], ':');
                int parts         = colon ? atoi(colon + 1) : 1;
                size_t nlen =
                    colon ? (size_t)(colon - topics[i]) : strlen(topics[i]);
                rd_kafka_resp_err_t err;
                if (nlen == 0 || nlen >= sizeof(name) || parts < 1) {
                        fprintf(stderr, "mock-broker: bad --topic %s\n",
                                topics[i]);
                        return 2;
                }
                memcpy(name, topics[i], nlen);
                name[nlen] = '\0';
                err        = rd_kafka_mock_topic_create(
                    mc, name, parts, broker_cnt < 3 ? broker_cnt : 3);
                if (err) {
                        fprintf(stderr, "mock-broker: topic %s: %s\n", name,
                                rd_kafka_err2str(err));
                        return 1;
                }
        }

        printf("READY %s\n", rd_kafka_mock_cluster_bootstraps(mc));
        fflush(stdout);

        while (!stop_flag) {
                struct pollfd pfd = {.fd = use_stdin ? 0 : -1,
                                     .events = POLLIN};
                int r = (int)syscall(SYS_poll, &pfd, 1, 500);
                ssize_t n;
                char *nl;
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                if (r == 0)
                        continue;
                if (buflen >= sizeof(buf) - 1)
                        buflen = 0; /* overlong line: drop it */
                n = read(0, buf + buflen, sizeof(buf) - 1 - buflen);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break; /* EOF: parent gone */
                buflen += (size_t)n;
                buf[buflen] = '\0';
                while ((nl = memchr(buf, '\n', buflen))) {
                        size_t used = (size_t)(nl - buf) + 1;
                        *nl         = '\0';
                        if (nl > buf && nl[-1] == '\r')
                                nl[-1] = '\0';
                        handle_cmd(mc, broker_cnt, buf);
                        memmove(buf, buf + used, buflen - used);
                        buflen -= used;
                        buf[buflen] = '\0';
                }
        }

        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 0;
}
