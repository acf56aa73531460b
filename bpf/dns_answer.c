/* Kernel answers: a TC (sched_cls, direct action) program that turns a cached DNS query into its
 * reply in place, so a hot cache hit never wakes the userspace responder.
 *
 * Where it runs: the TC *ingress* hook of the host end of an enrolled pod's veth. Ingress there is
 * the pod's egress: every packet the pod sends arrives on the host veth, so this hook sees the pod's
 * queries on their way to the responder (after the cgroup sendmsg hook pointed them at it). A reply
 * goes back with bpf_redirect_peer(ifindex, 0) - straight into the ingress of the veth's other end,
 * the pod's eth0 - from the responder's address and port, so the pod's socket and our recvmsg hook
 * (which shows it as from the address the app asked) take it as the responder's own answer.
 *
 * What it answers (everything else is TC_ACT_OK, untouched, for the userspace responder):
 * - an IPv4 (no options, no fragment) or IPv6 (no extension header) UDP datagram to the responder
 *   address and port, from a source address in na_ans_pods (the agent keeps it: pod IP -> the view
 *   the userspace path would pick) that has not opted out;
 * - a standard query exactly as wire.parse_query's fast path takes it: QR=0, opcode 0, TC=0,
 *   RCODE=0, one question, no answer/authority records, ARCOUNT 0 or 1 where the one additional RR
 *   is a bare version-0 OPT (no options) ending the packet;
 * - whose key (view, lower-cased qname, qtype, qclass, DO) - or (0, ...) for answers every view
 *   shares, as the userspace cache's SHARED key - is in na_answers, not past its expiry, with every
 *   TTL still above 0 once aged;
 * - whose reply fits what the client takes (512 without EDNS, else its size floored at 512 and
 *   capped at max_udp, as wire.udp_limit): a bigger one passes, so userspace truncates it.
 *
 * The reply is what Cache.get would send: the query's ID and its own spelling of the qname (the
 * packet's octets stay where they are), the cached flags with RD and CD copied from the query, the
 * cached records (their names compressed against the question at offset 12, which does not move)
 * with TTLs aged in whole seconds since stored_ns, and our OPT RR (DO echoed) iff the query had one.
 * Checksums are computed from the pieces, not from the old packet: the UDP sum is the sum of the
 * header we write, the qname octets (summed while the name is walked), the entry's precomputed tail
 * sum with the aged TTLs added, and the OPT RR. The aged TTLs are written into the copy's tail, which
 * then goes out in one store.
 *
 * Map values are never read in place: the kernel gives no read/write exclusion for them, and a hash
 * element (preallocated, or LRU) freed by an update or a delete, or taken by an eviction, is reused
 * at once for any key while this program may still be reading it. The pod's view|flags word and
 * the entry are copied (the entry into per-CPU scratch, word by word) and hashed as they are
 * copied; a copy that does not match the check the agent stored with it passes, counted as torn
 * (dns_answer.h says what the check covers). The reply is built from the copy alone: one entry,
 * written for this key. (A copy can still be of an entry the agent replaced or deleted an instant
 * before: the answer the cache gave until then, never a mix.)
 *
 * PIN_DIR and ANS_ENTRIES come from the loader; every map is pinned so a restarted agent adopts them.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>
#include "dns_answer.h"

#define PINNED(name) PIN_DIR "/" #name
#ifndef ANS_ENTRIES
#define ANS_ENTRIES NA_ANS_MAX_ENTRIES
#endif

/* Verdicts. PASS leaves the packet exactly as it came (nothing is written before the last check). */
#define PASS TC_ACT_OK
#define DROP TC_ACT_SHOT  /* only after the packet was partly rewritten and a helper then failed */

#define DNS_HDR 12
#define OPT_LEN 11
#define TYPE_OPT 41
#define REPLY_TTL 64      /* IP TTL / hop limit of our replies, as the responder's sockets send */
#define NS_PER_S 1000000000ULL

struct na_ans_scratch {
    __u8 pkt[NA_ANS_MAX_QUERY];  /* the query's DNS octets */
    struct na_ans_key key;       /* 272 octets: too big for the stack next to everything else */
    struct na_ans_entry ent;     /* the entry as copied (see copy_entry): the reply's only source */
    u8 head[80];                 /* the reply's Ethernet, IP, UDP and DNS headers, for one store */
    u32 end;                     /* the qname walk's state, kept in memory (see parse_query) */
    u32 sum;
    u32 next;
};

