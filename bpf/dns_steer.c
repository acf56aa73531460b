/* Socket-level steering on the cgroup sock_addr hooks: pods' DNS to the node-local responder, and
 * ServiceEntry VIPs to their backends.
 *
 * DNS. connect/sendmsg: a UDP or TCP socket of an enrolled pod that targets port 53 of a DNS
 * service address (kube-dns ClusterIPs, or any address in capture-all mode) is pointed at the
 * responder instead. Nothing is steered (fail-open) while no responder socket of the query's kind
 * is open (na_socks: the kernel drops a socket from it as it closes, so a killed agent stops getting
 * queries at once) or while the agent's heartbeat is stale (alive but stuck), so a dead agent never
 * leaves pods without DNS: their queries go to kube-dns as if we were not there.
 *
 * VIPs. Pods resolve ServiceEntry hosts to VIPs (240.240.0.0/16, 2001:2::/48) that exist nowhere
 * on the network; connect/sendmsg to VIP:port picks a backend (per connection, per UDP socket) and
 * rewrites the destination, the way a socket load balancer does. A VIP with no backend fails the
 * connect at once with ECONNREFUSED (EPERM on kernels without bpf_set_retval, see refuse())
 * instead of hanging. VIPs keep working from the last known
 * backends while the agent restarts.
 *
 * Both remember the original destination by socket cookie; recvmsg/getpeername show it again, so
 * glibc accepts DNS answers and applications see the VIP they dialled.
 *
 * PIN_DIR is set by the loader; every map is pinned there so a restarted agent adopts the state.
 * NA_HAVE_SOCKET_LOOKUP (set by the loader where the verifier takes a sockmap lookup in these
 * programs: kernel/features.py) puts the socket check in; without it fail-open waits for the
 * heartbeat bound.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/errno.h>
#include "dns_steer.h"

#define PINNED(name) PIN_DIR "/" #name

BPF_TABLE_PINNED("array", u32, struct na_config, na_config, 1, PINNED(na_config));
BPF_TABLE_PINNED("array", u32, struct na_heartbeat, na_heartbeat, 1, PINNED(na_heartbeat));
BPF_TABLE_PINNED("hash", u32, u8, na_dns4, 256, PINNED(na_dns4));
BPF_TABLE_PINNED("hash", struct na_ip6, u8, na_dns6, 256, PINNED(na_dns6));
BPF_TABLE_PINNED("hash", u64, struct na_pod, na_pods, 65536, PINNED(na_pods));
BPF_TABLE_PINNED("lru_hash", u64, struct na_orig, na_orig, 65536, PINNED(na_orig));
BPF_TABLE_PINNED("percpu_array", u32, u64, na_stats, NA_STAT_MAX, PINNED(na_stats));
BPF_TABLE_PINNED("array", u32, struct na_state, na_state, 1, PINNED(na_state));
BPF_TABLE_PINNED("hash", struct na_vip_key, struct na_vip, na_vips, NA_MAX_VIPS, PINNED(na_vips));
BPF_TABLE_PINNED("hash", struct na_backend_key, struct na_backend, na_backends, NA_MAX_BACKENDS,
                 PINNED(na_backends));
BPF_TABLE_PINNED("hash", u32, struct na_vip_stats, na_vip_stats, NA_MAX_VIPS, PINNED(na_vip_stats));
/* Values are written as socket fds and read back (from user space) as socket cookies. */
BPF_TABLE_PINNED("sockmap", u32, u64, na_socks, NA_SOCK_MAX, PINNED(na_socks));
BPF_TABLE_PINNED("percpu_array", u32, u64, na_causes, NA_CAUSE_MAX, PINNED(na_causes));
BPF_TABLE_PINNED("array", u32, struct na_agent, na_agent, 1, PINNED(na_agent));

static __always_inline void count(u32 idx) {
    u64 *v = na_stats.lookup(&idx);
    if (v)
        (*v)++;  /* per-CPU: no atomics needed */
}

/* ---- DNS steering ------------------------------------------------------------------------- */

/* The enrolled pod this task belongs to: the first ancestor cgroup found in na_pods. */
static __always_inline struct na_pod *current_pod(void) {
#pragma unroll
    for (int level = 1; level <= NA_MAX_CGROUP_LEVEL; level++) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id)
            return 0;
        struct na_pod *pod = na_pods.lookup(&id);
        if (pod)
            return pod;
    }
    return 0;
}

/* Whether a responder socket of this kind (NA_SOCK_*) is open. The reference a lookup takes is
 * released at once: the answer is all we need. */
