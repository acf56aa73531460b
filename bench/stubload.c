/* stubload: a DNS load generator shaped like a pod's stub resolver.
 *
 * dnsperf sends from one thread and receives on another, so every answer wakes a second thread
 * however fast it came. A pod's resolver (glibc res_send, musl, c-ares, Go) does not: it sends,
 * then polls the same socket from the same thread, and an answer already queued when it polls costs
 * no sleep and no wake-up. That is the case a kernel answer creates (the reply is queued to the pod's
 * socket before sendmsg returns), and the one a userspace server never can. This tool sends that way:
 * one thread, one connected UDP socket, each send followed by draining the socket, then sleeping in
 * ppoll until the next send is due or an answer comes.
 *
 * Flags and output follow dnsperf 2.10's (the subset bench/dnsperf.py uses), so one parser reads
 * both: -s server -p port -d file ("name TYPE" per line) -l seconds [-Q qps] [-q outstanding]
 * [-t timeout_s] [-e] [-v] [-a local_addr] [-n passes] (-c and -T are accepted: always one of each).
 * With -v each answer's latency is kept and printed after the run, not while it runs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_QUERY 512
#define SLOTS 65536 /* one per DNS ID: at most `outstanding` (<= 1000) are in use */
#define RING 65536  /* queries in send order, for timing out the oldest first */

struct query {
	uint8_t wire[MAX_QUERY];
	uint16_t len;
};

struct slot {
	int64_t sent_ns; /* 0 = free */
	uint64_t seq;    /* which send holds it: a ring entry of an earlier use of the ID is stale */
	uint32_t query;  /* index into the query list, for -v */
};

struct sent {
	uint64_t seq;
	uint16_t id;
};

