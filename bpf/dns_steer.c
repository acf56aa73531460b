/* Steer pods' DNS to the node-local responder (cgroup sock_addr hooks).
 *
 * connect/sendmsg: a UDP or TCP socket of an enrolled pod that targets port 53 of a DNS service
 * address (kube-dns ClusterIPs, or any address in capture-all mode) is pointed at the responder
 * instead, and the original destination is remembered by socket cookie. recvmsg/getpeername: replies
 * from the responder are shown as coming from that original destination, so glibc and musl accept
 * them. Nothing is steered while the agent's heartbeat is stale (fail-open), so a dead agent never
 * leaves pods without DNS: their queries go to kube-dns as if we were not there.
 *
 * PIN_DIR is set by the loader; every map is pinned there so a restarted agent adopts the state.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include "dns_steer.h"

#define PINNED(name) PIN_DIR "/" #name

BPF_TABLE_PINNED("array", u32, struct na_config, na_config, 1, PINNED(na_config));
BPF_TABLE_PINNED("array", u32, struct na_heartbeat, na_heartbeat, 1, PINNED(na_heartbeat));
BPF_TABLE_PINNED("hash", u32, u8, na_dns4, 256, PINNED(na_dns4));
BPF_TABLE_PINNED("hash", struct na_ip6, u8, na_dns6, 256, PINNED(na_dns6));
BPF_TABLE_PINNED("hash", u64, struct na_pod, na_pods, 65536, PINNED(na_pods));
BPF_TABLE_PINNED("lru_hash", u64, struct na_orig, na_orig, 65536, PINNED(na_orig));
BPF_TABLE_PINNED("percpu_array", u32, u64, na_stats, NA_STAT_MAX, PINNED(na_stats));

static __always_inline void count(u32 idx) {
    u64 *v = na_stats.lookup(&idx);
    if (v)
        (*v)++;  /* per-CPU: no atomics needed */
}

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

static __always_inline int agent_alive(const struct na_config *cfg) {
    u32 zero = 0;
    struct na_heartbeat *hb = na_heartbeat.lookup(&zero);
    if (!hb || !hb->mono_ns)
        return 0;
    return bpf_ktime_get_ns() - hb->mono_ns <= cfg->stale_after_ns;
}

/* Decide for one DNS-bound socket; 1 = steer. The caller has matched port and address. */
static __always_inline int should_steer(const struct na_config *cfg) {
    struct na_pod *pod = current_pod();
    if (!pod) {
        count(NA_STAT_UNENROLLED);  /* the agent itself and node daemons land here: no loops */
        return 0;
    }
    if (pod->flags & NA_POD_OPT_OUT) {
        count(NA_STAT_OPT_OUT);
        return 0;
    }
    if (!agent_alive(cfg)) {
        __sync_fetch_and_add(&pod->failopen, 1);
        count(NA_STAT_FAILOPEN);
        return 0;
    }
    __sync_fetch_and_add(&pod->steered, 1);
    count(NA_STAT_STEERED);
    return 1;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, struct na_orig *orig) {
    u64 cookie = bpf_get_socket_cookie(ctx);
    na_orig.update(&cookie, orig);
}

static __always_inline int steer4(struct bpf_sock_addr *ctx) {
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
    if (!should_steer(cfg))
        return 1;
    struct na_orig orig = {.addr = {dst}, .port = ctx->user_port, .family = AF_INET};
    remember(ctx, &orig);
    ctx->user_ip4 = cfg->responder4;
    ctx->user_port = cfg->responder_port;
    return 1;
}

