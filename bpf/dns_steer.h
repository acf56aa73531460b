/* Map layouts shared by bpf/dns_steer.c and the agent (node_agent/kernel/maps.py).
 *
 * This header is the one place the layouts live: bcc compiles it with the programs and hands Python
 * the matching ctypes for every map (table.Key / table.Leaf), and the agent reads the NA_* constants
 * and the structs (for its in-memory map fake) from this file; keep fields to __u8..__u64 and arrays
 * of them, which is what maps.py reads. Change a struct => bump NA_LAYOUT_VERSION, which names the pin directory, so
 * an upgraded agent never reinterprets maps pinned by an older layout.
 */
#ifndef NA_DNS_STEER_H
#define NA_DNS_STEER_H

#define NA_LAYOUT_VERSION 1

/* na_config.flags */
#define NA_CAPTURE_ALL 1      /* steer port 53 to any destination, not only the listed DNS services */
#define NA_SOCKET_CHECK 2     /* steer only while a responder socket of the query's kind is in na_socks */

/* na_pod.flags */
#define NA_POD_OPT_OUT 1      /* enrolled but excluded: its DNS goes where it asked */

/* na_stats indices (per-CPU counters) */
#define NA_STAT_STEERED 0     /* connect/sendmsg rewritten to the responder */
#define NA_STAT_FAILOPEN 1    /* would have been steered, but the agent is gone (NA_CAUSE_*) */
#define NA_STAT_OPT_OUT 2     /* from an opted-out pod */
#define NA_STAT_UNENROLLED 3  /* to a DNS service address from a cgroup that is no enrolled pod */
#define NA_STAT_RESTORED 4    /* recvmsg/getpeername rewritten back to the address asked */
#define NA_STAT_VIP 5         /* connect/sendmsg to a ServiceEntry VIP translated to a backend */
#define NA_STAT_VIP_NO_BACKEND 6 /* connect/sendmsg to a VIP without backends, refused */
#define NA_STAT_FAILOPEN_START 7 /* steering switched off (agent gone); na_causes counts why */
#define NA_STAT_FAILOPEN_END 8   /* steering switched back on: an agent beats again */
#define NA_STAT_MAX 9

/* na_socks keys: the responder's listening sockets, one per kind. The kernel drops a socket from a
 * sockmap the moment it closes (exit, kill -9, OOM kill), so a lookup tells at once whether the
 * agent still listens; the heartbeat only tells it after its bound. */
#define NA_SOCK_UDP4 0
#define NA_SOCK_TCP4 1
#define NA_SOCK_UDP6 2
#define NA_SOCK_TCP6 3
#define NA_SOCK_MAX 4

/* na_state.cause and na_causes indices: why the programs stopped steering (fail-open). */
#define NA_CAUSE_NONE 0
#define NA_CAUSE_NO_SOCKET 1  /* no responder socket of the kind asked: the agent's process is gone */
#define NA_CAUSE_STALE 2      /* heartbeat older than the bound: the agent is alive but stuck */
#define NA_CAUSE_STOPPED 3    /* heartbeat zeroed: a clean stop with no successor */
#define NA_CAUSE_MAX 4

/* current_pod() looks for an enrolled cgroup among the task's ancestors at levels 1..8 below the
 * cgroup v2 root; pod cgroups sit at level 2-3 (kubepods[/qos]/pod), deeper when the kubelet itself
 * runs in a nested cgroup (kind, the tests' cgroup root): leave room. */
#define NA_MAX_CGROUP_LEVEL 8
#define NA_MAX_VIPS 65536      /* na_vips entries (VIP:port/proto) and na_vip_stats ids */
/* na_backends entries: the (id, slot) pairs of every service id at once, room for 4 per VIP on
 * average. A changed service holds its old and its new block together until the switch
 * (copy-on-write). */
#define NA_MAX_BACKENDS 262144

struct na_config {
    __u32 responder4;         /* network order; 0 = no IPv4 steering */
    __u32 responder6[4];      /* network order; all 0 = no IPv6 steering */
    __u16 responder_port;     /* network order */
    __u16 flags;
    __u32 pad;
    __u64 stale_after_ns;     /* fail open when the heartbeat is older than this */
};

struct na_heartbeat {
    __u64 mono_ns;            /* CLOCK_MONOTONIC of the agent's last beat (bpf_ktime_get_ns clock) */
    __u32 owner_pid;          /* the agent that beats; a successor takes over by writing its own */
    __u32 pad;
};

/* Whether the programs last saw the agent alive, to count fail-open transitions (not queries). */
struct na_state {
    __u32 failed_open;
    __u32 cause;              /* NA_CAUSE_* of the last transition to fail-open */
};

/* Which agent steers: written only by an agent taking over (never by a beat), so a predecessor's
 * last beat cannot undo a hand-over. Only the agents read it; the programs do not. */
struct na_agent {
    __u32 pid;
    __u32 pad;
    __u64 since_ns;           /* CLOCK_MONOTONIC of the take-over */
};

struct na_ip6 {
    __u32 addr[4];            /* network order */
};

struct na_pod {
    __u32 flags;
    __u32 pad;
    __u64 steered;            /* queries (UDP datagrams, TCP connections) sent to the responder */
    __u64 failopen;           /* queries let through to their destination because the agent was gone */
};

/* Per socket: where the app asked to go and where we sent it instead, so replies (recvmsg) and
 * getpeername from `to` are shown as coming from `asked`. Used by DNS steering and VIPs alike. */
struct na_orig {
    __u32 addr[4];            /* the destination the app asked: addr[0] for IPv4 */
    __u32 to[4];              /* where it was rewritten to */
    __u16 port;               /* network order */
    __u16 to_port;            /* network order */
    __u16 family;
    __u16 pad;
};

/* ServiceEntry VIPs: VIP:port/proto -> a service id with `count` backends. */
struct na_vip_key {
    __u32 addr[4];            /* network order; addr[0] for IPv4 */
    __u16 port;               /* network order */
    __u8 proto;               /* IPPROTO_TCP / IPPROTO_UDP */
    __u8 family;              /* AF_INET / AF_INET6 (low byte) */
};

struct na_vip {
    __u32 id;                 /* service id: key of na_backends and na_vip_stats */
    __u32 count;              /* backends in na_backends[id, 0..count-1]; 0 = fail fast */
};

struct na_backend_key {
    __u32 id;
    __u32 slot;
};

struct na_backend {
    __u32 addr[4];            /* network order; addr[0] for IPv4 */
    __u16 port;               /* network order */
    __u16 family;
};

struct na_vip_stats {
    __u64 connections;        /* connects / first datagrams translated to a backend */
    __u64 no_backend;         /* refused at once: the VIP had no backend */
};

#endif