static const char *const RCODES[16] = {
	"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
	"NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static _Noreturn void die(const char *what)
{
	fprintf(stderr, "stubload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int qtype_code(const char *t)
{
	static const struct { const char *name; int code; } types[] = {
		{"A", 1}, {"NS", 2}, {"CNAME", 5}, {"SOA", 6}, {"PTR", 12}, {"MX", 15},
		{"TXT", 16}, {"AAAA", 28}, {"SRV", 33}, {"ANY", 255},
	};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (!strcasecmp(t, types[i].name))
			return types[i].code;
	return -1;
}

/* A query as a stub sends it: RD set, one question, an OPT record (4096 bytes) when edns. */
static int encode(struct query *q, const char *name, int qtype, int edns)
{
	uint8_t *p = q->wire + 12;
	const char *label = name;

	memset(q->wire, 0, 12);
	q->wire[2] = 0x01; /* RD */
	q->wire[5] = 1;    /* QDCOUNT */
	while (*label && strcmp(label, ".")) {
		const char *dot = strchr(label, '.');
		size_t n = dot ? (size_t)(dot - label) : strlen(label);

		if (n == 0 || n > 63 || p + n + 1 > q->wire + MAX_QUERY - 16)
			return -1;
		*p++ = (uint8_t)n;
		memcpy(p, label, n);
		p += n;
		label = dot ? dot + 1 : label + n;
	}
	*p++ = 0;
	*p++ = (uint8_t)(qtype >> 8);
	*p++ = (uint8_t)qtype;
	*p++ = 0;
	*p++ = 1; /* IN */
	if (edns) {
		static const uint8_t opt[11] = {0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0};

		memcpy(p, opt, sizeof(opt));
		p += sizeof(opt);
		q->wire[11] = 1; /* ARCOUNT */
	}
	q->len = (uint16_t)(p - q->wire);
	return 0;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	const char *server = "127.0.0.1", *datafile = NULL, *local = NULL;
	int port = 53, edns = 0, verbose = 0, opt;
	long rate = 0, outstanding = 100, passes = 0;
	double seconds = 10, timeout_s = 5;

	while ((opt = getopt(argc, argv, "s:p:d:l:Q:q:t:eva:n:c:T:")) != -1) {
		switch (opt) {
		case 's': server = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'd': datafile = optarg; break;
		case 'l': seconds = atof(optarg); break;
		case 'Q': rate = atol(optarg); break;
		case 'q': outstanding = atol(optarg); break;
		case 't': timeout_s = atof(optarg); break;
		case 'e': edns = 1; break;
		case 'v': verbose = 1; break;
		case 'a': local = optarg; break;
		case 'n': passes = atol(optarg); break;
		case 'c': case 'T': break;
		default:
			fprintf(stderr, "usage: stubload -s server -p port -d file -l seconds [-Q qps] [-q n] [-t s] [-e] [-v] [-a addr] [-n passes]\n");
			return 2;
		}
	}
	if (!datafile || outstanding < 1 || outstanding > 1000 || seconds <= 0) {
		fprintf(stderr, "stubload: need -d, 1 <= -q <= 1000, -l > 0\n");
		return 2;
	}

	/* The queries, and the names and types again for -v's lines. */
	FILE *f = fopen(datafile, "r");
	if (!f)
		die(datafile);
	size_t nq = 0, cap = 1024;
	struct query *queries = malloc(cap * sizeof(*queries));
	char (*labels)[300] = malloc(cap * sizeof(*labels));
	char line[512], name[256], type[16];
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%255s %15s", name, type) != 2 || name[0] == '#')
			continue;
		int code = qtype_code(type);
		if (nq == cap) {
			cap *= 2;
			queries = realloc(queries, cap * sizeof(*queries));
			labels = realloc(labels, cap * sizeof(*labels));
		}
		if (!queries || !labels)
			die("realloc");
		if (code < 0 || encode(&queries[nq], name, code, edns) < 0) {
			fprintf(stderr, "stubload: cannot encode %s %s\n", name, type);
			return 2;
		}
		snprintf(labels[nq], sizeof(labels[nq]), "%s %s", name, type);
		nq++;
	}
	fclose(f);
	if (!nq) {
		fprintf(stderr, "stubload: no queries in %s\n", datafile);
		return 2;
	}

	/* ppoll's timeout would otherwise be rounded up by the default 50 us timer slack: at 10,000 qps
	 * that is half the interval between sends. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

	struct sockaddr_in6 dst6 = {0};
	struct sockaddr_in dst4 = {0};
	int family = inet_pton(AF_INET, server, &dst4.sin_addr) == 1 ? AF_INET : AF_INET6;
	int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		die("socket");
	if (local) {
		struct sockaddr_in6 l6 = {.sin6_family = AF_INET6};
		struct sockaddr_in l4 = {.sin_family = AF_INET};
		int ok = family == AF_INET ? inet_pton(AF_INET, local, &l4.sin_addr) : inet_pton(AF_INET6, local, &l6.sin6_addr);

		if (ok != 1 || (family == AF_INET ? bind(fd, (struct sockaddr *)&l4, sizeof(l4))
						  : bind(fd, (struct sockaddr *)&l6, sizeof(l6))) < 0)
			die("bind -a");
	}
	if (family == AF_INET) {
		dst4.sin_family = AF_INET;
		dst4.sin_port = htons((uint16_t)port);
		if (connect(fd, (struct sockaddr *)&dst4, sizeof(dst4)) < 0)
			die("connect");
	} else {
		dst6.sin6_family = AF_INET6;
		dst6.sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, server, &dst6.sin6_addr) != 1) {
			fprintf(stderr, "stubload: bad server address %s\n", server);
			return 2;
		}
		if (connect(fd, (struct sockaddr *)&dst6, sizeof(dst6)) < 0)
			die("connect");
	}

	struct slot *slots = calloc(SLOTS, sizeof(*slots));
	struct sent *ring = calloc(RING, sizeof(*ring));
	uint64_t head = 0; /* ring[head % RING .. sent % RING): sends not yet answered, timed out or stale */
	size_t lat_cap = verbose ? 1 << 20 : 0, nlat = 0;
	int64_t *lat = verbose ? malloc(lat_cap * sizeof(*lat)) : NULL;
	uint32_t *lat_q = verbose ? malloc(lat_cap * sizeof(*lat_q)) : NULL;
	uint8_t *lat_rc = verbose ? malloc(lat_cap) : NULL;
	if (!slots || !ring || (verbose && (!lat || !lat_q || !lat_rc)))
		die("malloc");

	uint64_t sent = 0, completed = 0, lost = 0, rcodes[16] = {0};
	int64_t sum_lat = 0, in_flight = 0;
	long double sum_sq = 0;
	const int64_t start = now_ns(), end = start + (int64_t)(seconds * 1e9);
	const int64_t timeout_ns = (int64_t)(timeout_s * 1e9);
	const int64_t interval = rate > 0 ? 1000000000 / rate : 0;
	int64_t next_send = start;
	uint16_t next_id = (uint16_t)(start ^ getpid());
	uint8_t buf[4096];
	int sending = 1;

	for (;;) {
		int64_t t = now_ns();

		if (sending && (t >= end || (passes && sent >= (uint64_t)passes * nq)))
			sending = 0;
		if (!sending && in_flight == 0)
			break;
		if (!sending && t >= end + timeout_ns)
			break;
		/* Send what is due: at a rate, one query per interval (catching up if late, as dnsperf
		 * does); saturated, as many as the outstanding limit allows. */
		while (sending && in_flight < outstanding && (!interval || t >= next_send)) {
			uint16_t id = next_id;
			struct query *q = &queries[sent % nq];

			while (slots[id].sent_ns)
				id++;
			next_id = (uint16_t)(id + 1);
			q->wire[0] = (uint8_t)(id >> 8);
			q->wire[1] = (uint8_t)id;
			if (send(fd, q->wire, q->len, 0) < 0) {
				if (errno == EAGAIN || errno == ENOBUFS || errno == ECONNREFUSED)
					break;
				die("send");
			}
			slots[id].sent_ns = t;
			slots[id].seq = sent;
			slots[id].query = (uint32_t)(sent % nq);
			ring[sent % RING] = (struct sent){.seq = sent, .id = id};
			sent++;
			in_flight++;
			next_send += interval;
			if (!interval)
				t = now_ns();
		}
		/* Drain: an answer already queued costs no wait. */
		for (;;) {
			ssize_t n = recv(fd, buf, sizeof(buf), 0);

			if (n < 0) {
				if (errno == EAGAIN || errno == ECONNREFUSED)
					break;
				die("recv");
			}
			if (n < 12 || !(buf[2] & 0x80))
				continue;
			uint16_t id = (uint16_t)(buf[0] << 8 | buf[1]);
			if (!slots[id].sent_ns)
				continue; /* late: already counted lost */
			int64_t d = now_ns() - slots[id].sent_ns;
			int rc = buf[3] & 0x0f;

			rcodes[rc]++;
			completed++;
			in_flight--;
			sum_lat += d;
			sum_sq += (long double)d * d;
			if (verbose && nlat < lat_cap) {
				lat[nlat] = d;
				lat_q[nlat] = slots[id].query;
				lat_rc[nlat] = (uint8_t)rc;
				nlat++;
			}
			slots[id].sent_ns = 0;
		}
		t = now_ns();
		/* Time out what waited too long, oldest first. A ring full of answered sends behind one
		 * still waiting (RING sends within one timeout) gives that one up as lost. */
		while (head < sent) {
			struct sent e = ring[head % RING];
			struct slot *sl = &slots[e.id];

			if (sl->sent_ns && sl->seq == e.seq) {
				if (t - sl->sent_ns <= timeout_ns && sent - head < RING)
					break;
				sl->sent_ns = 0;
				lost++;
				in_flight--;
			}
			head++;
		}
		/* Sleep until an answer comes or the next send is due (saturated and below the outstanding
		 * limit: due now, no sleep); at most 10 ms, to time out what is waiting. */
		int64_t wake = t + 10000000;
		if (sending && in_flight < outstanding)
			wake = interval ? next_send : t;
		if (wake > t) {
			struct pollfd pfd = {.fd = fd, .events = POLLIN};
			int64_t w = wake - t;
			struct timespec ts = {.tv_sec = w / 1000000000, .tv_nsec = w % 1000000000};

			if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR)
				die("ppoll");
		}
	}
	int64_t stop = now_ns();
	double run_s = (double)(stop - start) / 1e9;

	lost += (uint64_t)in_flight;
	if (verbose) {
		for (size_t i = 0; i < nlat; i++)
			printf("> %s %s %.6f\n", RCODES[lat_rc[i]], labels[lat_q[i]], (double)lat[i] / 1e9);
		qsort(lat, nlat, sizeof(*lat), cmp_i64);
	}
	double avg = completed ? (double)sum_lat / completed / 1e9 : 0;
	double var = completed > 1 ? (double)(sum_sq / completed) / 1e18 - avg * avg : 0;

	printf("Statistics:\n\n");
	printf("  Queries sent:         %llu\n", (unsigned long long)sent);
	printf("  Queries completed:    %llu (%.2f%%)\n", (unsigned long long)completed,
	       sent ? 100.0 * completed / sent : 0.0);
	printf("  Queries lost:         %llu (%.2f%%)\n\n", (unsigned long long)lost, sent ? 100.0 * lost / sent : 0.0);
	printf("  Response codes:       ");
	for (int i = 0, first = 1; i < 16; i++) {
		if (!rcodes[i])
			continue;
		printf("%s%s %llu (%.2f%%)", first ? "" : ", ", RCODES[i], (unsigned long long)rcodes[i],
		       100.0 * rcodes[i] / completed);
		first = 0;
	}
	printf("\n  Run time (s):         %.6f\n", run_s);
	printf("  Queries per second:   %.6f\n\n", run_s > 0 ? completed / run_s : 0.0);
	printf("  Average Latency (s):  %.6f\n", avg);
	printf("  Latency StdDev (s):   %.6f\n", var > 0 ? sqrt(var) : 0.0);
	return 0;
}