BPF_TABLE_PINNED("array", u32, struct na_ans_config, na_ans_config, 1, PINNED(na_ans_config));
BPF_TABLE_PINNED("hash", struct na_ans_ip, struct na_ans_pod, na_ans_pods, NA_ANS_MAX_PODS, PINNED(na_ans_pods));
BPF_TABLE_PINNED("lru_hash", struct na_ans_key, struct na_ans_entry, na_answers, ANS_ENTRIES, PINNED(na_answers));
BPF_TABLE_PINNED("percpu_array", u32, u64, na_ans_stats, NA_ANS_STAT_MAX, PINNED(na_ans_stats));
BPF_TABLE_PINNED("array", u32, u64, na_ans_hits, ANS_ENTRIES, PINNED(na_ans_hits), BPF_F_MMAPABLE);
BPF_PERCPU_ARRAY(na_ans_work, struct na_ans_scratch, 1);

static __always_inline int count(u32 idx, int verdict) {
    u64 *v = na_ans_stats.lookup(&idx);
    if (v)
        (*v)++;  /* per-CPU: no atomics needed */
    return verdict;
}

/* ---- checksums (ones'-complement sums of big-endian 16-bit words, kept wide and folded late) -- */

static __always_inline u32 fold(u64 s) {
    s = (s & 0xffffffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (s & 0xffff) + (s >> 16);
}

/* A sum over octets that start at an odd offset is the byte swap of their sum at an even one. */
static __always_inline u32 at_parity(u32 sum16, u32 odd) {
    return odd ? ((sum16 >> 8) | (sum16 << 8)) & 0xffff : sum16;
}

/* The 4 octets of a big-endian u32 at an even (odd = 0) or odd offset of an even-aligned run. */
static __always_inline u32 sum32(u32 v, u32 odd) {
    if (!odd)
        return (v >> 16) + (v & 0xffff);
    return (v >> 24) + ((v >> 8) & 0xffff) + ((v & 0xff) << 8);
}

static __always_inline u32 sum_words(const u8 *b, int n) {  /* n even, a constant */
    u32 s = 0;
#pragma unroll
    for (int i = 0; i < n; i += 2)
        s += ((u32)b[i] << 8) | b[i + 1];
    return s;
}

/* ---- the packet ------------------------------------------------------------------------------ */

/* The headers we keep to rewrite, copied out before the packet changes size. */
struct l3 {
    union {
        struct iphdr ip4;
        struct ipv6hdr ip6;
    };
    u8 macs[12];      /* destination then source MAC, as in the frame */
    struct udphdr udp;
    u32 l4;           /* offset of the UDP header */
    u32 dns_len;
    u32 is6;
};

/* Match IP/UDP to the responder; fills `h` and the source key. 0 = not ours. */
static __always_inline int parse_l3(struct __sk_buff *skb, const struct na_ans_config *cfg, struct l3 *h,
                                    struct na_ans_ip *src) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return 0;
    __builtin_memcpy(h->macs, eth, 12);
    struct udphdr *udp;
    u32 ip_len;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return 0;
        /* Options or fragments: the userspace path copes, we would only get them wrong. */
        if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)))
            return 0;
        if (!cfg->responder4 || ip->daddr != cfg->responder4)
            return 0;
        ip_len = bpf_ntohs(ip->tot_len);
        if (ip_len != skb->len - ETH_HLEN)  /* trailing octets (padding, a lie): not a plain datagram */
            return 0;
        udp = (void *)(ip + 1);
        if ((void *)(udp + 1) > end)
            return 0;
        __builtin_memcpy(&h->ip4, ip, sizeof(*ip));
        h->l4 = ETH_HLEN + sizeof(*ip);
        h->is6 = 0;
        src->addr[0] = ip->saddr;
        src->family = 4;
        ip_len -= sizeof(*ip);
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return 0;
        if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)  /* extension headers: userspace */
            return 0;
        const u32 *d = ip6->daddr.in6_u.u6_addr32;
        if (!(cfg->responder6[0] | cfg->responder6[1] | cfg->responder6[2] | cfg->responder6[3]) ||
            d[0] != cfg->responder6[0] || d[1] != cfg->responder6[1] || d[2] != cfg->responder6[2] ||
            d[3] != cfg->responder6[3])
            return 0;
        ip_len = bpf_ntohs(ip6->payload_len);
        if (ip_len != skb->len - ETH_HLEN - sizeof(*ip6))
            return 0;
        udp = (void *)(ip6 + 1);
        if ((void *)(udp + 1) > end)
            return 0;
        __builtin_memcpy(&h->ip6, ip6, sizeof(*ip6));
        h->l4 = ETH_HLEN + sizeof(*ip6);
        h->is6 = 1;
        __builtin_memcpy(src->addr, ip6->saddr.in6_u.u6_addr32, 16);
        src->family = 6;
    } else {
        return 0;
    }
    if (udp->dest != cfg->port || bpf_ntohs(udp->len) != ip_len || ip_len <= sizeof(*udp))
        return 0;
    __builtin_memcpy(&h->udp, udp, sizeof(*udp));
    h->dns_len = ip_len - sizeof(*udp);
    return 1;
}

