/* Map layouts shared by bpf/dns_answer.c and the agent (node_agent/kernel/answers.py).
 *
 * The one place these layouts live: bcc compiles it with the program, and answers.py reads the
 * NA_ANS_* constants and the structs with kernel/maps.py's header reader. Fields are __u8..__u64 and
 * arrays of them (what that reader understands). Change a struct => bump NA_ANS_LAYOUT_VERSION, which
 * names the pin directory, so an upgraded agent never reinterprets maps pinned by an older layout.
 *
 * Byte order: addresses, ports, qtype/qclass and the flags/counts octets are as on the wire (network
 * order); lengths, offsets, TTLs, times and checksums are host-order integers.
 */
#ifndef NA_DNS_ANSWER_H
#define NA_DNS_ANSWER_H

#define NA_ANS_LAYOUT_VERSION 3

#define NA_ANS_MAX_NAME 256      /* qname wire octets with the final zero: at most 255, padded */
/* The cached part after the qname (qtype, qclass, then the records). A reply is 12 + qname + tail
 * (+ 11 for OPT) and never exceeds the 1232 octets we take as UDP size, so this bounds every entry
 * that could be sent. */
#define NA_ANS_MAX_TAIL 1220
/* NA_ANS_MAX_TAIL and an OPT RR (11 octets, which the program appends in its copy so the reply's
 * tail goes out in one store), rounded up to whole 8-octet words (the check reads words) */
#define NA_ANS_TAIL_ROOM 1232
#define NA_ANS_MAX_TTLS 64       /* records with a TTL per entry; entries with more stay in userspace */
#define NA_ANS_MAX_QUERY 512     /* scratch room for the query's DNS payload (one question + bare OPT) */
#define NA_ANS_MAX_ENTRIES 65536 /* the answer map's size when the agent does not set one */
#define NA_ANS_MAX_PODS 65536

/* na_ans_pod.flags */
#define NA_ANS_POD_OFF 1         /* the pod opted out: always pass to userspace (or not steered at all) */

/* na_ans_stats indices (per-CPU counters) */
#define NA_ANS_STAT_ANSWERED 0   /* rewritten into a reply and sent back */
#define NA_ANS_STAT_NOT_POD 1    /* to the responder from an address that is no enrolled pod */
#define NA_ANS_STAT_SHAPE 2      /* not a query the kernel answers (flags, counts, EDNS options, ...) */
#define NA_ANS_STAT_MISS 3       /* no entry for the key */
#define NA_ANS_STAT_EXPIRED 4    /* an entry, but past its expiry */
#define NA_ANS_STAT_TOO_BIG 5    /* the reply would exceed what the client takes */
#define NA_ANS_STAT_ERROR 6      /* a helper failed mid-rewrite: the packet is dropped */
#define NA_ANS_STAT_TORN 7       /* an entry or pod as read did not match its check (rewritten meanwhile) */
#define NA_ANS_STAT_MAX 8

/* The check (na_ans_entry.check, na_ans_pod.check): a keyed 64-bit hash of the map key and the
 * value's words, so the program answers only from a copy that is one whole value, written for the
 * key it looked up. Why: the kernel gives no read/write exclusion for map values. A preallocated
 * (or LRU) hash element freed by an update or a delete, or taken by an LRU eviction, is reused at
 * once, for any key, while a program that looked it up still reads it; so a value read field by
 * field could be two entries, or another key's. The program copies the value word by word into its
 * per-CPU scratch, hashing each word as it copies, and reads every field from the copy only.
 *
 * The hash, over 64-bit words loaded in host order (C and kernel/answers.py alike):
 *   h = seed; for each word w: h = rotl64(h + w * P2, 31) * P1;
 *   then h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32
 * (xxHash64's lane round and avalanche, one lane: about 2.5 ns a word in the program). The seed is
 * random per map set (na_ans_config.seed, chosen by the agent), so content from the network cannot
 * be chosen in advance to collide with another key's entry. Not a MAC (whoever can write the maps
 * can write the check): but for odds of 2^-64, it tells the value the agent wrote for this key
 * from any other.
 *
 * Words an entry's check covers, in this order: the key's first (12 + qname octets + 7) / 8 words
 * (view .. pad, then the zero-padded qname: na_ans_key is whole words), the entry's words from
 * stored_ns through slot|pad, ttl[0 .. nttl), and tail words [0, (tail_len + 7) / 8) (the octets past
 * tail_len are zero). A pod's check covers the na_ans_ip key's 3 words and the word view|flags.
 *
 * na_ans_config has no check: an array value, read and rewritten in place. Once the program runs,
 * the agent rewrites it only to flip `enabled` (one 16-bit load), every other octet unchanged. */