static __always_inline int responder_open(u32 kind) {
#ifdef NA_HAVE_SOCKET_LOOKUP
    struct bpf_sock *sk = (struct bpf_sock *)na_socks.lookup(&kind);
    if (!sk)
        return 0;
    bpf_sk_release(sk);
#endif
    return 1;
}

/* NA_CAUSE_NONE when the agent can take this query, else why not. The socket comes first: after a
 * kill it is gone at once, while the heartbeat still looks fresh for up to its bound. */
static __always_inline u32 failopen_cause(const struct na_config *cfg, u32 kind) {
    if ((cfg->flags & NA_SOCKET_CHECK) && !responder_open(kind))
        return NA_CAUSE_NO_SOCKET;
    u32 zero = 0;
    struct na_heartbeat *hb = na_heartbeat.lookup(&zero);
    if (!hb || !hb->mono_ns)
        return NA_CAUSE_STOPPED;
    if (bpf_ktime_get_ns() - hb->mono_ns > cfg->stale_after_ns)
        return NA_CAUSE_STALE;
    return NA_CAUSE_NONE;
}

static __always_inline int agent_alive(const struct na_config *cfg, u32 kind) {
    u32 cause = failopen_cause(cfg, kind);
    u32 zero = 0;
    struct na_state *st = na_state.lookup(&zero);
    /* Flipped: count the transition (twice when two CPUs see it at the same instant: there is no
     * atomic exchange on 5.10, and a rare double count is cheaper than a lock per query). */
    if (st && st->failed_open != (cause != NA_CAUSE_NONE)) {
        st->failed_open = cause != NA_CAUSE_NONE;
        if (cause != NA_CAUSE_NONE) {
            st->cause = cause;
            count(NA_STAT_FAILOPEN_START);
            u64 *n = na_causes.lookup(&cause);
            if (n)
                (*n)++;
        } else {
            count(NA_STAT_FAILOPEN_END);
        }
    }
    return cause == NA_CAUSE_NONE;
}

/* Decide for one DNS-bound socket; 1 = steer. The caller has matched port and address; kind is the
 * responder socket (NA_SOCK_*) the query would reach. */
static __always_inline int should_steer(const struct na_config *cfg, u32 kind) {
    struct na_pod *pod = current_pod();
    if (!pod) {
        count(NA_STAT_UNENROLLED);  /* the agent itself and node daemons land here: no loops */
        return 0;
    }
    if (pod->flags & NA_POD_OPT_OUT) {
        count(NA_STAT_OPT_OUT);
        return 0;
    }
    if (!agent_alive(cfg, kind)) {
        __sync_fetch_and_add(&pod->failopen, 1);
        count(NA_STAT_FAILOPEN);
        return 0;
    }
    __sync_fetch_and_add(&pod->steered, 1);
    count(NA_STAT_STEERED);
    return 1;
}

/* Record where the socket's datagrams really go, unless that is recorded already: a socket sends
 * to one server over and over (every unconnected sendmsg comes through here), and an LRU update
 * costs far more than the lookup. na_orig is whole words, its padding zero. */
_Static_assert(sizeof(struct na_orig) % 8 == 0, "na_orig is compared word by word");

static __always_inline void remember_for(u64 cookie, const struct na_orig *orig) {
    const u64 *prev = (const u64 *)na_orig.lookup(&cookie);
    const u64 *w = (const u64 *)orig;
    if (prev) {
        int same = 1;
#pragma unroll
        for (int i = 0; i < (int)(sizeof(*orig) / 8); i++)
            same &= prev[i] == w[i];
        if (same)
            return;
    }
    na_orig.update(&cookie, orig);
}

static __always_inline void remember(struct bpf_sock_addr *ctx, struct na_orig *orig) {
    remember_for(bpf_get_socket_cookie(ctx), orig);
}

/* ---- VIPs --------------------------------------------------------------------------------- */

/* Refuse a connect/sendmsg to a VIP: the caller returns 0, which fails the call at once. With
 * bpf_set_retval (Linux 5.18; the loader defines NA_HAVE_SET_RETVAL where the kernel has it, see
 * node_agent/kernel/features.py) it fails with ECONNREFUSED, as a host without the port would; a
 * verdict of 0 alone fails it with EPERM. The verifier rejects a program calling a helper the
 * kernel lacks, even on a path never taken, hence a macro rather than a runtime check. */
#ifdef NA_HAVE_SET_RETVAL
#define refuse() bpf_set_retval(-ECONNREFUSED)
#else
#define refuse() ((void)0)
#endif