/* `x`, unknown to the compiler: a loop `for (i < CONST) { if (i >= OPAQUE(n)) break; }` then keeps
 * counting i up to the constant, the bound the verifier checks each access against (left to
 * itself, clang counts the trip min(n, CONST) down in a register the verifier cannot tie to the
 * pointer it advances). */
static __always_inline u32 opaque(u32 x) {
    asm volatile("" : "+r"(x));
    return x;
}

/* What the query asks, once its DNS octets passed every check. */
struct question {
    u32 end;          /* offset just past the qname's zero octet */
    u32 qname_sum;    /* ones'-complement sum of the qname octets as sent (at offset 12: even) */
    u32 edns;         /* 1: the query carried a bare OPT RR */
    u32 limit;        /* the largest reply the client takes */
};

/* Check the DNS query in s->pkt and fill s->key (but its view) and `q`. 0 = not one we answer. */
static __always_inline int parse_query(struct na_ans_scratch *s, u32 len, const struct na_ans_config *cfg,
                                       struct question *q) {
    const u8 *p = s->pkt;
    if ((p[2] & 0xFA) || (p[3] & 0x0F))  /* QR, opcode, TC; RCODE */
        return 0;
    if (p[4] != 0 || p[5] != 1 || p[6] || p[7] || p[8] || p[9] || p[10] || p[11] > 1)
        return 0;
    __builtin_memset(s->key.qname, 0, NA_ANS_MAX_NAME);
    u32 end = 0, sum = 0;
    /* A bounded walk of at most 255 octets (the longest name): label lengths at `next`, letters
     * lower-cased into the key (ASCII only, as DNS folds case), every octet summed as sent.
     * `next` lives in map memory, where the verifier knows nothing of it: kept in a register, each
     * octet's two cases (length or letter) would leave two different states for the next step, and
     * the walk would be 2^255 paths to check instead of 255 steps. */
    volatile u32 *next = &s->next;
    *next = DNS_HDR;
    for (u32 i = 0; i < NA_ANS_MAX_NAME - 1; i++) {
        u32 pos = DNS_HDR + i;
        if (pos >= len)
            return 0;
        u8 c = p[pos & (NA_ANS_MAX_QUERY - 1)];
        sum += (pos & 1) ? c : ((u32)c << 8);
        if (pos == *next) {
            if (c == 0) {
                end = pos + 1;
                break;
            }
            if (c > 63)  /* a pointer or an extended label type: never in a query's qname */
                return 0;
            *next = pos + 1 + c;
        } else if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        }
        s->key.qname[i & (NA_ANS_MAX_NAME - 1)] = c;
    }
    if (!end)
        return 0;
    /* Each name length is its own verifier path with `end` and `sum` known exactly, and each would
     * walk the rest of the program again (255 times: past the verifier's limit). A round trip
     * through map memory makes them unknown, so the paths meet here as one. */
    *(volatile u32 *)&s->end = end;
    *(volatile u32 *)&s->sum = sum;
    end = *(volatile u32 *)&s->end;
    sum = *(volatile u32 *)&s->sum;
    if (end > DNS_HDR + NA_ANS_MAX_NAME - 1)
        return 0;
    /* Kept from clang's view: knowing the bound, it drops the masks below, and 5.10's verifier
     * does not carry the compare's bound to the copy of `end` it reloads for the access. */
    end = opaque(end);
    u32 qend = end + 4;
    if (qend > len)
        return 0;
    /* Raw wire octets: the key holds qtype and qclass in network order. */
    s->key.qtype = p[end & (NA_ANS_MAX_QUERY - 1)] | (p[(end + 1) & (NA_ANS_MAX_QUERY - 1)] << 8);
    s->key.qclass = p[(end + 2) & (NA_ANS_MAX_QUERY - 1)] | (p[(end + 3) & (NA_ANS_MAX_QUERY - 1)] << 8);
    s->key.dnssec_ok = 0;
    q->end = end;
    q->qname_sum = sum;
    q->edns = 0;
    q->limit = 512;
    if (!p[11])
        return len == qend;  /* trailing octets: the userspace path decides */
    /* One additional RR: only a bare OPT (root owner, version 0, no options) that ends the packet. */
    if (len != qend + OPT_LEN)
        return 0;
    const u8 *o = p + (qend & (NA_ANS_MAX_QUERY - 1));
    if ((qend & (NA_ANS_MAX_QUERY - 1)) > NA_ANS_MAX_QUERY - OPT_LEN)
        return 0;
    if (o[0] || o[1] || o[2] != TYPE_OPT || o[6] || o[9] || o[10])
        return 0;
    u32 payload = ((u32)o[3] << 8) | o[4];
    if (payload < 512)
        payload = 512;
    u32 max_udp = cfg->max_udp < 512 ? 512 : cfg->max_udp;
    q->limit = payload < max_udp ? payload : max_udp;
    q->edns = 1;
    s->key.dnssec_ok = (o[7] & 0x80) ? 1 : 0;
    return 1;
}