#define NA_ANS_HASH_P1 11400714785074694791ULL /* 0x9E3779B185EBCA87 (decimal: maps.py reads decimals) */
#define NA_ANS_HASH_P2 14029467366897019727ULL /* 0xC2B2AE3D27D4EB4F */
#define NA_ANS_HASH_P3 1609587929392839161ULL  /* 0x165667B19E3779F9 */

struct na_ans_config {
    __u64 seed;                  /* the checks' key: random, never 0 once the agent wrote the config */
    __u32 responder4;            /* network order; 0 = answer no IPv4 */
    __u32 responder6[4];         /* network order; all 0 = answer no IPv6 */
    __u16 port;                  /* network order */
    __u16 max_udp;               /* host order: the largest EDNS reply (wire.udp_limit's max_udp) */
    __u16 edns_payload;          /* host order: UDP size in the OPT RR of our replies */
    __u16 enabled;               /* 0: pass everything (the agent's switch, kept in the pinned map) */
    __u32 pad;
};

struct na_ans_ip {
    __u32 addr[4];               /* network order; IPv4 in addr[0] */
    __u32 family;                /* 4 or 6: an IPv4 address never equals an IPv6 one */
    __u32 pad;                   /* zero: whole words, as the check reads them */
};

struct na_ans_pod {
    __u32 view;                  /* the view the userspace path picks for this address; never 0 */
    __u32 flags;
    __u64 check;                 /* of the key and view|flags (see above) */
    __u64 answers;               /* kernel answers to this pod (metrics per namespace) */
};

struct na_ans_key {
    __u32 view;                  /* the pod's view, or 0: answers every view shares */
    __u16 qtype;                 /* network order */
    __u16 qclass;                /* network order */
    __u8 dnssec_ok;              /* the query's DO bit: part of the key, as in the userspace cache */
    __u8 pad[3];
    __u8 qname[NA_ANS_MAX_NAME]; /* lower-cased wire octets, zero-padded */
    __u8 pad_end[4];             /* zero: whole words, as the check reads them */
};

struct na_ans_entry {
    __u64 check;                 /* of the key and the words below (see above) */
    __u64 stored_ns;             /* CLOCK_MONOTONIC at which the TTLs had their base values */
    __u64 expires_ns;            /* first instant the entry is no longer answered (absolute) */
    __u32 tail_sum;              /* ones'-complement sum of tail with the TTL octets zeroed */
    __u16 tail_len;
    __u16 nttl;
    __u8 flags[2];               /* header octets 2..3, RD and CD clear (copied from the query) */
    __u8 counts[6];              /* ANCOUNT, NSCOUNT, ARCOUNT without OPT: header octets 6..11 */
    __u32 slot;                  /* this entry's counter in na_ans_hits (< the answer map's size) */
    __u32 pad;
    __u64 ttl[NA_ANS_MAX_TTLS];  /* base TTL (at stored_ns) << 32 | its offset in tail: one word each */
    __u8 tail[NA_ANS_TAIL_ROOM]; /* everything after the qname: qtype, qclass, records; zero-padded */
};

/* na_ans_hits: an array of __u64, one per slot (as many as the answer map has entries), mmapable:
 * the program adds 1 to its entry's slot for each answer, and the agent reads every counter from
 * its own memory mapping of the array, with no system call (prefetch and metrics need them 4 times
 * a second). A slot belongs to one key of the agent's at a time; counters only grow (a slot given
 * to another key is read, not reset, first). */

#endif