static __always_inline int is_v4_mapped(const u32 a[4]) {
    return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

static __always_inline int steer6(struct bpf_sock_addr *ctx) {
    if (ctx->user_port != bpf_htons(53))
        return 1;
    u32 zero = 0;
    struct na_config *cfg = na_config.lookup(&zero);
    if (!cfg)
        return 1;
    struct na_ip6 dst = {};
    dst.addr[0] = ctx->user_ip6[0];
    dst.addr[1] = ctx->user_ip6[1];
    dst.addr[2] = ctx->user_ip6[2];
    dst.addr[3] = ctx->user_ip6[3];
    struct na_orig orig = {.port = ctx->user_port, .family = AF_INET6};
    __builtin_memcpy(orig.addr, dst.addr, sizeof(orig.addr));
    if (is_v4_mapped(dst.addr)) {
        /* A dual-stack socket asking an IPv4 server: steer to the IPv4 responder, still mapped. */
        u32 v4 = dst.addr[3];
        if (!cfg->responder4 || v4 == cfg->responder4)
            return 1;
        if (!(cfg->flags & NA_CAPTURE_ALL) && !na_dns4.lookup(&v4))
            return 1;
        if (!should_steer(cfg))
            return 1;
        remember(ctx, &orig);
        ctx->user_ip6[3] = cfg->responder4;
        ctx->user_port = cfg->responder_port;
        return 1;
    }
    if (!(cfg->responder6[0] | cfg->responder6[1] | cfg->responder6[2] | cfg->responder6[3]))
        return 1;
    if (dst.addr[0] == cfg->responder6[0] && dst.addr[1] == cfg->responder6[1] &&
        dst.addr[2] == cfg->responder6[2] && dst.addr[3] == cfg->responder6[3])
        return 1;
    if (!(cfg->flags & NA_CAPTURE_ALL) && !na_dns6.lookup(&dst))
        return 1;
    if (!should_steer(cfg))
        return 1;
    remember(ctx, &orig);
    ctx->user_ip6[0] = cfg->responder6[0];
    ctx->user_ip6[1] = cfg->responder6[1];
    ctx->user_ip6[2] = cfg->responder6[2];
    ctx->user_ip6[3] = cfg->responder6[3];
    ctx->user_port = cfg->responder_port;
    return 1;
}

/* Replies: only a source that is the responder, on a socket we steered, is rewritten back. */
static __always_inline int restore4(struct bpf_sock_addr *ctx) {
    u32 zero = 0;
    struct na_config *cfg = na_config.lookup(&zero);
    if (!cfg || ctx->user_ip4 != cfg->responder4 || ctx->user_port != cfg->responder_port)
        return 1;
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct na_orig *orig = na_orig.lookup(&cookie);
    if (!orig || orig->family != AF_INET)
        return 1;
    ctx->user_ip4 = orig->addr[0];
    ctx->user_port = orig->port;
    count(NA_STAT_RESTORED);
    return 1;
}

static __always_inline int restore6(struct bpf_sock_addr *ctx) {
    u32 zero = 0;
    struct na_config *cfg = na_config.lookup(&zero);
    if (!cfg || ctx->user_port != cfg->responder_port)
        return 1;
    u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
    int mapped = a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff) && cfg->responder4 && a3 == cfg->responder4;
    int native = a0 == cfg->responder6[0] && a1 == cfg->responder6[1] && a2 == cfg->responder6[2] &&
                 a3 == cfg->responder6[3] && (a0 | a1 | a2 | a3);
    if (!mapped && !native)
        return 1;
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct na_orig *orig = na_orig.lookup(&cookie);
    if (!orig || orig->family != AF_INET6)
        return 1;
    ctx->user_ip6[0] = orig->addr[0];
    ctx->user_ip6[1] = orig->addr[1];
    ctx->user_ip6[2] = orig->addr[2];
    ctx->user_ip6[3] = orig->addr[3];
    ctx->user_port = orig->port;
    count(NA_STAT_RESTORED);
    return 1;
}

int na_connect4(struct bpf_sock_addr *ctx) { return steer4(ctx); }
int na_sendmsg4(struct bpf_sock_addr *ctx) { return steer4(ctx); }
int na_recvmsg4(struct bpf_sock_addr *ctx) { return restore4(ctx); }
int na_getpeername4(struct bpf_sock_addr *ctx) { return restore4(ctx); }
int na_connect6(struct bpf_sock_addr *ctx) { return steer6(ctx); }
int na_sendmsg6(struct bpf_sock_addr *ctx) { return steer6(ctx); }
int na_recvmsg6(struct bpf_sock_addr *ctx) { return restore6(ctx); }
int na_getpeername6(struct bpf_sock_addr *ctx) { return restore6(ctx); }