/* ---- reading map values whole (the check: see dns_answer.h) ------------------------------------ */

static __always_inline u64 mix(u64 h, u64 w) {
    h += w * NA_ANS_HASH_P2;
    h = (h << 31) | (h >> 33);
    return h * NA_ANS_HASH_P1;
}

static __always_inline u64 avalanche(u64 h) {
    h ^= h >> 33;
    h *= NA_ANS_HASH_P2;
    h ^= h >> 29;
    h *= NA_ANS_HASH_P3;
    return h ^ (h >> 32);
}

/* One load of a word of a map value another CPU may be rewriting: the copy, the hash and every
 * later use see the same value (the compiler may not load it twice). */
#define ONCE(p) (*(volatile const u64 *)(p))

/* The pod's view, from one copy of view|flags that matches the pod's check for `ip`; 0 = pass
 * (not enrolled, opted out), -1 = the value as read is not what the agent wrote for `ip`. */
static __always_inline s64 pod_view(const struct na_ans_pod *pod, const u64 ipw[3], u64 seed) {
    union {
        u64 w;
        struct {
            u32 view;
            u32 flags;
        };
    } vf;
    vf.w = ONCE(pod);
    u64 check = ONCE(&pod->check);
    u64 h = mix(mix(mix(mix(seed, ipw[0]), ipw[1]), ipw[2]), vf.w);
    if (avalanche(h) != check)
        return -1;
    if (vf.flags & NA_ANS_POD_OFF)
        return 0;
    return vf.view;
}

/* Copy entry `e` (found under s->key, whose qname is `ql` octets) into s->ent, hashing each word
 * as it is copied; 1 = the copy matches its check, so it is one whole entry the agent wrote for
 * this key. The lengths that bound the copy are read from the copy, and are themselves checked. */