/* Translate a VIP destination. Returns -1 when the destination is no VIP (the caller goes on to DNS
 * steering), 1 when it was rewritten to a backend, 0 to refuse the connect/sendmsg (refuse())
 * (no backend, or the slot drawn is gone because its block is being freed). The caller passes 0 or 1
 * on as the hook's verdict. */
static __always_inline int vip_translate(struct bpf_sock_addr *ctx, struct na_vip_key *key, int sticky,
                                         const int v6) {
    struct na_vip *vip = na_vips.lookup(key);
    if (!vip)
        return -1;  /* not a VIP */
    u32 id = vip->id;
    struct na_vip_stats *vs = na_vip_stats.lookup(&id);
    if (!vip->count) {
        if (vs)
            __sync_fetch_and_add(&vs->no_backend, 1);
        count(NA_STAT_VIP_NO_BACKEND);
        refuse();
        return 0;
    }
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct na_orig *prev = sticky ? na_orig.lookup(&cookie) : 0;
    struct na_backend be_copy = {};
    struct na_backend *be = 0;
    if (prev && prev->port == key->port && prev->addr[0] == key->addr[0] && prev->addr[1] == key->addr[1] &&
        prev->addr[2] == key->addr[2] && prev->addr[3] == key->addr[3]) {
        /* UDP: one backend per socket, so replies and later datagrams stay with one server. */
        __builtin_memcpy(be_copy.addr, prev->to, sizeof(be_copy.addr));
        be_copy.port = prev->to_port;
        be = &be_copy;
    } else {
        struct na_backend_key bk = {.id = id, .slot = bpf_get_prandom_u32() % vip->count};
        be = na_backends.lookup(&bk);
        if (!be) {  /* the agent is shrinking the set right now: refuse rather than guess */
            count(NA_STAT_VIP_NO_BACKEND);
            refuse();
            return 0;
        }
        if (vs)
            __sync_fetch_and_add(&vs->connections, 1);
        count(NA_STAT_VIP);
    }
    struct na_orig orig = {.port = key->port, .to_port = be->port, .family = key->family};
    __builtin_memcpy(orig.addr, key->addr, sizeof(orig.addr));
    __builtin_memcpy(orig.to, be->addr, sizeof(orig.to));
    remember_for(cookie, &orig);
    if (!v6) {  /* a constant: the verifier rejects user_ip6 in IPv4 hooks even on a dead path */
        ctx->user_ip4 = be->addr[0];
    } else {
        ctx->user_ip6[0] = be->addr[0];
        ctx->user_ip6[1] = be->addr[1];
        ctx->user_ip6[2] = be->addr[2];
        ctx->user_ip6[3] = be->addr[3];
    }
    ctx->user_port = be->port;
    return 1;
}

/* ---- connect / sendmsg -------------------------------------------------------------------- */

static __always_inline int steer4(struct bpf_sock_addr *ctx, int sticky) {
    struct na_vip_key key = {.addr = {ctx->user_ip4}, .port = ctx->user_port, .proto = ctx->protocol,
                             .family = AF_INET};
    int vip = vip_translate(ctx, &key, sticky, 0);
    if (vip >= 0)
        return vip;
    if (ctx->user_port != bpf_htons(53))
        return 1;
    u32 zero = 0;
    struct na_config *cfg = na_config.lookup(&zero);
    if (!cfg || !cfg->responder4)
        return 1;
    u32 dst = ctx->user_ip4;
    if (dst == cfg->responder4)
        return 1;
    if (!(cfg->flags & NA_CAPTURE_ALL) && !na_dns4.lookup(&dst))
        return 1;
    if (!should_steer(cfg, ctx->protocol == IPPROTO_TCP ? NA_SOCK_TCP4 : NA_SOCK_UDP4))
        return 1;
    struct na_orig orig = {.addr = {dst}, .to = {cfg->responder4}, .port = ctx->user_port,
                           .to_port = cfg->responder_port, .family = AF_INET};
    remember(ctx, &orig);
    ctx->user_ip4 = cfg->responder4;
    ctx->user_port = cfg->responder_port;
    return 1;
}

