/*
 * mock-broker: a Kafka-protocol broker for tests, backed by librdkafka's
 * built-in mock cluster (rdkafka_mock.h). Listens on 127.0.0.1.
 *
 *   mock-broker [--brokers N] [--port P] [--topic name:partitions]...
 *               [--default-partitions N] [--controller ID]
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
 * parent never leaves it orphaned).
 *
 * --port P makes broker i listen on P+i-1 (librdkafka 2.0.2 only binds to
 * port 0, so bind() is interposed below while the cluster is created).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
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
                "[--controller ID]\n");
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
        rd_kafka_conf_set(conf, "log_level", "3", NULL, 0);
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk) {
                fprintf(stderr, "mock-broker: rd_kafka_new: %s\n", errstr);
                return 1;
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
                struct pollfd pfd = {.fd = 0, .events = POLLIN};
                int r             = poll(&pfd, 1, 500);
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