static __always_inline int copy_entry(struct na_ans_scratch *s, const struct na_ans_entry *e, u32 ql,
                                      u64 seed) {
    u64 h = seed;
    const u64 *kw = (const u64 *)&s->key;
    u32 nkw = (DNS_HDR + ql + 7) / 8;
    for (u32 i = 0; i < sizeof(struct na_ans_key) / 8; i++) {
        if (i >= opaque(nkw))
            break;
        h = mix(h, kw[i]);
    }
    const u64 *src = (const u64 *)e;
    u64 *dst = (u64 *)&s->ent;
    dst[0] = ONCE(&src[0]);  /* the check itself */
#pragma unroll
    for (int i = 1; i < (int)(offsetof(struct na_ans_entry, ttl) / 8); i++) {  /* stored_ns .. slot|pad */
        u64 w = ONCE(&src[i]);
        dst[i] = w;
        h = mix(h, w);
    }
    u32 nttl = s->ent.nttl;
    u32 tail_len = s->ent.tail_len;
    if (nttl > NA_ANS_MAX_TTLS || tail_len < 4 || tail_len > NA_ANS_MAX_TAIL)
        return 0;  /* never written by the agent (encode refuses such entries): torn */
    for (u32 i = 0; i < NA_ANS_MAX_TTLS; i++) {
        if (i >= opaque(nttl))
            break;
        u64 w = ONCE(&e->ttl[i]);
        s->ent.ttl[i] = w;
        h = mix(h, w);
    }
    const u64 *tsrc = (const u64 *)e->tail;
    u64 *tdst = (u64 *)s->ent.tail;
    u32 tw = (tail_len + 7) / 8;
    for (u32 i = 0; i < NA_ANS_TAIL_ROOM / 8; i++) {
        if (i >= opaque(tw))
            break;
        u64 w = ONCE(&tsrc[i]);
        tdst[i] = w;
        h = mix(h, w);
    }
    return avalanche(h) == s->ent.check;
}

/* ---- the program ----------------------------------------------------------------------------- */