static __always_inline int is_v4_mapped(const u32 a[4]) {
    return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

static __always_inline int steer6(struct bpf_sock_addr *ctx, int sticky) {
    struct na_vip_key key = {.port = ctx->user_port, .proto = ctx->protocol, .family = AF_INET6};
    key.addr[0] = ctx->user_ip6[0];
    key.addr[1] = ctx->user_ip6[1];
    key.addr[2] = ctx->user_ip6[2];
    key.addr[3] = ctx->user_ip6[3];
    int vip = vip_translate(ctx, &key, sticky, 1);
    if (vip >= 0)
        return vip;
    if (ctx->user_port != bpf_htons(53))
        return 1;
    u32 zero = 0;
    struct na_config *cfg = na_config.lookup(&zero);
    if (!cfg)
        return 1;
    struct na_orig orig = {.port = ctx->user_port, .to_port = cfg->responder_port, .family = AF_INET6};
    __builtin_memcpy(orig.addr, key.addr, sizeof(orig.addr));
    if (is_v4_mapped(key.addr)) {
        /* A dual-stack socket asking an IPv4 server: steer to the IPv4 responder, still mapped. */
        u32 v4 = key.addr[3];
        if (!cfg->responder4 || v4 == cfg->responder4)
            return 1;
        if (!(cfg->flags & NA_CAPTURE_ALL) && !na_dns4.lookup(&v4))
            return 1;
        if (!should_steer(cfg, ctx->protocol == IPPROTO_TCP ? NA_SOCK_TCP4 : NA_SOCK_UDP4))
            return 1;
        orig.to[2] = key.addr[2];
        orig.to[3] = cfg->responder4;
        remember(ctx, &orig);
        ctx->user_ip6[3] = cfg->responder4;
        ctx->user_port = cfg->responder_port;
        return 1;
    }
    if (!(cfg->responder6[0] | cfg->responder6[1] | cfg->responder6[2] | cfg->responder6[3]))
        return 1;
    if (key.addr[0] == cfg->responder6[0] && key.addr[1] == cfg->responder6[1] &&
        key.addr[2] == cfg->responder6[2] && key.addr[3] == cfg->responder6[3])
        return 1;
    struct na_ip6 dst = {};
    __builtin_memcpy(dst.addr, key.addr, sizeof(dst.addr));
    if (!(cfg->flags & NA_CAPTURE_ALL) && !na_dns6.lookup(&dst))
        return 1;
    if (!should_steer(cfg, ctx->protocol == IPPROTO_TCP ? NA_SOCK_TCP6 : NA_SOCK_UDP6))
        return 1;
    __builtin_memcpy(orig.to, cfg->responder6, sizeof(orig.to));
    remember(ctx, &orig);
    ctx->user_ip6[0] = cfg->responder6[0];
    ctx->user_ip6[1] = cfg->responder6[1];
    ctx->user_ip6[2] = cfg->responder6[2];
    ctx->user_ip6[3] = cfg->responder6[3];
    ctx->user_port = cfg->responder_port;
    return 1;
}

/* ---- recvmsg / getpeername: show the address the app asked -------------------------------- */

static __always_inline int restore4(struct bpf_sock_addr *ctx) {
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct na_orig *orig = na_orig.lookup(&cookie);
    if (!orig || orig->family != AF_INET || ctx->user_ip4 != orig->to[0] || ctx->user_port != orig->to_port)
        return 1;
    ctx->user_ip4 = orig->addr[0];
    ctx->user_port = orig->port;
    count(NA_STAT_RESTORED);
    return 1;
}

static __always_inline int restore6(struct bpf_sock_addr *ctx) {
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct na_orig *orig = na_orig.lookup(&cookie);
    if (!orig || orig->family != AF_INET6 || ctx->user_port != orig->to_port ||
        ctx->user_ip6[0] != orig->to[0] || ctx->user_ip6[1] != orig->to[1] ||
        ctx->user_ip6[2] != orig->to[2] || ctx->user_ip6[3] != orig->to[3])
        return 1;
    ctx->user_ip6[0] = orig->addr[0];
    ctx->user_ip6[1] = orig->addr[1];
    ctx->user_ip6[2] = orig->addr[2];
    ctx->user_ip6[3] = orig->addr[3];
    ctx->user_port = orig->port;
    count(NA_STAT_RESTORED);
    return 1;
}

int na_connect4(struct bpf_sock_addr *ctx) { return steer4(ctx, 0); }
int na_sendmsg4(struct bpf_sock_addr *ctx) { return steer4(ctx, 1); }
int na_recvmsg4(struct bpf_sock_addr *ctx) { return restore4(ctx); }
int na_getpeername4(struct bpf_sock_addr *ctx) { return restore4(ctx); }
int na_connect6(struct bpf_sock_addr *ctx) { return steer6(ctx, 0); }
int na_sendmsg6(struct bpf_sock_addr *ctx) { return steer6(ctx, 1); }
int na_recvmsg6(struct bpf_sock_addr *ctx) { return restore6(ctx); }
int na_getpeername6(struct bpf_sock_addr *ctx) { return restore6(ctx); }