int na_answer(struct __sk_buff *skb) {
    u32 zero = 0;
    struct na_ans_config *cfg = na_ans_config.lookup(&zero);
    if (!cfg || !cfg->enabled)
        return PASS;
    u64 seed = cfg->seed;  /* the agent rewrites the config only with the same seed: never torn */
    struct l3 h = {};
    union {
        struct na_ans_ip ip;
        u64 w[3];  /* the key's words for the pod check (stack reads must be aligned) */
    } src = {};
    if (!parse_l3(skb, cfg, &h, &src.ip))
        return PASS;  /* not to the responder: not counted, this sees all of the pod's traffic */
    struct na_ans_pod *pod = na_ans_pods.lookup(&src.ip);
    if (!pod)
        return count(NA_ANS_STAT_NOT_POD, PASS);
    s64 view = pod_view(pod, src.w, seed);
    if (view < 0)
        return count(NA_ANS_STAT_TORN, PASS);
    if (!view)
        return count(NA_ANS_STAT_NOT_POD, PASS);
    struct na_ans_scratch *s = na_ans_work.lookup(&zero);
    if (!s)
        return PASS;
    /* Bounded in the register the helper gets, by two compares (as the tail's length below): left
     * to itself, clang tests a copy of the length with one unsigned compare of len - 513, whose
     * bounds 5.10's verifier does not carry back to the value the call then reloads. */
    u64 len = h.dns_len;
    asm volatile("" : "+r"(len));
    if (len < DNS_HDR + 5)
        return count(NA_ANS_STAT_SHAPE, PASS);
    asm volatile("" : "+r"(len));
    if (len > NA_ANS_MAX_QUERY)
        return count(NA_ANS_STAT_SHAPE, PASS);
    if (bpf_skb_load_bytes(skb, h.l4 + sizeof(struct udphdr), s->pkt, len) < 0)
        return count(NA_ANS_STAT_SHAPE, PASS);
    struct question q = {};
    if (!parse_query(s, len, cfg, &q))
        return count(NA_ANS_STAT_SHAPE, PASS);
#ifdef STOP1
    return PASS;
#endif

    s->key.view = view;
    struct na_ans_entry *e = na_answers.lookup(&s->key);
    if (!e) {
        s->key.view = 0;
        e = na_answers.lookup(&s->key);
        if (!e)
            return count(NA_ANS_STAT_MISS, PASS);
    }
    u32 ql = q.end - DNS_HDR;
    if (!copy_entry(s, e, ql, seed))
        return count(NA_ANS_STAT_TORN, PASS);
    /* From here the entry is s->ent, a copy no other CPU writes; e is only counted in. */
    struct na_ans_entry *c = &s->ent;

    u64 now = bpf_ktime_get_ns();
    if (now < c->stored_ns || now >= c->expires_ns)
        return count(NA_ANS_STAT_EXPIRED, PASS);
    u32 age = (now - c->stored_ns) / NS_PER_S;

    u32 tail_len = c->tail_len;
    u32 nttl = c->nttl;
    if (tail_len < 4 || tail_len > NA_ANS_MAX_TAIL || nttl > NA_ANS_MAX_TTLS)
        return count(NA_ANS_STAT_SHAPE, PASS);
    u32 dns_reply = DNS_HDR + ql + tail_len + (q.edns ? OPT_LEN : 0);
    if (dns_reply > q.limit)
        return count(NA_ANS_STAT_TOO_BIG, PASS);

    /* Age the TTLs in the copy's tail (so the tail goes out in one store) and add their share of
     * the tail's sum; any TTL at 0 means the entry is done. */
    u64 tail_sum = c->tail_sum;
    for (u32 i = 0; i < NA_ANS_MAX_TTLS; i++) {
        if (i >= opaque(nttl))  /* as in copy_entry: i bounds the access, not a count clang derives */
            break;
        u64 t = c->ttl[i];
        u32 base = t >> 32;
        u32 off = t & 0xffff;
        if (base <= age)
            return count(NA_ANS_STAT_EXPIRED, PASS);
        if (off + 4 > tail_len || off > NA_ANS_MAX_TAIL - 4)
            return count(NA_ANS_STAT_SHAPE, PASS);
        u32 ttl = base - age;
        u8 *d = c->tail + off;
        d[0] = ttl >> 24;
        d[1] = ttl >> 16;
        d[2] = ttl >> 8;
        d[3] = ttl;
        tail_sum += sum32(ttl, off & 1);
    }

    /* The DNS header: ID as asked, cached flags with RD and CD from the query, counts (+OPT). */
    u8 hdr[DNS_HDR];
    hdr[0] = s->pkt[0];
    hdr[1] = s->pkt[1];
    hdr[2] = c->flags[0] | (s->pkt[2] & 0x01);
    hdr[3] = c->flags[1] | (s->pkt[3] & 0x10);
    hdr[4] = 0;
    hdr[5] = 1;
    __builtin_memcpy(hdr + 6, c->counts, 6);
    u32 ar = (((u32)hdr[10] << 8) | hdr[11]) + q.edns;
    hdr[10] = ar >> 8;
    hdr[11] = ar & 0xff;

    u8 opt[OPT_LEN + 1] = {0, 0, TYPE_OPT, cfg->edns_payload >> 8, cfg->edns_payload & 0xff, 0, 0,
                           s->key.dnssec_ok ? 0x80 : 0, 0, 0, 0, 0};

    u32 ulen = sizeof(struct udphdr) + dns_reply;
    u64 sum = sum_words(hdr, DNS_HDR) + q.qname_sum + at_parity(fold(tail_sum), ql & 1);
    if (q.edns)
        sum += at_parity(sum_words(opt, OPT_LEN + 1), (DNS_HDR + ql + tail_len) & 1);
    /* Pseudo-header and UDP header: the address and port swap leaves their sum as it was. */
    sum += IPPROTO_UDP + ulen + ulen + bpf_ntohs(h.udp.source) + bpf_ntohs(h.udp.dest);
    if (!h.is6) {
        sum += sum32(bpf_ntohl(h.ip4.saddr), 0) + sum32(bpf_ntohl(h.ip4.daddr), 0);
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++)
            sum += sum32(bpf_ntohl(h.ip6.saddr.in6_u.u6_addr32[i]), 0) +
                   sum32(bpf_ntohl(h.ip6.daddr.in6_u.u6_addr32[i]), 0);
    }
    u32 csum = ~fold(sum) & 0xffff;
    struct udphdr udp = {.source = h.udp.dest, .dest = h.udp.source, .len = bpf_htons(ulen),
                         .check = bpf_htons(csum ? csum : 0xffff)};  /* 0 means "no checksum" */

    /* The reply's headers, built in scratch and written in one store (each store is a helper
     * call that checks the packet is writable): MACs swapped, the EtherType as it was. */
    u8 *hd = s->head;
    __builtin_memcpy(hd, h.macs + 6, 6);
    __builtin_memcpy(hd + 6, h.macs, 6);
    u32 hlen;
    if (!h.is6) {
        struct iphdr ip = h.ip4;
        ip.saddr = h.ip4.daddr;
        ip.daddr = h.ip4.saddr;
        ip.tot_len = bpf_htons(sizeof(ip) + ulen);
        ip.ttl = REPLY_TTL;
        ip.check = 0;
        ip.check = bpf_htons(~fold(sum_words((const u8 *)&ip, sizeof(ip))) & 0xffff);
        *(u16 *)(hd + 12) = bpf_htons(ETH_P_IP);
        __builtin_memcpy(hd + ETH_HLEN, &ip, sizeof(ip));
        __builtin_memcpy(hd + ETH_HLEN + sizeof(ip), &udp, sizeof(udp));
        __builtin_memcpy(hd + ETH_HLEN + sizeof(ip) + sizeof(udp), hdr, DNS_HDR);
        hlen = ETH_HLEN + sizeof(ip) + sizeof(udp) + DNS_HDR;
    } else {
        struct ipv6hdr ip6 = h.ip6;
        ip6.saddr = h.ip6.daddr;
        ip6.daddr = h.ip6.saddr;
        ip6.payload_len = bpf_htons(ulen);
        ip6.hop_limit = REPLY_TTL;
        *(u16 *)(hd + 12) = bpf_htons(ETH_P_IPV6);
        __builtin_memcpy(hd + ETH_HLEN, &ip6, sizeof(ip6));
        __builtin_memcpy(hd + ETH_HLEN + sizeof(ip6), &udp, sizeof(udp));
        __builtin_memcpy(hd + ETH_HLEN + sizeof(ip6) + sizeof(udp), hdr, DNS_HDR);
        hlen = ETH_HLEN + sizeof(ip6) + sizeof(udp) + DNS_HDR;
    }
    /* Bounded again right at the uses: the checks above ran on a register the verifier has lost. */
    u64 n = tail_len;
    asm volatile("" : "+r"(n));
    if (n < 4)
        return count(NA_ANS_STAT_ERROR, PASS);
    asm volatile("" : "+r"(n));  /* two separate compares: clang would fold them into one the verifier cannot use */
    if (n > NA_ANS_MAX_TAIL)
        return count(NA_ANS_STAT_ERROR, PASS);
    if (q.edns) {  /* our OPT RR right after the tail, in the copy: the tail then goes out whole */
        __builtin_memcpy(c->tail + n, opt, OPT_LEN);
        n += OPT_LEN;
    }

    /* Every check passed: from here the packet becomes the reply. */
    if (bpf_skb_change_tail(skb, h.l4 + ulen, 0) < 0)
        return count(NA_ANS_STAT_ERROR, PASS);  /* the packet is unchanged when this fails */
    int err = bpf_skb_store_bytes(skb, 0, hd, hlen, 0);
    /* The qname stays as the query spelled it; the cached tail goes right after it. */
    err |= bpf_skb_store_bytes(skb, h.l4 + sizeof(struct udphdr) + DNS_HDR + ql, c->tail, n, 0);
    if (err)
        return count(NA_ANS_STAT_ERROR, DROP);  /* half a reply: never let it reach anyone */
    u32 slot = c->slot;
    u64 *hits = na_ans_hits.lookup(&slot);
    if (hits)
        __sync_fetch_and_add(hits, 1);
    __sync_fetch_and_add(&pod->answers, 1);
    count(NA_ANS_STAT_ANSWERED, 0);
    /* Into the pod: the ingress of the veth's other end, in the pod's namespace, in this same
     * softirq (no second pass through the host veth's transmit and the CPU's backlog queue). The
     * query may have been addressed to a bridge's MAC rather than this veth's, which left it
     * PACKET_OTHERHOST here; the pod's IP layer would drop it as such, and not every kernel resets
     * the type on the namespace switch. */
    bpf_skb_change_type(skb, PACKET_HOST);
    return bpf_redirect_peer(skb->ifindex, 0);
}
